// CPU temporal_attention kernels. Inputs are contiguous and validated by
// csrc/torch/temporal_attention.cpp; outputs are allocated by the caller. dtypes: float32, float64,
// and bfloat16 / float16 computed in float32 (outputs and gradients in the input dtype).
#pragma once

#include <ATen/ATen.h>

#include <array>

namespace vdeblur {
namespace cpu {

// The ten parameters in op order: w_h, b_h, w_f, b_f, w_q, b_q, w_k, b_k, w_v, b_v.
using TemporalAttentionParams = std::array<at::Tensor, 10>;

// l, m (N, T, C, H, W) -> l_out, m_out (N, T, C, H, W) and, when `attn` is defined,
// attn (N, heads, H, W, T, T).
void temporal_attention_forward(const at::Tensor& l, const at::Tensor& m,
                                const TemporalAttentionParams& params, double scale, int64_t heads,
                                const at::Tensor& l_out, const at::Tensor& m_out,
                                const at::Tensor& attn);

// Recomputes the forward per pixel tile and writes grads[0..11] = (dl, dm, dw_h, db_h, ...,
// dw_v, db_v). grad_attn may be undefined (no gradient reaches the attention maps).
void temporal_attention_backward(const at::Tensor& grad_l_out, const at::Tensor& grad_m_out,
                                 const at::Tensor& grad_attn, const at::Tensor& l,
                                 const at::Tensor& m, const TemporalAttentionParams& params,
                                 double scale, int64_t heads, const std::vector<at::Tensor>& grads);

}  // namespace cpu
}  // namespace vdeblur
