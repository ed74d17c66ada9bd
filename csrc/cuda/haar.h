// CUDA Haar launchers: raw pointers, sizes and a stream, no torch headers, so nvcc compiles this
// on a machine whose torch has no CUDA. Tensors are contiguous; csrc/torch/haar.cpp validates.
#pragma once

#include <cuda_runtime.h>

#include "vdeblur/common.h"
#include "vdeblur/haar.h"

namespace vdeblur {
namespace cuda {

// Per-level geometry of a multi-level transform: level l maps (in_h[l], in_w[l]) <-> (h[l], w[l]),
// with h = ceil(in_h / 2). highs[l] points at that level's (N, C, 3, h, w) or (N, 3, C, h, w).
struct HaarGeometry {
  int64_t N, C;
  int levels;
  int64_t in_h[haar::kMaxLevels], in_w[haar::kMaxLevels];
  int64_t h[haar::kMaxLevels], w[haar::kMaxLevels];
  bool band_layout;
};

// Bytes of device workspace the launchers need for intermediate low bands (0 for one level).
size_t haar_workspace_bytes(const HaarGeometry& g, DType dtype);

// x (N, C, in_h[0], in_w[0]) -> ll (N, C, h[L-1], w[L-1]) and highs[0..L-1].
cudaError_t haar_dwt2d(DType dtype, const void* x, void* ll, void* const* highs,
                       const HaarGeometry& g, double scale, void* workspace, cudaStream_t stream);

// ll and highs[0..L-1] -> out (N, C, in_h[0], in_w[0]).
cudaError_t haar_idwt2d(DType dtype, const void* ll, const void* const* highs, void* out,
                        const HaarGeometry& g, double scale, void* workspace, cudaStream_t stream);

}  // namespace cuda
}  // namespace vdeblur
