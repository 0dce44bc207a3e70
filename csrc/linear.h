// Kernel 8: a fully connected layer (CPU) through a BLAS sgemm given as a function pointer, for call lists
// (call_list.h). With the sgemm torch's CPU linear calls (MKL's, in the PyPI build), the same bits as torch: torch's
// linear of [rows, in] by [out, in] with a bias copies the bias into every row and calls sgemm with beta 1; without
// one, with beta 0; either way column-major ("t", "n", out, rows, in). Callers check the bits against torch's on
// each shape before they use it (dcsim/sim/engine.py), since which gemm torch calls depends on its build.
#pragma once
#include <cstdint>

namespace dcsim {

// The Fortran BLAS sgemm (LP64): C = alpha * op(A) op(B) + beta * C, column-major.
using SgemmFn = void (*)(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                         const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                         const float* beta, float* c, const int* ldc);

struct LinearArgs {
  int64_t rows;          // M: rows of x and out, at least 1
  int64_t in;            // K: features in, at least 1
  int64_t features;      // N: features out, at least 1
  const float* x;        // [rows, in], contiguous
  const float* weight;   // [features, in], contiguous
  const float* bias;     // [features], or nullptr
  float* out;            // [rows, features], contiguous, fully written
  SgemmFn sgemm;         // never nullptr
};

// False, and nothing written, where a size does not fit the BLAS's 32-bit integers.
bool linear_cpu(const LinearArgs& a);

}  // namespace dcsim
