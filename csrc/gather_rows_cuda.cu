// CUDA twin of gather_rows.cpp. Grid: (destination rows, entries); 4-byte words where
// the row size allows it, bytes otherwise.
#include <cuda_runtime.h>

#include "cuda_check.h"
#include "gather_rows.h"

namespace dcsim {
namespace {

__global__ void gather_rows_kernel(GatherArgs a) {
  const int64_t r = blockIdx.x;
  const GatherEntry g = a.entries[blockIdx.y];
  const int64_t src_row = a.index[r];
  const uintptr_t align = reinterpret_cast<uintptr_t>(g.src) | reinterpret_cast<uintptr_t>(g.dst);
  if (g.row_bytes % 4 == 0 && align % 4 == 0) {
    const int64_t words = g.row_bytes / 4;
    const uint32_t* src = static_cast<const uint32_t*>(g.src) + src_row * words;
    uint32_t* dst = static_cast<uint32_t*>(g.dst) + r * words;
    for (int64_t w = threadIdx.x; w < words; w += blockDim.x) dst[w] = src[w];
  } else {
    const char* src = static_cast<const char*>(g.src) + src_row * g.row_bytes;
    char* dst = static_cast<char*>(g.dst) + r * g.row_bytes;
    for (int64_t b = threadIdx.x; b < g.row_bytes; b += blockDim.x) dst[b] = src[b];
  }
}

}  // namespace

void gather_rows_cuda(const GatherArgs& a, void* stream) {
  if (a.n_out == 0 || a.count == 0) return;
  const dim3 grid(static_cast<unsigned>(a.n_out), static_cast<unsigned>(a.count));
  gather_rows_kernel<<<grid, 256, 0, static_cast<cudaStream_t>(stream)>>>(a);
  check_launch("gather_rows");
}

}  // namespace dcsim
