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
  output_sample(a.x + i * a.k, a.sums + i * a.k, a.k, a.readout, a.scale, a.threshold, a.max_steps, a.steps + i,
                a.pred + i, a.score + i, a.exited + i);
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
