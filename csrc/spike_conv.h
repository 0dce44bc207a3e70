// Kernel 4: event-driven convolution of spike maps (CPU). A conv whose input is a spike layer
// sees mostly zeros (a few % of neurons fire per step), so each output position sums only the
// weight rows of the input channels that spiked in its window instead of every channel.
// Layouts are NHWC (channels_last), so a spike adds one contiguous weight row of Cout floats.
// No CUDA twin: on a GPU, dense cuDNN convs are faster at these sizes and keep graph shapes fixed.
#pragma once
#include <cstdint>

namespace dcsim {

struct SpikeConvArgs {
  int64_t n, h, w, cin;       // input [n, h, w, cin]
  int64_t oh, ow, cout;       // output [n, oh, ow, cout]
  int64_t kh, kw;             // kernel size
  int64_t sh, sw, ph, pw;     // stride and zero padding
  const float* x;             // [n, h, w, cin] input (spikes: mostly exact zeros)
  const float* weight;        // [kh, kw, cin, cout] weights, repacked
  const float* bias;          // [cout] or nullptr
  float* out;                 // [n, oh, ow, cout] output, fully written
};

// simd: use the AVX-512 loop where the CPU has it (false: the portable loop, e.g. to test it).
void spike_conv_cpu(const SpikeConvArgs& a, int threads, bool simd);

}  // namespace dcsim
