// Kernel 2: fused output step: accumulate S_t, score, argmax, exit decision.
#pragma once
#include <cstdint>

namespace dcsim {

struct OutputStepArgs {
  int64_t n;            // samples
  int64_t k;            // classes
  const float* x;       // [n, k] output-layer current of this step
  float* sums;          // [n, k] running sums S_t, updated in place
  int32_t* steps;       // [n] steps run so far, incremented in place
  int32_t max_steps;    // T: a sample exits at the latest when steps reaches T
  int readout;          // kMaxSoftmax, kEntropy or kMargin
  float scale;          // 1 / (alpha * tau)
  float threshold;      // exit when score > threshold (strictly)
  int64_t* pred;        // [n] argmax of S_t
  float* score;         // [n] stopping score in [0, 1]
  uint8_t* exited;      // [n] 1 if the sample stops at this step
};

void output_step_cpu(const OutputStepArgs& a, int threads);
#ifdef DCSIM_WITH_CUDA
void output_step_cuda(const OutputStepArgs& a, void* stream);
#endif

}  // namespace dcsim
