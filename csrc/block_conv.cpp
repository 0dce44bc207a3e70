// Dense convolution in oneDNN's order (kernel 6), see block_conv.h.
#include "block_conv.h"

#include <cmath>
#include <memory>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define DCSIM_X86 1
#endif

namespace dcsim {
namespace {

constexpr int kLanes = 16;  // output channels per block (one AVX-512 register)
constexpr int kBlockW = 8;  // output columns summed together

// The columns j in [lo, hi) of a block starting at column ox0 whose kernel column kx reads inside the
// input (oneDNN skips the taps that fall in the padding; adding their zeros would change no bit either).
inline void valid_columns(const BlockConvArgs& a, int64_t ox0, int64_t cols, int64_t kx, int64_t& lo, int64_t& hi) {
  lo = 0;
  while (lo < cols && (ox0 + lo) * a.sw - a.pw + kx < 0) ++lo;
  hi = cols;
  while (hi > lo && (ox0 + hi - 1) * a.sw - a.pw + kx >= a.w) --hi;
}

// The end of the partial sum of input channels starting at c0: c0 + a.chunk, or a.cin for the last, shorter one.
inline int64_t chunk_end(const BlockConvArgs& a, int64_t c0) { return a.cin - c0 < a.chunk ? a.cin : c0 + a.chunk; }

// The weights of output block ob (channels [16 * ob, 16 * ob + 16)) at kernel row 0, column 0, input channel 0:
// blocks come in groups of a.group, each (row, column, channel) of a group a.group * 16 floats, block ob at
// lane offset 16 * (ob % a.group) (see block_conv.h).
inline const float* block_weights(const BlockConvArgs& a, int64_t ob) {
  return a.weight + (ob / a.group) * a.kh * a.kw * a.cin * a.group * kLanes + (ob % a.group) * kLanes;
}

// Output row oy of sample i for output channels [16 * ob, 16 * ob + 16): the portable loop.
void output_row(const BlockConvArgs& a, int64_t i, int64_t ob, int64_t oy) {
  const float* wb = block_weights(a, ob);
  for (int64_t ox0 = 0; ox0 < a.ow; ox0 += kBlockW) {
    const int64_t cols = a.ow - ox0 < kBlockW ? a.ow - ox0 : kBlockW;
    float total[kBlockW][kLanes] = {};
    for (int64_t c0 = 0; c0 < a.cin; c0 += a.chunk) {
      const int64_t c1 = chunk_end(a, c0);
      float part[kBlockW][kLanes] = {};
      if (a.bias_first && c0 == 0 && a.bias) {
        for (int64_t j = 0; j < cols; ++j)
          for (int l = 0; l < kLanes; ++l) part[j][l] = a.bias[ob * kLanes + l];
      }
      for (int64_t ky = 0; ky < a.kh; ++ky) {
        const int64_t iy = oy * a.sh - a.ph + ky;
        if (iy < 0 || iy >= a.h) continue;
        for (int64_t kx = 0; kx < a.kw; ++kx) {
          int64_t lo, hi;
          valid_columns(a, ox0, cols, kx, lo, hi);
          for (int64_t c = c0; c < c1; ++c) {
            const float* wv = wb + ((ky * a.kw + kx) * a.cin + c) * a.group * kLanes;
            const float* xr = a.x + ((i * a.cin + c) * a.h + iy) * a.w;
            for (int64_t j = lo; j < hi; ++j) {
              const float v = xr[(ox0 + j) * a.sw - a.pw + kx];
              for (int l = 0; l < kLanes; ++l) part[j][l] = std::fma(v, wv[l], part[j][l]);
            }
          }
        }
      }
      for (int64_t j = 0; j < cols; ++j)
        for (int l = 0; l < kLanes; ++l) {
          if (c0 > 0) {
            total[j][l] = part[j][l] + total[j][l];
          } else {
            total[j][l] = (!a.bias_first && a.bias) ? part[j][l] + a.bias[ob * kLanes + l] : part[j][l];
          }
        }
    }
    for (int l = 0; l < kLanes; ++l) {
      float* o = a.out + ((i * a.cout + ob * kLanes + l) * a.oh + oy) * a.ow + ox0;
      for (int64_t j = 0; j < cols; ++j) o[j] = total[j][l];
    }
  }
}

#ifdef DCSIM_X86
// output_row with AVX-512 for OB blocks of 16 output channels [16 * ob, 16 * (ob + OB)) at once: each
// column's 16 channels in one register, W columns at a time (OB * W independent sums in flight, the same
// fused multiply-adds in the same order as the portable loop).
template <int OB, int W>
__attribute__((target("avx512f"))) void output_rows_avx512(const BlockConvArgs& a, int64_t i, int64_t ob, int64_t oy) {
  const int64_t row = a.group * kLanes;  // floats per (kernel row, column, input channel); OB divides a.group
  const float* wb = block_weights(a, ob);
  const int64_t plane = a.h * a.w;
  for (int64_t ox0 = 0; ox0 < a.ow; ox0 += W) {
    const int64_t cols = a.ow - ox0 < W ? a.ow - ox0 : W;
    __m512 total[OB][W];
#pragma GCC unroll 4
    for (int b = 0; b < OB; ++b) {
#pragma GCC unroll 16
      for (int j = 0; j < W; ++j) total[b][j] = _mm512_setzero_ps();  // (cin >= 1: set by the first chunk)
    }
    for (int64_t c0 = 0; c0 < a.cin; c0 += a.chunk) {
      const int64_t len = chunk_end(a, c0) - c0;
      __m512 part[OB][W];
#pragma GCC unroll 4
      for (int b = 0; b < OB; ++b) {
        const __m512 start = (a.bias_first && c0 == 0 && a.bias) ? _mm512_loadu_ps(a.bias + (ob + b) * kLanes)
                                                                  : _mm512_setzero_ps();
#pragma GCC unroll 16
        for (int j = 0; j < W; ++j) part[b][j] = start;
      }
      for (int64_t ky = 0; ky < a.kh; ++ky) {
        const int64_t iy = oy * a.sh - a.ph + ky;
        if (iy < 0 || iy >= a.h) continue;
        for (int64_t kx = 0; kx < a.kw; ++kx) {
          int64_t lo, hi;
          valid_columns(a, ox0, cols, kx, lo, hi);
          // input row iy of channel c0, and the column output column ox0 reads at kx: only columns
          // col + j * sw with j in [lo, hi) are read, all inside the row
          const float* xr = a.x + ((i * a.cin + c0) * a.h + iy) * a.w;
          const int64_t col = ox0 * a.sw - a.pw + kx;
          const float* wv = wb + ((ky * a.kw + kx) * a.cin + c0) * row;
          if (lo == 0 && hi == W) {  // every column inside the input: no test per column
            const float* xc = xr + col;
            for (int64_t c = 0; c < len; ++c, xc += plane, wv += row) {
              __m512 wr[OB];
#pragma GCC unroll 4
              for (int b = 0; b < OB; ++b) wr[b] = _mm512_loadu_ps(wv + b * kLanes);
#pragma GCC unroll 16
              for (int j = 0; j < W; ++j) {
                const __m512 v = _mm512_set1_ps(xc[j * a.sw]);
#pragma GCC unroll 4
                for (int b = 0; b < OB; ++b) part[b][j] = _mm512_fmadd_ps(v, wr[b], part[b][j]);
              }
            }
          } else {
            for (int64_t c = 0; c < len; ++c, xr += plane, wv += row) {
              __m512 wr[OB];
#pragma GCC unroll 4
              for (int b = 0; b < OB; ++b) wr[b] = _mm512_loadu_ps(wv + b * kLanes);
#pragma GCC unroll 16
              for (int j = 0; j < W; ++j) {
                if (j >= lo && j < hi) {
                  const __m512 v = _mm512_set1_ps(xr[col + j * a.sw]);
#pragma GCC unroll 4
                  for (int b = 0; b < OB; ++b) part[b][j] = _mm512_fmadd_ps(v, wr[b], part[b][j]);
                }
              }
            }
          }
        }
      }
#pragma GCC unroll 4
      for (int b = 0; b < OB; ++b) {
        const __m512 bias = (!a.bias_first && c0 == 0 && a.bias) ? _mm512_loadu_ps(a.bias + (ob + b) * kLanes)
                                                                 : _mm512_setzero_ps();
#pragma GCC unroll 16
        for (int j = 0; j < W; ++j) {
          if (c0 > 0) {
            total[b][j] = _mm512_add_ps(part[b][j], total[b][j]);
          } else {
            total[b][j] = (!a.bias_first && a.bias) ? _mm512_add_ps(part[b][j], bias) : part[b][j];
          }
        }
      }
    }
    for (int b = 0; b < OB; ++b) {
      alignas(64) float lanes[W][kLanes];
#pragma GCC unroll 16
      for (int j = 0; j < W; ++j) _mm512_store_ps(lanes[j], total[b][j]);
      for (int l = 0; l < kLanes; ++l) {
        float* o = a.out + ((i * a.cout + (ob + b) * kLanes + l) * a.oh + oy) * a.ow + ox0;
        for (int64_t j = 0; j < cols; ++j) o[j] = lanes[j][l];
      }
    }
  }
}

// The sparse loop (see block_conv.h), per sample: the input transposed to [h * w][groups * 16] with a mask of
// its nonzero channels per pixel and group of 16; per chunk of the sum, every output's list of the taps whose
// input is nonzero, in the order of the sum (rows, columns, channels: weight offsets and input values); then, for
// OB blocks of 16 output channels at a time, each output's partial over its list, added to its running total.
template <typename T>
using Buffer = std::unique_ptr<T[]>;  // uninitialised: every entry read is written first

struct SparseWork {
  int64_t groups = 0, plane = 0, opix = 0;
  Buffer<uint16_t> mask;  // [groups][plane]: bit c set where channel 16 * g + c is nonzero
  Buffer<float> xt;       // [plane][groups * 16] the sample's input, channels last, zero-padded to groups * 16
  Buffer<int32_t> start;  // [opix + 1]: output p's list is [start[p], start[p + 1])
  Buffer<int32_t> offs;   // per listed tap: (kernel row, column, input channel) * 16, its weights' row / a.group
  Buffer<float> vals;     // per listed tap: its input
  Buffer<float> total;    // [cout / 16][opix][16] running totals
};

void sparse_transpose(const BlockConvArgs& a, int64_t i, SparseWork& s) {
  for (int64_t p = 0; p < s.plane; ++p) {
    float* t = s.xt.get() + p * s.groups * kLanes;
    for (int64_t g = 0; g < s.groups; ++g) {
      uint32_t m = 0;
      for (int c = 0; c < kLanes; ++c) {
        const int64_t cc = g * kLanes + c;
        const float v = cc < a.cin ? a.x[(i * a.cin + cc) * s.plane + p] : 0.f;
        t[g * kLanes + c] = v;
        if (v != 0.f) m |= 1u << c;
      }
      s.mask[g * s.plane + p] = static_cast<uint16_t>(m);
    }
  }
}

__attribute__((target("avx512f,popcnt"))) void sparse_lists(const BlockConvArgs& a, int64_t c0, SparseWork& s) {
  const __m512i lanes = _mm512_set_epi32(240, 224, 208, 192, 176, 160, 144, 128, 112, 96, 80, 64, 48, 32, 16, 0);
  int32_t len = 0;
  for (int64_t oy = 0; oy < a.oh; ++oy) {
    for (int64_t ox = 0; ox < a.ow; ++ox) {
      s.start[oy * a.ow + ox] = len;
      for (int64_t ky = 0; ky < a.kh; ++ky) {
        const int64_t iy = oy * a.sh - a.ph + ky;
        if (iy < 0 || iy >= a.h) continue;
        for (int64_t kx = 0; kx < a.kw; ++kx) {
          const int64_t ix = ox * a.sw - a.pw + kx;
          if (ix < 0 || ix >= a.w) continue;  // a tap in the padding: skipped, as oneDNN skips it
          const uint16_t* mp = s.mask.get() + iy * a.w + ix;
          const float* xv = s.xt.get() + (iy * a.w + ix) * s.groups * kLanes;
          for (int64_t g = c0 / kLanes; g * kLanes < chunk_end(a, c0); ++g) {
            const __mmask16 m = mp[g * s.plane];
            const int32_t base = static_cast<int32_t>(((ky * a.kw + kx) * a.cin + g * kLanes) * kLanes);
            // compressed in registers, then stored whole (a compressing store is slow on some CPUs); the
            // lists have 16 spare entries for the tail
            _mm512_storeu_si512(s.offs.get() + len,
                                _mm512_maskz_compress_epi32(m, _mm512_add_epi32(lanes, _mm512_set1_epi32(base))));
            _mm512_storeu_ps(s.vals.get() + len, _mm512_maskz_compress_ps(m, _mm512_loadu_ps(xv + g * kLanes)));
            len += _mm_popcnt_u32(m);
          }
        }
      }
    }
  }
  s.start[s.opix] = len;
}

// Blocks [ob, ob + OB) of output channels: each output's partial over its list of chunk c0, into the totals.
// next_c0, next_ob: the chunk and blocks of the call that follows (next_ob < 0: none), whose weights it fetches
// ahead, a share after each output, where a sample has at least kFetchOutputs outputs: its reads follow the spikes,
// which the hardware prefetcher cannot follow, and a one-row call reads each weight once, from memory where the
// layers between two calls evicted it (0.76 of the time of a 384-channel conv on 7x7 with evicted weights); on
// fewer outputs (3x3) the fetches crowd the call's own reads (1.04-1.66 of the time).
constexpr int64_t kFetchOutputs = 16;
// OB: a.group, the blocks whose weights lie side by side (ob a multiple of it).
template <int OB>
__attribute__((target("avx512f"))) void sparse_sums(const BlockConvArgs& a, int64_t c0, int64_t ob, int64_t next_c0,
                                                    int64_t next_ob, SparseWork& s) {
  const float* wb = block_weights(a, ob);
  const int64_t taps = a.kh * a.kw;
  const bool fetch = next_ob >= 0 && s.opix >= kFetchOutputs;
  const int64_t ahead_len = fetch ? chunk_end(a, next_c0) - next_c0 : 0;  // channels of the chunk fetched ahead
  const int64_t lines = OB * taps * ahead_len;  // 64-byte lines: OB per tap and channel, side by side
  const float* ahead = block_weights(a, next_ob < 0 ? 0 : next_ob) + next_c0 * OB * kLanes;
  int64_t fetched = 0, ft = 0, fc = 0, fb = 0;  // lines fetched; the next one's tap, channel and block
  for (int64_t p = 0; p < s.opix; ++p) {
    for (const int64_t until = lines * (p + 1) / s.opix; fetched < until; ++fetched) {
      _mm_prefetch(reinterpret_cast<const char*>(ahead + ((ft * a.cin + fc) * OB + fb) * kLanes), _MM_HINT_T0);
      if (++fb == OB) {
        fb = 0;
        if (++fc == ahead_len) fc = 0, ++ft;
      }
    }
    __m512 part[OB];
#pragma GCC unroll 4
    for (int b = 0; b < OB; ++b) {
      part[b] = (a.bias_first && c0 == 0 && a.bias) ? _mm512_loadu_ps(a.bias + (ob + b) * kLanes) : _mm512_setzero_ps();
    }
    for (int32_t k = s.start[p]; k < s.start[p + 1]; ++k) {
      const __m512 v = _mm512_set1_ps(s.vals[k]);
      const float* wv = wb + s.offs[k] * OB;
#pragma GCC unroll 4
      for (int b = 0; b < OB; ++b) part[b] = _mm512_fmadd_ps(v, _mm512_loadu_ps(wv + b * kLanes), part[b]);
    }
#pragma GCC unroll 4
    for (int b = 0; b < OB; ++b) {
      float* t = s.total.get() + ((ob + b) * s.opix + p) * kLanes;
      __m512 r = part[b];
      if (c0 > 0) {
        r = _mm512_add_ps(part[b], _mm512_loadu_ps(t));
      } else if (!a.bias_first && a.bias) {
        r = _mm512_add_ps(part[b], _mm512_loadu_ps(a.bias + (ob + b) * kLanes));
      }
      _mm512_storeu_ps(t, r);
    }
  }
}

// Whether the sparse loop applies to this call (see block_conv.h): the fraction of nonzero inputs at most
// a.max_density, no -0 in a bias that starts the sums, weight offsets and list positions within 32 bits.
bool sparse_applies(const BlockConvArgs& a) {
  const int64_t listed = a.oh * a.ow * a.kh * a.kw * (a.chunk + kLanes);  // a chunk's lists, at most
  if (a.max_density <= 0 || a.kh * a.kw * a.cin * kLanes >= (int64_t{1} << 31) || listed >= (int64_t{1} << 31)) {
    return false;
  }
  if (a.bias_first && a.bias) {
    for (int64_t o = 0; o < a.cout; ++o)
      if (a.bias[o] == 0.f && std::signbit(a.bias[o])) return false;
  }
  const int64_t size = a.n * a.cin * a.h * a.w;
  int64_t nonzero = 0;
  for (int64_t k = 0; k < size; ++k) nonzero += a.x[k] != 0.f;
  return static_cast<double>(nonzero) <= a.max_density * static_cast<double>(size);
}

void block_conv_sparse(const BlockConvArgs& a, int threads) {
  SparseWork s;
  s.groups = (a.cin + kLanes - 1) / kLanes;
  s.plane = a.h * a.w;
  s.opix = a.oh * a.ow;
  // taps listed per output, at most
  const int64_t per_output = a.kh * a.kw * ((a.chunk + kLanes - 1) / kLanes) * kLanes;
  s.mask.reset(new uint16_t[s.groups * s.plane]);
  s.xt.reset(new float[s.groups * s.plane * kLanes]);
  s.start.reset(new int32_t[s.opix + 1]);
  s.offs.reset(new int32_t[s.opix * per_output + kLanes]);
  s.vals.reset(new float[s.opix * per_output + kLanes]);
  s.total.reset(new float[a.cout * s.opix]);
  const int64_t blocks = a.cout / kLanes;
  const int64_t group = a.group;
  void (*sums)(const BlockConvArgs&, int64_t, int64_t, int64_t, int64_t, SparseWork&) =
      group == 4 ? sparse_sums<4> : group == 2 ? sparse_sums<2> : sparse_sums<1>;
  for (int64_t i = 0; i < a.n; ++i) {
    sparse_transpose(a, i, s);
    for (int64_t c0 = 0; c0 < a.cin; c0 += a.chunk) {
      sparse_lists(a, c0, s);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
      for (int64_t ob = 0; ob < blocks; ob += group) {
        const bool last = ob + group >= blocks;  // the next call's blocks: the next group, or the next chunk's first
        const int64_t next_c0 = last ? c0 + a.chunk : c0;
        sums(a, c0, ob, next_c0, next_c0 < a.cin ? (last ? 0 : ob + group) : -1, s);
      }
    }
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int64_t o = 0; o < a.cout; ++o) {
      float* dst = a.out + (i * a.cout + o) * s.opix;
      const float* src = s.total.get() + (o / kLanes) * s.opix * kLanes + o % kLanes;
      for (int64_t p = 0; p < s.opix; ++p) dst[p] = src[p * kLanes];
    }
  }
}
#endif

}  // namespace

void block_conv_cpu(const BlockConvArgs& a, int threads, bool simd) {
  // per_call: blocks of 16 output channels one call of row computes (a divisor of a.group)
  void (*row)(const BlockConvArgs&, int64_t, int64_t, int64_t) = output_row;
  int64_t per_call = 1;
#ifdef DCSIM_X86
  if (simd && __builtin_cpu_supports("avx512f")) {
    if (sparse_applies(a)) return block_conv_sparse(a, threads);
    if (a.ow <= 4 && a.group == 4) {
      row = output_rows_avx512<4, 4>, per_call = 4;
    } else if (a.group % 2 == 0) {
      row = output_rows_avx512<2, 8>, per_call = 2;
    } else {
      row = output_rows_avx512<1, 16>;
    }
  }
#else
  (void)simd;
#endif
  const int64_t groups = a.cout / kLanes / per_call;
  const int64_t rows = a.n * groups * a.oh;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t r = 0; r < rows; ++r) row(a, r / (groups * a.oh), ((r / a.oh) % groups) * per_call, r % a.oh);
}

}  // namespace dcsim
