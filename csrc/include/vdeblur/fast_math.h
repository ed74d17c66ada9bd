// Branch-free, call-free exp (and the sigmoid / tanh built on it) for the float kernels: GCC vectorises the CPU loops that use it,
// and CUDA runs the same arithmetic. double uses libm (it serves gradcheck, not speed).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "vdeblur/common.h"

namespace vdeblur {

VDEBLUR_HOST_DEVICE float int_bits_as_float(int32_t i) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(i);
#elif defined(__CUDACC__)
  float f;
  std::memcpy(&f, &i, sizeof(f));
  return f;
#else
  return __builtin_bit_cast(float, i);  // memcpy would block GCC's vectoriser here
#endif
}

// e^x: x = n ln2 + f with |f| <= ln2/2 (n by the 1.5 * 2^23 rounding trick, ln2 split in two so
// the reduction is exact), e^f by Cephes' degree-7 polynomial (~1 ulp), 2^n from the exponent
// bits. Clamped to 88 above; exactly 0 below -87 (float underflow), so exp(-inf) = 0 as softmax
// masks need.
VDEBLUR_HOST_DEVICE float fast_exp(float x) {
  const float xc = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float kRound = 12582912.0f;
  const float n = (xc * 1.44269504088896341f + kRound) - kRound;
  float f = xc - n * 0.693359375f;
  f = f - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * f + 1.3981999507e-3f;
  p = p * f + 8.3334519073e-3f;
  p = p * f + 4.1665795894e-2f;
  p = p * f + 1.6666665459e-1f;
  p = p * f + 5.0000001201e-1f;
  p = p * f * f + f + 1.0f;
  const float e = p * int_bits_as_float((static_cast<int32_t>(n) + 127) << 23);
  return x < -87.0f ? 0.0f : e;
}

VDEBLUR_HOST_DEVICE double fast_exp(double x) { return ::exp(x); }

VDEBLUR_HOST_DEVICE float fast_sigmoid(float x) { return 1.0f / (1.0f + fast_exp(-x)); }
VDEBLUR_HOST_DEVICE double fast_sigmoid(double x) { return 1.0 / (1.0 + ::exp(-x)); }

// tanh x = 1 - 2 / (e^{2x} + 1) (exact limits +-1), which cancels near 0: there, |x| < 1/4, the
// odd Taylor series to x^9 (next term < 1e-8 relative). A select, so loops still vectorise.
VDEBLUR_HOST_DEVICE float fast_tanh(float x) {
  const float far = 1.0f - 2.0f / (fast_exp(2.0f * x) + 1.0f);
  const float x2 = x * x;
  const float near =
      x * (1.0f + x2 * (-1.0f / 3.0f + x2 * (2.0f / 15.0f + x2 * (-17.0f / 315.0f + x2 * (62.0f / 2835.0f)))));
  return (x < 0.25f && x > -0.25f) ? near : far;
}
VDEBLUR_HOST_DEVICE double fast_tanh(double x) { return ::tanh(x); }

}  // namespace vdeblur
