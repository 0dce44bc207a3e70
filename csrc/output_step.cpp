// CPU twin of output_step_cuda.cu: one sample per iteration.
#include "output_step.h"

#include "dcsim_math.h"

namespace dcsim {

void output_step_cpu(const OutputStepArgs& a, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t i = 0; i < a.n; ++i) {
    float* s = a.sums + i * a.k;
    const float* x = a.x + i * a.k;
    for (int64_t j = 0; j < a.k; ++j) s[j] = s[j] + x[j];
    const float score = readout_score(a.readout, s, a.k, a.scale, a.pred + i);
    const int32_t steps = ++a.steps[i];
    a.score[i] = score;
    a.exited[i] = (score > a.threshold || steps >= a.max_steps) ? 1 : 0;
  }
}

}  // namespace dcsim
