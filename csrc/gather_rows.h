// Kernel 3: compaction. Gathers the rows of many state tensors in one pass:
// dst_e[r, :] = src_e[index[r], :] for every entry e. On the CPU dst may also be src itself (in-place
// compaction into the first n_out rows): then each index[r] is r (skipped) or a distinct row >= n_out,
// so no row read is ever written.
#pragma once
#include <cstdint>

namespace dcsim {

struct GatherEntry {
  const void* src;    // [n_in, row_bytes] bytes
  void* dst;          // [n_out, row_bytes] bytes: src itself (CPU, see above) or not overlapping it
  int64_t row_bytes;  // bytes per sample row
};

constexpr int kMaxGatherEntries = 32;  // entries per launch (kernel parameter space)

struct GatherArgs {
  GatherEntry entries[kMaxGatherEntries];
  int count;              // entries used
  const int64_t* index;   // [n_out] source row of each destination row
  int64_t n_out;          // destination rows
};

void gather_rows_cpu(const GatherArgs& a, int threads);
#ifdef DCSIM_WITH_CUDA
void gather_rows_cuda(const GatherArgs& a, void* stream);
#endif

}  // namespace dcsim
