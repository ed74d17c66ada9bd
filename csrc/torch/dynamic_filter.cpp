// Schemas and CPU / CUDA registrations of the per-pixel dynamic filter (DESIGN.md 4.2). The Python
// API (vdeblur_ops/ops/dynamic_filter.py) validates arguments, flattens a (N, G, K, K, h, w) filter
// view and adds fake impls and autograd; the checks here guard memory safety for direct callers.
//
//   dynamic_filter2d(x, weight, K, stride, padding, dilation, filter_scale) -> out
//   dynamic_filter2d_grad_input(grad_out, weight, K, stride, padding, dilation, filter_scale, input_size) -> grad_x
//   dynamic_filter2d_grad_weight(grad_out, x, groups, K, stride, padding, dilation, filter_scale) -> grad_weight
//
// weight is (N, G, K*K, Ho/f, Wo/f) with any strides (read through them, never made contiguous).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu_cache_ops.h"
#include "../cpu/dynamic_filter.h"
#include "vdeblur/dynamic_filter.h"

#ifdef VDEBLUR_WITH_CUDA
// Only c10/cuda (guard, stream, error check): ATen/cuda/CUDAContext.h would pull in cuSPARSE /
// cuBLAS headers that a minimal toolkit lacks and these launchers never use.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../cuda/dynamic_filter.h"
#include "dtype.h"
#endif

namespace vdeblur {
namespace {

using dynamic_filter::Geometry;

// Checks the scalar arguments and sizes and returns the geometry; C and groups are validated
// against each other, the spatial sizes against the conv2d formula and filter_scale.
Geometry make_geometry(int64_t N, int64_t C, int64_t H, int64_t W, int64_t G, int64_t K, int64_t stride,
                       int64_t pad, int64_t dil, int64_t scale) {
  TORCH_CHECK(K >= 1 && stride >= 1 && dil >= 1 && pad >= 0 && scale >= 1,
              "vdeblur::dynamic_filter2d: need kernel_size, stride, dilation, filter_scale >= 1 and padding >= 0, "
              "got kernel_size=", K, " stride=", stride, " dilation=", dil, " filter_scale=", scale, " padding=", pad);
  TORCH_CHECK(G >= 1 && C % G == 0, "vdeblur::dynamic_filter2d: channels C=", C,
              " must be divisible by the filter groups G=", G);
  Geometry g{};
  g.N = N, g.C = C, g.H = H, g.W = W, g.G = G, g.K = K;
  g.stride = stride, g.pad = pad, g.dil = dil, g.scale = scale;
  g.Ho = dynamic_filter::out_size(H, K, stride, pad, dil);
  g.Wo = dynamic_filter::out_size(W, K, stride, pad, dil);
  TORCH_CHECK(g.Ho >= 1 && g.Wo >= 1, "vdeblur::dynamic_filter2d: input ", H, "x", W,
              " is too small for the kernel (output ", g.Ho, "x", g.Wo, ")");
  TORCH_CHECK(g.Ho % scale == 0 && g.Wo % scale == 0, "vdeblur::dynamic_filter2d: output ", g.Ho, "x", g.Wo,
              " must be divisible by filter_scale=", scale);
  g.hl = g.Ho / scale, g.wl = g.Wo / scale;
  return g;
}

void check_float(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "vdeblur::dynamic_filter2d: ", name,
              " must be a floating-point tensor, got ", t.scalar_type());
  TORCH_CHECK(t.scalar_type() == like.scalar_type() && t.device() == like.device(), "vdeblur::dynamic_filter2d: ",
              name, " must match the dtype and device of the other inputs");
  TORCH_CHECK(t.numel() > 0, "vdeblur::dynamic_filter2d: ", name, " must not be empty, got shape ", t.sizes());
}

void check_weight(const at::Tensor& weight, const Geometry& g) {
  TORCH_CHECK(weight.dim() == 5 && weight.size(0) == g.N && weight.size(1) == g.G &&
                  weight.size(2) == g.K * g.K && weight.size(3) == g.hl && weight.size(4) == g.wl,
              "vdeblur::dynamic_filter2d: weight must be (N, G, K*K, Ho/f, Wo/f) = (", g.N, ", ", g.G, ", ",
              g.K * g.K, ", ", g.hl, ", ", g.wl, "), got ", weight.sizes());
}

Geometry forward_geometry(const at::Tensor& x, const at::Tensor& weight, int64_t K, int64_t stride, int64_t pad,
                          int64_t dil, int64_t scale) {
  TORCH_CHECK(x.dim() == 4, "vdeblur::dynamic_filter2d: x must be (N, C, H, W), got shape ", x.sizes());
  TORCH_CHECK(weight.dim() == 5, "vdeblur::dynamic_filter2d: weight must be (N, G, K*K, h, w), got shape ",
              weight.sizes());
  check_float(x, "x", x);
  check_float(weight, "weight", x);
  const Geometry g = make_geometry(x.size(0), x.size(1), x.size(2), x.size(3), weight.size(1), K, stride, pad,
                                   dil, scale);
  check_weight(weight, g);
  return g;
}

Geometry grad_input_geometry(const at::Tensor& grad_out, const at::Tensor& weight, int64_t K, int64_t stride,
                             int64_t pad, int64_t dil, int64_t scale, at::IntArrayRef input_size) {
  TORCH_CHECK(grad_out.dim() == 4 && weight.dim() == 5 && input_size.size() == 2,
              "vdeblur::dynamic_filter2d_grad_input: need grad_out (N, C, Ho, Wo), weight (N, G, K*K, h, w) "
              "and input_size (H, W)");
  check_float(grad_out, "grad_out", grad_out);
  check_float(weight, "weight", grad_out);
  const Geometry g = make_geometry(grad_out.size(0), grad_out.size(1), input_size[0], input_size[1],
                                   weight.size(1), K, stride, pad, dil, scale);
  TORCH_CHECK(grad_out.size(2) == g.Ho && grad_out.size(3) == g.Wo,
              "vdeblur::dynamic_filter2d_grad_input: grad_out must be ", g.Ho, "x", g.Wo, ", got ", grad_out.sizes());
  check_weight(weight, g);
  return g;
}

Geometry grad_weight_geometry(const at::Tensor& grad_out, const at::Tensor& x, int64_t groups, int64_t K,
                              int64_t stride, int64_t pad, int64_t dil, int64_t scale) {
  TORCH_CHECK(grad_out.dim() == 4 && x.dim() == 4,
              "vdeblur::dynamic_filter2d_grad_weight: need grad_out (N, C, Ho, Wo) and x (N, C, H, W)");
  check_float(grad_out, "grad_out", grad_out);
  check_float(x, "x", grad_out);
  const Geometry g = make_geometry(x.size(0), x.size(1), x.size(2), x.size(3), groups, K, stride, pad, dil, scale);
  TORCH_CHECK(grad_out.size(0) == g.N && grad_out.size(1) == g.C && grad_out.size(2) == g.Ho &&
                  grad_out.size(3) == g.Wo,
              "vdeblur::dynamic_filter2d_grad_weight: grad_out must be (", g.N, ", ", g.C, ", ", g.Ho, ", ", g.Wo,
              "), got ", grad_out.sizes());
  return g;
}

// ---- shared by both devices: checks, contiguous inputs and the output; `Run` launches the kernel --
// The output comes from cpu::empty_output: the buffer cache on CPU, at::empty on CUDA. weight is
// passed as it is (the kernels read it through its strides).

template <typename Run>
at::Tensor forward_impl(const at::Tensor& x_in, const at::Tensor& weight, int64_t K, int64_t stride, int64_t pad,
                        int64_t dil, int64_t scale, Run run) {
  const Geometry g = forward_geometry(x_in, weight, K, stride, pad, dil, scale);
  const auto x = x_in.contiguous();
  auto out = cpu::empty_output({g.N, g.C, g.Ho, g.Wo}, x.options());
  run(x, weight, out, g);
  return out;
}

template <typename Run>
at::Tensor grad_input_impl(const at::Tensor& grad_out_in, const at::Tensor& weight, int64_t K, int64_t stride,
                           int64_t pad, int64_t dil, int64_t scale, at::IntArrayRef input_size, Run run) {
  const Geometry g = grad_input_geometry(grad_out_in, weight, K, stride, pad, dil, scale, input_size);
  const auto grad_out = grad_out_in.contiguous();
  auto grad_x = cpu::empty_output({g.N, g.C, g.H, g.W}, grad_out.options());
  run(grad_out, weight, grad_x, g);
  return grad_x;
}

template <typename Run>
at::Tensor grad_weight_impl(const at::Tensor& grad_out_in, const at::Tensor& x_in, int64_t groups, int64_t K,
                            int64_t stride, int64_t pad, int64_t dil, int64_t scale, Run run) {
  const Geometry g = grad_weight_geometry(grad_out_in, x_in, groups, K, stride, pad, dil, scale);
  const auto grad_out = grad_out_in.contiguous();
  const auto x = x_in.contiguous();
  auto grad_weight = cpu::empty_output({g.N, g.G, g.K * g.K, g.hl, g.wl}, grad_out.options());
  run(grad_out, x, grad_weight, g);
  return grad_weight;
}

// ---- CPU ---------------------------------------------------------------------------------------

at::Tensor forward_cpu(const at::Tensor& x, const at::Tensor& weight, int64_t K, int64_t stride, int64_t pad,
                       int64_t dil, int64_t scale) {
  return forward_impl(x, weight, K, stride, pad, dil, scale, cpu::dynamic_filter2d_forward);
}

at::Tensor grad_input_cpu(const at::Tensor& grad_out, const at::Tensor& weight, int64_t K, int64_t stride,
                          int64_t pad, int64_t dil, int64_t scale, at::IntArrayRef input_size) {
  return grad_input_impl(grad_out, weight, K, stride, pad, dil, scale, input_size,
                         cpu::dynamic_filter2d_grad_input);
}

at::Tensor grad_weight_cpu(const at::Tensor& grad_out, const at::Tensor& x, int64_t groups, int64_t K,
                           int64_t stride, int64_t pad, int64_t dil, int64_t scale) {
  return grad_weight_impl(grad_out, x, groups, K, stride, pad, dil, scale, cpu::dynamic_filter2d_grad_weight);
}

// ---- CUDA --------------------------------------------------------------------------------------

#ifdef VDEBLUR_WITH_CUDA
cuda::WeightView weight_view(const at::Tensor& w) {
  return cuda::WeightView{w.data_ptr(), {w.stride(0), w.stride(1), w.stride(2), w.stride(3), w.stride(4)}};
}

at::Tensor forward_cuda(const at::Tensor& x, const at::Tensor& weight, int64_t K, int64_t stride, int64_t pad,
                        int64_t dil, int64_t scale) {
  return forward_impl(x, weight, K, stride, pad, dil, scale,
                      [](const at::Tensor& xx, const at::Tensor& w, const at::Tensor& out, const Geometry& g) {
                        const c10::cuda::CUDAGuard guard(xx.device());
                        C10_CUDA_CHECK(cuda::dynamic_filter2d_forward(to_dtype(xx.scalar_type()), xx.data_ptr(),
                                                                      weight_view(w), out.data_ptr(), g,
                                                                      c10::cuda::getCurrentCUDAStream()));
                      });
}

at::Tensor grad_input_cuda(const at::Tensor& grad_out, const at::Tensor& weight, int64_t K, int64_t stride,
                           int64_t pad, int64_t dil, int64_t scale, at::IntArrayRef input_size) {
  return grad_input_impl(grad_out, weight, K, stride, pad, dil, scale, input_size,
                         [](const at::Tensor& go, const at::Tensor& w, const at::Tensor& grad_x, const Geometry& g) {
                           const c10::cuda::CUDAGuard guard(go.device());
                           C10_CUDA_CHECK(cuda::dynamic_filter2d_grad_input(
                               to_dtype(go.scalar_type()), go.data_ptr(), weight_view(w), grad_x.data_ptr(), g,
                               c10::cuda::getCurrentCUDAStream()));
                         });
}

at::Tensor grad_weight_cuda(const at::Tensor& grad_out, const at::Tensor& x, int64_t groups, int64_t K,
                            int64_t stride, int64_t pad, int64_t dil, int64_t scale) {
  return grad_weight_impl(
      grad_out, x, groups, K, stride, pad, dil, scale,
      [](const at::Tensor& go, const at::Tensor& xx, const at::Tensor& grad_weight, const Geometry& g) {
        const c10::cuda::CUDAGuard guard(xx.device());
        const DType dtype = to_dtype(xx.scalar_type());
        auto workspace = at::empty({static_cast<int64_t>(cuda::dynamic_filter2d_grad_weight_workspace_bytes(g, dtype))},
                                   xx.options().dtype(at::kByte));
        C10_CUDA_CHECK(cuda::dynamic_filter2d_grad_weight(dtype, go.data_ptr(), xx.data_ptr(), grad_weight.data_ptr(),
                                                          workspace.data_ptr(), g, c10::cuda::getCurrentCUDAStream()));
      });
}
#endif

}  // namespace
}  // namespace vdeblur

TORCH_LIBRARY_FRAGMENT(vdeblur, m) {
  VDEBLUR_DEFINE_CPU_CACHE_OPS(m, "dynamic_filter");
  m.def("dynamic_filter2d(Tensor x, Tensor weight, int kernel_size, int stride, int padding, int dilation, "
        "int filter_scale) -> Tensor");
  m.def("dynamic_filter2d_grad_input(Tensor grad_out, Tensor weight, int kernel_size, int stride, int padding, "
        "int dilation, int filter_scale, SymInt[] input_size) -> Tensor");
  m.def("dynamic_filter2d_grad_weight(Tensor grad_out, Tensor x, int groups, int kernel_size, int stride, "
        "int padding, int dilation, int filter_scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(vdeblur, CPU, m) {
  m.impl("dynamic_filter2d", &vdeblur::forward_cpu);
  m.impl("dynamic_filter2d_grad_input", &vdeblur::grad_input_cpu);
  m.impl("dynamic_filter2d_grad_weight", &vdeblur::grad_weight_cpu);
}

#ifdef VDEBLUR_WITH_CUDA
TORCH_LIBRARY_IMPL(vdeblur, CUDA, m) {
  m.impl("dynamic_filter2d", &vdeblur::forward_cuda);
  m.impl("dynamic_filter2d_grad_input", &vdeblur::grad_input_cuda);
  m.impl("dynamic_filter2d_grad_weight", &vdeblur::grad_weight_cuda);
}
#endif
