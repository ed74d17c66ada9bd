// CUDA per-pixel dynamic filter (DESIGN.md 4.2).
//
// forward      one block per (plane, 8 x 32 output tile): the block stages the input tile and its
//              halo in shared memory once, then each thread streams its pixel's K*K filter values
//              (coalesced along x) and accumulates; with filter_scale the filter values come from
//              the low-resolution plane through bilinear_tap (no upsampled tensor). Tiles whose
//              halo would not fit in 48 KiB of shared memory (huge K * dilation) use the direct
//              kernel, which reads x from global memory.
// grad_input   one thread per input pixel gathers the (output pixel, tap) pairs that read it:
//              no atomics.
// grad_weight  one thread per filter value: a dot product over the group's channels. With
//              filter_scale, two gathers through the upsampling's adjoint: rows (computing the
//              full-resolution dot products on the fly) into an (N, G, K*K, hl, Wo) workspace, then
//              columns into (N, G, K*K, hl, wl).
// Index arithmetic is 64-bit wherever a tensor can pass 2^31 elements.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "dynamic_filter.h"
#include "element_types.cuh"

namespace vdeblur {
namespace cuda {
namespace {

using dynamic_filter::BilinearTap;
using dynamic_filter::Geometry;
using dynamic_filter::bilinear_tap;
using dynamic_filter::reader_of;
using dynamic_filter::upsample_weight;

constexpr int kTileW = 32, kTileH = 8, kThreads = kTileW * kTileH;
constexpr size_t kMaxSharedBytes = 48 * 1024;

struct Strides {
  int64_t n, g, t, y, x;
};

// Reads the filter value of tap t at output pixel (oy, ox) of the plane set `base` (= n, group).
// Full resolution: one load. filter_scale > 1: the four low-resolution neighbours, with the
// bilinear offsets / weights `b` computed once per pixel by the caller.
template <typename T>
__device__ __forceinline__ typename AccOf<T>::type filter_value(const T* base, int64_t t, int64_t full_off,
                                                                const BilinearTap<typename AccOf<T>::type>& b,
                                                                const Strides& ws, bool scaled) {
  const T* p = base + t * ws.t;
  if (!scaled) return to_acc(__ldg(p + full_off));
  return b.w00 * to_acc(__ldg(p + b.o00)) + b.w01 * to_acc(__ldg(p + b.o01)) + b.w10 * to_acc(__ldg(p + b.o10)) +
         b.w11 * to_acc(__ldg(p + b.o11));
}

template <typename A>
__device__ __forceinline__ BilinearTap<A> pixel_tap(int64_t oy, int64_t ox, const Strides& ws, const Geometry& g) {
  if (g.scale > 1) return bilinear_tap<A>(oy, ox, ws.y, ws.x, g);
  BilinearTap<A> b{};
  return b;
}

// Forward, input tile + halo in shared memory. KC > 0 fixes K at compile time (unrolled taps).
template <typename T, int KC>
__global__ void __launch_bounds__(kThreads) forward_tiled_kernel(const T* __restrict__ x, const T* __restrict__ w,
                                                                 Strides ws, T* __restrict__ out, Geometry g,
                                                                 int64_t tiles_x) {
  using A = typename AccOf<T>::type;
  extern __shared__ unsigned char smem_raw[];
  A* tile = reinterpret_cast<A*>(smem_raw);
  const int K = KC > 0 ? KC : static_cast<int>(g.K);
  const int64_t plane = blockIdx.x / tiles_x;
  const int64_t ox0 = (blockIdx.x % tiles_x) * kTileW, oy0 = static_cast<int64_t>(blockIdx.y) * kTileH;
  // The tile fits in 48 KiB of shared memory (checked by the launcher), so 32-bit tile indices.
  const int tile_h = static_cast<int>((kTileH - 1) * g.stride + (K - 1) * g.dil + 1);
  const int tile_w = static_cast<int>((kTileW - 1) * g.stride + (K - 1) * g.dil + 1);
  const int64_t iy0 = oy0 * g.stride - g.pad, ix0 = ox0 * g.stride - g.pad;
  const T* xp = x + plane * g.H * g.W;
  const int tid = threadIdx.y * kTileW + threadIdx.x;
  for (int idx = tid; idx < tile_h * tile_w; idx += kThreads) {
    const int64_t iy = iy0 + idx / tile_w, ix = ix0 + idx % tile_w;
    tile[idx] = (iy >= 0 && iy < g.H && ix >= 0 && ix < g.W) ? to_acc(__ldg(xp + iy * g.W + ix)) : A(0);
  }
  __syncthreads();
  const int64_t oy = oy0 + threadIdx.y, ox = ox0 + threadIdx.x;
  if (oy >= g.Ho || ox >= g.Wo) return;
  const int64_t n = plane / g.C, gi = (plane % g.C) / (g.C / g.G);
  const T* wb = w + n * ws.n + gi * ws.g;
  const bool scaled = g.scale > 1;
  const BilinearTap<A> b = pixel_tap<A>(oy, ox, ws, g);
  const int64_t full_off = oy * ws.y + ox * ws.x;
  const A* trow = tile + threadIdx.y * g.stride * tile_w + threadIdx.x * g.stride;
  A acc = A(0);
#pragma unroll(KC > 0 ? KC : 1)
  for (int i = 0; i < K; ++i) {
#pragma unroll(KC > 0 ? KC : 1)
    for (int j = 0; j < K; ++j) {
      acc += filter_value(wb, i * K + j, full_off, b, ws, scaled) * trow[i * g.dil * tile_w + j * g.dil];
    }
  }
  out[plane * g.Ho * g.Wo + oy * g.Wo + ox] = from_acc<T>(acc);
}

// Forward, reading x from global memory (halos too large for shared memory).
template <typename T>
__global__ void forward_direct_kernel(const T* __restrict__ x, const T* __restrict__ w, Strides ws, T* __restrict__ out,
                                      Geometry g, int64_t total) {
  using A = typename AccOf<T>::type;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t ox = idx % g.Wo, oy = (idx / g.Wo) % g.Ho, plane = idx / (g.Wo * g.Ho);
    const int64_t n = plane / g.C, gi = (plane % g.C) / (g.C / g.G);
    const T* wb = w + n * ws.n + gi * ws.g;
    const T* xp = x + plane * g.H * g.W;
    const BilinearTap<A> b = pixel_tap<A>(oy, ox, ws, g);
    const int64_t full_off = oy * ws.y + ox * ws.x;
    A acc = A(0);
    for (int64_t i = 0; i < g.K; ++i) {
      const int64_t iy = oy * g.stride - g.pad + i * g.dil;
      if (iy < 0 || iy >= g.H) continue;
      for (int64_t j = 0; j < g.K; ++j) {
        const int64_t ix = ox * g.stride - g.pad + j * g.dil;
        if (ix < 0 || ix >= g.W) continue;
        acc += filter_value(wb, i * g.K + j, full_off, b, ws, g.scale > 1) * to_acc(__ldg(xp + iy * g.W + ix));
      }
    }
    out[idx] = from_acc<T>(acc);
  }
}

// grad_x[n, c, iy, ix] = sum over taps (i, j) whose reader (oy, ox) exists of w(t, oy, ox) * go[oy, ox].
template <typename T>
__global__ void grad_input_kernel(const T* __restrict__ go, const T* __restrict__ w, Strides ws, T* __restrict__ gx,
                                  Geometry g, int64_t total) {
  using A = typename AccOf<T>::type;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t ix = idx % g.W, iy = (idx / g.W) % g.H, plane = idx / (g.W * g.H);
    const int64_t n = plane / g.C, gi = (plane % g.C) / (g.C / g.G);
    const T* wb = w + n * ws.n + gi * ws.g;
    const T* gp = go + plane * g.Ho * g.Wo;
    A acc = A(0);
    for (int64_t i = 0; i < g.K; ++i) {
      const int64_t oy = reader_of(iy, i, g.stride, g.pad, g.dil, g.Ho);
      if (oy < 0) continue;
      for (int64_t j = 0; j < g.K; ++j) {
        const int64_t ox = reader_of(ix, j, g.stride, g.pad, g.dil, g.Wo);
        if (ox < 0) continue;
        const BilinearTap<A> b = pixel_tap<A>(oy, ox, ws, g);
        acc += filter_value(wb, i * g.K + j, oy * ws.y + ox * ws.x, b, ws, g.scale > 1) *
               to_acc(__ldg(gp + oy * g.Wo + ox));
      }
    }
    gx[idx] = from_acc<T>(acc);
  }
}

// sum over the group's channels of go[c, oy, ox] * x[c, iy, ix] (0 when (iy, ix) is outside).
template <typename T>
__device__ __forceinline__ typename AccOf<T>::type channel_dot(const T* __restrict__ go, const T* __restrict__ x,
                                                               const Geometry& g, int64_t n, int64_t gi, int64_t oy,
                                                               int64_t ox, int64_t i, int64_t j) {
  using A = typename AccOf<T>::type;
  const int64_t iy = oy * g.stride - g.pad + i * g.dil, ix = ox * g.stride - g.pad + j * g.dil;
  A acc = A(0);
  if (iy < 0 || iy >= g.H || ix < 0 || ix >= g.W) return acc;
  const int64_t Cg = g.C / g.G;
  for (int64_t c = gi * Cg; c < (gi + 1) * Cg; ++c) {
    const int64_t plane = n * g.C + c;
    acc += to_acc(__ldg(go + (plane * g.Ho + oy) * g.Wo + ox)) * to_acc(__ldg(x + (plane * g.H + iy) * g.W + ix));
  }
  return acc;
}

template <typename T>
__global__ void grad_weight_kernel(const T* __restrict__ go, const T* __restrict__ x, T* __restrict__ gw, Geometry g,
                                   int64_t total) {
  const int64_t KK = g.K * g.K;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t ox = idx % g.Wo, oy = (idx / g.Wo) % g.Ho, t = (idx / (g.Wo * g.Ho)) % KK;
    const int64_t ng = idx / (g.Wo * g.Ho * KK), gi = ng % g.G, n = ng / g.G;
    gw[idx] = from_acc<T>(channel_dot(go, x, g, n, gi, oy, ox, t / g.K, t % g.K));
  }
}

// rows[n, g, t, q, ox] = sum_oy a(oy, q) * dot(oy, ox): the vertical adjoint of the upsampling.
// Output row oy reads low row q only for oy in [(q - 1) f, (q + 2) f).
template <typename T>
__global__ void grad_weight_rows_kernel(const T* __restrict__ go, const T* __restrict__ x,
                                        typename AccOf<T>::type* __restrict__ rows, Geometry g, int64_t total) {
  using A = typename AccOf<T>::type;
  const int64_t KK = g.K * g.K, f = g.scale;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t ox = idx % g.Wo, q = (idx / g.Wo) % g.hl, t = (idx / (g.Wo * g.hl)) % KK;
    const int64_t ng = idx / (g.Wo * g.hl * KK), gi = ng % g.G, n = ng / g.G;
    A acc = A(0);
    for (int64_t oy = (q - 1) * f; oy < (q + 2) * f; ++oy) {
      if (oy < 0 || oy >= g.Ho) continue;
      const A a = upsample_weight<A>(oy, q, g.hl, f);
      if (a != A(0)) acc += a * channel_dot(go, x, g, n, gi, oy, ox, t / g.K, t % g.K);
    }
    rows[idx] = acc;
  }
}

// gw[n, g, t, q, k] = sum_ox a(ox, k) * rows[n, g, t, q, ox]: the horizontal adjoint.
template <typename T>
__global__ void grad_weight_cols_kernel(const typename AccOf<T>::type* __restrict__ rows, T* __restrict__ gw,
                                        Geometry g, int64_t total) {
  using A = typename AccOf<T>::type;
  const int64_t f = g.scale;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t k = idx % g.wl, row = idx / g.wl;  // row = ((n * G + g) * KK + t) * hl + q
    const A* r = rows + row * g.Wo;
    A acc = A(0);
    for (int64_t ox = (k - 1) * f; ox < (k + 2) * f; ++ox) {
      if (ox < 0 || ox >= g.Wo) continue;
      const A a = upsample_weight<A>(ox, k, g.wl, f);
      if (a != A(0)) acc += a * r[ox];
    }
    gw[idx] = from_acc<T>(acc);
  }
}

unsigned int blocks_for(int64_t total) {
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(blocks < (int64_t{1} << 30) ? blocks : (int64_t{1} << 30));
}

Strides strides_of(const WeightView& w) { return Strides{w.stride[0], w.stride[1], w.stride[2], w.stride[3], w.stride[4]}; }

template <typename T>
cudaError_t forward_impl(const T* x, const WeightView& wv, T* out, const Geometry& g, cudaStream_t stream) {
  using A = typename AccOf<T>::type;
  const T* w = static_cast<const T*>(wv.data);
  const Strides ws = strides_of(wv);
  const int64_t tiles_x = (g.Wo + kTileW - 1) / kTileW, tiles_y = (g.Ho + kTileH - 1) / kTileH;
  const int64_t tile_h = (kTileH - 1) * g.stride + (g.K - 1) * g.dil + 1;
  const int64_t tile_w = (kTileW - 1) * g.stride + (g.K - 1) * g.dil + 1;
  const size_t smem = static_cast<size_t>(tile_h * tile_w) * sizeof(A);
  const int64_t blocks_x = tiles_x * g.N * g.C;
  if (smem <= kMaxSharedBytes && tiles_y <= 65535 && blocks_x < (int64_t{1} << 31)) {
    const dim3 grid(static_cast<unsigned int>(blocks_x), static_cast<unsigned int>(tiles_y));
    const dim3 block(kTileW, kTileH);
    if (g.K == 3) {
      forward_tiled_kernel<T, 3><<<grid, block, smem, stream>>>(x, w, ws, out, g, tiles_x);
    } else {
      forward_tiled_kernel<T, 0><<<grid, block, smem, stream>>>(x, w, ws, out, g, tiles_x);
    }
  } else {
    const int64_t total = g.N * g.C * g.Ho * g.Wo;
    forward_direct_kernel<T><<<blocks_for(total), kThreads, 0, stream>>>(x, w, ws, out, g, total);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t grad_input_impl(const T* go, const WeightView& wv, T* gx, const Geometry& g, cudaStream_t stream) {
  const int64_t total = g.N * g.C * g.H * g.W;
  grad_input_kernel<T><<<blocks_for(total), kThreads, 0, stream>>>(go, static_cast<const T*>(wv.data),
                                                                   strides_of(wv), gx, g, total);
  return cudaGetLastError();
}

template <typename T>
cudaError_t grad_weight_impl(const T* go, const T* x, T* gw, void* workspace, const Geometry& g, cudaStream_t stream) {
  using A = typename AccOf<T>::type;
  const int64_t KK = g.K * g.K;
  if (g.scale == 1) {
    const int64_t total = g.N * g.G * KK * g.Ho * g.Wo;
    grad_weight_kernel<T><<<blocks_for(total), kThreads, 0, stream>>>(go, x, gw, g, total);
    return cudaGetLastError();
  }
  A* rows = static_cast<A*>(workspace);
  const int64_t rows_total = g.N * g.G * KK * g.hl * g.Wo;
  grad_weight_rows_kernel<T><<<blocks_for(rows_total), kThreads, 0, stream>>>(go, x, rows, g, rows_total);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const int64_t total = g.N * g.G * KK * g.hl * g.wl;
  grad_weight_cols_kernel<T><<<blocks_for(total), kThreads, 0, stream>>>(rows, gw, g, total);
  return cudaGetLastError();
}

}  // namespace

cudaError_t dynamic_filter2d_forward(DType dtype, const void* x, WeightView w, void* out, const Geometry& g,
                                     cudaStream_t stream) {
  switch (dtype) {
    case DType::Float32: return forward_impl(static_cast<const float*>(x), w, static_cast<float*>(out), g, stream);
    case DType::Float64: return forward_impl(static_cast<const double*>(x), w, static_cast<double*>(out), g, stream);
    case DType::Float16: return forward_impl(static_cast<const __half*>(x), w, static_cast<__half*>(out), g, stream);
    case DType::BFloat16:
      return forward_impl(static_cast<const __nv_bfloat16*>(x), w, static_cast<__nv_bfloat16*>(out), g, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t dynamic_filter2d_grad_input(DType dtype, const void* go, WeightView w, void* gx, const Geometry& g,
                                        cudaStream_t stream) {
  switch (dtype) {
    case DType::Float32: return grad_input_impl(static_cast<const float*>(go), w, static_cast<float*>(gx), g, stream);
    case DType::Float64: return grad_input_impl(static_cast<const double*>(go), w, static_cast<double*>(gx), g, stream);
    case DType::Float16: return grad_input_impl(static_cast<const __half*>(go), w, static_cast<__half*>(gx), g, stream);
    case DType::BFloat16:
      return grad_input_impl(static_cast<const __nv_bfloat16*>(go), w, static_cast<__nv_bfloat16*>(gx), g, stream);
  }
  return cudaErrorInvalidValue;
}

size_t dynamic_filter2d_grad_weight_workspace_bytes(const Geometry& g, DType dtype) {
  if (g.scale == 1) return 0;
  const size_t acc = dtype == DType::Float64 ? sizeof(double) : sizeof(float);
  return static_cast<size_t>(g.N * g.G * g.K * g.K * g.hl * g.Wo) * acc;
}

cudaError_t dynamic_filter2d_grad_weight(DType dtype, const void* go, const void* x, void* gw, void* workspace,
                                         const Geometry& g, cudaStream_t stream) {
  switch (dtype) {
    case DType::Float32:
      return grad_weight_impl(static_cast<const float*>(go), static_cast<const float*>(x), static_cast<float*>(gw),
                              workspace, g, stream);
    case DType::Float64:
      return grad_weight_impl(static_cast<const double*>(go), static_cast<const double*>(x),
                              static_cast<double*>(gw), workspace, g, stream);
    case DType::Float16:
      return grad_weight_impl(static_cast<const __half*>(go), static_cast<const __half*>(x),
                              static_cast<__half*>(gw), workspace, g, stream);
    case DType::BFloat16:
      return grad_weight_impl(static_cast<const __nv_bfloat16*>(go), static_cast<const __nv_bfloat16*>(x),
                              static_cast<__nv_bfloat16*>(gw), workspace, g, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace vdeblur
