// 2x2 average pooling (kernel 5), see avg_pool.h.
#include "avg_pool.h"

#include <algorithm>

#if defined(__x86_64__) && defined(__GNUC__)
#define DCSIM_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DCSIM_SIMD_CLONES
#endif

namespace dcsim {
namespace {

// One output row from input rows a and b (2 * ow floats each are read). The sum starts at +0, as torch's
// does, so a window of four -0.0 gives +0.0; the compiler may not drop the + 0 (no -ffast-math).
DCSIM_SIMD_CLONES void pool_row(const float* __restrict a, const float* __restrict b, float* __restrict out,
                                int64_t ow) {
  for (int64_t j = 0; j < ow; ++j) {
    float s = 0.0f;
    s += a[2 * j];
    s += a[2 * j + 1];
    s += b[2 * j];
    s += b[2 * j + 1];
    out[j] = s / 4.0f;
  }
}

// The global pool's sum (kernel 7, see avg_pool.h): ATen's cascade over "items" of L floats summed lane by lane (L = 8:
// its vectors; L = 1: single floats). Every sum below starts at +0 and adds in ATen's order; no -ffast-math, so the
// compiler keeps the order and vectorises only across the independent lanes.
constexpr int kSumLanes = 8;  // floats per ATen vector in its float sum (the AVX2 kernel, which AVX-512 CPUs also run)
constexpr int kIlp = 4;       // interleaved partial sums
constexpr int kLevels = 4;    // cascade levels

// ATen's utils::CeilLog2: 1 for x <= 2, else the bits of x - 1.
int64_t ceil_log2(int64_t x) {
  if (x <= 2) return 1;
  int64_t bits = 0;
  for (uint64_t v = static_cast<uint64_t>(x - 1); v; v >>= 1) ++bits;
  return bits;
}

// ATen's row_sum: the items [0, n) of x (item i: floats [i * L, i * L + L)) as a (-1, 4) array whose four columns
// are summed by its multi_row_sum (a cascade that moves a level up every 16 or more rows), then the items past the
// last whole row added to column 0, then columns 1-3 added to it. Result: L floats into out.
template <int L>
DCSIM_SIMD_CLONES void cascade_row_sum(const float* __restrict x, int64_t n, float* __restrict out) {
  const int64_t rows = n / kIlp;
  const int64_t power = std::max<int64_t>(4, ceil_log2(rows) / kLevels);
  const int64_t step = int64_t{1} << power, mask = step - 1;
  float acc[kLevels][kIlp][L] = {};
  const auto add_row = [&](int64_t i) {
    for (int k = 0; k < kIlp; ++k)
      for (int l = 0; l < L; ++l) acc[0][k][l] += x[(i * kIlp + k) * L + l];
  };
  int64_t i = 0;
  while (i + step <= rows) {
    for (int64_t j = 0; j < step; ++j, ++i) add_row(i);
    for (int64_t j = 1; j < kLevels; ++j) {
      for (int k = 0; k < kIlp; ++k)
        for (int l = 0; l < L; ++l) {
          acc[j][k][l] += acc[j - 1][k][l];
          acc[j - 1][k][l] = 0.0f;
        }
      if ((i & (mask << (j * power))) != 0) break;
    }
  }
  for (; i < rows; ++i) add_row(i);
  for (int64_t j = 1; j < kLevels; ++j)
    for (int k = 0; k < kIlp; ++k)
      for (int l = 0; l < L; ++l) acc[0][k][l] += acc[j][k][l];
  for (int64_t item = rows * kIlp; item < n; ++item)
    for (int l = 0; l < L; ++l) acc[0][0][l] += x[item * L + l];
  for (int k = 1; k < kIlp; ++k)
    for (int l = 0; l < L; ++l) acc[0][0][l] += acc[0][k][l];
  for (int l = 0; l < L; ++l) out[l] = acc[0][0][l];
}

// cascade_row_sum<8> for fewer than 64 items, where no cascade step runs (the upper levels stay +0, and adding +0
// to a sum from +0 changes no bit): the four partials.
inline void short_row_sum(const float* __restrict x, int64_t n, float* __restrict out) {
  float acc[kIlp][kSumLanes] = {};
  const int64_t rows = n / kIlp;
  for (int64_t i = 0; i < rows; ++i)
    for (int k = 0; k < kIlp; ++k)
      for (int l = 0; l < kSumLanes; ++l) acc[k][l] += x[(i * kIlp + k) * kSumLanes + l];
  for (int64_t item = rows * kIlp; item < n; ++item)
    for (int l = 0; l < kSumLanes; ++l) acc[0][l] += x[item * kSumLanes + l];
  for (int k = 1; k < kIlp; ++k)
    for (int l = 0; l < kSumLanes; ++l) acc[0][l] += acc[k][l];
  for (int l = 0; l < kSumLanes; ++l) out[l] = acc[0][l];
}

constexpr int64_t kPlanesAtOnce = 8;  // planes whose final sums run side by side (each a chain of dependent adds)

// Planes [p0, p0 + count) of a, count <= kPlanesAtOnce: each plane's mean, as torch's sum of it (into an output
// filled with 0) divided by its size.
DCSIM_SIMD_CLONES void plane_means(const GlobalPoolArgs& a, int64_t p0, int64_t count) {
  float total[kPlanesAtOnce] = {};
  if (a.size >= kSumLanes) {  // ATen's vectorized_inner_sum: the whole vectors' lanes, the rest from 0, the lanes
    const int64_t whole = a.size / kSumLanes;
    float lanes[kPlanesAtOnce][kSumLanes];
    for (int64_t b = 0; b < count; ++b) {
      const float* x = a.x + (p0 + b) * a.size;
      if (whole < 16 * kIlp) {
        short_row_sum(x, whole, lanes[b]);
      } else {
        cascade_row_sum<kSumLanes>(x, whole, lanes[b]);
      }
      for (int64_t k = whole * kSumLanes; k < a.size; ++k) total[b] += x[k];
    }
    for (int l = 0; l < kSumLanes; ++l)
      for (int64_t b = 0; b < kPlanesAtOnce; ++b) total[b] += b < count ? lanes[b][l] : 0.0f;
  } else {  // its scalar_inner_sum
    for (int64_t b = 0; b < count; ++b) cascade_row_sum<1>(a.x + (p0 + b) * a.size, a.size, &total[b]);
  }
  const float size = static_cast<float>(a.size);
  for (int64_t b = 0; b < count; ++b) a.out[p0 + b] = (0.0f + total[b]) / size;
}

}  // namespace

void global_avg_pool_cpu(const GlobalPoolArgs& a, int threads) {
  const int64_t blocks = (a.planes + kPlanesAtOnce - 1) / kPlanesAtOnce;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t p0 = blk * kPlanesAtOnce;
    plane_means(a, p0, a.planes - p0 < kPlanesAtOnce ? a.planes - p0 : kPlanesAtOnce);
  }
}

void avg_pool_2x2_cpu(const AvgPoolArgs& a, int threads) {
  const int64_t oh = a.h / 2, ow = a.w / 2, rows = a.planes * oh;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t p = r / oh, i = r % oh;
    const float* top = a.x + (p * a.h + 2 * i) * a.w;
    pool_row(top, top + a.w, a.out + r * ow, ow);
  }
}

}  // namespace dcsim
