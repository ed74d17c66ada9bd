// Element-level maths of temporal_attention (TFN Eqs. 1-9, DESIGN.md 4.4), shared by the kernels.
//
// The activations are written so that a loop over pixels auto-vectorises: the float exp is the
// branch-free polynomial of vdeblur/fast_math.h instead of a libm call, which gcc does not
// vectorise without -ffast-math. float64 (used for gradcheck) goes through libm.
#pragma once

#include <cmath>
#include <cstdint>

#include "vdeblur/common.h"
#include "vdeblur/fast_math.h"

namespace vdeblur {
namespace temporal_attention {

constexpr int64_t kMaxFrames = 16;     // T: one 16-row tile in the Triton kernels
constexpr int64_t kMaxChannels = 1024;  // C: TFN's bottleneck has 768; pixel tiles shrink to fit
constexpr int kNumLinear = 5;          // W_h, W_f, W_q, W_k, W_v

// Eqs. 4-6: M' = F * H^ + (1 - F) * M, written as M + F (H^ - M).
template <typename T>
VDEBLUR_HOST_DEVICE T memory_update(T m, T h_hat, T gate) {
  return m + gate * (h_hat - m);
}

// Backward of Eqs. 2-6 at one element, given dM' (total gradient reaching M'), the recomputed
// H^ = tanh(Z_h), F = sigmoid(Z_f) and the old memory M:
//   dZ_h = dM' F (1 - H^2),  dZ_f = dM' (H^ - M) F (1 - F),  dM (direct path) = dM' (1 - F).
template <typename T>
VDEBLUR_HOST_DEVICE void memory_update_backward(T d_mnew, T h_hat, T gate, T m, T& d_zh, T& d_zf,
                                                T& d_m) {
  d_zh = d_mnew * gate * (T(1) - h_hat * h_hat);
  d_zf = d_mnew * (h_hat - m) * gate * (T(1) - gate);
  d_m = d_mnew * (T(1) - gate);
}

}  // namespace temporal_attention
}  // namespace vdeblur
