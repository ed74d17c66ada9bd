// CUDA ConvGRU gate launchers (DESIGN.md 4.3): raw pointers, sizes and a stream, no torch headers,
// so nvcc compiles this on a machine whose torch has no CUDA. csrc/torch/conv_gru.cpp validates.
//
// Every tensor is (N, k*C, *spatial) seen as `outer` rows of k chunks of `inner` contiguous
// elements (cpu/conv_gru.h): channel-major (contiguous) outer = N, inner = C*S; channels_last
// outer = N*S pixels, inner = C. Chunk j of row o of an input starts at ptr + o * row_stride +
// j * inner (row_stride in elements, 0 for one row); outputs are dense in the same layout (row
// stride k * inner). A nullptr for an optional output (r, h_hat, workspace) means "not saved".
#pragma once

#include <cuda_runtime.h>

#include "vdeblur/common.h"

namespace vdeblur {
namespace cuda {

struct GruShape {
  int64_t outer, inner;  // rows, and elements per chunk of a row
};

struct In {
  const void* ptr;
  int64_t row_stride;
};

// z, rh, r (nullable) <- gx_zr (2C), gh_zr (2C), h.
cudaError_t conv_gru_reset(DType dtype, GruShape shape, In gx_zr, In gh_zr, In h, void* z, void* rh, void* r,
                           cudaStream_t stream);
// grad_zr (2C), grad_h <- grad_z, grad_rh, z, r, h.
cudaError_t conv_gru_reset_backward(DType dtype, GruShape shape, In grad_z, In grad_rh, In z, In r, In h,
                                    void* grad_zr, void* grad_h, cudaStream_t stream);
// h_new, h_hat (nullable) <- z, gx_n, gh_n, h.
cudaError_t conv_gru_update(DType dtype, GruShape shape, In z, In gx_n, In gh_n, In h, void* h_new, void* h_hat,
                            cudaStream_t stream);
// grad_z, grad_n, grad_h <- grad, z, h_hat, h.
cudaError_t conv_gru_update_backward(DType dtype, GruShape shape, In grad, In z, In h_hat, In h, void* grad_z,
                                     void* grad_n, void* grad_h, cudaStream_t stream);
// h_new, workspace (4C: z, r, h_hat, gh_n; nullable) <- gx (3C), gh (3C), h.
cudaError_t conv_gru_gates(DType dtype, GruShape shape, In gx, In gh, In h, void* h_new, void* workspace,
                           cudaStream_t stream);
// grad_gx (3C), grad_gh (3C), grad_h <- grad, workspace (4C), h.
cudaError_t conv_gru_gates_backward(DType dtype, GruShape shape, In grad, In workspace, In h, void* grad_gx,
                                    void* grad_gh, void* grad_h, cudaStream_t stream);

}  // namespace cuda
}  // namespace vdeblur
