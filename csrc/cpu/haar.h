// CPU Haar kernels. Inputs are contiguous and validated by csrc/torch/haar.cpp.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace vdeblur {
namespace cpu {

// x (N, C, H, W) -> ll, highs[l] (written in place; shapes already allocated).
void haar_dwt2d(const at::Tensor& x, const at::Tensor& ll, const std::vector<at::Tensor>& highs,
                double scale, bool band_layout);

// ll, highs[l] -> out (N, C, Ho, Wo).
void haar_idwt2d(const at::Tensor& ll, const std::vector<at::Tensor>& highs, const at::Tensor& out,
                 double scale, bool band_layout);

}  // namespace cpu
}  // namespace vdeblur
