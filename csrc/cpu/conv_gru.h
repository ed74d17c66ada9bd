// CPU ConvGRU gate kernels (DESIGN.md 4.3). csrc/torch/conv_gru.cpp validates the shapes; every
// tensor is (N, k*C, *spatial) with a contiguous per-sample block (any batch stride, so channel
// slices of a conv output are read in place); outputs are contiguous and allocated by the caller.
#pragma once

#include <ATen/ATen.h>

namespace vdeblur {
namespace cpu {

// (gx_zr, gh_zr: 2C; h: C) -> z, rh, and r when `r` is defined (saved for backward).
void conv_gru_reset(const at::Tensor& gx_zr, const at::Tensor& gh_zr, const at::Tensor& h,
                    const at::Tensor& z, const at::Tensor& rh, const at::Tensor& r);

// (grad_z, grad_rh, z, r, h: C) -> grad_zr (2C: d/d(gx_z + gh_z), d/d(gx_r + gh_r)), grad_h.
void conv_gru_reset_backward(const at::Tensor& grad_z, const at::Tensor& grad_rh, const at::Tensor& z,
                             const at::Tensor& r, const at::Tensor& h, const at::Tensor& grad_zr,
                             const at::Tensor& grad_h);

// (z, gx_n, gh_n, h: C) -> h_new, and h_hat when defined.
void conv_gru_update(const at::Tensor& z, const at::Tensor& gx_n, const at::Tensor& gh_n,
                     const at::Tensor& h, const at::Tensor& h_new, const at::Tensor& h_hat);

// (grad, z, h_hat, h: C) -> grad_z, grad_n (d/d(gx_n + gh_n)), grad_h.
void conv_gru_update_backward(const at::Tensor& grad, const at::Tensor& z, const at::Tensor& h_hat,
                              const at::Tensor& h, const at::Tensor& grad_z, const at::Tensor& grad_n,
                              const at::Tensor& grad_h);

// (gx, gh: 3C; h: C) -> h_new, and workspace (4C: z, r, h_hat, gh_n) when defined.
void conv_gru_gates(const at::Tensor& gx, const at::Tensor& gh, const at::Tensor& h,
                    const at::Tensor& h_new, const at::Tensor& workspace);

// (grad: C, workspace: 4C, h: C) -> grad_gx (3C), grad_gh (3C), grad_h (C).
void conv_gru_gates_backward(const at::Tensor& grad, const at::Tensor& workspace, const at::Tensor& h,
                             const at::Tensor& grad_gx, const at::Tensor& grad_gh,
                             const at::Tensor& grad_h);

}  // namespace cpu
}  // namespace vdeblur
