// ConvGRU gate element maths (TSV-RNN Eqs. 3-6), shared by the CPU and CUDA kernels.
//
// Chunks are ordered [z, r, n]; the update is h' = (1 - z) h + z h_hat (z weights the new state).
//   reset  (paper form):  z = s(gx_z + gh_z), r = s(gx_r + gh_r), rh = r h
//   update (paper form):  h_hat = tanh(gx_n + gh_n), h' = h + z (h_hat - h)
//   gates  (reset after): z, r as above, h_hat = tanh(gx_n + r gh_n), same update
// Backward formulas use only the saved activations (z, r, h_hat) and inputs, never pre-activations.
//
// float uses the branch-free fast_exp (vdeblur/fast_math.h), so that the CPU loops auto-vectorise
// and CUDA runs the same arithmetic; double uses the libm functions (it serves gradcheck).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "vdeblur/common.h"
#include "vdeblur/fast_math.h"

namespace vdeblur {
namespace conv_gru {

// ---- forward ----------------------------------------------------------------------------------

template <typename T>
VDEBLUR_HOST_DEVICE void reset_forward(T gx_z, T gx_r, T gh_z, T gh_r, T h, T& z, T& r, T& rh) {
  z = fast_sigmoid(gx_z + gh_z);
  r = fast_sigmoid(gx_r + gh_r);
  rh = r * h;
}

template <typename T>
VDEBLUR_HOST_DEVICE void update_forward(T z, T gx_n, T gh_n, T h, T& h_new, T& h_hat) {
  h_hat = fast_tanh(gx_n + gh_n);
  h_new = h + z * (h_hat - h);
}

template <typename T>
VDEBLUR_HOST_DEVICE void gates_forward(T gx_z, T gx_r, T gx_n, T gh_z, T gh_r, T gh_n, T h,
                                       T& h_new, T& z, T& r, T& h_hat) {
  z = fast_sigmoid(gx_z + gh_z);
  r = fast_sigmoid(gx_r + gh_r);
  h_hat = fast_tanh(gx_n + r * gh_n);
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
