// CUDA ConvGRU gates: element-wise, grid-stride, 16-byte loads and stores where every pointer,
// row stride and the row's chunk size allow it (else one element per step). A row is a sample
// (contiguous tensors) or a pixel (channels_last: the C channels of one chunk are adjacent), so the
// same kernels read both layouts in place (conv_gru.h). The element
// maths is vdeblur/conv_gru.h, shared with the CPU kernels; reduced precision computes in float.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include "conv_gru.h"
#include "element_types.cuh"
#include "vdeblur/conv_gru.h"

namespace vdeblur {
namespace cuda {
namespace {

namespace m = conv_gru;

// V consecutive elements, moved as one 16-byte access when V * sizeof(T) == 16.
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <int V, typename T>
__device__ __forceinline__ Pack<T, V> load(const T* p) { return *reinterpret_cast<const Pack<T, V>*>(p); }
template <int V, typename T>
__device__ __forceinline__ void store(T* p, const Pack<T, V>& x) { *reinterpret_cast<Pack<T, V>*>(p) = x; }

// ---- one functor per op: run<V>(n, i, CS) handles elements i..i+V-1 of row n ------------------
// (CS: elements per chunk of a row; s_*: the inputs' row strides; outputs are dense, k * CS a row)

template <typename T>
struct ResetOp {
  const T *gx, *gh, *h;
  int64_t s_gx, s_gh, s_h;
  T *z, *rh, *r;
  template <int V>
  __device__ __forceinline__ void run(int64_t n, int64_t i, int64_t CS) const {
    const T* x = gx + n * s_gx + i;
    const T* u = gh + n * s_gh + i;
    const auto xz = load<V>(x), xr = load<V>(x + CS), uz = load<V>(u), ur = load<V>(u + CS);
    const auto hv = load<V>(h + n * s_h + i);
    Pack<T, V> oz, orh, orr;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      typename AccOf<T>::type a, b, c;
      m::reset_forward(to_acc(xz.v[k]), to_acc(xr.v[k]), to_acc(uz.v[k]), to_acc(ur.v[k]), to_acc(hv.v[k]), a, b, c);
      oz.v[k] = from_acc<T>(a);
      orr.v[k] = from_acc<T>(b);
      orh.v[k] = from_acc<T>(c);
    }
    const int64_t o = n * CS + i;
    store(z + o, oz);
    store(rh + o, orh);
    if (r != nullptr) store(r + o, orr);
  }
};

template <typename T>
struct ResetBackwardOp {
  const T *gz, *grh, *z, *r, *h;
  int64_t s_gz, s_grh, s_z, s_r, s_h;
  T *ga, *gh;
  template <int V>
  __device__ __forceinline__ void run(int64_t n, int64_t i, int64_t CS) const {
    const auto g1 = load<V>(gz + n * s_gz + i), g2 = load<V>(grh + n * s_grh + i);
    const auto zv = load<V>(z + n * s_z + i), rv = load<V>(r + n * s_r + i), hv = load<V>(h + n * s_h + i);
    Pack<T, V> oz, orr, oh;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      typename AccOf<T>::type a, b, c;
      m::reset_backward(to_acc(g1.v[k]), to_acc(g2.v[k]), to_acc(zv.v[k]), to_acc(rv.v[k]), to_acc(hv.v[k]), a, b, c);
      oz.v[k] = from_acc<T>(a);
      orr.v[k] = from_acc<T>(b);
      oh.v[k] = from_acc<T>(c);
    }
    store(ga + n * 2 * CS + i, oz);
    store(ga + n * 2 * CS + CS + i, orr);
    store(gh + n * CS + i, oh);
  }
};

template <typename T>
struct UpdateOp {
  const T *z, *gx, *gh, *h;
  int64_t s_z, s_gx, s_gh, s_h;
  T *out, *h_hat;
  template <int V>
  __device__ __forceinline__ void run(int64_t n, int64_t i, int64_t CS) const {
    const auto zv = load<V>(z + n * s_z + i), xv = load<V>(gx + n * s_gx + i);
    const auto uv = load<V>(gh + n * s_gh + i), hv = load<V>(h + n * s_h + i);
    Pack<T, V> oo, oh;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      typename AccOf<T>::type a, b;
      m::update_forward(to_acc(zv.v[k]), to_acc(xv.v[k]), to_acc(uv.v[k]), to_acc(hv.v[k]), a, b);
      oo.v[k] = from_acc<T>(a);
      oh.v[k] = from_acc<T>(b);
    }
    store(out + n * CS + i, oo);
    if (h_hat != nullptr) store(h_hat + n * CS + i, oh);
  }
};

template <typename T>
struct UpdateBackwardOp {
  const T *g, *z, *h_hat, *h;
  int64_t s_g, s_z, s_hh, s_h;
  T *gz, *gn, *gh;
  template <int V>
  __device__ __forceinline__ void run(int64_t n, int64_t i, int64_t CS) const {
    const auto gv = load<V>(g + n * s_g + i), zv = load<V>(z + n * s_z + i);
    const auto hh = load<V>(h_hat + n * s_hh + i), hv = load<V>(h + n * s_h + i);
    Pack<T, V> o1, o2, o3;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      typename AccOf<T>::type a, b, c;
      m::update_backward(to_acc(gv.v[k]), to_acc(zv.v[k]), to_acc(hh.v[k]), to_acc(hv.v[k]), a, b, c);
      o1.v[k] = from_acc<T>(a);
      o2.v[k] = from_acc<T>(b);
      o3.v[k] = from_acc<T>(c);
    }
    const int64_t o = n * CS + i;
    store(gz + o, o1);
    store(gn + o, o2);
    store(gh + o, o3);
  }
};

template <typename T>
struct GatesOp {
  const T *gx, *gh, *h;
  int64_t s_gx, s_gh, s_h;
  T *out, *ws;
  template <int V>
  __device__ __forceinline__ void run(int64_t n, int64_t i, int64_t CS) const {
    const T* x = gx + n * s_gx + i;
    const T* u = gh + n * s_gh + i;
    const auto xz = load<V>(x), xr = load<V>(x + CS), xn = load<V>(x + 2 * CS);
    const auto uz = load<V>(u), ur = load<V>(u + CS), un = load<V>(u + 2 * CS);
    const auto hv = load<V>(h + n * s_h + i);
    Pack<T, V> oo, oz, orr, oh;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      typename AccOf<T>::type a, b, c, d;
      m::gates_forward(to_acc(xz.v[k]), to_acc(xr.v[k]), to_acc(xn.v[k]), to_acc(uz.v[k]), to_acc(ur.v[k]),
                       to_acc(un.v[k]), to_acc(hv.v[k]), a, b, c, d);
      oo.v[k] = from_acc<T>(a);
      oz.v[k] = from_acc<T>(b);
      orr.v[k] = from_acc<T>(c);
      oh.v[k] = from_acc<T>(d);
    }
    store(out + n * CS + i, oo);
    if (ws != nullptr) {
      T* w = ws + n * 4 * CS + i;
      store(w, oz);
      store(w + CS, orr);
      store(w + 2 * CS, oh);
      store(w + 3 * CS, un);
    }
  }
};

template <typename T>
struct GatesBackwardOp {
  const T *g, *ws, *h;
  int64_t s_g, s_ws, s_h;
  T *gx, *gu, *gh;
  template <int V>
  __device__ __forceinline__ void run(int64_t n, int64_t i, int64_t CS) const {
    const T* w = ws + n * s_ws + i;
    const auto gv = load<V>(g + n * s_g + i), hv = load<V>(h + n * s_h + i);
    const auto zv = load<V>(w), rv = load<V>(w + CS), hh = load<V>(w + 2 * CS), un = load<V>(w + 3 * CS);
    Pack<T, V> az, ar, an, aun, ah;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      typename AccOf<T>::type a, b, c, d, e;
      m::gates_backward(to_acc(gv.v[k]), to_acc(zv.v[k]), to_acc(rv.v[k]), to_acc(hh.v[k]), to_acc(un.v[k]),
                        to_acc(hv.v[k]), a, b, c, d, e);
      az.v[k] = from_acc<T>(a);
      ar.v[k] = from_acc<T>(b);
      an.v[k] = from_acc<T>(c);
      aun.v[k] = from_acc<T>(d);
      ah.v[k] = from_acc<T>(e);
    }
    T* px = gx + n * 3 * CS + i;
    T* pu = gu + n * 3 * CS + i;
    store(px, az);
    store(pu, az);
    store(px + CS, ar);
    store(pu + CS, ar);
    store(px + 2 * CS, an);
    store(pu + 2 * CS, aun);
    store(gh + n * CS + i, ah);
  }
};

// ---- launch ------------------------------------------------------------------------------------

constexpr int kThreads = 256;

template <int V, typename Op>
__global__ void __launch_bounds__(kThreads) elementwise_kernel(Op op, int64_t CS, int64_t groups) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups; g += step) {
    const int64_t e = g * V;  // CS % V == 0, so the V elements share one row
    const int64_t n = e / CS;
    op.template run<V>(n, e - n * CS, CS);
  }
}

// Enough blocks to cover the tensor, capped at a few waves of resident blocks; the grid-stride
// loop covers the rest (tensors of any size, 64-bit indices).
template <int V, typename Op>
cudaError_t run_kernel(const Op& op, int64_t CS, int64_t groups, cudaStream_t stream) {
  int device = 0, sms = 0, per_sm = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess) {
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, elementwise_kernel<V, Op>, kThreads, 0);
  }
  if (err != cudaSuccess) return err;
  const int64_t cap = static_cast<int64_t>(sms) * std::max(per_sm, 1) * 4;
  const int blocks = static_cast<int>(std::max<int64_t>(1, std::min(ceil_div(groups, kThreads), cap)));
  elementwise_kernel<V><<<blocks, kThreads, 0, stream>>>(op, CS, groups);
  return cudaGetLastError();
}

bool aligned(const void* p, int64_t bytes) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % bytes == 0; }

template <typename T, typename Op>
cudaError_t launch(const Op& op, GruShape s, std::initializer_list<const void*> ptrs,
                   std::initializer_list<int64_t> strides, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const int64_t CS = s.inner, total = s.outer * CS;
  bool vec = CS % kVec == 0;
  for (const void* p : ptrs) vec = vec && aligned(p, 16);
  for (int64_t st : strides) vec = vec && st % kVec == 0;
  const int64_t groups = vec ? total / kVec : total;
  return vec ? run_kernel<kVec>(op, CS, groups, stream) : run_kernel<1>(op, CS, groups, stream);
}

// Calls f(T{}) with T the element type of dtype.
template <typename F>
cudaError_t dispatch(DType dtype, F f) {
  switch (dtype) {
    case DType::Float32: return f(float{});
    case DType::Float64: return f(double{});
    case DType::Float16: return f(__half{});
    case DType::BFloat16: return f(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

template <typename T>
const T* cp(In t) { return static_cast<const T*>(t.ptr); }

}  // namespace

cudaError_t conv_gru_reset(DType dtype, GruShape s, In gx_zr, In gh_zr, In h, void* z, void* rh, void* r,
                           cudaStream_t stream) {
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    const ResetOp<T> op{cp<T>(gx_zr), cp<T>(gh_zr), cp<T>(h), gx_zr.row_stride, gh_zr.row_stride, h.row_stride,
                        static_cast<T*>(z), static_cast<T*>(rh), static_cast<T*>(r)};
    return launch<T>(op, s, {gx_zr.ptr, gh_zr.ptr, h.ptr, z, rh, r},
                     {gx_zr.row_stride, gh_zr.row_stride, h.row_stride}, stream);
  });
}

cudaError_t conv_gru_reset_backward(DType dtype, GruShape s, In grad_z, In grad_rh, In z, In r, In h, void* grad_zr,
                                    void* grad_h, cudaStream_t stream) {
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    const ResetBackwardOp<T> op{cp<T>(grad_z), cp<T>(grad_rh), cp<T>(z), cp<T>(r), cp<T>(h),
                                grad_z.row_stride, grad_rh.row_stride, z.row_stride, r.row_stride,
                                h.row_stride, static_cast<T*>(grad_zr), static_cast<T*>(grad_h)};
    return launch<T>(op, s, {grad_z.ptr, grad_rh.ptr, z.ptr, r.ptr, h.ptr, grad_zr, grad_h},
                     {grad_z.row_stride, grad_rh.row_stride, z.row_stride, r.row_stride, h.row_stride},
                     stream);
  });
}

cudaError_t conv_gru_update(DType dtype, GruShape s, In z, In gx_n, In gh_n, In h, void* h_new, void* h_hat,
                            cudaStream_t stream) {
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    const UpdateOp<T> op{cp<T>(z), cp<T>(gx_n), cp<T>(gh_n), cp<T>(h), z.row_stride, gx_n.row_stride,
                         gh_n.row_stride, h.row_stride, static_cast<T*>(h_new), static_cast<T*>(h_hat)};
    return launch<T>(op, s, {z.ptr, gx_n.ptr, gh_n.ptr, h.ptr, h_new, h_hat},
                     {z.row_stride, gx_n.row_stride, gh_n.row_stride, h.row_stride}, stream);
  });
}

cudaError_t conv_gru_update_backward(DType dtype, GruShape s, In grad, In z, In h_hat, In h, void* grad_z,
                                     void* grad_n, void* grad_h, cudaStream_t stream) {
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    const UpdateBackwardOp<T> op{cp<T>(grad), cp<T>(z), cp<T>(h_hat), cp<T>(h), grad.row_stride, z.row_stride,
                                 h_hat.row_stride, h.row_stride, static_cast<T*>(grad_z),
                                 static_cast<T*>(grad_n), static_cast<T*>(grad_h)};
    return launch<T>(op, s, {grad.ptr, z.ptr, h_hat.ptr, h.ptr, grad_z, grad_n, grad_h},
                     {grad.row_stride, z.row_stride, h_hat.row_stride, h.row_stride}, stream);
  });
}

cudaError_t conv_gru_gates(DType dtype, GruShape s, In gx, In gh, In h, void* h_new, void* workspace,
                           cudaStream_t stream) {
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    const GatesOp<T> op{cp<T>(gx), cp<T>(gh), cp<T>(h), gx.row_stride, gh.row_stride, h.row_stride,
                        static_cast<T*>(h_new), static_cast<T*>(workspace)};
    return launch<T>(op, s, {gx.ptr, gh.ptr, h.ptr, h_new, workspace},
                     {gx.row_stride, gh.row_stride, h.row_stride}, stream);
  });
}

cudaError_t conv_gru_gates_backward(DType dtype, GruShape s, In grad, In workspace, In h, void* grad_gx,
                                    void* grad_gh, void* grad_h, cudaStream_t stream) {
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    const GatesBackwardOp<T> op{cp<T>(grad), cp<T>(workspace), cp<T>(h), grad.row_stride,
                                workspace.row_stride, h.row_stride, static_cast<T*>(grad_gx),
                                static_cast<T*>(grad_gh), static_cast<T*>(grad_h)};
    return launch<T>(op, s, {grad.ptr, workspace.ptr, h.ptr, grad_gx, grad_gh, grad_h},
                     {grad.row_stride, workspace.row_stride, h.row_stride}, stream);
  });
}

}  // namespace cuda
}  // namespace vdeblur
