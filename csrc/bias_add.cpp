// Kernel 9: a per-channel bias added in place, see bias_add.h.
#include "bias_add.h"

namespace dcsim {

void bias_add_cpu(const BiasAddArgs& a, int threads) {
  const int64_t planes = a.rows * a.channels;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t p = 0; p < planes; ++p) {
    const float b = a.bias[p % a.channels];
    float* x = a.x + p * a.plane;
    for (int64_t i = 0; i < a.plane; ++i) x[i] += b;
  }
}

}  // namespace dcsim
