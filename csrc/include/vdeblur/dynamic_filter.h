// Element maths of the per-pixel dynamic filter (DESIGN.md 4.2), shared by the CPU and CUDA kernels:
//   out[n, c, y, x] = sum_{i,j<K} w[n, c / (C/G), i*K+j, y, x] * in[n, c, y*s - p + i*d, x*s - p + j*d]
// with w read through the bilinear x f upsampling (align_corners=False) when filter_scale f > 1.
#pragma once

#include "vdeblur/common.h"

namespace vdeblur {
namespace dynamic_filter {

// Problem geometry; every size is int64 so that index products never overflow.
struct Geometry {
  int64_t N, C, H, W;   // input
  int64_t G, K;         // groups, kernel size (K*K taps)
  int64_t stride, pad, dil;
  int64_t scale;        // filter_scale f
  int64_t Ho, Wo;       // output (conv2d formula)
  int64_t hl, wl;       // filter plane: (Ho / f, Wo / f)
};

// Element strides of the (N, G, K*K, hl, wl) filter tensor (0 where it was expanded).
struct WeightStrides {
  int64_t n, g, t, y, x;
};

// conv2d's output size along one axis.
VDEBLUR_HOST_DEVICE int64_t out_size(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dil) {
  return (in + 2 * pad - dil * (k - 1) - 1) / stride + 1;
}

// Floor division for a possibly negative numerator and a positive divisor.
VDEBLUR_HOST_DEVICE int64_t floor_div(int64_t a, int64_t b) {
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}

// Output positions o in [lo, hi) whose tap at input offset o*stride + off lies in [0, in).
VDEBLUR_HOST_DEVICE void tap_range(int64_t off, int64_t stride, int64_t in, int64_t out, int64_t& lo,
                                   int64_t& hi) {
  lo = off >= 0 ? 0 : (-off + stride - 1) / stride;
  const int64_t last = in - 1 - off;  // o*stride <= last
  hi = last < 0 ? 0 : last / stride + 1;
  if (hi > out) hi = out;
  if (lo > hi) lo = hi;
}

// F.interpolate(scale_factor=f, mode="bilinear", align_corners=False) along one axis, as PyTorch
// computes it: source = (dst + 0.5) / f - 0.5 clamped at 0; dst reads src[i0] * l0 + src[i1] * l1.
template <typename T>
VDEBLUR_HOST_DEVICE void upsample_source(int64_t dst, int64_t in_size, int64_t f, int64_t& i0, int64_t& i1,
                                         T& l0, T& l1) {
  const T inv = static_cast<T>(1.0 / static_cast<double>(f));
  T src = inv * (static_cast<T>(dst) + static_cast<T>(0.5)) - static_cast<T>(0.5);
  if (src < T(0)) src = T(0);
  i0 = static_cast<int64_t>(src);
  if (i0 > in_size - 1) i0 = in_size - 1;
  i1 = i0 < in_size - 1 ? i0 + 1 : i0;
  T lam = src - static_cast<T>(i0);
  lam = lam < T(0) ? T(0) : (lam > T(1) ? T(1) : lam);
  l1 = lam;
  l0 = T(1) - lam;
}

// Where the full-resolution filter value at (y, x) comes from when filter_scale f > 1: four element
// offsets into a low-resolution (hl, wl) plane of strides (sy, sx) and their bilinear weights, so
// value = w00 * p[o00] + w01 * p[o01] + w10 * p[o10] + w11 * p[o11].
template <typename T>
struct BilinearTap {
  int64_t o00, o01, o10, o11;
  T w00, w01, w10, w11;
};

template <typename T>
VDEBLUR_HOST_DEVICE BilinearTap<T> bilinear_tap(int64_t y, int64_t x, int64_t sy, int64_t sx, const Geometry& g) {
  int64_t y0, y1, x0, x1;
  T ly0, ly1, lx0, lx1;
  upsample_source<T>(y, g.hl, g.scale, y0, y1, ly0, ly1);
  upsample_source<T>(x, g.wl, g.scale, x0, x1, lx0, lx1);
  BilinearTap<T> b;
  b.o00 = y0 * sy + x0 * sx, b.o01 = y0 * sy + x1 * sx, b.o10 = y1 * sy + x0 * sx, b.o11 = y1 * sy + x1 * sx;
  b.w00 = ly0 * lx0, b.w01 = ly0 * lx1, b.w10 = ly1 * lx0, b.w11 = ly1 * lx1;
  return b;
}

// The weight that full-resolution index `o` gives low-resolution index `q` in the upsampling along
// one axis (0 when o does not read q): the entries of the adjoint, gathered per q.
template <typename T>
VDEBLUR_HOST_DEVICE T upsample_weight(int64_t o, int64_t q, int64_t in_size, int64_t f) {
  int64_t i0, i1;
  T l0, l1;
  upsample_source<T>(o, in_size, f, i0, i1, l0, l1);
  return (i0 == q ? l0 : T(0)) + (i1 == q ? l1 : T(0));
}

// The output row y that reads input row `in` through tap i, or -1 when none does
// (in = y*stride - pad + i*dil must hold exactly).
VDEBLUR_HOST_DEVICE int64_t reader_of(int64_t in, int64_t i, int64_t stride, int64_t pad, int64_t dil, int64_t out) {
  const int64_t num = in + pad - i * dil;
  if (num < 0 || num % stride != 0) return -1;
  const int64_t o = num / stride;
  return o < out ? o : -1;
}

}  // namespace dynamic_filter
}  // namespace vdeblur
