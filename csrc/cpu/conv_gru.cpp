// CPU ConvGRU gates: one pass over memory per op. The elements are split into runs that stay
// inside one row of the layout (conv_gru.h: a sample's C*S elements per chunk when channel-major,
// a pixel's C channels per chunk when channels_last), so each run is a plain loop over contiguous
// memory and both layouts are read in place by the same row functions. gcc 12 does not
// vectorise the element maths by itself (the exp's float -> int -> bits step and the selects keep
// it scalar: ~40 ns an element), so the runs are vectorised explicitly with at::vec::Vectorized
// (AVX2 + FMA, 8 floats a register, two registers a step): the element maths of
// vdeblur/conv_gru.h is instantiated for Vectorized<float>, with fast_sigmoid / fast_tanh over a
// vector fast_exp (the same reduction and polynomial as the scalar one in vdeblur/fast_math.h).
// The tail of each run (fewer than kStep elements), Half, double and non-AVX2 builds run the
// scalar HOST_DEVICE maths that CUDA uses. Reduced precision loads to float and stores rounded.
//
// Floors at the bench shape (N, C, H, W) = (4, 64, 128, 128), E = 4.19 M elements per C-plane
// set, float32, 47.6 GB/s copy bandwidth, 2 cores x 2 FMA x 8 lanes x ~3 GHz ~ 190 GFLOP/s:
//   gates fwd (save):  reads gx, gh, h = 7E, writes h' + workspace = 5E -> 201 MB -> 4.2 ms;
//                      ~3 exp (~25 flops each) + ~15 -> ~90 flops/E = 0.38 GFLOP -> 2.0 ms
//   gates bwd:         reads g, ws, h = 6E, writes 7E -> 218 MB -> 4.6 ms; ~15 flops/E -> 0.3 ms
//   reset fwd (save):  reads 5E, writes 3E -> 134 MB -> 2.8 ms; ~2 exp -> 1.1 ms
//   update fwd (save): reads 4E, writes 2E -> 101 MB -> 2.1 ms; ~1 exp -> 0.6 ms
// so every op is memory-bound once vectorised; bfloat16 halves the bytes (floors halve).
#if defined(__AVX2__) && defined(__FMA__) && !defined(CPU_CAPABILITY)
// ATen's vector types pick their instruction set from these macros, which torch's own build sets
// per kernel file; a plain extension build sets none and would get the generic (array) fallback.
// CPU_CAPABILITY names the inline namespace, so these AVX2 instantiations do not collide (ODR)
// with the generic ones of other translation units.
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#endif
#include "conv_gru.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstring>
#include <tuple>
#include <type_traits>

#include "vdeblur/fast_math.h"

#if defined(CPU_CAPABILITY_AVX2)
#define VDEBLUR_CONV_GRU_VEC 1
namespace vdeblur {
// Vector overloads of fast_sigmoid / fast_tanh, declared before vdeblur/conv_gru.h so that its
// templates, instantiated for Vectorized<float>, find them by ordinary lookup.
using FloatVec = at::vec::Vectorized<float>;

// fast_exp (vdeblur/fast_math.h) lane by lane: same clamp, reduction, polynomial and exponent
// bits. The clamp is a compare + blend, not min / max, so that NaN stays NaN as in the scalar code.
inline FloatVec fast_exp(FloatVec x) {
  const FloatVec lo(-87.0f), hi(88.0f), round(12582912.0f);
  FloatVec xc = FloatVec::blendv(x, lo, x < lo);
  xc = FloatVec::blendv(xc, hi, xc > hi);
  const FloatVec n = at::vec::fmadd(xc, FloatVec(1.44269504088896341f), round) - round;
  FloatVec f = at::vec::fnmadd(n, FloatVec(0.693359375f), xc);
  f = at::vec::fnmadd(n, FloatVec(-2.12194440e-4f), f);
  FloatVec p(1.9875691500e-4f);
  p = at::vec::fmadd(p, f, FloatVec(1.3981999507e-3f));
  p = at::vec::fmadd(p, f, FloatVec(8.3334519073e-3f));
  p = at::vec::fmadd(p, f, FloatVec(4.1665795894e-2f));
  p = at::vec::fmadd(p, f, FloatVec(1.6666665459e-1f));
  p = at::vec::fmadd(p, f, FloatVec(5.0000001201e-1f));
  p = at::vec::fmadd(p * f, f, f) + FloatVec(1.0f);
  // 2^n from the exponent field; n is integral and in [-126, 127] after the clamp.
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const FloatVec e = p * FloatVec(_mm256_castsi256_ps(bits));
  return FloatVec::blendv(e, FloatVec(0.0f), x < lo);
}

inline FloatVec fast_sigmoid(FloatVec x) { return FloatVec(1.0f) / (FloatVec(1.0f) + fast_exp(FloatVec(0.0f) - x)); }

// As the scalar fast_tanh: 1 - 2 / (e^2x + 1), and the odd Taylor series where |x| < 1/4.
inline FloatVec fast_tanh(FloatVec x) {
  const FloatVec one(1.0f);
  const FloatVec far = one - FloatVec(2.0f) / (fast_exp(x + x) + one);
  const FloatVec x2 = x * x;
  FloatVec q = at::vec::fmadd(x2, FloatVec(62.0f / 2835.0f), FloatVec(-17.0f / 315.0f));
  q = at::vec::fmadd(x2, q, FloatVec(2.0f / 15.0f));
  q = at::vec::fmadd(x2, q, FloatVec(-1.0f / 3.0f));
  q = at::vec::fmadd(x2, q, one);
  return FloatVec::blendv(far, x * q, x.abs() < FloatVec(0.25f));
}
}  // namespace vdeblur
#endif

#include "vdeblur/conv_gru.h"

namespace vdeblur {
namespace cpu {
namespace {

namespace m = conv_gru;

// Elements per parallel task: large enough to amortise the task, small enough to split a frame.
constexpr int64_t kGrain = 32768;

// A tensor of the call's layout (conv_gru.h): element i of chunk j of row o is at
// base + o * stride + j * inner + i.
template <typename T>
struct Rows {
  T* base;
  int64_t stride, inner;
  T* at(int64_t o, int64_t chunk, int64_t i0) const { return base + o * stride + chunk * inner + i0; }
};

template <typename T>
Rows<const T> in(const at::Tensor& t, const GruLayout& l) {
  return {t.const_data_ptr<T>(), row_stride(t, l), l.inner};
}

template <typename T>
Rows<T> out(const at::Tensor& t, const GruLayout& l) {  // undefined (nothing to save): nullptr
  if (!t.defined() || t.numel() == 0) return {nullptr, 0, l.inner};
  return {t.mutable_data_ptr<T>(), row_stride(t, l), l.inner};
}

// Calls f(o, i0, len) on runs inside one row each, covering every element once.
template <typename F>
void for_each_run(const GruLayout& l, const F& f) {
  at::parallel_for(0, l.outer * l.inner, kGrain, [&](int64_t b, int64_t e) {
    while (b < e) {
      const int64_t o = b / l.inner, i0 = b - o * l.inner, len = std::min(l.inner - i0, e - b);
      f(o, i0, len);
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

// ---- vector blocks: kStep elements of T as two float registers ------------------------------

#if VDEBLUR_CONV_GRU_VEC
constexpr int64_t kStep = 2 * FloatVec::size();

template <typename T>
constexpr bool kHasVec = std::is_same<T, float>::value || std::is_same<T, c10::BFloat16>::value;

template <typename T>
struct Block {
  FloatVec v[2];
  Block() = default;
  explicit Block(const T* p) {
    if constexpr (std::is_same<T, float>::value) {
      v[0] = FloatVec::loadu(p);
      v[1] = FloatVec::loadu(p + FloatVec::size());
    } else if constexpr (std::is_same<T, c10::BFloat16>::value) {
      std::tie(v[0], v[1]) = at::vec::convert_bfloat16_float(at::vec::Vectorized<T>::loadu(p));
    }  // other T: never run (vector_part is 0), only compiled
  }
  void store(T* p) const {
    if constexpr (std::is_same<T, float>::value) {
      v[0].store(p);
      v[1].store(p + FloatVec::size());
    } else if constexpr (std::is_same<T, c10::BFloat16>::value) {
      at::vec::convert_float_bfloat16(v[0], v[1]).store(p);  // round to nearest even, NaN kept
    }
  }
};
#else
constexpr int64_t kStep = 1;
template <typename T>
constexpr bool kHasVec = false;
template <typename T>
struct Block {  // never instantiated without AVX2: keeps the row templates well-formed
  float v[2];
  Block() = default;
  explicit Block(const T*) {}
  void store(T*) const {}
};
#endif

// Elements of a run handled by the vector body; the rest go through the scalar maths.
template <typename T>
int64_t vector_part(int64_t len) {
  if constexpr (kHasVec<T>) return len - len % kStep;
  return 0;
}

// ---- rows: one contiguous run of one plane ----------------------------------------------------
// noinline keeps each row a function of its own name in the library, where
// tests/test_cpu_vectorised.py checks its disassembly for packed FMAs.
#define VDEBLUR_ROW __attribute__((noinline))

template <typename T, bool kSave>
VDEBLUR_ROW void reset_row(int64_t len, const T* __restrict gx_z, const T* __restrict gx_r,
                           const T* __restrict gh_z, const T* __restrict gh_r, const T* __restrict h,
                           T* __restrict z, T* __restrict rh, T* __restrict r) {
  const int64_t nv = vector_part<T>(len);
  for (int64_t i = 0; i < nv; i += kStep) {
    const Block<T> xz(gx_z + i), xr(gx_r + i), uz(gh_z + i), ur(gh_r + i), hb(h + i);
    Block<T> zb, rb, rhb;
    for (int k = 0; k < 2; ++k) {
      m::reset_forward(xz.v[k], xr.v[k], uz.v[k], ur.v[k], hb.v[k], zb.v[k], rb.v[k], rhb.v[k]);
    }
    zb.store(z + i);
    rhb.store(rh + i);
    if constexpr (kSave) rb.store(r + i);
  }
  for (int64_t i = nv; i < len; ++i) {
    acc<T> zi, ri, rhi;
    m::reset_forward(ld(gx_z[i]), ld(gx_r[i]), ld(gh_z[i]), ld(gh_r[i]), ld(h[i]), zi, ri, rhi);
    z[i] = st<T>(zi);
    rh[i] = st<T>(rhi);
    if constexpr (kSave) r[i] = st<T>(ri);
  }
}

template <typename T>
VDEBLUR_ROW void reset_backward_row(int64_t len, const T* __restrict g_z, const T* __restrict g_rh,
                                    const T* __restrict z, const T* __restrict r, const T* __restrict h,
                                    T* __restrict ga_z, T* __restrict ga_r, T* __restrict g_h) {
  const int64_t nv = vector_part<T>(len);
  for (int64_t i = 0; i < nv; i += kStep) {
    const Block<T> gz(g_z + i), grh(g_rh + i), zb(z + i), rb(r + i), hb(h + i);
    Block<T> az, ar, gh;
    for (int k = 0; k < 2; ++k) {
      m::reset_backward(gz.v[k], grh.v[k], zb.v[k], rb.v[k], hb.v[k], az.v[k], ar.v[k], gh.v[k]);
    }
    az.store(ga_z + i);
    ar.store(ga_r + i);
    gh.store(g_h + i);
  }
  for (int64_t i = nv; i < len; ++i) {
    acc<T> az, ar, gh;
    m::reset_backward(ld(g_z[i]), ld(g_rh[i]), ld(z[i]), ld(r[i]), ld(h[i]), az, ar, gh);
    ga_z[i] = st<T>(az);
    ga_r[i] = st<T>(ar);
    g_h[i] = st<T>(gh);
  }
}

template <typename T, bool kSave>
VDEBLUR_ROW void update_row(int64_t len, const T* __restrict z, const T* __restrict gx_n,
                            const T* __restrict gh_n, const T* __restrict h, T* __restrict h_new,
                            T* __restrict h_hat) {
  const int64_t nv = vector_part<T>(len);
  for (int64_t i = 0; i < nv; i += kStep) {
    const Block<T> zb(z + i), xn(gx_n + i), un(gh_n + i), hb(h + i);
    Block<T> out, hh;
    for (int k = 0; k < 2; ++k) m::update_forward(zb.v[k], xn.v[k], un.v[k], hb.v[k], out.v[k], hh.v[k]);
    out.store(h_new + i);
    if constexpr (kSave) hh.store(h_hat + i);
  }
  for (int64_t i = nv; i < len; ++i) {
    acc<T> out, hh;
    m::update_forward(ld(z[i]), ld(gx_n[i]), ld(gh_n[i]), ld(h[i]), out, hh);
    h_new[i] = st<T>(out);
    if constexpr (kSave) h_hat[i] = st<T>(hh);
  }
}

template <typename T>
VDEBLUR_ROW void update_backward_row(int64_t len, const T* __restrict g, const T* __restrict z,
                                     const T* __restrict h_hat, const T* __restrict h, T* __restrict g_z,
                                     T* __restrict ga_n, T* __restrict g_h) {
  const int64_t nv = vector_part<T>(len);
  for (int64_t i = 0; i < nv; i += kStep) {
    const Block<T> gb(g + i), zb(z + i), hh(h_hat + i), hb(h + i);
    Block<T> gz, an, gh;
    for (int k = 0; k < 2; ++k) m::update_backward(gb.v[k], zb.v[k], hh.v[k], hb.v[k], gz.v[k], an.v[k], gh.v[k]);
    gz.store(g_z + i);
    an.store(ga_n + i);
    gh.store(g_h + i);
  }
  for (int64_t i = nv; i < len; ++i) {
    acc<T> gz, an, gh;
    m::update_backward(ld(g[i]), ld(z[i]), ld(h_hat[i]), ld(h[i]), gz, an, gh);
    g_z[i] = st<T>(gz);
    ga_n[i] = st<T>(an);
    g_h[i] = st<T>(gh);
  }
}

template <typename T, bool kSave>
VDEBLUR_ROW void gates_row(int64_t len, const T* __restrict gx_z, const T* __restrict gx_r,
                           const T* __restrict gx_n, const T* __restrict gh_z, const T* __restrict gh_r,
                           const T* __restrict gh_n, const T* __restrict h, T* __restrict h_new,
                           T* __restrict z, T* __restrict r, T* __restrict h_hat, T* __restrict gh_n_saved) {
  const int64_t nv = vector_part<T>(len);
  for (int64_t i = 0; i < nv; i += kStep) {
    const Block<T> xz(gx_z + i), xr(gx_r + i), xn(gx_n + i), uz(gh_z + i), ur(gh_r + i), un(gh_n + i), hb(h + i);
    Block<T> out, zb, rb, hh;
    for (int k = 0; k < 2; ++k) {
      m::gates_forward(xz.v[k], xr.v[k], xn.v[k], uz.v[k], ur.v[k], un.v[k], hb.v[k], out.v[k], zb.v[k], rb.v[k],
                       hh.v[k]);
    }
    out.store(h_new + i);
    if constexpr (kSave) {
      zb.store(z + i);
      rb.store(r + i);
      hh.store(h_hat + i);
      std::memcpy(gh_n_saved + i, gh_n + i, kStep * sizeof(T));  // a copy: exact in any T
    }
  }
  for (int64_t i = nv; i < len; ++i) {
    acc<T> out, zi, ri, hh;
    const acc<T> ghn = ld(gh_n[i]);
    m::gates_forward(ld(gx_z[i]), ld(gx_r[i]), ld(gx_n[i]), ld(gh_z[i]), ld(gh_r[i]), ghn, ld(h[i]), out, zi,
                     ri, hh);
    h_new[i] = st<T>(out);
    if constexpr (kSave) {
      z[i] = st<T>(zi);
      r[i] = st<T>(ri);
      h_hat[i] = st<T>(hh);
      gh_n_saved[i] = gh_n[i];
    }
  }
}

template <typename T>
VDEBLUR_ROW void gates_backward_row(int64_t len, const T* __restrict g, const T* __restrict z,
                                    const T* __restrict r, const T* __restrict h_hat, const T* __restrict gh_n,
                                    const T* __restrict h, T* __restrict gx_z, T* __restrict gx_r,
                                    T* __restrict gx_n, T* __restrict gh_z, T* __restrict gh_r,
                                    T* __restrict g_ghn, T* __restrict g_h) {
  // d/dgx and d/dgh agree on z and r (both enter through a sum): both written from registers.
  const int64_t nv = vector_part<T>(len);
  for (int64_t i = 0; i < nv; i += kStep) {
    const Block<T> gb(g + i), zb(z + i), rb(r + i), hh(h_hat + i), un(gh_n + i), hb(h + i);
    Block<T> az, ar, an, ahn, gh;
    for (int k = 0; k < 2; ++k) {
      m::gates_backward(gb.v[k], zb.v[k], rb.v[k], hh.v[k], un.v[k], hb.v[k], az.v[k], ar.v[k], an.v[k], ahn.v[k],
                        gh.v[k]);
    }
    az.store(gx_z + i);
    az.store(gh_z + i);
    ar.store(gx_r + i);
    ar.store(gh_r + i);
    an.store(gx_n + i);
    ahn.store(g_ghn + i);
    gh.store(g_h + i);
  }
  for (int64_t i = nv; i < len; ++i) {
    acc<T> az, ar, an, ahn, gh;
    m::gates_backward(ld(g[i]), ld(z[i]), ld(r[i]), ld(h_hat[i]), ld(gh_n[i]), ld(h[i]), az, ar, an, ahn, gh);
    gx_z[i] = st<T>(az);
    gh_z[i] = st<T>(az);
    gx_r[i] = st<T>(ar);
    gh_r[i] = st<T>(ar);
    gx_n[i] = st<T>(an);
    g_ghn[i] = st<T>(ahn);
    g_h[i] = st<T>(gh);
  }
}

#undef VDEBLUR_ROW

}  // namespace

#define VDEBLUR_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, TYPE, NAME, __VA_ARGS__)

void conv_gru_reset(const GruLayout& l, const at::Tensor& gx_zr, const at::Tensor& gh_zr, const at::Tensor& h,
                    const at::Tensor& z, const at::Tensor& rh, const at::Tensor& r) {
  VDEBLUR_DISPATCH(h.scalar_type(), "conv_gru_reset_cpu", [&] {
    const auto gx = in<scalar_t>(gx_zr, l), gh = in<scalar_t>(gh_zr, l), hp = in<scalar_t>(h, l);
    const auto zo = out<scalar_t>(z, l), rho = out<scalar_t>(rh, l), ro = out<scalar_t>(r, l);
    for_each_run(l, [&](int64_t o, int64_t i0, int64_t len) {
      auto row = ro.base ? reset_row<scalar_t, true> : reset_row<scalar_t, false>;
      row(len, gx.at(o, 0, i0), gx.at(o, 1, i0), gh.at(o, 0, i0), gh.at(o, 1, i0), hp.at(o, 0, i0),
          zo.at(o, 0, i0), rho.at(o, 0, i0), ro.base ? ro.at(o, 0, i0) : nullptr);
    });
  });
}

void conv_gru_reset_backward(const GruLayout& l, const at::Tensor& grad_z, const at::Tensor& grad_rh,
                             const at::Tensor& z, const at::Tensor& r, const at::Tensor& h,
                             const at::Tensor& grad_zr, const at::Tensor& grad_h) {
  VDEBLUR_DISPATCH(h.scalar_type(), "conv_gru_reset_backward_cpu", [&] {
    const auto gz = in<scalar_t>(grad_z, l), grh = in<scalar_t>(grad_rh, l), zp = in<scalar_t>(z, l),
               rp = in<scalar_t>(r, l), hp = in<scalar_t>(h, l);
    const auto ga = out<scalar_t>(grad_zr, l), gh = out<scalar_t>(grad_h, l);
    for_each_run(l, [&](int64_t o, int64_t i0, int64_t len) {
      reset_backward_row(len, gz.at(o, 0, i0), grh.at(o, 0, i0), zp.at(o, 0, i0), rp.at(o, 0, i0), hp.at(o, 0, i0),
                         ga.at(o, 0, i0), ga.at(o, 1, i0), gh.at(o, 0, i0));
    });
  });
}

void conv_gru_update(const GruLayout& l, const at::Tensor& z, const at::Tensor& gx_n, const at::Tensor& gh_n,
                     const at::Tensor& h, const at::Tensor& h_new, const at::Tensor& h_hat) {
  VDEBLUR_DISPATCH(h.scalar_type(), "conv_gru_update_cpu", [&] {
    const auto zp = in<scalar_t>(z, l), gx = in<scalar_t>(gx_n, l), gh = in<scalar_t>(gh_n, l),
               hp = in<scalar_t>(h, l);
    const auto ho = out<scalar_t>(h_new, l), hh = out<scalar_t>(h_hat, l);
    for_each_run(l, [&](int64_t o, int64_t i0, int64_t len) {
      auto row = hh.base ? update_row<scalar_t, true> : update_row<scalar_t, false>;
      row(len, zp.at(o, 0, i0), gx.at(o, 0, i0), gh.at(o, 0, i0), hp.at(o, 0, i0), ho.at(o, 0, i0),
          hh.base ? hh.at(o, 0, i0) : nullptr);
    });
  });
}

void conv_gru_update_backward(const GruLayout& l, const at::Tensor& grad, const at::Tensor& z,
                              const at::Tensor& h_hat, const at::Tensor& h, const at::Tensor& grad_z,
                              const at::Tensor& grad_n, const at::Tensor& grad_h) {
  VDEBLUR_DISPATCH(h.scalar_type(), "conv_gru_update_backward_cpu", [&] {
    const auto g = in<scalar_t>(grad, l), zp = in<scalar_t>(z, l), hh = in<scalar_t>(h_hat, l),
               hp = in<scalar_t>(h, l);
    const auto gz = out<scalar_t>(grad_z, l), gn = out<scalar_t>(grad_n, l), gh = out<scalar_t>(grad_h, l);
    for_each_run(l, [&](int64_t o, int64_t i0, int64_t len) {
      update_backward_row(len, g.at(o, 0, i0), zp.at(o, 0, i0), hh.at(o, 0, i0), hp.at(o, 0, i0), gz.at(o, 0, i0),
                          gn.at(o, 0, i0), gh.at(o, 0, i0));
    });
  });
}

void conv_gru_gates(const GruLayout& l, const at::Tensor& gx, const at::Tensor& gh, const at::Tensor& h,
                    const at::Tensor& h_new, const at::Tensor& workspace) {
  VDEBLUR_DISPATCH(h.scalar_type(), "conv_gru_gates_cpu", [&] {
    const auto x = in<scalar_t>(gx, l), u = in<scalar_t>(gh, l), hp = in<scalar_t>(h, l);
    const auto ho = out<scalar_t>(h_new, l), ws = out<scalar_t>(workspace, l);
    for_each_run(l, [&](int64_t o, int64_t i0, int64_t len) {
      const scalar_t *xz = x.at(o, 0, i0), *xr = x.at(o, 1, i0), *xn = x.at(o, 2, i0);
      const scalar_t *uz = u.at(o, 0, i0), *ur = u.at(o, 1, i0), *un = u.at(o, 2, i0);
      if (ws.base) {
        gates_row<scalar_t, true>(len, xz, xr, xn, uz, ur, un, hp.at(o, 0, i0), ho.at(o, 0, i0), ws.at(o, 0, i0),
                                  ws.at(o, 1, i0), ws.at(o, 2, i0), ws.at(o, 3, i0));
      } else {
        gates_row<scalar_t, false>(len, xz, xr, xn, uz, ur, un, hp.at(o, 0, i0), ho.at(o, 0, i0), nullptr,
                                   nullptr, nullptr, nullptr);
      }
    });
  });
}

void conv_gru_gates_backward(const GruLayout& l, const at::Tensor& grad, const at::Tensor& workspace,
                             const at::Tensor& h, const at::Tensor& grad_gx, const at::Tensor& grad_gh,
                             const at::Tensor& grad_h) {
  VDEBLUR_DISPATCH(h.scalar_type(), "conv_gru_gates_backward_cpu", [&] {
    const auto g = in<scalar_t>(grad, l), ws = in<scalar_t>(workspace, l), hp = in<scalar_t>(h, l);
    const auto gx = out<scalar_t>(grad_gx, l), gu = out<scalar_t>(grad_gh, l), gh = out<scalar_t>(grad_h, l);
    for_each_run(l, [&](int64_t o, int64_t i0, int64_t len) {
      gates_backward_row(len, g.at(o, 0, i0), ws.at(o, 0, i0), ws.at(o, 1, i0), ws.at(o, 2, i0), ws.at(o, 3, i0),
                         hp.at(o, 0, i0), gx.at(o, 0, i0), gx.at(o, 1, i0), gx.at(o, 2, i0), gu.at(o, 0, i0),
                         gu.at(o, 1, i0), gu.at(o, 2, i0), gh.at(o, 0, i0));
    });
  });
}

#undef VDEBLUR_DISPATCH

}  // namespace cpu
}  // namespace vdeblur
