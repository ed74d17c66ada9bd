// Haar DWT / IDWT element maths (DSTNet Eqs. 7-9), shared by the CPU and CUDA kernels.
//
// For a 2x2 block  a b  the four bands are  LL = s(a+b+c+d), H = s(a+b-c-d),
//                  c d                      V  = s(a-b+c-d), D = s(a-b-c+d).
// The 4x4 matrix of signs is symmetric and squares to 4*I, so the same butterfly with the bands
// as input and scale t gives the inverse (t = 1/(4s)) and the adjoint (t = s).
#pragma once

#include "vdeblur/common.h"

namespace vdeblur {
namespace haar {

constexpr int kMaxLevels = 16;

template <typename T>
VDEBLUR_HOST_DEVICE void butterfly(T a, T b, T c, T d, T s, T& o0, T& o1, T& o2, T& o3) {
  const T p = a + b, q = c + d, r = a - b, u = c - d;
  o0 = s * (p + q);
  o1 = s * (p - q);
  o2 = s * (r + u);
  o3 = s * (r - u);
}

// Plane index of band `band` (0=H, 1=V, 2=D) of channel c of sample n in a highs tensor laid out
// as (N, C, 3, h, w) ("channel") or (N, 3, C, h, w) ("band").
VDEBLUR_HOST_DEVICE int64_t highs_plane(int64_t n, int64_t c, int band, int64_t C, bool band_layout) {
  return band_layout ? (n * 3 + band) * C + c : (n * C + c) * 3 + band;
}

}  // namespace haar
}  // namespace vdeblur
