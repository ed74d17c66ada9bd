// Schemas and CPU / CUDA registrations of the Haar ops. The Python API (vdeblur_ops/ops/haar.py)
// maps norm= onto the per-level butterfly scale and adds fake impls and autograd.
//
//   haar_dwt2d(x, levels, scale, band_layout) -> [ll, highs_0 (finest), ..., highs_{L-1}]
//   haar_idwt2d(ll, highs, scale, band_layout, output_size) -> x
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu_cache_ops.h"
#include "../cpu/haar.h"
#include "vdeblur/haar.h"

#ifdef VDEBLUR_WITH_CUDA
// Only c10/cuda (guard, stream, error check): ATen/cuda/CUDAContext.h would pull in cuSPARSE /
// cuBLAS headers that a minimal toolkit lacks and these launchers never use.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../cuda/haar.h"
#include "dtype.h"
#endif

namespace vdeblur {
namespace {

void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "vdeblur::haar: ", name,
              " must be a floating-point tensor, got ", t.scalar_type());
  TORCH_CHECK(t.numel() > 0, "vdeblur::haar: ", name, " must not be empty, got shape ", t.sizes());
}

std::vector<at::Tensor> dwt_outputs(const at::Tensor& x, int64_t levels, bool band_layout) {
  TORCH_CHECK(x.dim() == 4, "vdeblur::haar_dwt2d: x must be (N, C, H, W), got shape ", x.sizes());
  check_float(x, "x");
  TORCH_CHECK(levels >= 1 && levels <= haar::kMaxLevels, "vdeblur::haar_dwt2d: levels must be in [1, ",
              haar::kMaxLevels, "], got ", levels);
  const int64_t N = x.size(0), C = x.size(1);
  int64_t h = x.size(2), w = x.size(3);
  std::vector<at::Tensor> outs(levels + 1);
  for (int64_t l = 0; l < levels; ++l) {
    h = (h + 1) / 2;
    w = (w + 1) / 2;
    outs[l + 1] = band_layout ? cpu::empty_output({N, 3, C, h, w}, x.options())
                              : cpu::empty_output({N, C, 3, h, w}, x.options());
  }
  outs[0] = cpu::empty_output({N, C, h, w}, x.options());
  return outs;
}

void check_idwt(const at::Tensor& ll, const at::TensorList highs, bool band_layout, at::IntArrayRef output_size) {
  TORCH_CHECK(ll.dim() == 4, "vdeblur::haar_idwt2d: ll must be (N, C, h, w), got shape ", ll.sizes());
  check_float(ll, "ll");
  TORCH_CHECK(!highs.empty() && highs.size() <= haar::kMaxLevels,
              "vdeblur::haar_idwt2d: highs must hold 1 to ", haar::kMaxLevels, " tensors, got ", highs.size());
  TORCH_CHECK(output_size.size() == 2, "vdeblur::haar_idwt2d: output_size must be (H, W)");
  const int64_t N = ll.size(0), C = ll.size(1);
  for (size_t l = 0; l < highs.size(); ++l) {
    const auto& t = highs[l];
    TORCH_CHECK(t.dim() == 5 && t.size(0) == N && t.size(band_layout ? 1 : 2) == 3 &&
                    t.size(band_layout ? 2 : 1) == C,
                "vdeblur::haar_idwt2d: highs[", l, "] must be ", band_layout ? "(N, 3, C, h, w)" : "(N, C, 3, h, w)",
                " with N=", N, " C=", C, ", got shape ", t.sizes());
    TORCH_CHECK(t.scalar_type() == ll.scalar_type() && t.device() == ll.device(),
                "vdeblur::haar_idwt2d: highs[", l, "] must match ll's dtype and device");
    const int64_t want_h = l == 0 ? (output_size[0] + 1) / 2 : (highs[l - 1].size(3) + 1) / 2;
    const int64_t want_w = l == 0 ? (output_size[1] + 1) / 2 : (highs[l - 1].size(4) + 1) / 2;
    TORCH_CHECK(t.size(3) == want_h && t.size(4) == want_w, "vdeblur::haar_idwt2d: highs[", l,
                "] must be ", want_h, "x", want_w, " to match the finer level, got ", t.sizes());
  }
  const auto& last = highs.back();
  TORCH_CHECK(ll.size(2) == last.size(3) && ll.size(3) == last.size(4),
              "vdeblur::haar_idwt2d: ll must be as large as highs[-1] (", last.size(3), "x", last.size(4),
              "), got ", ll.sizes());
}

std::vector<at::Tensor> contiguous_all(at::TensorList ts) {
  std::vector<at::Tensor> out;
  for (const auto& t : ts) out.push_back(t.contiguous());
  return out;
}

// ---- shared by both devices: checks, contiguous inputs and outputs; `Run` launches the kernel ----
// Outputs come from cpu::empty_output: the buffer cache on CPU, at::empty on CUDA.

template <typename Run>
std::vector<at::Tensor> dwt_impl(const at::Tensor& x_in, int64_t levels, double scale, bool band_layout, Run run) {
  auto outs = dwt_outputs(x_in, levels, band_layout);
  const auto x = x_in.contiguous();
  run(x, outs[0], std::vector<at::Tensor>(outs.begin() + 1, outs.end()), scale, band_layout);
  return outs;
}

template <typename Run>
at::Tensor idwt_impl(const at::Tensor& ll_in, at::TensorList highs_in, double scale, bool band_layout,
                     at::IntArrayRef output_size, Run run) {
  check_idwt(ll_in, highs_in, band_layout, output_size);
  const auto ll = ll_in.contiguous();
  const auto highs = contiguous_all(highs_in);
  auto out = cpu::empty_output({ll.size(0), ll.size(1), output_size[0], output_size[1]}, ll.options());
  run(ll, highs, out, scale, band_layout);
  return out;
}

// ---- CPU ---------------------------------------------------------------------------------------

std::vector<at::Tensor> haar_dwt2d_cpu(const at::Tensor& x, int64_t levels, double scale, bool band_layout) {
  return dwt_impl(x, levels, scale, band_layout, cpu::haar_dwt2d);
}

at::Tensor haar_idwt2d_cpu(const at::Tensor& ll, at::TensorList highs, double scale, bool band_layout,
                           at::IntArrayRef output_size) {
  return idwt_impl(ll, highs, scale, band_layout, output_size, cpu::haar_idwt2d);
}

// ---- CUDA --------------------------------------------------------------------------------------

#ifdef VDEBLUR_WITH_CUDA
// The launchers take the level sizes from here; H x W is the finest level's input (x, or out).
cuda::HaarGeometry geometry(int64_t N, int64_t C, int64_t H, int64_t W, int64_t levels, bool band_layout) {
  cuda::HaarGeometry g{};
  g.N = N;
  g.C = C;
  g.levels = static_cast<int>(levels);
  g.band_layout = band_layout;
  for (int l = 0; l < g.levels; ++l) {
    g.in_h[l] = H;
    g.in_w[l] = W;
    H = (H + 1) / 2;
    W = (W + 1) / 2;
    g.h[l] = H;
    g.w[l] = W;
  }
  return g;
}

// What both launches need: the tensors' device and its current stream, the geometry of a
// transform whose finest level is H x W, the dtype and the scratch the launchers ask for.
struct Launch {
  c10::cuda::CUDAGuard guard;
  cuda::HaarGeometry g;
  DType dtype;
  at::Tensor workspace;
  cudaStream_t stream;
  Launch(const at::Tensor& t, int64_t H, int64_t W, size_t levels, bool band_layout)
      : guard(t.device()),
        g(geometry(t.size(0), t.size(1), H, W, static_cast<int64_t>(levels), band_layout)),
        dtype(to_dtype(t.scalar_type())),
        workspace(at::empty({static_cast<int64_t>(cuda::haar_workspace_bytes(g, dtype))},
                            t.options().dtype(at::kByte))),
        stream(c10::cuda::getCurrentCUDAStream()) {}
};

std::vector<at::Tensor> haar_dwt2d_cuda(const at::Tensor& x, int64_t levels, double scale, bool band_layout) {
  return dwt_impl(x, levels, scale, band_layout,
                  [](const at::Tensor& xx, const at::Tensor& ll, const std::vector<at::Tensor>& highs, double s,
                     bool band) {
                    const Launch launch(xx, xx.size(2), xx.size(3), highs.size(), band);
                    std::vector<void*> hi;
                    for (const auto& t : highs) hi.push_back(t.data_ptr());
                    C10_CUDA_CHECK(cuda::haar_dwt2d(launch.dtype, xx.data_ptr(), ll.data_ptr(), hi.data(), launch.g,
                                                    s, launch.workspace.data_ptr(), launch.stream));
                  });
}

at::Tensor haar_idwt2d_cuda(const at::Tensor& ll, at::TensorList highs, double scale, bool band_layout,
                            at::IntArrayRef output_size) {
  return idwt_impl(ll, highs, scale, band_layout, output_size,
                   [](const at::Tensor& lo, const std::vector<at::Tensor>& hs, const at::Tensor& out, double s,
                      bool band) {
                     const Launch launch(lo, out.size(2), out.size(3), hs.size(), band);
                     std::vector<const void*> hi;
                     for (const auto& t : hs) hi.push_back(t.data_ptr());
                     C10_CUDA_CHECK(cuda::haar_idwt2d(launch.dtype, lo.data_ptr(), hi.data(), out.data_ptr(),
                                                      launch.g, s, launch.workspace.data_ptr(), launch.stream));
                   });
}
#endif

}  // namespace
}  // namespace vdeblur

TORCH_LIBRARY_FRAGMENT(vdeblur, m) {
  VDEBLUR_DEFINE_CPU_CACHE_OPS(m, "haar");
  m.def("haar_dwt2d(Tensor x, int levels, float scale, bool band_layout) -> Tensor[]");
  m.def("haar_idwt2d(Tensor ll, Tensor[] highs, float scale, bool band_layout, int[] output_size) -> Tensor");
}

TORCH_LIBRARY_IMPL(vdeblur, CPU, m) {
  m.impl("haar_dwt2d", &vdeblur::haar_dwt2d_cpu);
  m.impl("haar_idwt2d", &vdeblur::haar_idwt2d_cpu);
}

#ifdef VDEBLUR_WITH_CUDA
TORCH_LIBRARY_IMPL(vdeblur, CUDA, m) {
  m.impl("haar_dwt2d", &vdeblur::haar_dwt2d_cuda);
  m.impl("haar_idwt2d", &vdeblur::haar_idwt2d_cuda);
}
#endif
