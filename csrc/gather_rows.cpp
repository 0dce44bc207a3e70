// CPU twin of gather_rows_cuda.cu.
#include "gather_rows.h"

#include <cstring>

namespace dcsim {

void gather_rows_cpu(const GatherArgs& a, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t r = 0; r < a.n_out; ++r) {
    const int64_t src_row = a.index[r];
    for (int e = 0; e < a.count; ++e) {
      const GatherEntry& g = a.entries[e];
      if (g.row_bytes == 0 || (g.src == g.dst && src_row == r)) continue;  // empty rows, or a row in place
      // in place, src_row >= n_out: a row that no destination row overlaps
      std::memcpy(static_cast<char*>(g.dst) + r * g.row_bytes,
                  static_cast<const char*>(g.src) + src_row * g.row_bytes, g.row_bytes);
    }
  }
}

}  // namespace dcsim
