// CUDA Haar DWT / IDWT.
//
// Passes: levels go two at a time. A two-level pass gives each thread one 4x4 input block (one
// level-2 coefficient set and its four level-1 sets), so a multi-level call reads each level's
// input once per pair of levels; intermediate low bands live in a float workspace. A lone level
// uses the vectorised kernel (2 x 8 input patch per thread, 16-byte loads and stores) when the
// rows allow it, else the generic one. Missing rows / columns of odd sizes read as zero and
// coefficients outside a level's size are not written, which is exactly pywt's "zero" mode at
// every level (a coefficient built only from padding is zero, so padding stays consistent).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "haar.h"
#include "element_types.cuh"

namespace vdeblur {
namespace cuda {
namespace {

using haar::butterfly;
using haar::highs_plane;

// Plane geometry of one level, in elements.
struct Level {
  int64_t in_h, in_w, h, w;
};

template <typename In, typename A>
__device__ __forceinline__ A load_or_zero(const In* p, int64_t r, int64_t c, int64_t H, int64_t W) {
  return (r < H && c < W) ? static_cast<A>(to_acc(p[r * W + c])) : A(0);
}

// ---------------------------------------------------------------- DWT

// Generic single level: one thread per coefficient position (i, j) of plane p.
template <typename In, typename Out, typename LL, typename A>
__global__ void dwt_level_kernel(const In* __restrict__ src, LL* __restrict__ ll, Out* __restrict__ highs,
                                 int64_t C, Level lv, bool band_layout, A s, int64_t total) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = idx % lv.w, i = (idx / lv.w) % lv.h, p = idx / (lv.w * lv.h);
    const In* plane = src + p * lv.in_h * lv.in_w;
    A v[4];
    butterfly(load_or_zero<In, A>(plane, 2 * i, 2 * j, lv.in_h, lv.in_w),
              load_or_zero<In, A>(plane, 2 * i, 2 * j + 1, lv.in_h, lv.in_w),
              load_or_zero<In, A>(plane, 2 * i + 1, 2 * j, lv.in_h, lv.in_w),
              load_or_zero<In, A>(plane, 2 * i + 1, 2 * j + 1, lv.in_h, lv.in_w), s, v[0], v[1], v[2], v[3]);
    const int64_t hw = lv.h * lv.w, pix = i * lv.w + j, n = p / C, c = p % C;
    ll[p * hw + pix] = from_acc<LL>(v[0]);
    for (int b = 0; b < 3; ++b) highs[highs_plane(n, c, b, C, band_layout) * hw + pix] = from_acc<Out>(v[b + 1]);
  }
}

// 8 consecutive elements <-> one 16-byte (16-bit types) or two 16-byte (float) accesses.
template <typename T> struct Vec8;
template <> struct Vec8<float> {
  static __device__ __forceinline__ void load(const float* p, float o[8]) {
    const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
    o[0] = a.x; o[1] = a.y; o[2] = a.z; o[3] = a.w; o[4] = b.x; o[5] = b.y; o[6] = b.z; o[7] = b.w;
  }
  static __device__ __forceinline__ void load4(const float* p, float o[4]) {
    const float4 a = *reinterpret_cast<const float4*>(p);
    o[0] = a.x; o[1] = a.y; o[2] = a.z; o[3] = a.w;
  }
  static __device__ __forceinline__ void store4(float* p, const float v[4]) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
  }
  static __device__ __forceinline__ void store8(float* p, const float v[8]) {
    reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
  }
};
template <typename H16> struct Vec8Half {
  static __device__ __forceinline__ void load(const H16* p, float o[8]) {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const H16* e = reinterpret_cast<const H16*>(&raw);
#pragma unroll
    for (int k = 0; k < 8; ++k) o[k] = to_acc(e[k]);
  }
  static __device__ __forceinline__ void load4(const H16* p, float o[4]) {
    const uint2 raw = *reinterpret_cast<const uint2*>(p);
    const H16* e = reinterpret_cast<const H16*>(&raw);
#pragma unroll
    for (int k = 0; k < 4; ++k) o[k] = to_acc(e[k]);
  }
  static __device__ __forceinline__ void store4(H16* p, const float v[4]) {
    uint2 raw;
    H16* e = reinterpret_cast<H16*>(&raw);
#pragma unroll
    for (int k = 0; k < 4; ++k) e[k] = from_acc<H16>(v[k]);
    *reinterpret_cast<uint2*>(p) = raw;
  }
  static __device__ __forceinline__ void store8(H16* p, const float v[8]) {
    uint4 raw;
    H16* e = reinterpret_cast<H16*>(&raw);
#pragma unroll
    for (int k = 0; k < 8; ++k) e[k] = from_acc<H16>(v[k]);
    *reinterpret_cast<uint4*>(p) = raw;
  }
};
template <> struct Vec8<__half> : Vec8Half<__half> {};
template <> struct Vec8<__nv_bfloat16> : Vec8Half<__nv_bfloat16> {};

// Vectorised single level (even in_h, in_w % 8 == 0, 16-byte aligned planes): each thread reads a
// 2 x 8 patch and writes 4 coefficients per band.
template <typename T>
__global__ void dwt_level_vec_kernel(const T* __restrict__ src, T* __restrict__ ll, T* __restrict__ highs,
                                     int64_t C, Level lv, bool band_layout, float s, int64_t total) {
  const int64_t groups_per_row = lv.w / 4;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t g = idx % groups_per_row, i = (idx / groups_per_row) % lv.h;
    const int64_t p = idx / (groups_per_row * lv.h);
    const T* r0 = src + p * lv.in_h * lv.in_w + 2 * i * lv.in_w + 8 * g;
    float top[8], bot[8], out[4][4];
    Vec8<T>::load(r0, top);
    Vec8<T>::load(r0 + lv.in_w, bot);
#pragma unroll
    for (int k = 0; k < 4; ++k)
      butterfly(top[2 * k], top[2 * k + 1], bot[2 * k], bot[2 * k + 1], s, out[0][k], out[1][k], out[2][k], out[3][k]);
    const int64_t hw = lv.h * lv.w, pix = i * lv.w + 4 * g, n = p / C, c = p % C;
    Vec8<T>::store4(ll + p * hw + pix, out[0]);
#pragma unroll
    for (int b = 0; b < 3; ++b) Vec8<T>::store4(highs + highs_plane(n, c, b, C, band_layout) * hw + pix, out[b + 1]);
  }
}

// Two levels in one pass: a thread owns one level-2 position (i, j), i.e. the 4x4 input block at
// (4i, 4j); it writes four level-1 coefficient sets, one level-2 set and the level-2 low band.
template <typename In, typename Out, typename LL, typename A>
__global__ void dwt_two_levels_kernel(const In* __restrict__ src, Out* __restrict__ highs1, Out* __restrict__ highs2,
                                      LL* __restrict__ ll2, int64_t C, Level l1, Level l2, bool band_layout, A s,
                                      int64_t total) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = idx % l2.w, i = (idx / l2.w) % l2.h, p = idx / (l2.w * l2.h);
    const int64_t n = p / C, c = p % C;
    const In* plane = src + p * l1.in_h * l1.in_w;
    A x[4][4];
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
      for (int q = 0; q < 4; ++q) x[r][q] = load_or_zero<In, A>(plane, 4 * i + r, 4 * j + q, l1.in_h, l1.in_w);
    A low[2][2];
    const int64_t hw1 = l1.h * l1.w;
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        A v[4];
        butterfly(x[2 * r][2 * q], x[2 * r][2 * q + 1], x[2 * r + 1][2 * q], x[2 * r + 1][2 * q + 1], s, v[0], v[1], v[2], v[3]);
        low[r][q] = v[0];
        const int64_t y = 2 * i + r, xx = 2 * j + q;
        if (y < l1.h && xx < l1.w) {
          for (int b = 0; b < 3; ++b)
            highs1[highs_plane(n, c, b, C, band_layout) * hw1 + y * l1.w + xx] = from_acc<Out>(v[b + 1]);
        }
      }
    A v[4];
    butterfly(low[0][0], low[0][1], low[1][0], low[1][1], s, v[0], v[1], v[2], v[3]);
    const int64_t hw2 = l2.h * l2.w, pix = i * l2.w + j;
    ll2[p * hw2 + pix] = from_acc<LL>(v[0]);
    for (int b = 0; b < 3; ++b) highs2[highs_plane(n, c, b, C, band_layout) * hw2 + pix] = from_acc<Out>(v[b + 1]);
  }
}

// ---------------------------------------------------------------- IDWT

// Generic single level: one thread per coefficient position writes its 2x2 output block.
template <typename LLT, typename In, typename Out, typename A>
__global__ void idwt_level_kernel(const LLT* __restrict__ ll, const In* __restrict__ highs, Out* __restrict__ dst,
                                  int64_t C, Level lv, bool band_layout, A t, int64_t total) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = idx % lv.w, i = (idx / lv.w) % lv.h, p = idx / (lv.w * lv.h);
    const int64_t hw = lv.h * lv.w, pix = i * lv.w + j, n = p / C, c = p % C;
    A v[4];
    butterfly(static_cast<A>(to_acc(ll[p * hw + pix])),
              static_cast<A>(to_acc(highs[highs_plane(n, c, 0, C, band_layout) * hw + pix])),
              static_cast<A>(to_acc(highs[highs_plane(n, c, 1, C, band_layout) * hw + pix])),
              static_cast<A>(to_acc(highs[highs_plane(n, c, 2, C, band_layout) * hw + pix])), t, v[0], v[1], v[2], v[3]);
    Out* plane = dst + p * lv.in_h * lv.in_w;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int64_t y = 2 * i + k / 2, x = 2 * j + k % 2;
      if (y < lv.in_h && x < lv.in_w) plane[y * lv.in_w + x] = from_acc<Out>(v[k]);
    }
  }
}

// Vectorised single level (even in_h, in_w % 8 == 0): 4 coefficient positions -> 2 x 8 outputs.
template <typename T>
__global__ void idwt_level_vec_kernel(const T* __restrict__ ll, const T* __restrict__ highs, T* __restrict__ dst,
                                      int64_t C, Level lv, bool band_layout, float t, int64_t total) {
  const int64_t groups_per_row = lv.w / 4;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t g = idx % groups_per_row, i = (idx / groups_per_row) % lv.h;
    const int64_t p = idx / (groups_per_row * lv.h), n = p / C, c = p % C;
    const int64_t hw = lv.h * lv.w, pix = i * lv.w + 4 * g;
    float bands[4][4];
    const T* srcs[4] = {ll + p * hw + pix, highs + highs_plane(n, c, 0, C, band_layout) * hw + pix,
                        highs + highs_plane(n, c, 1, C, band_layout) * hw + pix,
                        highs + highs_plane(n, c, 2, C, band_layout) * hw + pix};
#pragma unroll
    for (int b = 0; b < 4; ++b) Vec8<T>::load4(srcs[b], bands[b]);
    float top[8], bot[8];
#pragma unroll
    for (int k = 0; k < 4; ++k)
      butterfly(bands[0][k], bands[1][k], bands[2][k], bands[3][k], t, top[2 * k], top[2 * k + 1], bot[2 * k], bot[2 * k + 1]);
    T* r0 = dst + p * lv.in_h * lv.in_w + 2 * i * lv.in_w + 8 * g;
    Vec8<T>::store8(r0, top);
    Vec8<T>::store8(r0 + lv.in_w, bot);
  }
}

// Two levels in one pass: a thread owns one coarse (level-2) position and writes its 4x4 block.
template <typename LLT, typename In, typename Out, typename A>
__global__ void idwt_two_levels_kernel(const LLT* __restrict__ ll2, const In* __restrict__ highs2,
                                       const In* __restrict__ highs1, Out* __restrict__ dst, int64_t C, Level l1,
                                       Level l2, bool band_layout, A t, int64_t total) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = idx % l2.w, i = (idx / l2.w) % l2.h, p = idx / (l2.w * l2.h);
    const int64_t n = p / C, c = p % C, hw2 = l2.h * l2.w, pix2 = i * l2.w + j;
    A low[4];
    butterfly(static_cast<A>(to_acc(ll2[p * hw2 + pix2])),
              static_cast<A>(to_acc(highs2[highs_plane(n, c, 0, C, band_layout) * hw2 + pix2])),
              static_cast<A>(to_acc(highs2[highs_plane(n, c, 1, C, band_layout) * hw2 + pix2])),
              static_cast<A>(to_acc(highs2[highs_plane(n, c, 2, C, band_layout) * hw2 + pix2])), t, low[0], low[1],
              low[2], low[3]);
    Out* plane = dst + p * l1.in_h * l1.in_w;
    const int64_t hw1 = l1.h * l1.w;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int64_t y1 = 2 * i + k / 2, x1 = 2 * j + k % 2;
      if (y1 >= l1.h || x1 >= l1.w) continue;  // cropped at level 1: its outputs are cropped too
      const int64_t pix1 = y1 * l1.w + x1;
      A v[4];
      butterfly(low[k], static_cast<A>(to_acc(highs1[highs_plane(n, c, 0, C, band_layout) * hw1 + pix1])),
                static_cast<A>(to_acc(highs1[highs_plane(n, c, 1, C, band_layout) * hw1 + pix1])),
                static_cast<A>(to_acc(highs1[highs_plane(n, c, 2, C, band_layout) * hw1 + pix1])), t, v[0], v[1], v[2],
                v[3]);
#pragma unroll
      for (int m = 0; m < 4; ++m) {
        const int64_t y = 2 * y1 + m / 2, x = 2 * x1 + m % 2;
        if (y < l1.in_h && x < l1.in_w) plane[y * l1.in_w + x] = from_acc<Out>(v[m]);
      }
    }
  }
}

// ---------------------------------------------------------------- launch helpers

constexpr int kThreads = 256;

// 16-byte vector paths exist for float, half and bfloat16 (double takes the generic kernels).
template <typename T> constexpr bool kVectorisable = !std::is_same<T, double>::value;

unsigned grid_for(int64_t total) {
  // Grid-stride loops: cap the grid so 64-bit totals never overflow gridDim.x.
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < (int64_t(1) << 20) ? (blocks > 0 ? blocks : 1) : (int64_t(1) << 20));
}

Level level_of(const HaarGeometry& g, int l) { return Level{g.in_h[l], g.in_w[l], g.h[l], g.w[l]}; }

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Float workspace offsets (in elements) of the intermediate low band after each level.
int64_t workspace_offset(const HaarGeometry& g, int level) {
  int64_t off = 0;
  for (int l = 0; l < level; ++l) off += g.N * g.C * g.h[l] * g.w[l];
  return off;
}

template <typename T>
cudaError_t dwt_impl(const T* x, T* ll, void* const* highs, const HaarGeometry& g, double scale, void* workspace,
                     cudaStream_t stream) {
  using A = typename AccOf<T>::type;
  using W = A;  // intermediate low bands keep the accumulation precision
  W* ws = static_cast<W*>(workspace);
  const A s = static_cast<A>(scale);
  const void* src = x;  // T* at level 0, W* afterwards
  for (int l = 0; l < g.levels;) {
    const bool src_is_input = l == 0;
    const int64_t NC = g.N * g.C;
    if (l + 1 < g.levels) {
      const bool last = l + 2 == g.levels;
      const Level l1 = level_of(g, l), l2 = level_of(g, l + 1);
      void* dst = last ? static_cast<void*>(ll) : static_cast<void*>(ws + workspace_offset(g, l + 1));
      const int64_t total = NC * l2.h * l2.w;
#define VDEBLUR_TWO(IN_T, LL_T)                                                                                   \
  dwt_two_levels_kernel<IN_T, T, LL_T, A><<<grid_for(total), kThreads, 0, stream>>>(                              \
      static_cast<const IN_T*>(src), static_cast<T*>(highs[l]), static_cast<T*>(highs[l + 1]), static_cast<LL_T*>(dst), \
      g.C, l1, l2, g.band_layout, s, total)
      if (src_is_input && last) VDEBLUR_TWO(T, T);
      else if (src_is_input) VDEBLUR_TWO(T, W);
      else if (last) VDEBLUR_TWO(W, T);
      else VDEBLUR_TWO(W, W);
#undef VDEBLUR_TWO
      src = dst;
      l += 2;
    } else {  // one level left: it is the last
      const Level lv = level_of(g, l);
      const int64_t total = NC * lv.h * lv.w;
      bool launched = false;
      if constexpr (kVectorisable<T>) {
        if (src_is_input && lv.in_h % 2 == 0 && lv.in_w % 8 == 0 && aligned16(x) && aligned16(ll) &&
            aligned16(highs[l])) {
          const int64_t groups = total / 4;
          dwt_level_vec_kernel<T><<<grid_for(groups), kThreads, 0, stream>>>(
              x, ll, static_cast<T*>(highs[l]), g.C, lv, g.band_layout, static_cast<float>(scale), groups);
          launched = true;
        }
      }
      if (!launched && src_is_input) {
        dwt_level_kernel<T, T, T, A><<<grid_for(total), kThreads, 0, stream>>>(
            x, ll, static_cast<T*>(highs[l]), g.C, lv, g.band_layout, s, total);
      } else if (!launched) {
        dwt_level_kernel<W, T, T, A><<<grid_for(total), kThreads, 0, stream>>>(
            static_cast<const W*>(src), ll, static_cast<T*>(highs[l]), g.C, lv, g.band_layout, s, total);
      }
      l += 1;
    }
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

template <typename T>
cudaError_t idwt_impl(const T* ll, const void* const* highs, T* out, const HaarGeometry& g, double scale,
                      void* workspace, cudaStream_t stream) {
  using A = typename AccOf<T>::type;
  using W = A;
  W* ws = static_cast<W*>(workspace);
  const A t = static_cast<A>(scale);
  const int64_t NC = g.N * g.C;
  const void* src = ll;  // T* for the coarsest level, W* afterwards
  bool src_is_input = true;
  int l = g.levels - 1;
  // An odd number of levels: the coarsest one alone, then pairs.
  if (g.levels % 2 == 1) {
    const Level lv = level_of(g, l);
    const int64_t total = NC * lv.h * lv.w;
    if (l == 0) {
      if constexpr (kVectorisable<T>) {
        if (lv.in_h % 2 == 0 && lv.in_w % 8 == 0 && aligned16(ll) && aligned16(highs[0]) && aligned16(out)) {
          idwt_level_vec_kernel<T><<<grid_for(total / 4), kThreads, 0, stream>>>(
              ll, static_cast<const T*>(highs[0]), out, g.C, lv, g.band_layout, static_cast<float>(scale), total / 4);
          return cudaGetLastError();
        }
      }
      idwt_level_kernel<T, T, T, A><<<grid_for(total), kThreads, 0, stream>>>(
          ll, static_cast<const T*>(highs[0]), out, g.C, lv, g.band_layout, t, total);
      return cudaGetLastError();
    }
    W* dst = ws + workspace_offset(g, l - 1);
    idwt_level_kernel<T, T, W, A><<<grid_for(total), kThreads, 0, stream>>>(
        ll, static_cast<const T*>(highs[l]), dst, g.C, lv, g.band_layout, t, total);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    src = dst;
    src_is_input = false;
    l -= 1;
  }
  for (; l >= 1; l -= 2) {  // levels l (coarse) and l - 1 (fine)
    const Level l2 = level_of(g, l), l1 = level_of(g, l - 1);
    const bool last = l - 1 == 0;
    void* dst = last ? static_cast<void*>(out) : static_cast<void*>(ws + workspace_offset(g, l - 2));
    const int64_t total = NC * l2.h * l2.w;
#define VDEBLUR_TWO(LL_T, OUT_T)                                                                          \
  idwt_two_levels_kernel<LL_T, T, OUT_T, A><<<grid_for(total), kThreads, 0, stream>>>(                    \
      static_cast<const LL_T*>(src), static_cast<const T*>(highs[l]), static_cast<const T*>(highs[l - 1]), \
      static_cast<OUT_T*>(dst), g.C, l1, l2, g.band_layout, t, total)
    if (src_is_input && last) VDEBLUR_TWO(T, T);
    else if (src_is_input) VDEBLUR_TWO(T, W);
    else if (last) VDEBLUR_TWO(W, T);
    else VDEBLUR_TWO(W, W);
#undef VDEBLUR_TWO
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    src = dst;
    src_is_input = false;
  }
  return cudaSuccess;
}

}  // namespace

size_t haar_workspace_bytes(const HaarGeometry& g, DType dtype) {
  const size_t acc = dtype == DType::Float64 ? sizeof(double) : sizeof(float);
  return static_cast<size_t>(workspace_offset(g, g.levels)) * acc;
}

cudaError_t haar_dwt2d(DType dtype, const void* x, void* ll, void* const* highs, const HaarGeometry& g, double scale,
                       void* workspace, cudaStream_t stream) {
  switch (dtype) {
    case DType::Float32: return dwt_impl(static_cast<const float*>(x), static_cast<float*>(ll), highs, g, scale, workspace, stream);
    case DType::Float64: return dwt_impl(static_cast<const double*>(x), static_cast<double*>(ll), highs, g, scale, workspace, stream);
    case DType::Float16: return dwt_impl(static_cast<const __half*>(x), static_cast<__half*>(ll), highs, g, scale, workspace, stream);
    case DType::BFloat16:
      return dwt_impl(static_cast<const __nv_bfloat16*>(x), static_cast<__nv_bfloat16*>(ll), highs, g, scale, workspace, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t haar_idwt2d(DType dtype, const void* ll, const void* const* highs, void* out, const HaarGeometry& g,
                        double scale, void* workspace, cudaStream_t stream) {
  switch (dtype) {
    case DType::Float32: return idwt_impl(static_cast<const float*>(ll), highs, static_cast<float*>(out), g, scale, workspace, stream);
    case DType::Float64: return idwt_impl(static_cast<const double*>(ll), highs, static_cast<double*>(out), g, scale, workspace, stream);
    case DType::Float16: return idwt_impl(static_cast<const __half*>(ll), highs, static_cast<__half*>(out), g, scale, workspace, stream);
    case DType::BFloat16:
      return idwt_impl(static_cast<const __nv_bfloat16*>(ll), highs, static_cast<__nv_bfloat16*>(out), g, scale, workspace, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace vdeblur
