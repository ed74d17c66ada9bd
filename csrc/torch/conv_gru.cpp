// Schemas and CPU / CUDA registrations of the ConvGRU gate ops (DESIGN.md 4.3). The Python API
// (vdeblur_ops/ops/conv_gru.py) validates inputs with clear messages and adds fake impls and
// autograd; the checks here repeat what memory safety needs, for direct callers of torch.ops.
//
//   conv_gru_reset(gx_zr, gh_zr, h, save) -> (z, rh, r)            r empty unless save
//   conv_gru_update(z, gx_n, gh_n, h, save) -> (h_new, h_hat)      h_hat empty unless save
//   conv_gru_gates(gx, gh, h, save) -> (h_new, workspace)          workspace [z, r, h_hat, gh_n]
//   conv_gru_reset_backward(grad_z, grad_rh, z, r, h) -> (grad_zr, grad_h)
//   conv_gru_update_backward(grad, z, h_hat, h) -> (grad_z, grad_n, grad_h)
//   conv_gru_gates_backward(grad, workspace, h) -> (grad_gx, grad_gh, grad_h)
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "cpu_cache_ops.h"
#include "../cpu/conv_gru.h"

#ifdef VDEBLUR_WITH_CUDA
// Only c10/cuda (guard, stream, error check): ATen/cuda/CUDAContext.h would pull in cuSPARSE /
// cuBLAS headers that a minimal toolkit lacks and these launchers never use.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../cuda/conv_gru.h"
#include "dtype.h"
#endif

namespace vdeblur {
namespace {

using Tensor = at::Tensor;

void check_state(const Tensor& h, const char* op) {
  TORCH_CHECK(h.dim() >= 2 && h.dim() <= 5, "vdeblur::", op, ": h must be (N, C, *spatial) with 0 to 3 spatial dims, got shape ",
              h.sizes());
  TORCH_CHECK(at::isFloatingType(h.scalar_type()), "vdeblur::", op, ": h must be a floating-point tensor, got ",
              h.scalar_type());
  TORCH_CHECK(h.numel() > 0, "vdeblur::", op, ": h must not be empty, got shape ", h.sizes());
}

// t must be (N, k*C, *spatial) for h (N, C, *spatial), with h's dtype and device.
void check_like(const Tensor& t, const char* name, const Tensor& h, int64_t k, const char* op) {
  auto want = h.sizes().vec();
  want[1] *= k;
  TORCH_CHECK(t.sizes() == at::IntArrayRef(want), "vdeblur::", op, ": ", name, " must have shape ",
              at::IntArrayRef(want),
              " (", k, " x the channels of h ", h.sizes(), "), got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == h.scalar_type(), "vdeblur::", op, ": ", name, " has dtype ", t.scalar_type(),
              " but h has ", h.scalar_type());
  TORCH_CHECK(t.device() == h.device(), "vdeblur::", op, ": ", name, " is on ", t.device(), " but h is on ",
              h.device());
}

using cpu::GruLayout;

// The layout of a call follows h (as torch's element-wise ops follow their input): pixel-major
// when h is channels_last (and not also contiguous, as it is when C == 1 or S == 1), else
// channel-major. Kernels read both in place (cpu/conv_gru.h).
GruLayout layout_of(const Tensor& h) {
  const int64_t N = h.size(0), C = h.size(1), S = h.numel() / (N * C);
  if (cpu::pixel_stride(h) >= 0 && !h.select(0, 0).is_contiguous()) return {N * S, C, true};
  return {N, C * S, false};
}

// A tensor already in the call's layout is read in place: channel-major needs a contiguous
// per-sample block (a channel slice of a conv output has one) with any batch stride, pixel-major
// adjacent channels at one pixel stride (a channel slice of a channels_last output). Anything else
// is copied once into the layout.
Tensor readable(const Tensor& t, const GruLayout& l) {
  if (l.pixel_major) return cpu::pixel_stride(t) >= 0 ? t : t.movedim(1, -1).contiguous().movedim(-1, 1);
  return t.select(0, 0).is_contiguous() ? t : t.contiguous();
}

// Outputs, dense in the call's layout. On CPU they come from the buffer cache: the 2C-4C
// gradients and workspace are above glibc's mmap threshold at real sizes, and fresh pages cost
// more than the kernels (cpu/buffer_cache.h).
Tensor like(const Tensor& h, const GruLayout& l, int64_t k = 1) {
  auto sizes = h.sizes().vec();
  sizes[1] *= k;
  if (!l.pixel_major) return cpu::empty_output(sizes, h.options());
  std::vector<int64_t> pixel_sizes{sizes[0]};  // (N, *spatial, kC), channels innermost
  pixel_sizes.insert(pixel_sizes.end(), sizes.begin() + 2, sizes.end());
  pixel_sizes.push_back(sizes[1]);
  return cpu::empty_output(pixel_sizes, h.options()).movedim(-1, 1);
}

Tensor nothing(const Tensor& h) { return at::empty({0}, h.options()); }

// ---- shared by both devices: checks, layouts and allocations; `Run` launches the kernel -------

template <typename Run>
std::tuple<Tensor, Tensor, Tensor> reset_impl(const Tensor& gx_zr, const Tensor& gh_zr, const Tensor& h_in, bool save,
                                              Run run) {
  const char* op = "conv_gru_reset";
  check_state(h_in, op);
  check_like(gx_zr, "gx_zr", h_in, 2, op);
  check_like(gh_zr, "gh_zr", h_in, 2, op);
  const GruLayout l = layout_of(h_in);
  const Tensor h = readable(h_in, l);
  Tensor z = like(h, l), rh = like(h, l), r = save ? like(h, l) : nothing(h);
  run(l, readable(gx_zr, l), readable(gh_zr, l), h, z, rh, save ? r : Tensor());
  return {z, rh, r};
}

template <typename Run>
std::tuple<Tensor, Tensor> reset_backward_impl(const Tensor& grad_z, const Tensor& grad_rh, const Tensor& z,
                                               const Tensor& r, const Tensor& h_in, Run run) {
  const char* op = "conv_gru_reset_backward";
  check_state(h_in, op);
  check_like(grad_z, "grad_z", h_in, 1, op);
  check_like(grad_rh, "grad_rh", h_in, 1, op);
  check_like(z, "z", h_in, 1, op);
  check_like(r, "r", h_in, 1, op);
  const GruLayout l = layout_of(h_in);
  const Tensor h = readable(h_in, l);
  Tensor grad_zr = like(h, l, 2), grad_h = like(h, l);
  run(l, readable(grad_z, l), readable(grad_rh, l), readable(z, l), readable(r, l), h, grad_zr, grad_h);
  return {grad_zr, grad_h};
}

template <typename Run>
std::tuple<Tensor, Tensor> update_impl(const Tensor& z, const Tensor& gx_n, const Tensor& gh_n, const Tensor& h_in,
                                       bool save, Run run) {
  const char* op = "conv_gru_update";
  check_state(h_in, op);
  check_like(z, "z", h_in, 1, op);
  check_like(gx_n, "gx_n", h_in, 1, op);
  check_like(gh_n, "gh_n", h_in, 1, op);
  const GruLayout l = layout_of(h_in);
  const Tensor h = readable(h_in, l);
  Tensor h_new = like(h, l), h_hat = save ? like(h, l) : nothing(h);
  run(l, readable(z, l), readable(gx_n, l), readable(gh_n, l), h, h_new, save ? h_hat : Tensor());
  return {h_new, h_hat};
}

template <typename Run>
std::tuple<Tensor, Tensor, Tensor> update_backward_impl(const Tensor& grad, const Tensor& z, const Tensor& h_hat,
                                                        const Tensor& h_in, Run run) {
  const char* op = "conv_gru_update_backward";
  check_state(h_in, op);
  check_like(grad, "grad", h_in, 1, op);
  check_like(z, "z", h_in, 1, op);
  check_like(h_hat, "h_hat", h_in, 1, op);
  const GruLayout l = layout_of(h_in);
  const Tensor h = readable(h_in, l);
  Tensor grad_z = like(h, l), grad_n = like(h, l), grad_h = like(h, l);
  run(l, readable(grad, l), readable(z, l), readable(h_hat, l), h, grad_z, grad_n, grad_h);
  return {grad_z, grad_n, grad_h};
}

template <typename Run>
std::tuple<Tensor, Tensor> gates_impl(const Tensor& gx, const Tensor& gh, const Tensor& h_in, bool save, Run run) {
  const char* op = "conv_gru_gates";
  check_state(h_in, op);
  check_like(gx, "gx", h_in, 3, op);
  check_like(gh, "gh", h_in, 3, op);
  const GruLayout l = layout_of(h_in);
  const Tensor h = readable(h_in, l);
  Tensor h_new = like(h, l), workspace = save ? like(h, l, 4) : nothing(h);
  run(l, readable(gx, l), readable(gh, l), h, h_new, save ? workspace : Tensor());
  return {h_new, workspace};
}

template <typename Run>
std::tuple<Tensor, Tensor, Tensor> gates_backward_impl(const Tensor& grad, const Tensor& workspace, const Tensor& h_in,
                                                       Run run) {
  const char* op = "conv_gru_gates_backward";
  check_state(h_in, op);
  check_like(grad, "grad", h_in, 1, op);
  check_like(workspace, "workspace", h_in, 4, op);
  const GruLayout l = layout_of(h_in);
  const Tensor h = readable(h_in, l);
  Tensor grad_gx = like(h, l, 3), grad_gh = like(h, l, 3), grad_h = like(h, l);
  run(l, readable(grad, l), readable(workspace, l), h, grad_gx, grad_gh, grad_h);
  return {grad_gx, grad_gh, grad_h};
}

// ---- CPU ---------------------------------------------------------------------------------------

std::tuple<Tensor, Tensor, Tensor> reset_cpu(const Tensor& gx_zr, const Tensor& gh_zr, const Tensor& h, bool save) {
  return reset_impl(gx_zr, gh_zr, h, save, cpu::conv_gru_reset);
}
std::tuple<Tensor, Tensor> reset_backward_cpu(const Tensor& grad_z, const Tensor& grad_rh, const Tensor& z,
                                              const Tensor& r, const Tensor& h) {
  return reset_backward_impl(grad_z, grad_rh, z, r, h, cpu::conv_gru_reset_backward);
}
std::tuple<Tensor, Tensor> update_cpu(const Tensor& z, const Tensor& gx_n, const Tensor& gh_n, const Tensor& h,
                                      bool save) {
  return update_impl(z, gx_n, gh_n, h, save, cpu::conv_gru_update);
}
std::tuple<Tensor, Tensor, Tensor> update_backward_cpu(const Tensor& grad, const Tensor& z, const Tensor& h_hat,
                                                       const Tensor& h) {
  return update_backward_impl(grad, z, h_hat, h, cpu::conv_gru_update_backward);
}
std::tuple<Tensor, Tensor> gates_cpu(const Tensor& gx, const Tensor& gh, const Tensor& h, bool save) {
  return gates_impl(gx, gh, h, save, cpu::conv_gru_gates);
}
std::tuple<Tensor, Tensor, Tensor> gates_backward_cpu(const Tensor& grad, const Tensor& workspace, const Tensor& h) {
  return gates_backward_impl(grad, workspace, h, cpu::conv_gru_gates_backward);
}

// ---- CUDA --------------------------------------------------------------------------------------

#ifdef VDEBLUR_WITH_CUDA
cuda::GruShape gru_shape(const GruLayout& l) { return {l.outer, l.inner}; }

cuda::In in(const Tensor& t, const GruLayout& l) { return {t.const_data_ptr(), cpu::row_stride(t, l)}; }
void* out(const Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

struct DeviceScope {  // the tensors' device and its current stream
  c10::cuda::CUDAGuard guard;
  cudaStream_t stream;
  explicit DeviceScope(const Tensor& t) : guard(t.device()), stream(c10::cuda::getCurrentCUDAStream()) {}
};

std::tuple<Tensor, Tensor, Tensor> reset_cuda(const Tensor& gx_zr, const Tensor& gh_zr, const Tensor& h, bool save) {
  return reset_impl(gx_zr, gh_zr, h, save,
                    [](const GruLayout& l, const Tensor& gx, const Tensor& gh, const Tensor& hh, const Tensor& z,
                       const Tensor& rh, const Tensor& r) {
                      DeviceScope scope(hh);
                      C10_CUDA_CHECK(cuda::conv_gru_reset(to_dtype(hh.scalar_type()), gru_shape(l), in(gx, l),
                                                          in(gh, l), in(hh, l), out(z), out(rh), out(r),
                                                          scope.stream));
                    });
}
std::tuple<Tensor, Tensor> reset_backward_cuda(const Tensor& grad_z, const Tensor& grad_rh, const Tensor& z,
                                               const Tensor& r, const Tensor& h) {
  return reset_backward_impl(grad_z, grad_rh, z, r, h,
                             [](const GruLayout& l, const Tensor& gz, const Tensor& grh, const Tensor& zz,
                                const Tensor& rr, const Tensor& hh, const Tensor& gzr, const Tensor& gh) {
                               DeviceScope scope(hh);
                               C10_CUDA_CHECK(cuda::conv_gru_reset_backward(
                                   to_dtype(hh.scalar_type()), gru_shape(l), in(gz, l), in(grh, l), in(zz, l),
                                   in(rr, l), in(hh, l), out(gzr), out(gh), scope.stream));
                             });
}
std::tuple<Tensor, Tensor> update_cuda(const Tensor& z, const Tensor& gx_n, const Tensor& gh_n, const Tensor& h,
                                       bool save) {
  return update_impl(z, gx_n, gh_n, h, save,
                     [](const GruLayout& l, const Tensor& zz, const Tensor& gx, const Tensor& gh, const Tensor& hh,
                        const Tensor& h_new, const Tensor& h_hat) {
                       DeviceScope scope(hh);
                       C10_CUDA_CHECK(cuda::conv_gru_update(to_dtype(hh.scalar_type()), gru_shape(l), in(zz, l),
                                                            in(gx, l), in(gh, l), in(hh, l), out(h_new),
                                                            out(h_hat), scope.stream));
                     });
}
std::tuple<Tensor, Tensor, Tensor> update_backward_cuda(const Tensor& grad, const Tensor& z, const Tensor& h_hat,
                                                        const Tensor& h) {
  return update_backward_impl(grad, z, h_hat, h,
                              [](const GruLayout& l, const Tensor& g, const Tensor& zz, const Tensor& hh_hat,
                                 const Tensor& hh, const Tensor& gz, const Tensor& gn, const Tensor& gh) {
                                DeviceScope scope(hh);
                                C10_CUDA_CHECK(cuda::conv_gru_update_backward(
                                    to_dtype(hh.scalar_type()), gru_shape(l), in(g, l), in(zz, l), in(hh_hat, l),
                                    in(hh, l), out(gz), out(gn), out(gh), scope.stream));
                              });
}
std::tuple<Tensor, Tensor> gates_cuda(const Tensor& gx, const Tensor& gh, const Tensor& h, bool save) {
  return gates_impl(gx, gh, h, save,
                    [](const GruLayout& l, const Tensor& x, const Tensor& u, const Tensor& hh, const Tensor& h_new,
                       const Tensor& ws) {
                      DeviceScope scope(hh);
                      C10_CUDA_CHECK(cuda::conv_gru_gates(to_dtype(hh.scalar_type()), gru_shape(l), in(x, l),
                                                          in(u, l), in(hh, l), out(h_new), out(ws), scope.stream));
                    });
}
std::tuple<Tensor, Tensor, Tensor> gates_backward_cuda(const Tensor& grad, const Tensor& workspace, const Tensor& h) {
  return gates_backward_impl(grad, workspace, h,
                             [](const GruLayout& l, const Tensor& g, const Tensor& ws, const Tensor& hh,
                                const Tensor& gx, const Tensor& gu, const Tensor& gh) {
                               DeviceScope scope(hh);
                               C10_CUDA_CHECK(cuda::conv_gru_gates_backward(
                                   to_dtype(hh.scalar_type()), gru_shape(l), in(g, l), in(ws, l), in(hh, l),
                                   out(gx), out(gu), out(gh), scope.stream));
                             });
}
#endif

}  // namespace
}  // namespace vdeblur

TORCH_LIBRARY_FRAGMENT(vdeblur, m) {
  VDEBLUR_DEFINE_CPU_CACHE_OPS(m, "conv_gru");
  m.def("conv_gru_reset(Tensor gx_zr, Tensor gh_zr, Tensor h, bool save) -> (Tensor, Tensor, Tensor)");
  m.def("conv_gru_reset_backward(Tensor grad_z, Tensor grad_rh, Tensor z, Tensor r, Tensor h) -> (Tensor, Tensor)");
  m.def("conv_gru_update(Tensor z, Tensor gx_n, Tensor gh_n, Tensor h, bool save) -> (Tensor, Tensor)");
  m.def("conv_gru_update_backward(Tensor grad, Tensor z, Tensor h_hat, Tensor h) -> (Tensor, Tensor, Tensor)");
  m.def("conv_gru_gates(Tensor gx, Tensor gh, Tensor h, bool save) -> (Tensor, Tensor)");
  m.def("conv_gru_gates_backward(Tensor grad, Tensor workspace, Tensor h) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(vdeblur, CPU, m) {
  m.impl("conv_gru_reset", &vdeblur::reset_cpu);
  m.impl("conv_gru_reset_backward", &vdeblur::reset_backward_cpu);
  m.impl("conv_gru_update", &vdeblur::update_cpu);
  m.impl("conv_gru_update_backward", &vdeblur::update_backward_cpu);
  m.impl("conv_gru_gates", &vdeblur::gates_cpu);
  m.impl("conv_gru_gates_backward", &vdeblur::gates_backward_cpu);
}

#ifdef VDEBLUR_WITH_CUDA
TORCH_LIBRARY_IMPL(vdeblur, CUDA, m) {
  m.impl("conv_gru_reset", &vdeblur::reset_cuda);
  m.impl("conv_gru_reset_backward", &vdeblur::reset_backward_cuda);
  m.impl("conv_gru_update", &vdeblur::update_cuda);
  m.impl("conv_gru_update_backward", &vdeblur::update_backward_cuda);
  m.impl("conv_gru_gates", &vdeblur::gates_cuda);
  m.impl("conv_gru_gates_backward", &vdeblur::gates_backward_cuda);
}
#endif
