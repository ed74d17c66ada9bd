// CPU ConvGRU gates: one pass over memory per op. The (N*C*S) elements are split into runs that
// stay inside one (n, c) plane, so each run is a plain loop over contiguous memory with restrict
// pointers; the element maths (vdeblur/conv_gru.h) is branch-free, so these loops auto-vectorise
// (float: exp from multiply-adds and an exponent shift). Reduced precision computes in float.
#include "conv_gru.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>

#include "vdeblur/conv_gru.h"

namespace vdeblur {
namespace cpu {
namespace {

namespace m = conv_gru;

// Elements per parallel task: large enough to amortise the task, small enough to split a frame.
constexpr int64_t kGrain = 32768;

struct Shape {
  int64_t N, C, S;  // batch, channels of h, spatial elements per plane
};

Shape shape_of(const at::Tensor& h) {
  const int64_t N = h.size(0), C = h.size(1);
  return {N, C, h.numel() / (N * C)};
}

// A (N, k*C, S) tensor with a contiguous per-sample block: plane j of sample n starts at
// base + n * batch_stride + j * S.
template <typename T>
struct Planes {
  T* base;
  int64_t batch_stride;
  T* at(int64_t n, int64_t plane, int64_t S, int64_t i0) const {
    return base + n * batch_stride + plane * S + i0;
  }
};

template <typename T>
Planes<const T> in(const at::Tensor& t) {
  return {t.const_data_ptr<T>(), t.size(0) > 1 ? t.stride(0) : 0};
}

template <typename T>
Planes<T> out(const at::Tensor& t) {  // an undefined tensor (nothing to save) gives nullptr
  if (!t.defined() || t.numel() == 0) return {nullptr, 0};
  return {t.mutable_data_ptr<T>(), t.size(0) > 1 ? t.stride(0) : 0};
}

// Calls f(n, c, i0, len) on runs of at most one plane each, covering every element once.
template <typename F>
void for_each_run(const Shape& s, const F& f) {
  at::parallel_for(0, s.N * s.C * s.S, kGrain, [&](int64_t b, int64_t e) {
    while (b < e) {
      const int64_t p = b / s.S, i0 = b - p * s.S, len = std::min(s.S - i0, e - b);
      f(p / s.C, p % s.C, i0, len);
      b += len;
    }
  });
}

template <typename T>
using acc = at::opmath_type<T>;

template <typename T>
inline acc<T> ld(T v) {
  return static_cast<acc<T>>(v);
}

template <typename T>
inline T st(acc<T> v) {
  return static_cast<T>(v);
}

// bfloat16 <-> float by bit shifts (round to nearest even, NaN kept NaN), written so that the
// row loops vectorise; c10's conversions go through a branchy scalar path.
template <>
inline float ld<c10::BFloat16>(c10::BFloat16 v) {
  const uint32_t bits = static_cast<uint32_t>(v.x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

template <>
inline c10::BFloat16 st<c10::BFloat16>(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  const uint16_t top = f != f ? uint16_t(0x7FC0) : static_cast<uint16_t>(bits >> 16);
  return c10::BFloat16(top, c10::BFloat16::from_bits());
}

// ---- rows: one contiguous run of one plane ----------------------------------------------------

template <typename T, bool kSave>
void reset_row(int64_t len, const T* __restrict gx_z, const T* __restrict gx_r, const T* __restrict gh_z,
               const T* __restrict gh_r, const T* __restrict h, T* __restrict z, T* __restrict rh,
               T* __restrict r) {
  for (int64_t i = 0; i < len; ++i) {
    acc<T> zi, ri, rhi;
    m::reset_forward(ld(gx_z[i]), ld(gx_r[i]), ld(gh_z[i]), ld(gh_r[i]), ld(h[i]), zi, ri, rhi);
    z[i] = st<T>(zi);
    rh[i] = st<T>(rhi);
    if constexpr (kSave) r[i] = st<T>(ri);
  }
}

template <typename T>
void reset_backward_row(int64_t len, const T* __restrict g_z, const T* __restrict g_rh, const T* __restrict z,
                        const T* __restrict r, const T* __restrict h, T* __restrict ga_z, T* __restrict ga_r,
                        T* __restrict g_h) {
  for (int64_t i = 0; i < len; ++i) {
    acc<T> az, ar, gh;
    m::reset_backward(ld(g_z[i]), ld(g_rh[i]), ld(z[i]), ld(r[i]), ld(h[i]), az, ar, gh);
    ga_z[i] = st<T>(az);
    ga_r[i] = st<T>(ar);
    g_h[i] = st<T>(gh);
  }
}

template <typename T, bool kSave>
void update_row(int64_t len, const T* __restrict z, const T* __restrict gx_n, const T* __restrict gh_n,
                const T* __restrict h, T* __restrict h_new, T* __restrict h_hat) {
  for (int64_t i = 0; i < len; ++i) {
    acc<T> out, hh;
    m::update_forward(ld(z[i]), ld(gx_n[i]), ld(gh_n[i]), ld(h[i]), out, hh);
    h_new[i] = st<T>(out);
    if constexpr (kSave) h_hat[i] = st<T>(hh);
  }
}

template <typename T>
void update_backward_row(int64_t len, const T* __restrict g, const T* __restrict z, const T* __restrict h_hat,
                         const T* __restrict h, T* __restrict g_z, T* __restrict ga_n, T* __restrict g_h) {
  for (int64_t i = 0; i < len; ++i) {
    acc<T> gz, an, gh;
    m::update_backward(ld(g[i]), ld(z[i]), ld(h_hat[i]), ld(h[i]), gz, an, gh);
    g_z[i] = st<T>(gz);
    ga_n[i] = st<T>(an);
    g_h[i] = st<T>(gh);
  }
}

template <typename T, bool kSave>
void gates_row(int64_t len, const T* __restrict gx_z, const T* __restrict gx_r, const T* __restrict gx_n,
               const T* __restrict gh_z, const T* __restrict gh_r, const T* __restrict gh_n,
               const T* __restrict h, T* __restrict h_new, T* __restrict z, T* __restrict r,
               T* __restrict h_hat, T* __restrict gh_n_saved) {
  for (int64_t i = 0; i < len; ++i) {
    acc<T> out, zi, ri, hh;
    const acc<T> ghn = ld(gh_n[i]);
    m::gates_forward(ld(gx_z[i]), ld(gx_r[i]), ld(gx_n[i]), ld(gh_z[i]), ld(gh_r[i]), ghn, ld(h[i]), out, zi,
                     ri, hh);
    h_new[i] = st<T>(out);
    if constexpr (kSave) {
      z[i] = st<T>(zi);
      r[i] = st<T>(ri);
      h_hat[i] = st<T>(hh);
      gh_n_saved[i] = st<T>(ghn);  // exact: ghn came from a T
    }
  }
}

template <typename T>
void gates_backward_row(int64_t len, const T* __restrict g, const T* __restrict z, const T* __restrict r,
                        const T* __restrict h_hat, const T* __restrict gh_n, const T* __restrict h,
                        T* __restrict gx_z, T* __restrict gx_r, T* __restrict gx_n, T* __restrict gh_z,
                        T* __restrict gh_r, T* __restrict g_ghn, T* __restrict g_h) {
  for (int64_t i = 0; i < len; ++i) {
    acc<T> az, ar, an, ahn, gh;
    m::gates_backward(ld(g[i]), ld(z[i]), ld(r[i]), ld(h_hat[i]), ld(gh_n[i]), ld(h[i]), az, ar, an, ahn, gh);
    // d/dgx and d/dgh agree on z and r (both enter through a sum): write both from registers.
    gx_z[i] = st<T>(az);
    gh_z[i] = st<T>(az);
    gx_r[i] = st<T>(ar);
    gh_r[i] = st<T>(ar);
    gx_n[i] = st<T>(an);
    g_ghn[i] = st<T>(ahn);
    g_h[i] = st<T>(gh);
  }
}

}  // namespace

#define VDEBLUR_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, TYPE, NAME, __VA_ARGS__)

void conv_gru_reset(const at::Tensor& gx_zr, const at::Tensor& gh_zr, const at::Tensor& h, const at::Tensor& z,
                    const at::Tensor& rh, const at::Tensor& r) {
  const Shape s = shape_of(h);
  VDEBLUR_DISPATCH(h.scalar_type(), "conv_gru_reset_cpu", [&] {
    const auto gx = in<scalar_t>(gx_zr), gh = in<scalar_t>(gh_zr), hp = in<scalar_t>(h);
    const auto zo = out<scalar_t>(z), rho = out<scalar_t>(rh), ro = out<scalar_t>(r);
    for_each_run(s, [&](int64_t n, int64_t c, int64_t i0, int64_t len) {
      const int64_t C = s.C, S = s.S;
      auto row = ro.base ? reset_row<scalar_t, true> : reset_row<scalar_t, false>;
      row(len, gx.at(n, c, S, i0), gx.at(n, C + c, S, i0), gh.at(n, c, S, i0), gh.at(n, C + c, S, i0),
          hp.at(n, c, S, i0), zo.at(n, c, S, i0), rho.at(n, c, S, i0), ro.base ? ro.at(n, c, S, i0) : nullptr);
    });
  });
}

void conv_gru_reset_backward(const at::Tensor& grad_z, const at::Tensor& grad_rh, const at::Tensor& z,
                             const at::Tensor& r, const at::Tensor& h, const at::Tensor& grad_zr,
                             const at::Tensor& grad_h) {
  const Shape s = shape_of(h);
  VDEBLUR_DISPATCH(h.scalar_type(), "conv_gru_reset_backward_cpu", [&] {
    const auto gz = in<scalar_t>(grad_z), grh = in<scalar_t>(grad_rh), zp = in<scalar_t>(z),
               rp = in<scalar_t>(r), hp = in<scalar_t>(h);
    const auto ga = out<scalar_t>(grad_zr), gh = out<scalar_t>(grad_h);
    for_each_run(s, [&](int64_t n, int64_t c, int64_t i0, int64_t len) {
      const int64_t C = s.C, S = s.S;
      reset_backward_row(len, gz.at(n, c, S, i0), grh.at(n, c, S, i0), zp.at(n, c, S, i0), rp.at(n, c, S, i0),
                         hp.at(n, c, S, i0), ga.at(n, c, S, i0), ga.at(n, C + c, S, i0), gh.at(n, c, S, i0));
    });
  });
}

void conv_gru_update(const at::Tensor& z, const at::Tensor& gx_n, const at::Tensor& gh_n, const at::Tensor& h,
                     const at::Tensor& h_new, const at::Tensor& h_hat) {
  const Shape s = shape_of(h);
  VDEBLUR_DISPATCH(h.scalar_type(), "conv_gru_update_cpu", [&] {
    const auto zp = in<scalar_t>(z), gx = in<scalar_t>(gx_n), gh = in<scalar_t>(gh_n), hp = in<scalar_t>(h);
    const auto ho = out<scalar_t>(h_new), hh = out<scalar_t>(h_hat);
    for_each_run(s, [&](int64_t n, int64_t c, int64_t i0, int64_t len) {
      const int64_t S = s.S;
      auto row = hh.base ? update_row<scalar_t, true> : update_row<scalar_t, false>;
      row(len, zp.at(n, c, S, i0), gx.at(n, c, S, i0), gh.at(n, c, S, i0), hp.at(n, c, S, i0),
          ho.at(n, c, S, i0), hh.base ? hh.at(n, c, S, i0) : nullptr);
    });
  });
}

void conv_gru_update_backward(const at::Tensor& grad, const at::Tensor& z, const at::Tensor& h_hat,
                              const at::Tensor& h, const at::Tensor& grad_z, const at::Tensor& grad_n,
                              const at::Tensor& grad_h) {
  const Shape s = shape_of(h);
  VDEBLUR_DISPATCH(h.scalar_type(), "conv_gru_update_backward_cpu", [&] {
    const auto g = in<scalar_t>(grad), zp = in<scalar_t>(z), hh = in<scalar_t>(h_hat), hp = in<scalar_t>(h);
    const auto gz = out<scalar_t>(grad_z), gn = out<scalar_t>(grad_n), gh = out<scalar_t>(grad_h);
    for_each_run(s, [&](int64_t n, int64_t c, int64_t i0, int64_t len) {
      const int64_t S = s.S;
      update_backward_row(len, g.at(n, c, S, i0), zp.at(n, c, S, i0), hh.at(n, c, S, i0), hp.at(n, c, S, i0),
                          gz.at(n, c, S, i0), gn.at(n, c, S, i0), gh.at(n, c, S, i0));
    });
  });
}

void conv_gru_gates(const at::Tensor& gx, const at::Tensor& gh, const at::Tensor& h, const at::Tensor& h_new,
                    const at::Tensor& workspace) {
  const Shape s = shape_of(h);
  VDEBLUR_DISPATCH(h.scalar_type(), "conv_gru_gates_cpu", [&] {
    const auto x = in<scalar_t>(gx), u = in<scalar_t>(gh), hp = in<scalar_t>(h);
    const auto ho = out<scalar_t>(h_new), ws = out<scalar_t>(workspace);
    for_each_run(s, [&](int64_t n, int64_t c, int64_t i0, int64_t len) {
      const int64_t C = s.C, S = s.S;
      const scalar_t *xz = x.at(n, c, S, i0), *xr = x.at(n, C + c, S, i0), *xn = x.at(n, 2 * C + c, S, i0);
      const scalar_t *uz = u.at(n, c, S, i0), *ur = u.at(n, C + c, S, i0), *un = u.at(n, 2 * C + c, S, i0);
      if (ws.base) {
        gates_row<scalar_t, true>(len, xz, xr, xn, uz, ur, un, hp.at(n, c, S, i0), ho.at(n, c, S, i0),
                                  ws.at(n, c, S, i0), ws.at(n, C + c, S, i0), ws.at(n, 2 * C + c, S, i0),
                                  ws.at(n, 3 * C + c, S, i0));
      } else {
        gates_row<scalar_t, false>(len, xz, xr, xn, uz, ur, un, hp.at(n, c, S, i0), ho.at(n, c, S, i0), nullptr,
                                   nullptr, nullptr, nullptr);
      }
    });
  });
}

void conv_gru_gates_backward(const at::Tensor& grad, const at::Tensor& workspace, const at::Tensor& h,
                             const at::Tensor& grad_gx, const at::Tensor& grad_gh, const at::Tensor& grad_h) {
  const Shape s = shape_of(h);
  VDEBLUR_DISPATCH(h.scalar_type(), "conv_gru_gates_backward_cpu", [&] {
    const auto g = in<scalar_t>(grad), ws = in<scalar_t>(workspace), hp = in<scalar_t>(h);
    const auto gx = out<scalar_t>(grad_gx), gu = out<scalar_t>(grad_gh), gh = out<scalar_t>(grad_h);
    for_each_run(s, [&](int64_t n, int64_t c, int64_t i0, int64_t len) {
      const int64_t C = s.C, S = s.S;
      gates_backward_row(len, g.at(n, c, S, i0), ws.at(n, c, S, i0), ws.at(n, C + c, S, i0),
                         ws.at(n, 2 * C + c, S, i0), ws.at(n, 3 * C + c, S, i0), hp.at(n, c, S, i0),
                         gx.at(n, c, S, i0), gx.at(n, C + c, S, i0), gx.at(n, 2 * C + c, S, i0), gu.at(n, c, S, i0),
                         gu.at(n, C + c, S, i0), gu.at(n, 2 * C + c, S, i0), gh.at(n, c, S, i0));
    });
  });
}

#undef VDEBLUR_DISPATCH

}  // namespace cpu
}  // namespace vdeblur
