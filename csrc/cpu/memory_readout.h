// CPU memory readout kernels (DESIGN.md 4.5). Inputs are validated by csrc/torch/memory_readout.cpp:
// query_key (N, Ck, Nq), memory_key (N, Ck, Nm) and values[i] (N, Cv_i, Nm) have a unit stride in
// their last dimension (other strides free: a MemoryBank prefix view is read in place); gradients
// and every output are contiguous and preallocated. dtypes: float32, float64, and bfloat16 / float16
// computed in float32, with lse / weight (stat) float32 for those.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace vdeblur {
namespace cpu {

// Full softmax: outs[i] (N, Cv_i, Nq), lse (N, Nq) = log-sum-exp of each query's scores.
void memory_readout_full_forward(const at::Tensor& query_key, const at::Tensor& memory_key,
                                 const std::vector<at::Tensor>& values, const std::vector<at::Tensor>& outs,
                                 const at::Tensor& lse, bool l2, double scale);

// Top-k: outs[i] (N, Cv_i, Nq), weight (N, k, Nq) the kept softmax weights, index (N, k, Nq) int64
// their memory positions (unsorted).
void memory_readout_topk_forward(const at::Tensor& query_key, const at::Tensor& memory_key,
                                 const std::vector<at::Tensor>& values, const std::vector<at::Tensor>& outs,
                                 const at::Tensor& weight, const at::Tensor& index, bool l2, double scale);

// Gradients of the full softmax readout, recomputing the weights per tile from lse.
void memory_readout_full_backward(const std::vector<at::Tensor>& grads, const at::Tensor& query_key,
                                  const at::Tensor& memory_key, const std::vector<at::Tensor>& values,
                                  const std::vector<at::Tensor>& outs, const at::Tensor& lse,
                                  const at::Tensor& grad_query_key, const at::Tensor& grad_memory_key,
                                  const std::vector<at::Tensor>& grad_values, bool l2, double scale);

// Gradients of the top-k readout through the kept entries only.
void memory_readout_topk_backward(const std::vector<at::Tensor>& grads, const at::Tensor& query_key,
                                  const at::Tensor& memory_key, const std::vector<at::Tensor>& values,
                                  const at::Tensor& weight, const at::Tensor& index,
                                  const at::Tensor& grad_query_key, const at::Tensor& grad_memory_key,
                                  const std::vector<at::Tensor>& grad_values, bool l2, double scale);

}  // namespace cpu
}  // namespace vdeblur
