// Turns a failed kernel launch into a C++ exception (pybind11 raises it as RuntimeError).
#pragma once
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace dcsim {

inline void check_launch(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("dcsim CUDA kernel ") + kernel + ": " + cudaGetErrorString(err));
  }
}

}  // namespace dcsim
