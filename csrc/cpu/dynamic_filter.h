// CPU kernels of the per-pixel dynamic filter. csrc/torch/dynamic_filter.cpp validates the inputs
// and allocates the outputs; x and grad_out are contiguous, the filters may have any strides
// (stride 0 where they were expanded): the kernels read them through `ws`.
#pragma once

#include <ATen/ATen.h>

#include "vdeblur/dynamic_filter.h"

namespace vdeblur {
namespace cpu {

// x (N, C, H, W), weight (N, G, K*K, hl, wl) -> out (N, C, Ho, Wo).
void dynamic_filter2d_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& out,
                              const dynamic_filter::Geometry& g);

// grad_out (N, C, Ho, Wo), weight -> grad_x (N, C, H, W), each element gathered from its readers.
void dynamic_filter2d_grad_input(const at::Tensor& grad_out, const at::Tensor& weight,
                                 const at::Tensor& grad_x, const dynamic_filter::Geometry& g);

// grad_out, x -> grad_weight (N, G, K*K, hl, wl), contiguous; folded through the upsampling's
// adjoint when g.scale > 1.
void dynamic_filter2d_grad_weight(const at::Tensor& grad_out, const at::Tensor& x,
                                  const at::Tensor& grad_weight, const dynamic_filter::Geometry& g);

}  // namespace cpu
}  // namespace vdeblur
