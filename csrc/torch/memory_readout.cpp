// Schemas and CPU registrations of the memory readout ops. The Python API
// (vdeblur_ops/ops/memory_readout.py) adds fake impls and autograd; CUDA tensors are served by the
// Triton twins, so no CUDA kernel is registered here.
//
//   memory_readout(query_key, memory_key, values[], l2, top_k, scale)
//       -> [out_0, ..., out_{V-1}, stat, index]
//     top_k == 0: full softmax, stat = log-sum-exp (N, Nq), index = empty int64.
//     top_k >= 1: k = min(top_k, Nm), stat = kept weights (N, k, Nq), index (N, k, Nq) int64.
//   memory_readout_backward(grads[], query_key, memory_key, values[], outputs[], stat, index, l2,
//                           top_k, scale) -> [grad_query_key, grad_memory_key, grad_values...]
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../cpu/memory_readout.h"

namespace vdeblur {
namespace {

// Keeps tensors whose last dimension is contiguous (and whose channel rows do not overlap) as
// they are, e.g. a MemoryBank prefix view; copies the others.
at::Tensor rows_contiguous(const at::Tensor& t) {
  const bool ok = t.stride(2) == 1 && (t.size(1) == 1 || t.stride(1) >= t.size(2));
  return ok ? t : t.contiguous();
}

void check_tensor(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(t.dim() == 3, "vdeblur::memory_readout: ", name, " must have 3 dimensions, got shape ", t.sizes());
  TORCH_CHECK(t.numel() > 0, "vdeblur::memory_readout: ", name, " must not be empty, got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type() && t.device() == like.device(), "vdeblur::memory_readout: ",
              name, " must match query_key's dtype and device (", like.scalar_type(), ", ", like.device(),
              "), got ", t.scalar_type(), ", ", t.device());
}

void check_inputs(const at::Tensor& q, const at::Tensor& k, at::TensorList values, int64_t top_k) {
  check_tensor(q, "query_key", q);
  const auto dt = q.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16 || dt == at::kHalf,
              "vdeblur::memory_readout: the CPU kernels support float32, float64, bfloat16 and float16, got ", dt);
  check_tensor(k, "memory_key", q);
  TORCH_CHECK(k.size(0) == q.size(0) && k.size(1) == q.size(1), "vdeblur::memory_readout: memory_key must be (N, Ck, Nm) with N=",
              q.size(0), " Ck=", q.size(1), ", got ", k.sizes());
  TORCH_CHECK(!values.empty(), "vdeblur::memory_readout: values must hold at least one tensor");
  for (const auto& v : values) {
    check_tensor(v, "values[i]", q);
    TORCH_CHECK(v.size(0) == q.size(0) && v.size(2) == k.size(2), "vdeblur::memory_readout: values must be (N, Cv, Nm) with N=",
                q.size(0), " Nm=", k.size(2), ", got ", v.sizes());
  }
  TORCH_CHECK(top_k >= 0, "vdeblur::memory_readout: top_k must be >= 0 (0: full softmax), got ", top_k);
}

// The dtype of `stat` (log-sum-exp or kept weights): float32 for half inputs, which the kernels
// compute in float32 (as the Triton twins and the fake impl's _stat_dtype say), else the input's.
at::ScalarType stat_dtype(const at::Tensor& q) {
  const auto dt = q.scalar_type();
  return dt == at::kBFloat16 || dt == at::kHalf ? at::kFloat : dt;
}

std::vector<at::Tensor> prepared(at::TensorList ts) {
  std::vector<at::Tensor> out;
  for (const auto& t : ts) out.push_back(rows_contiguous(t));
  return out;
}

std::vector<at::Tensor> contiguous_all(at::TensorList ts) {
  std::vector<at::Tensor> out;
  for (const auto& t : ts) out.push_back(t.contiguous());
  return out;
}

std::vector<at::Tensor> memory_readout_cpu(const at::Tensor& q_in, const at::Tensor& k_in, at::TensorList values_in,
                                           bool l2, int64_t top_k, double scale) {
  check_inputs(q_in, k_in, values_in, top_k);
  const auto q = rows_contiguous(q_in), k = rows_contiguous(k_in);
  const auto values = prepared(values_in);
  const int64_t N = q.size(0), Nq = q.size(2), Nm = k.size(2);
  std::vector<at::Tensor> outs;
  for (const auto& v : values) outs.push_back(at::empty({N, v.size(1), Nq}, q.options()));
  if (top_k == 0) {
    auto lse = at::empty({N, Nq}, q.options().dtype(stat_dtype(q)));
    cpu::memory_readout_full_forward(q, k, values, outs, lse, l2, scale);
    outs.push_back(lse);
    outs.push_back(at::empty({0}, q.options().dtype(at::kLong)));
  } else {
    const int64_t kk = std::min(top_k, Nm);
    auto weight = at::empty({N, kk, Nq}, q.options().dtype(stat_dtype(q)));
    auto index = at::empty({N, kk, Nq}, q.options().dtype(at::kLong));
    cpu::memory_readout_topk_forward(q, k, values, outs, weight, index, l2, scale);
    outs.push_back(weight);
    outs.push_back(index);
  }
  return outs;
}

std::vector<at::Tensor> memory_readout_backward_cpu(at::TensorList grads_in, const at::Tensor& q_in,
                                                    const at::Tensor& k_in, at::TensorList values_in,
                                                    at::TensorList outs_in, const at::Tensor& stat_in,
                                                    const at::Tensor& index_in, bool l2, int64_t top_k, double scale) {
  check_inputs(q_in, k_in, values_in, top_k);
  const size_t nv = values_in.size();
  TORCH_CHECK(grads_in.size() == nv && outs_in.size() == nv, "vdeblur::memory_readout_backward: expected ", nv,
              " gradients and outputs, got ", grads_in.size(), " and ", outs_in.size());
  const auto q = rows_contiguous(q_in), k = rows_contiguous(k_in);
  const auto values = prepared(values_in);
  const auto grads = contiguous_all(grads_in), outs = contiguous_all(outs_in);
  const int64_t N = q.size(0), Nq = q.size(2), Nm = k.size(2);
  for (size_t i = 0; i < nv; ++i) {
    TORCH_CHECK(grads[i].sizes() == at::IntArrayRef({N, values[i].size(1), Nq}) && grads[i].sizes() == outs[i].sizes(),
                "vdeblur::memory_readout_backward: grads[", i, "] and outputs[", i, "] must be (N, Cv, Nq)");
    TORCH_CHECK(grads[i].scalar_type() == q.scalar_type() && outs[i].scalar_type() == q.scalar_type(),
                "vdeblur::memory_readout_backward: grads and outputs must match query_key's dtype");
  }
  const auto stat = stat_in.contiguous(), index = index_in.contiguous();
  TORCH_CHECK(stat.scalar_type() == stat_dtype(q), "vdeblur::memory_readout_backward: stat must be ",
              stat_dtype(q), " for ", q.scalar_type(), " inputs, got ", stat.scalar_type());
  auto gq = at::empty({N, q.size(1), Nq}, q.options());
  auto gk = at::empty({N, k.size(1), Nm}, q.options());
  std::vector<at::Tensor> gvs;
  for (const auto& v : values) gvs.push_back(at::empty({N, v.size(1), Nm}, q.options()));
  if (top_k == 0) {
    TORCH_CHECK(stat.sizes() == at::IntArrayRef({N, Nq}), "vdeblur::memory_readout_backward: stat must be (N, Nq)");
    cpu::memory_readout_full_backward(grads, q, k, values, outs, stat, gq, gk, gvs, l2, scale);
  } else {
    const int64_t kk = std::min(top_k, Nm);
    TORCH_CHECK(stat.sizes() == at::IntArrayRef({N, kk, Nq}) && index.sizes() == stat.sizes() &&
                    index.scalar_type() == at::kLong,
                "vdeblur::memory_readout_backward: stat and index must be (N, k, Nq), index int64");
    cpu::memory_readout_topk_backward(grads, q, k, values, stat, index, gq, gk, gvs, l2, scale);
  }
  std::vector<at::Tensor> result{gq, gk};
  result.insert(result.end(), gvs.begin(), gvs.end());
  return result;
}

}  // namespace
}  // namespace vdeblur

TORCH_LIBRARY_FRAGMENT(vdeblur, m) {
  m.def("memory_readout(Tensor query_key, Tensor memory_key, Tensor[] values, bool l2, int top_k, float scale) -> Tensor[]");
  m.def(
      "memory_readout_backward(Tensor[] grads, Tensor query_key, Tensor memory_key, Tensor[] values, "
      "Tensor[] outputs, Tensor stat, Tensor index, bool l2, int top_k, float scale) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(vdeblur, CPU, m) {
  m.impl("memory_readout", &vdeblur::memory_readout_cpu);
  m.impl("memory_readout_backward", &vdeblur::memory_readout_backward_cpu);
}
