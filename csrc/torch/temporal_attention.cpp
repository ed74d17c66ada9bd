// Schemas and CPU registrations of the temporal_attention ops (DESIGN.md 4.4, TFN Eqs. 1-9). The
// Python API (vdeblur_ops/ops/temporal_attention.py) validates inputs and adds fake impls and
// autograd. There is no CUDA C++ kernel for this family: on CUDA tensors the Triton twins
// (vdeblur::temporal_attention_triton, defined in Python) run.
//
//   temporal_attention(l, m, w_h, b_h, w_f, b_f, w_q, b_q, w_k, b_k, w_v, b_v, scale, heads,
//                      return_attention) -> (l_out, m_out, attn)   attn: (N, heads, H, W, T, T)
//                                                                  or (0,) when not asked for
//   temporal_attention_backward(grad_l_out, grad_m_out, grad_attn?, l, m, <10 params>, scale,
//                               heads) -> [dl, dm, dw_h, db_h, ..., dw_v, db_v]
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "../cpu/temporal_attention.h"
#include "vdeblur/temporal_attention.h"

namespace vdeblur {
namespace {

namespace ta = vdeblur::temporal_attention;
constexpr const char* kParamNames[10] = {"w_h", "b_h", "w_f", "b_f", "w_q",
                                         "b_q", "w_k", "b_k", "w_v", "b_v"};

// The memory-safety checks (the Python API checks everything, with friendlier messages, first).
void check_inputs(const at::Tensor& l, const at::Tensor& m, const cpu::TemporalAttentionParams& p,
                  int64_t heads) {
  TORCH_CHECK(l.dim() == 5, "vdeblur::temporal_attention: l must be (N, T, C, H, W), got shape ", l.sizes());
  TORCH_CHECK(l.numel() > 0, "vdeblur::temporal_attention: l must not be empty, got shape ", l.sizes());
  TORCH_CHECK(m.sizes() == l.sizes(), "vdeblur::temporal_attention: m must have the shape of l ", l.sizes(),
              ", got ", m.sizes());
  const auto dt = l.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16 || dt == at::kHalf,
              "vdeblur::temporal_attention: the CPU kernel supports float32, float64, bfloat16 and float16, got ",
              dt);
  const int64_t T = l.size(1), C = l.size(2);
  TORCH_CHECK(T <= ta::kMaxFrames, "vdeblur::temporal_attention: T must be <= ", ta::kMaxFrames, ", got ", T);
  TORCH_CHECK(C <= ta::kMaxChannels, "vdeblur::temporal_attention: C must be <= ", ta::kMaxChannels, ", got ", C);
  TORCH_CHECK(heads >= 1 && C % heads == 0, "vdeblur::temporal_attention: heads must divide C=", C, ", got ", heads);
  TORCH_CHECK(m.scalar_type() == l.scalar_type() && m.device() == l.device(),
              "vdeblur::temporal_attention: m must match l's dtype and device");
  for (int i = 0; i < 10; ++i) {
    const bool weight = i % 2 == 0;
    const bool ok = weight ? (p[i].dim() == 2 && p[i].size(0) == C && p[i].size(1) == C)
                           : (p[i].dim() == 1 && p[i].size(0) == C);
    TORCH_CHECK(ok, "vdeblur::temporal_attention: ", kParamNames[i], " must be ", weight ? "(C, C)" : "(C,)",
                " with C=", C, ", got shape ", p[i].sizes());
    TORCH_CHECK(p[i].scalar_type() == l.scalar_type() && p[i].device() == l.device(),
                "vdeblur::temporal_attention: ", kParamNames[i], " must match l's dtype and device");
  }
}

cpu::TemporalAttentionParams contiguous_params(const at::Tensor& w_h, const at::Tensor& b_h, const at::Tensor& w_f,
                                               const at::Tensor& b_f, const at::Tensor& w_q, const at::Tensor& b_q,
                                               const at::Tensor& w_k, const at::Tensor& b_k, const at::Tensor& w_v,
                                               const at::Tensor& b_v) {
  return {w_h.contiguous(), b_h.contiguous(), w_f.contiguous(), b_f.contiguous(), w_q.contiguous(),
          b_q.contiguous(), w_k.contiguous(), b_k.contiguous(), w_v.contiguous(), b_v.contiguous()};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> temporal_attention_cpu(
    const at::Tensor& l_in, const at::Tensor& m_in, const at::Tensor& w_h, const at::Tensor& b_h,
    const at::Tensor& w_f, const at::Tensor& b_f, const at::Tensor& w_q, const at::Tensor& b_q,
    const at::Tensor& w_k, const at::Tensor& b_k, const at::Tensor& w_v, const at::Tensor& b_v, double scale,
    int64_t heads, bool return_attention) {
  const auto params = contiguous_params(w_h, b_h, w_f, b_f, w_q, b_q, w_k, b_k, w_v, b_v);
  check_inputs(l_in, m_in, params, heads);
  TORCH_CHECK(std::isfinite(scale), "vdeblur::temporal_attention: scale must be finite, got ", scale);
  const auto l = l_in.contiguous();
  const auto m = m_in.contiguous();
  auto l_out = at::empty_like(l, at::MemoryFormat::Contiguous);
  auto m_out = at::empty_like(l, at::MemoryFormat::Contiguous);
  const int64_t N = l.size(0), T = l.size(1), H = l.size(3), W = l.size(4);
  auto attn = return_attention ? at::empty({N, heads, H, W, T, T}, l.options()) : at::empty({0}, l.options());
  cpu::temporal_attention_forward(l, m, params, scale, heads, l_out, m_out,
                                  return_attention ? attn : at::Tensor());
  return {l_out, m_out, attn};
}

std::vector<at::Tensor> temporal_attention_backward_cpu(
    const at::Tensor& grad_l_out, const at::Tensor& grad_m_out, const std::optional<at::Tensor>& grad_attn,
    const at::Tensor& l_in, const at::Tensor& m_in, const at::Tensor& w_h, const at::Tensor& b_h,
    const at::Tensor& w_f, const at::Tensor& b_f, const at::Tensor& w_q, const at::Tensor& b_q,
    const at::Tensor& w_k, const at::Tensor& b_k, const at::Tensor& w_v, const at::Tensor& b_v, double scale,
    int64_t heads) {
  const auto params = contiguous_params(w_h, b_h, w_f, b_f, w_q, b_q, w_k, b_k, w_v, b_v);
  check_inputs(l_in, m_in, params, heads);
  TORCH_CHECK(grad_l_out.sizes() == l_in.sizes() && grad_m_out.sizes() == l_in.sizes(),
              "vdeblur::temporal_attention_backward: grad_l_out and grad_m_out must have the shape of l ",
              l_in.sizes());
  TORCH_CHECK(grad_l_out.scalar_type() == l_in.scalar_type() && grad_m_out.scalar_type() == l_in.scalar_type(),
              "vdeblur::temporal_attention_backward: gradients must match l's dtype");
  const int64_t N = l_in.size(0), T = l_in.size(1), H = l_in.size(3), W = l_in.size(4);
  at::Tensor ga;
  if (grad_attn.has_value() && grad_attn->defined()) {
    TORCH_CHECK(grad_attn->sizes() == at::IntArrayRef({N, heads, H, W, T, T}) &&
                    grad_attn->scalar_type() == l_in.scalar_type(),
                "vdeblur::temporal_attention_backward: grad_attn must be (N, heads, H, W, T, T) = (", N, ", ",
                heads, ", ", H, ", ", W, ", ", T, ", ", T, ") of l's dtype, got ", grad_attn->sizes());
    ga = grad_attn->contiguous();
  }
  const auto l = l_in.contiguous();
  const auto m = m_in.contiguous();
  std::vector<at::Tensor> grads;
  grads.push_back(at::empty_like(l, at::MemoryFormat::Contiguous));
  grads.push_back(at::empty_like(l, at::MemoryFormat::Contiguous));
  for (const auto& p : params) grads.push_back(at::empty_like(p, at::MemoryFormat::Contiguous));
  cpu::temporal_attention_backward(grad_l_out.contiguous(), grad_m_out.contiguous(), ga, l, m, params, scale,
                                   heads, grads);
  return grads;
}

}  // namespace
}  // namespace vdeblur

TORCH_LIBRARY_FRAGMENT(vdeblur, m) {
  m.def(
      "temporal_attention(Tensor l, Tensor m, Tensor w_h, Tensor b_h, Tensor w_f, Tensor b_f, Tensor w_q, "
      "Tensor b_q, Tensor w_k, Tensor b_k, Tensor w_v, Tensor b_v, float scale, int heads, bool return_attention)"
      " -> (Tensor, Tensor, Tensor)");
  m.def(
      "temporal_attention_backward(Tensor grad_l_out, Tensor grad_m_out, Tensor? grad_attn, Tensor l, Tensor m, "
      "Tensor w_h, Tensor b_h, Tensor w_f, Tensor b_f, Tensor w_q, Tensor b_q, Tensor w_k, Tensor b_k, "
      "Tensor w_v, Tensor b_v, float scale, int heads) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(vdeblur, CPU, m) {
  m.impl("temporal_attention", &vdeblur::temporal_attention_cpu);
  m.impl("temporal_attention_backward", &vdeblur::temporal_attention_backward_cpu);
}
