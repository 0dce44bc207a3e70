// CUDA twin of neuron_step.cpp. Grid: (chunks of m, n); one thread per neuron,
// block-wide counts (spikes; synaptic operations with a fan-out map) reduced with warp shuffles
// and one atomic each per block.
#include <cuda_runtime.h>

#include "cuda_check.h"
#include "dcsim_math.h"
#include "neuron_step.h"

namespace dcsim {
namespace {

constexpr int kThreads = 256;

// Sum of v over the block (blockDim.x == kThreads), valid in thread 0. `scratch` holds kThreads / 32 values.
template <typename T>
__device__ T block_sum(T v, T* scratch) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    v = threadIdx.x < kThreads / 32 ? scratch[threadIdx.x] : T(0);
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  }
  return v;
}

__global__ void neuron_step_kernel(NeuronStepArgs a) {
  const int64_t i = blockIdx.y;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int fired = 0;
  long long ops = 0;
  if (j < a.m) {
    const int64_t e = i * a.m + j;
    const float x = a.x2 ? a.x[e] + a.x2[e] : a.x[e];
    float u = a.fresh ? a.u0 : a.u[e];
    int32_t z = a.z && !a.fresh ? a.z[e] : 0;
    const int spike = neuron_update(a.method, u, z, x, a.th, a.zmax);
    a.u[e] = u;
    if (a.z) a.z[e] = z;
    a.out[e] = static_cast<float>(spike) * a.th;
    fired = spike != 0;
    if (a.fanout && fired) ops = a.fanout[j];
  }
  // Block reductions of the spike count and the synaptic operations; one atomic each per block.
  __shared__ int warp_fired[kThreads / 32];
  __shared__ long long warp_ops[kThreads / 32];
  fired = block_sum(fired, warp_fired);
  if (threadIdx.x == 0 && fired != 0) {
    atomicAdd(reinterpret_cast<unsigned long long*>(a.counts + i), static_cast<unsigned long long>(fired));
  }
  if (a.fanout) {  // the same for every thread of the block
    ops = block_sum(ops, warp_ops);
    if (threadIdx.x == 0 && ops != 0) {
      atomicAdd(reinterpret_cast<unsigned long long*>(a.sops + i), static_cast<unsigned long long>(ops));
    }
  }
}

}  // namespace

void neuron_step_cuda(const NeuronStepArgs& a, void* stream) {
  if (a.n == 0 || a.m == 0) return;
  constexpr int64_t kMaxRows = 65535;  // gridDim.y limit: launch in row chunks
  for (int64_t r = 0; r < a.n; r += kMaxRows) {
    NeuronStepArgs c = a;
    const int64_t off = r * a.m;
    c.n = a.n - r < kMaxRows ? a.n - r : kMaxRows;
    c.x = a.x + off;
    c.x2 = a.x2 ? a.x2 + off : nullptr;
    c.u = a.u + off;
    c.z = a.z ? a.z + off : nullptr;
    c.out = a.out + off;
    c.counts = a.counts + r;
    c.sops = a.sops ? a.sops + r : nullptr;
    const dim3 grid(static_cast<unsigned>((a.m + kThreads - 1) / kThreads), static_cast<unsigned>(c.n));
    neuron_step_kernel<<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(c);
  }
  check_launch("neuron_step");
}

}  // namespace dcsim
