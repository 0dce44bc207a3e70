// Kernel 6: dense convolution (CPU) that sums every output in the order of oneDNN's AVX-512 float32
// kernels, so that it gives their bits without their per-call cost. PyTorch's CPU convs run oneDNN
// through layers that cost about 40 us per call whatever its size (primitive look-up, memory
// objects, three reorders); at one row per call (batch 1, one step) that is half a conv's time.
// Order: input channels in chunks (the last one the rest, where chunk does not divide cin: oneDNN sums 24
// channels as 16 and 8); each chunk's partial sum over the window (rows, columns, then
// the chunk's channels, each a fused multiply-add) starts at 0, or at the bias where bias_first;
// the first chunk's partial plus the bias (unless bias_first) is the running total, each later
// partial is added to it. oneDNN's direct kernel (jit:avx512_core) sums chunks of 16 channels
// with the bias added to the first; its 1x1 kernel (jit_1x1:avx512_core) one chunk that starts at
// the bias. Callers check the bits against the conv they replace (dcsim/sim/ops.py).
// The sparse loop (max_density > 0, AVX-512) gives the same bits with the taps of zero inputs left out: a
// partial starts at +0 (or the bias) and fma(w, 0, s) == s for every s but -0, which a sum from +0 never
// reaches; so it needs finite weights (inf * 0 is NaN) and, where bias_first, no -0 in the bias (else the
// dense loop runs). Each output's nonzero taps are listed once per chunk and summed for every output channel
// block: the work follows the inputs that spiked (10-25% in trained networks) instead of all of them.
#pragma once
#include <cstdint>

namespace dcsim {

struct BlockConvArgs {
  int64_t n, cin, h, w;        // input [n, cin, h, w]
  int64_t cout, oh, ow;        // output [n, cout, oh, ow]; cout a multiple of 16
  int64_t kh, kw;              // kernel size
  int64_t sh, sw, ph, pw;      // stride and zero padding
  int64_t chunk;               // input channels per partial sum (the last partial: the rest)
  bool bias_first;             // the bias starts the first partial sum (else: added to it)
  double max_density;          // the sparse loop where at most this fraction of x is nonzero (0: never)
  int64_t group;               // output blocks of 16 channels side by side in weight: 4, 2 or 1, dividing cout / 16
  const float* x;              // [n, cin, h, w] input
  const float* weight;         // [cout / (16 * group), kh, kw, cin, group, 16] weights, repacked
  const float* bias;           // [cout] or nullptr
  float* out;                  // [n, cout, oh, ow] output, fully written
};

// simd: use the AVX-512 loop where the CPU has it (false: the portable loop; both give the same bits).
void block_conv_cpu(const BlockConvArgs& a, int threads, bool simd);

}  // namespace dcsim
