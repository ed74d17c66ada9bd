// ConvGRU gate element maths (TSV-RNN Eqs. 3-6), shared by the CPU and CUDA kernels.
//
// Chunks are ordered [z, r, n]; the update is h' = (1 - z) h + z h_hat (z weights the new state).
//   reset  (paper form):  z = s(gx_z + gh_z), r = s(gx_r + gh_r), rh = r h
//   update (paper form):  h_hat = tanh(gx_n + gh_n), h' = h + z (h_hat - h)
//   gates  (reset after): z, r as above, h_hat = tanh(gx_n + r gh_n), same update
// Backward formulas use only the saved activations (z, r, h_hat) and inputs, never pre-activations.
//
// float uses a branch-free exp (Cephes' polynomial, ~1 ulp on the clamped range) built from
// multiply-adds and an integer shift, so that the CPU loops auto-vectorise and CUDA runs the same
// arithmetic; double uses the libm functions (it serves gradcheck, not speed).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "vdeblur/common.h"

namespace vdeblur {
namespace conv_gru {

VDEBLUR_HOST_DEVICE float int_bits_as_float(int32_t i) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(i);
#else
  float f;
  std::memcpy(&f, &i, sizeof(f));
  return f;
#endif
}

// e^x for float: clamp to [-87, 88] (so 2^n stays a normal float), x = n ln2 + f with |f| <= ln2/2,
// e^f by a degree-7 polynomial, 2^n from the exponent bits.
VDEBLUR_HOST_DEVICE float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to the nearest integer
  const float t = x * 1.44269504088896341f + kRound;
  const float n = t - kRound;
  float f = x - n * 0.693359375f;  // ln2 split in two for an exact first subtraction
  f = f - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * f + 1.3981999507e-3f;
  p = p * f + 8.3334519073e-3f;
  p = p * f + 4.1665795894e-2f;
  p = p * f + 1.6666665459e-1f;
  p = p * f + 5.0000001201e-1f;
  p = p * f * f + f + 1.0f;
  return p * int_bits_as_float((static_cast<int32_t>(n) + 127) << 23);
}

VDEBLUR_HOST_DEVICE float sigmoid(float x) { return 1.0f / (1.0f + exp_approx(-x)); }
// tanh x = 1 - 2 / (e^{2x} + 1): exact limits +-1, absolute error ~1e-7 near 0.
VDEBLUR_HOST_DEVICE float tanh_(float x) { return 1.0f - 2.0f / (exp_approx(2.0f * x) + 1.0f); }

VDEBLUR_HOST_DEVICE double sigmoid(double x) { return 1.0 / (1.0 + ::exp(-x)); }
VDEBLUR_HOST_DEVICE double tanh_(double x) { return ::tanh(x); }

// ---- forward ----------------------------------------------------------------------------------

template <typename T>
VDEBLUR_HOST_DEVICE void reset_forward(T gx_z, T gx_r, T gh_z, T gh_r, T h, T& z, T& r, T& rh) {
  z = sigmoid(gx_z + gh_z);
  r = sigmoid(gx_r + gh_r);
  rh = r * h;
}

template <typename T>
VDEBLUR_HOST_DEVICE void update_forward(T z, T gx_n, T gh_n, T h, T& h_new, T& h_hat) {
  h_hat = tanh_(gx_n + gh_n);
  h_new = h + z * (h_hat - h);
}

template <typename T>
VDEBLUR_HOST_DEVICE void gates_forward(T gx_z, T gx_r, T gx_n, T gh_z, T gh_r, T gh_n, T h,
                                       T& h_new, T& z, T& r, T& h_hat) {
  z = sigmoid(gx_z + gh_z);
  r = sigmoid(gx_r + gh_r);
  h_hat = tanh_(gx_n + r * gh_n);
  h_new = h + z * (h_hat - h);
}

// ---- backward: gradients with respect to the pre-activations and h ----------------------------

// d/d(gx_z + gh_z) = g_z z (1 - z); d/d(gx_r + gh_r) = g_rh h r (1 - r); d/dh = g_rh r.
template <typename T>
VDEBLUR_HOST_DEVICE void reset_backward(T g_z, T g_rh, T z, T r, T h, T& ga_z, T& ga_r, T& g_h) {
  ga_z = g_z * z * (T(1) - z);
  ga_r = g_rh * h * r * (T(1) - r);
  g_h = g_rh * r;
}

// d/dz = g (h_hat - h); d/d(gx_n + gh_n) = g z (1 - h_hat^2); d/dh = g (1 - z).
template <typename T>
VDEBLUR_HOST_DEVICE void update_backward(T g, T z, T h_hat, T h, T& g_z, T& ga_n, T& g_h) {
  g_z = g * (h_hat - h);
  ga_n = g * z * (T(1) - h_hat * h_hat);
  g_h = g * (T(1) - z);
}

// As update_backward, plus z and r through their sigmoids, and gh_n scaled by r:
// d/dgx_n = a_n, d/dgh_n = a_n r, d/da_r = a_n gh_n r (1 - r) with a_n = g z (1 - h_hat^2).
template <typename T>
VDEBLUR_HOST_DEVICE void gates_backward(T g, T z, T r, T h_hat, T gh_n, T h, T& ga_z, T& ga_r,
                                        T& ga_n, T& g_ghn, T& g_h) {
  ga_n = g * z * (T(1) - h_hat * h_hat);
  ga_z = g * (h_hat - h) * z * (T(1) - z);
  ga_r = ga_n * gh_n * r * (T(1) - r);
  g_ghn = ga_n * r;
  g_h = g * (T(1) - z);
}

}  // namespace conv_gru
}  // namespace vdeblur
