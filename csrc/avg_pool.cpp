// 2x2 average pooling (kernel 5), see avg_pool.h.
#include "avg_pool.h"

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

}  // namespace

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
