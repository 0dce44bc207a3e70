// Kernel 9: a per-channel bias added in place to [rows, channels, plane] values (CPU), bit for bit torch's
// x.add_(bias.reshape(1, -1, 1, 1)): one float32 addition per element. For call lists (call_list.h): the bias the
// QFFS settle semantics add after a conv or linear on the steps the image drives (dcsim/sim/program.py).
#pragma once
#include <cstdint>

namespace dcsim {

struct BiasAddArgs {
  int64_t rows;        // N
  int64_t channels;    // C
  int64_t plane;       // floats per channel of a row (H * W; 1 after a linear)
  float* x;            // [rows, channels, plane], contiguous, updated in place
  const float* bias;   // [channels]
};

void bias_add_cpu(const BiasAddArgs& a, int threads);

}  // namespace dcsim
