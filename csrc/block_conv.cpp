// Dense convolution in oneDNN's order (kernel 6), see block_conv.h.
#include "block_conv.h"

#include <cmath>

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

// Output row oy of sample i for output channels [16 * ob, 16 * ob + 16): the portable loop.
void output_row(const BlockConvArgs& a, int64_t i, int64_t ob, int64_t oy) {
  const float* wb = a.weight + ob * a.kh * a.kw * a.cin * kLanes;
  for (int64_t ox0 = 0; ox0 < a.ow; ox0 += kBlockW) {
    const int64_t cols = a.ow - ox0 < kBlockW ? a.ow - ox0 : kBlockW;
    float total[kBlockW][kLanes] = {};
    for (int64_t c0 = 0; c0 < a.cin; c0 += a.chunk) {
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
          for (int64_t c = c0; c < c0 + a.chunk; ++c) {
            const float* wv = wb + ((ky * a.kw + kx) * a.cin + c) * kLanes;
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
  const int64_t wstride = a.kh * a.kw * a.cin * kLanes;  // floats per block of 16 output channels
  const float* wb = a.weight + ob * wstride;
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
          const float* wv = wb + ((ky * a.kw + kx) * a.cin + c0) * kLanes;
          if (lo == 0 && hi == W) {  // every column inside the input: no test per column
            const float* xc = xr + col;
            for (int64_t c = 0; c < a.chunk; ++c, xc += plane, wv += kLanes) {
              __m512 wr[OB];
#pragma GCC unroll 4
              for (int b = 0; b < OB; ++b) wr[b] = _mm512_loadu_ps(wv + b * wstride);
#pragma GCC unroll 16
              for (int j = 0; j < W; ++j) {
                const __m512 v = _mm512_set1_ps(xc[j * a.sw]);
#pragma GCC unroll 4
                for (int b = 0; b < OB; ++b) part[b][j] = _mm512_fmadd_ps(v, wr[b], part[b][j]);
              }
            }
          } else {
            for (int64_t c = 0; c < a.chunk; ++c, xr += plane, wv += kLanes) {
              __m512 wr[OB];
#pragma GCC unroll 4
              for (int b = 0; b < OB; ++b) wr[b] = _mm512_loadu_ps(wv + b * wstride);
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
#endif

}  // namespace

void block_conv_cpu(const BlockConvArgs& a, int threads, bool simd) {
  // group: blocks of 16 output channels one call of row computes
  void (*row)(const BlockConvArgs&, int64_t, int64_t, int64_t) = output_row;
  int64_t group = 1;
#ifdef DCSIM_X86
  if (simd && __builtin_cpu_supports("avx512f")) {
    const int64_t blocks = a.cout / kLanes;
    if (a.ow <= 4 && blocks % 4 == 0) {
      row = output_rows_avx512<4, 4>, group = 4;
    } else if (a.ow <= 8 && blocks % 2 == 0) {
      row = output_rows_avx512<2, 8>, group = 2;
    } else if (blocks % 2 == 0) {
      row = output_rows_avx512<2, 8>, group = 2;
    } else {
      row = output_rows_avx512<1, 16>;
    }
  }
#else
  (void)simd;
#endif
  const int64_t groups = a.cout / kLanes / group;
  const int64_t rows = a.n * groups * a.oh;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t r = 0; r < rows; ++r) row(a, r / (groups * a.oh), ((r / a.oh) % groups) * group, r % a.oh);
}

}  // namespace dcsim
