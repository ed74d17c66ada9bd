// Element maths of the memory readout (DESIGN.md 4.5), shared by the CPU kernels and any CUDA
// kernel: the affinity from a dot product, a branch-free exp that compilers vectorise, the
// online-softmax update and the per-query k-best list.
#pragma once

#include <cstdint>
#include <cmath>
#include <limits>

#include "common.h"

namespace vdeblur {
namespace memory_readout {

// S = dot_scale * (k . q) - norm_scale * |k|^2 with dot_scale = 2*scale, norm_scale = scale for
// "l2" (the extra-channel form [2q, -1] . [k, |k|^2]) and dot_scale = scale, norm_scale = 0 for
// "dot". The kernels run the dot products as GEMMs and apply the |k|^2 channel as a per-memory
// bias, which is the same arithmetic as the extra channel without copying the keys.
template <typename T>
VDEBLUR_HOST_DEVICE T dot_scale(bool l2, T scale) { return l2 ? T(2) * scale : scale; }
template <typename T>
VDEBLUR_HOST_DEVICE T norm_scale(bool l2, T scale) { return l2 ? scale : T(0); }

// exp(x) for x <= 0 (scores minus their running max), 0 below -87 (float underflow). Range
// reduction x = n ln2 + r, |r| <= ln2/2, then a degree-6 Taylor/minimax polynomial: ~2 ulp.
// Branch-free and call-free so that GCC vectorises the loops that use it.
VDEBLUR_HOST_DEVICE float exp_nonpos(float x) {
  const float xc = x < -87.0f ? -87.0f : x;
  // n = round(xc / ln2) by the 1.5 * 2^23 trick (floorf would block GCC's vectoriser).
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (xc - n * 0.693145751953125f) - n * 1.428606765330187045e-06f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
#if defined(__CUDA_ARCH__)
  const float two_n = __int_as_float(bits);
#else
  const float two_n = __builtin_bit_cast(float, bits);  // memcpy here would block vectorisation
#endif
  return x < -87.0f ? 0.0f : p * two_n;
}
VDEBLUR_HOST_DEVICE double exp_nonpos(double x) { return exp(x); }

// Online softmax: a running max m and sum l of exp(s - m) per query. Returns the factor that
// rescales everything accumulated so far when the max moves to new_max.
template <typename T>
VDEBLUR_HOST_DEVICE T rescale_factor(T old_max, T new_max) {
  return old_max == -std::numeric_limits<T>::infinity() ? T(0) : exp_nonpos(old_max - new_max);
}

}  // namespace memory_readout
}  // namespace vdeblur
