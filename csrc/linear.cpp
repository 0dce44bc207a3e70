// Kernel 8: a fully connected layer through a BLAS sgemm, see linear.h.
#include "linear.h"

#include <algorithm>
#include <climits>

namespace dcsim {

bool linear_cpu(const LinearArgs& a) {
  if (a.rows > INT_MAX || a.in > INT_MAX || a.features > INT_MAX) return false;
  const int m = static_cast<int>(a.features), n = static_cast<int>(a.rows), k = static_cast<int>(a.in);
  const float alpha = 1.0f, beta = a.bias != nullptr ? 1.0f : 0.0f;
  if (a.bias != nullptr) {
    for (int64_t r = 0; r < a.rows; ++r) std::copy(a.bias, a.bias + a.features, a.out + r * a.features);
  }
  const char transa = 't', transb = 'n';
  a.sgemm(&transa, &transb, &m, &n, &k, &alpha, a.weight, &k, a.x, &k, &beta, a.out, &m);
  return true;
}

}  // namespace dcsim
