// Event-driven convolution (kernel 4), see spike_conv.h.
#include "spike_conv.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

// The axpy loops are the whole cost. On x86-64 with GCC or Clang: an AVX-512 version that keeps
// 64 output sums in registers (chosen at run time when the CPU has AVX-512), and AVX2 and
// baseline builds of the portable loop.
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define DCSIM_X86 1
#define DCSIM_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define DCSIM_SIMD_CLONES
#endif

namespace dcsim {
namespace {

#ifdef DCSIM_BOUNDS_CHECK
// Sanitized test builds: AddressSanitizer does not see masked SIMD loads and stores, so each one
// checks that its lanes [p, p + lanes) lie inside the array [base, base + size) it addresses.
void check_lanes(const float* p, unsigned mask, const float* base, int64_t size, const char* what) {
  const int64_t lanes = __builtin_popcount(mask);
  if (lanes > 0 && (p < base || p + lanes > base + size)) {
    std::fprintf(stderr, "dcsim bounds check: %s lanes [%lld, %lld) outside [0, %lld)\n", what,
                 static_cast<long long>(p - base), static_cast<long long>(p - base + lanes),
                 static_cast<long long>(size));
    std::abort();
  }
}
#define DCSIM_CHECK_LANES(p, mask, base, size, what) check_lanes(p, mask, base, size, what)
#else
#define DCSIM_CHECK_LANES(p, mask, base, size, what) ((void)0)
#endif

// out_row[o] += v * w_row[o] for o < cout: the work of one spike at one kernel offset.
inline void axpy(float* __restrict out_row, const float* __restrict w_row, float v, int64_t cout) {
  for (int64_t o = 0; o < cout; ++o) out_row[o] += v * w_row[o];
}

// One kernel offset of an output position's window: the input position it reads (a row of x)
// and the offset's weights [cin, cout].
struct Tap {
  int64_t pos;
  const float* weight;
};

// The taps of output position (i, oy, ox) whose input lies inside the image, in (ky, kx) order,
// written to taps (room for kh * kw); returns their count. Shared by both output_row loops.
inline int64_t window(const SpikeConvArgs& a, int64_t i, int64_t oy, int64_t ox, Tap* taps) {
  int64_t n = 0;
  for (int64_t ky = 0; ky < a.kh; ++ky) {
    const int64_t iy = oy * a.sh - a.ph + ky;
    if (iy < 0 || iy >= a.h) continue;
    for (int64_t kx = 0; kx < a.kw; ++kx) {
      const int64_t ix = ox * a.sw - a.pw + kx;
      if (ix < 0 || ix >= a.w) continue;
      taps[n++] = {(i * a.h + iy) * a.w + ix, a.weight + (ky * a.kw + kx) * a.cin * a.cout};
    }
  }
  return n;
}

// Output row (sample i, row oy): every position starts at the bias and adds, for each tap of its
// window in order and each active input channel c in increasing order, x * w.
DCSIM_SIMD_CLONES
void output_row(const SpikeConvArgs& a, const int32_t* active, const int64_t* first, int64_t i, int64_t oy) {
  const std::unique_ptr<Tap[]> taps(new Tap[a.kh * a.kw]);
  for (int64_t ox = 0; ox < a.ow; ++ox) {
    float* o = a.out + ((i * a.oh + oy) * a.ow + ox) * a.cout;
    if (a.bias) {
      std::memcpy(o, a.bias, sizeof(float) * a.cout);
    } else {
      std::memset(o, 0, sizeof(float) * a.cout);
    }
    const int64_t n_taps = window(a, i, oy, ox, taps.get());
    for (int64_t t = 0; t < n_taps; ++t) {
      const int64_t pos = taps[t].pos;
      const float* xp = a.x + pos * a.cin;
      for (int64_t k = first[pos]; k < first[pos + 1]; ++k) {
        axpy(o, taps[t].weight + active[k] * a.cout, xp[active[k]], a.cout);
      }
    }
  }
}

#ifdef DCSIM_X86
// output_row with AVX-512: output channels in blocks of 64, summed in four registers (fused
// multiply-adds, same order of terms as the portable loop).
__attribute__((target("avx512f"))) void output_row_avx512(const SpikeConvArgs& a, const int32_t* active,
                                                           const int64_t* first, int64_t i, int64_t oy) {
  const std::unique_ptr<Tap[]> taps(new Tap[a.kh * a.kw]);
  for (int64_t ox = 0; ox < a.ow; ++ox) {
    float* o = a.out + ((i * a.oh + oy) * a.ow + ox) * a.cout;
    const int64_t n_taps = window(a, i, oy, ox, taps.get());
    for (int64_t o0 = 0; o0 < a.cout; o0 += 64) {
      __mmask16 m[4];
      __m512 acc[4];
      for (int j = 0; j < 4; ++j) {
        const int64_t lanes = a.cout - o0 - 16 * j;
        m[j] = lanes >= 16 ? static_cast<__mmask16>(0xFFFF)
                           : static_cast<__mmask16>(lanes <= 0 ? 0 : (1u << lanes) - 1);
        if (a.bias) DCSIM_CHECK_LANES(a.bias + o0 + 16 * j, m[j], a.bias, a.cout, "bias");
        acc[j] = a.bias ? _mm512_maskz_loadu_ps(m[j], a.bias + o0 + 16 * j) : _mm512_setzero_ps();
      }
      for (int64_t t = 0; t < n_taps; ++t) {
        const int64_t pos = taps[t].pos;
        const float* xp = a.x + pos * a.cin;
        for (int64_t k = first[pos]; k < first[pos + 1]; ++k) {
          const __m512 v = _mm512_set1_ps(xp[active[k]]);
          const float* wr = taps[t].weight + static_cast<int64_t>(active[k]) * a.cout + o0;
          for (int j = 0; j < 4; ++j) {
            DCSIM_CHECK_LANES(wr + 16 * j, m[j], a.weight, a.kh * a.kw * a.cin * a.cout, "weight");
            acc[j] = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(m[j], wr + 16 * j), acc[j]);
          }
        }
      }
      for (int j = 0; j < 4; ++j) {
        DCSIM_CHECK_LANES(o + o0 + 16 * j, m[j], a.out, a.n * a.oh * a.ow * a.cout, "out");
        _mm512_mask_storeu_ps(o + o0 + 16 * j, m[j], acc[j]);
      }
    }
  }
}
#endif

}  // namespace

void spike_conv_cpu(const SpikeConvArgs& a, int threads, bool simd) {
  const int64_t positions = a.n * a.h * a.w;
  // Pass 1: the nonzero input channels of every input position, in increasing order, as one
  // list: position p's channels are active[first[p] .. first[p + 1]) (memory in proportion to
  // the spikes, not to the input).
  const std::unique_ptr<int64_t[]> first(new int64_t[positions + 1]);
  first[0] = 0;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t pos = 0; pos < positions; ++pos) {
    const float* xp = a.x + pos * a.cin;
    int64_t k = 0;
    for (int64_t c = 0; c < a.cin; ++c) k += xp[c] != 0.0f;
    first[pos + 1] = k;
  }
  for (int64_t pos = 0; pos < positions; ++pos) first[pos + 1] += first[pos];
  const std::unique_ptr<int32_t[]> active(new int32_t[first[positions] > 0 ? first[positions] : 1]);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t pos = 0; pos < positions; ++pos) {
    const float* xp = a.x + pos * a.cin;
    int32_t* cs = active.get() + first[pos];
    for (int64_t c = 0; c < a.cin; ++c) {
      if (xp[c] != 0.0f) *cs++ = static_cast<int32_t>(c);
    }
  }
  // Pass 2: output rows in parallel (each written by one thread only).
  auto row = output_row;
#ifdef DCSIM_X86
  if (simd && __builtin_cpu_supports("avx512f")) row = output_row_avx512;
#endif
  const int64_t rows = a.n * a.oh;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (threads > 1)
  for (int64_t r = 0; r < rows; ++r) row(a, active.get(), first.get(), r / a.oh, r % a.oh);
}

}  // namespace dcsim
