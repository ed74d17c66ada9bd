// Shared by the CPU (C++) and CUDA kernels: element-level maths lives in HOST_DEVICE inline
// functions so that the CPU tests exercise the same arithmetic the GPU runs.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define VDEBLUR_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define VDEBLUR_HOST_DEVICE inline
#endif

namespace vdeblur {

// Element types a kernel may be instantiated for; the torch layer maps at::ScalarType onto these
// so that the CUDA launchers need no torch headers.
enum class DType : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

VDEBLUR_HOST_DEVICE int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace vdeblur
