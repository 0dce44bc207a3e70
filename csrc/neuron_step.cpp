// CPU twin of neuron_step_cuda.cu: one pass over [n, m], per-sample spike counts.
#include "neuron_step.h"

#include <cstdlib>

#include "dcsim_math.h"

namespace dcsim {

void neuron_step_cpu(const NeuronStepArgs& a, int threads) {
  int32_t unused_z = 0;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t i = 0; i < a.n; ++i) {
    const int64_t base = i * a.m;
    int64_t count = 0;
    for (int64_t j = base; j < base + a.m; ++j) {
      const float x = a.x2 ? a.x[j] + a.x2[j] : a.x[j];
      int32_t zloc = a.z ? a.z[j] : unused_z;
      const int spike = neuron_update(a.method, a.u[j], zloc, x, a.th, a.zmax);
      if (a.z) a.z[j] = zloc;
      a.out[j] = static_cast<float>(spike) * a.th;
      count += spike != 0;
    }
    a.counts[i] += count;
  }
}

}  // namespace dcsim
