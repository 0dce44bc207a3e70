// Event-driven convolution (kernel 4), see spike_conv.h.
#include "spike_conv.h"

#include <cstring>
#include <vector>

// The axpy loops are the whole cost: on x86-64 with GCC or Clang, build AVX-512 and AVX2 versions
// beside the baseline one and pick at load time by the CPU.
#if defined(__x86_64__) && defined(__GNUC__)
#define DCSIM_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DCSIM_SIMD_CLONES
#endif

namespace dcsim {
namespace {

// out_row[o] += v * w_row[o] for o < cout: the work of one spike at one kernel offset.
inline void axpy(float* __restrict out_row, const float* __restrict w_row, float v, int64_t cout) {
  for (int64_t o = 0; o < cout; ++o) out_row[o] += v * w_row[o];
}

// Output row (sample i, row oy): every position starts at the bias and adds, for each kernel
// offset (ky, kx) in order and each active input channel c in increasing order, x * w.
DCSIM_SIMD_CLONES
void output_row(const SpikeConvArgs& a, const int32_t* active, const int32_t* n_active, int64_t i, int64_t oy) {
  for (int64_t ox = 0; ox < a.ow; ++ox) {
    float* o = a.out + ((i * a.oh + oy) * a.ow + ox) * a.cout;
    if (a.bias) {
      std::memcpy(o, a.bias, sizeof(float) * a.cout);
    } else {
      std::memset(o, 0, sizeof(float) * a.cout);
    }
    for (int64_t ky = 0; ky < a.kh; ++ky) {
      const int64_t iy = oy * a.sh - a.ph + ky;
      if (iy < 0 || iy >= a.h) continue;
      for (int64_t kx = 0; kx < a.kw; ++kx) {
        const int64_t ix = ox * a.sw - a.pw + kx;
        if (ix < 0 || ix >= a.w) continue;
        const int64_t pos = (i * a.h + iy) * a.w + ix;
        const int32_t* cs = active + pos * a.cin;
        const float* xp = a.x + pos * a.cin;
        const float* wk = a.weight + (ky * a.kw + kx) * a.cin * a.cout;
        for (int32_t k = 0; k < n_active[pos]; ++k) axpy(o, wk + cs[k] * a.cout, xp[cs[k]], a.cout);
      }
    }
  }
}

}  // namespace

void spike_conv_cpu(const SpikeConvArgs& a, int threads) {
  const int64_t positions = a.n * a.h * a.w;
  // Pass 1: the nonzero input channels of every input position, in increasing order.
  std::vector<int32_t> active(static_cast<size_t>(positions * a.cin));
  std::vector<int32_t> n_active(static_cast<size_t>(positions));
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t pos = 0; pos < positions; ++pos) {
    const float* xp = a.x + pos * a.cin;
    int32_t* cs = active.data() + pos * a.cin;
    int32_t k = 0;
    for (int64_t c = 0; c < a.cin; ++c) {
      if (xp[c] != 0.0f) cs[k++] = static_cast<int32_t>(c);
    }
    n_active[pos] = k;
  }
  // Pass 2: output rows in parallel (each written by one thread only).
  const int64_t rows = a.n * a.oh;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (threads > 1)
  for (int64_t r = 0; r < rows; ++r) output_row(a, active.data(), n_active.data(), r / a.oh, r % a.oh);
}

}  // namespace dcsim
