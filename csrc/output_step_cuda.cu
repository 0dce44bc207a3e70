// CUDA twin of output_step.cpp: one thread per sample (k is small: the class count).
#include <cuda_runtime.h>

#include "cuda_check.h"
#include "dcsim_math.h"
#include "output_step.h"

namespace dcsim {
namespace {

__global__ void output_step_kernel(OutputStepArgs a) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= a.n) return;
  float* s = a.sums + i * a.k;
  const float* x = a.x + i * a.k;
  for (int64_t j = 0; j < a.k; ++j) s[j] = s[j] + x[j];
  const float score = readout_score(a.readout, s, a.k, a.scale, a.pred + i);
  const int32_t steps = ++a.steps[i];
  a.score[i] = score;
  a.exited[i] = (score > a.threshold || steps >= a.max_steps) ? 1 : 0;
}

}  // namespace

void output_step_cuda(const OutputStepArgs& a, void* stream) {
  if (a.n == 0) return;
  constexpr int kThreads = 128;
  const unsigned blocks = static_cast<unsigned>((a.n + kThreads - 1) / kThreads);
  output_step_kernel<<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(a);
  check_launch("output_step");
}

}  // namespace dcsim
