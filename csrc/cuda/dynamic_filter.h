// CUDA launchers of the per-pixel dynamic filter: raw pointers, sizes, strides and a stream, no
// torch headers, so nvcc compiles this on a machine whose torch has no CUDA. x and grad_out are
// contiguous; the filters may have any strides (0 where expanded). csrc/torch/dynamic_filter.cpp
// validates everything before calling.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "vdeblur/common.h"
#include "vdeblur/dynamic_filter.h"

namespace vdeblur {
namespace cuda {

// The (N, G, K*K, hl, wl) filters: data and element strides.
struct WeightView {
  const void* data;
  int64_t stride[5];
};

// x (N, C, H, W), filters -> out (N, C, Ho, Wo).
cudaError_t dynamic_filter2d_forward(DType dtype, const void* x, WeightView w, void* out,
                                     const dynamic_filter::Geometry& g, cudaStream_t stream);

// grad_out (N, C, Ho, Wo), filters -> grad_x (N, C, H, W) (a gather, no atomics).
cudaError_t dynamic_filter2d_grad_input(DType dtype, const void* grad_out, WeightView w, void* grad_x,
                                        const dynamic_filter::Geometry& g, cudaStream_t stream);

// Bytes of workspace dynamic_filter2d_grad_weight needs (0 unless g.scale > 1).
size_t dynamic_filter2d_grad_weight_workspace_bytes(const dynamic_filter::Geometry& g, DType dtype);

// grad_out, x -> grad_weight (N, G, K*K, hl, wl), contiguous.
cudaError_t dynamic_filter2d_grad_weight(DType dtype, const void* grad_out, const void* x, void* grad_weight,
                                         void* workspace, const dynamic_filter::Geometry& g, cudaStream_t stream);

}  // namespace cuda
}  // namespace vdeblur
