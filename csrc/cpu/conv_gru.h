// CPU ConvGRU gate kernels (DESIGN.md 4.3). csrc/torch/conv_gru.cpp validates the shapes and
// allocates the outputs. Every tensor is (N, k*C, *spatial) and lies in one of two layouts, the
// same for all tensors of a call (GruLayout): chunk j (of k) of row o starts at
// t + o * row_stride(t) + j * inner, and each chunk's `inner` elements are contiguous.
//   channel-major (contiguous, or a channel slice of it): outer = N rows, inner = C * S,
//                 row stride = the batch stride;
//   pixel-major (channels_last, or a channel slice of it): outer = N * S rows (pixels),
//                 inner = C, row stride = the pixel stride.
#pragma once

#include <ATen/ATen.h>

namespace vdeblur {
namespace cpu {

struct GruLayout {
  int64_t outer, inner;
  bool pixel_major;
};

// The pixel stride of t (N, k*C, *spatial) when it lies pixel-major: channels adjacent, every
// pixel at one stride P and samples S * P apart (any P >= 0, so a channel slice of a
// channels_last conv output qualifies); -1 otherwise, and when t has no spatial extent (S == 1:
// then both layouts are the same and the channel-major path is taken).
inline int64_t pixel_stride(const at::Tensor& t) {
  const int64_t dims = t.dim();
  int64_t inner_dim = -1;  // innermost spatial dim with more than one element
  for (int64_t d = dims - 1; d >= 2 && inner_dim < 0; --d) {
    if (t.size(d) > 1) inner_dim = d;
  }
  if (inner_dim < 0 || (t.size(1) > 1 && t.stride(1) != 1)) return -1;
  const int64_t P = t.stride(inner_dim);
  int64_t expected = P;
  for (int64_t d = dims - 1; d >= 2; --d) {
    if (t.size(d) > 1 && t.stride(d) != expected) return -1;
    expected *= t.size(d);
  }
  if (t.size(0) > 1 && t.stride(0) != expected) return -1;
  return P;
}

// Stride between rows of t in `layout` (0 when there is only one row).
inline int64_t row_stride(const at::Tensor& t, const GruLayout& layout) {
  if (layout.outer <= 1) return 0;
  return layout.pixel_major ? pixel_stride(t) : t.stride(0);
}

// (gx_zr, gh_zr: 2C; h: C) -> z, rh, and r when `r` is defined (saved for backward).
void conv_gru_reset(const GruLayout& layout, const at::Tensor& gx_zr, const at::Tensor& gh_zr, const at::Tensor& h,
                    const at::Tensor& z, const at::Tensor& rh, const at::Tensor& r);

// (grad_z, grad_rh, z, r, h: C) -> grad_zr (2C: d/d(gx_z + gh_z), d/d(gx_r + gh_r)), grad_h.
void conv_gru_reset_backward(const GruLayout& layout, const at::Tensor& grad_z, const at::Tensor& grad_rh, const at::Tensor& z,
                             const at::Tensor& r, const at::Tensor& h, const at::Tensor& grad_zr,
                             const at::Tensor& grad_h);

// (z, gx_n, gh_n, h: C) -> h_new, and h_hat when defined.
void conv_gru_update(const GruLayout& layout, const at::Tensor& z, const at::Tensor& gx_n, const at::Tensor& gh_n,
                     const at::Tensor& h, const at::Tensor& h_new, const at::Tensor& h_hat);

// (grad, z, h_hat, h: C) -> grad_z, grad_n (d/d(gx_n + gh_n)), grad_h.
void conv_gru_update_backward(const GruLayout& layout, const at::Tensor& grad, const at::Tensor& z, const at::Tensor& h_hat,
                              const at::Tensor& h, const at::Tensor& grad_z, const at::Tensor& grad_n,
                              const at::Tensor& grad_h);

// (gx, gh: 3C; h: C) -> h_new, and workspace (4C: z, r, h_hat, gh_n) when defined.
void conv_gru_gates(const GruLayout& layout, const at::Tensor& gx, const at::Tensor& gh, const at::Tensor& h,
                    const at::Tensor& h_new, const at::Tensor& workspace);

// (grad: C, workspace: 4C, h: C) -> grad_gx (3C), grad_gh (3C), grad_h (C).
void conv_gru_gates_backward(const GruLayout& layout, const at::Tensor& grad, const at::Tensor& workspace, const at::Tensor& h,
                             const at::Tensor& grad_gx, const at::Tensor& grad_gh,
                             const at::Tensor& grad_h);

}  // namespace cpu
}  // namespace vdeblur
