// CPU twin of output_step_cuda.cu: one sample per iteration.
#include "output_step.h"

#include "dcsim_math.h"

namespace dcsim {

void output_step_cpu(const OutputStepArgs& a, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t i = 0; i < a.n; ++i) {
    output_sample(a.x + i * a.k, a.sums + i * a.k, a.k, a.readout, a.scale, a.threshold, a.max_steps, a.steps + i,
                  a.pred + i, a.score + i, a.exited + i);
  }
}

}  // namespace dcsim
