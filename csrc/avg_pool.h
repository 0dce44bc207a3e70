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

// Kernel 7: global average pooling of NCHW planes (CPU), bit for bit torch's CPU adaptive_avg_pool2d to 1x1 of a
// contiguous input, which is mean over the plane: ATen's cascade sum (SumKernel.cpp) with its 8-float vectors (its
// sum kernel for AVX2 and AVX-512 CPUs), then a float32 division by the plane's size. A plane of 8 floats or more:
// its whole vectors summed lane by lane with four interleaved partial sums, cascaded every 16 vectors per partial,
// the partials added, then the floats past the last whole vector summed from 0, then the 8 lanes in order; fewer
// than 8: the same interleaving on single floats. Its own 10 us a call where torch's takes 10-40 us (most of it the
// call's way through torch's reduction, cold in a network's step). Callers check the bits against torch's on each
// shape before they use it (dcsim/sim/engine.py).
struct GlobalPoolArgs {
  int64_t planes;    // N * C
  int64_t size;      // floats per plane (H * W), at least 1
  const float* x;    // [planes, size], contiguous
  float* out;        // [planes], fully written
};

void global_avg_pool_cpu(const GlobalPoolArgs& a, int threads);

}  // namespace dcsim
