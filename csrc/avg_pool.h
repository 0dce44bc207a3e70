// Kernel 5: 2x2, stride-2 average pooling of NCHW planes (CPU), bit for bit torch's CPU avg_pool2d:
// each output is (((0 + x00) + x01) + x10) + x11, divided by 4, in that order, in float32. torch's kernel for
// the NCHW layout is several times slower; this one reads each input once. A trailing odd row or column is
// dropped, as torch's floor mode drops it. No CUDA twin: on a GPU torch's pooling is fast.
#pragma once
#include <cstdint>

namespace dcsim {

struct AvgPoolArgs {
  int64_t planes;    // N * C
  int64_t h, w;      // input plane size (rows, columns)
  const float* x;    // [planes, h, w], contiguous
  float* out;        // [planes, h / 2, w / 2], contiguous, fully written
};

void avg_pool_2x2_cpu(const AvgPoolArgs& a, int threads);

}  // namespace dcsim
