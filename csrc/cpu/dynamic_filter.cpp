// CPU per-pixel dynamic filter. Every kernel works row by row on an accumulation row of the output
// width held in L1, so the inner loops are unit-stride FMAs over a row (gcc vectorises them at -O3).
// Tasks are (n, group, block of rows), so a filter row predicted once is applied to every channel of
// its group while it is hot, and no two tasks write the same element (no atomics, no reductions
// across threads):
//   forward      task owns output rows: out[y]  = sum_taps filter_row(y, tap) * x[iy(tap)]
//   grad_input   task owns input rows:  gx[iy]  = sum over the (y, tap) that read iy (a gather)
//   grad_weight  task owns filter rows: gw[y, tap] = sum_{c in group} go[c, y] * x[c, iy(tap)]
// Filters are read through their strides (stride 0 where expanded) and, with filter_scale f > 1,
// through the bilinear upsampling, one K*K-row set per output row: nothing is materialised.
//
// Floors at the bench shape, x (2, 64, 128, 128) float32, K=3, G=64, 47.6 GB/s, ~190 GFLOP/s:
//   forward:  reads x (8.4 MB) + 9 filter planes (75 MB), writes out (8.4 MB) -> 92 MB -> 1.9 ms;
//             18 flops an output -> 38 MFLOP -> 0.2 ms: memory-bound, the filters are 80 % of it.
//   backward: grad_x reads go + filters, writes gx (92 MB); grad_w reads go + x, writes 9 planes
//             (92 MB) -> 184 MB -> 3.9 ms. bfloat16 halves all of it.
// The stride-1 forward row keeps its 16 outputs in two registers across all K*K taps
// (at::vec::Vectorized, AVX2 + FMA) instead of re-reading an accumulation row once per tap.
#if defined(__AVX2__) && defined(__FMA__) && !defined(CPU_CAPABILITY)
// ATen's vector types pick their instruction set from these macros (torch sets them per kernel
// file; an extension build sets none). CPU_CAPABILITY names their inline namespace, so these AVX2
// instantiations cannot collide with generic ones in other translation units.
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#endif
#include "dynamic_filter.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

namespace vdeblur {
namespace cpu {
namespace {

using dynamic_filter::Geometry;
using dynamic_filter::WeightStrides;
using dynamic_filter::floor_div;
using dynamic_filter::tap_range;
using dynamic_filter::upsample_source;

// Horizontal half of the bilinear upsampling, shared by all rows: column x reads the low-resolution
// columns x0[x], x1[x] with weights l0[x], l1[x].
template <typename acc_t>
struct ColumnTable {
  std::vector<int64_t> x0, x1;
  std::vector<acc_t> l0, l1;

  explicit ColumnTable(const Geometry& g) {
    if (g.scale == 1) return;
    x0.resize(g.Wo), x1.resize(g.Wo), l0.resize(g.Wo), l1.resize(g.Wo);
    for (int64_t x = 0; x < g.Wo; ++x) upsample_source<acc_t>(x, g.wl, g.scale, x0[x], x1[x], l0[x], l1[x]);
  }
};

// The K*K full-resolution filter rows of one (n, group, output row) as unit-stride arrays: pointers
// into the tensor when it is already such (float / double, unit x-stride, no upsampling), otherwise
// rows gathered into a K*K x Wo buffer. Remembers what it loaded last, so rows that repeat (stride 0
// along y, or a group shared by several channels) are not rebuilt.
//
// filter_scale f > 1: F.interpolate's bilinear weights are separable, so each low-resolution row is
// upsampled horizontally once (kept in one of two slots, as consecutive output rows y read the same
// two low rows y0, y1 for f rows in a row) and output row y is the vertical blend
// l0 * slot(y0) + l1 * slot(y1), a unit-stride loop.
template <typename scalar_t, typename acc_t>
class FilterRows {
 public:
  FilterRows(const scalar_t* w, const WeightStrides& ws, const Geometry& g, const ColumnTable<acc_t>& cols)
      : w_(w), ws_(ws), g_(g), cols_(cols), kk_(g.K * g.K), rows_(kk_),
        direct_(g.scale == 1 && std::is_same<scalar_t, acc_t>::value && ws.x == 1) {
    if (!direct_) buf_.resize(kk_ * g.Wo);
    if (g.scale > 1) {
      for (auto& slot : slots_) slot.resize(kk_ * g.Wo);
    }
  }

  // Rows for output row y of (n, group gi).
  void load(int64_t n, int64_t gi, int64_t y) {
    const scalar_t* base = w_ + n * ws_.n + gi * ws_.g;
    if (g_.scale == 1) {
      load_full(base + y * ws_.y);
    } else {
      load_upsampled(base, y);
    }
  }

  // Unit-stride row of tap t (acc_t, or scalar_t == acc_t pointing into the tensor).
  const acc_t* row(int64_t t) const { return rows_[t]; }

 private:
  void load_full(const scalar_t* base) {
    if (base == last_base_) return;
    last_base_ = base;
    for (int64_t t = 0; t < kk_; ++t) {
      const scalar_t* p = base + t * ws_.t;
      if constexpr (std::is_same<scalar_t, acc_t>::value) {
        if (direct_) {
          rows_[t] = p;
          continue;
        }
      }
      acc_t* __restrict dst = buf_.data() + t * g_.Wo;
      const int64_t sx = ws_.x;
      if (sx == 0) {
        std::fill(dst, dst + g_.Wo, static_cast<acc_t>(p[0]));
      } else {
        for (int64_t x = 0; x < g_.Wo; ++x) dst[x] = static_cast<acc_t>(p[x * sx]);
      }
      rows_[t] = dst;
    }
  }

  // The slot holding low row `row` (its tap-0 element pointer), upsampled horizontally, filling
  // slot `spare` if no slot has it.
  int slot_of(const scalar_t* row, int spare) {
    for (int s = 0; s < 2; ++s) {
      if (slot_key_[s] == row) return s;
    }
    slot_key_[spare] = row;
    const int64_t sx = ws_.x, Wo = g_.Wo;
    const int64_t* __restrict cx0 = cols_.x0.data();
    const int64_t* __restrict cx1 = cols_.x1.data();
    const acc_t* __restrict cl0 = cols_.l0.data();
    const acc_t* __restrict cl1 = cols_.l1.data();
    for (int64_t t = 0; t < kk_; ++t) {
      const scalar_t* p = row + t * ws_.t;
      acc_t* __restrict dst = slots_[spare].data() + t * Wo;
      for (int64_t x = 0; x < Wo; ++x) {
        dst[x] = cl0[x] * static_cast<acc_t>(p[cx0[x] * sx]) + cl1[x] * static_cast<acc_t>(p[cx1[x] * sx]);
      }
    }
    return spare;
  }

  void load_upsampled(const scalar_t* base, int64_t y) {
    int64_t y0, y1;
    acc_t l0, l1;
    upsample_source<acc_t>(y, g_.hl, g_.scale, y0, y1, l0, l1);
    const scalar_t* r0 = base + y0 * ws_.y;
    const scalar_t* r1 = base + y1 * ws_.y;
    if (r0 == last_base_ && r1 == last_r1_ && l1 == last_l1_) return;
    last_base_ = r0, last_r1_ = r1, last_l1_ = l1;
    const int s0 = slot_of(r0, slot_key_[1] == r1 ? 0 : 1);
    const int s1 = slot_of(r1, 1 - s0);
    const int64_t Wo = g_.Wo;
    for (int64_t t = 0; t < kk_; ++t) {
      const acc_t* __restrict a = slots_[s0].data() + t * Wo;
      if (s0 == s1 || l1 == acc_t(0)) {
        rows_[t] = a;
        continue;
      }
      const acc_t* __restrict b = slots_[s1].data() + t * Wo;
      acc_t* __restrict dst = buf_.data() + t * Wo;
      for (int64_t x = 0; x < Wo; ++x) dst[x] = l0 * a[x] + l1 * b[x];
      rows_[t] = dst;
    }
  }

  const scalar_t* w_;
  WeightStrides ws_;
  const Geometry& g_;
  const ColumnTable<acc_t>& cols_;
  int64_t kk_;
  std::vector<const acc_t*> rows_;
  bool direct_;
  std::vector<acc_t> buf_;
  std::vector<acc_t> slots_[2];
  const scalar_t* slot_key_[2] = {nullptr, nullptr};
  const scalar_t* last_base_ = nullptr;
  const scalar_t* last_r1_ = nullptr;
  acc_t last_l1_ = acc_t(-1);
};

// acc[o] += a[o] * b[o*stride + off] for o in [lo, hi). Out of line (noinline): a row is long
// enough to amortise the call, and tests/test_cpu_vectorised.py finds it by name in the library.
template <typename acc_t, typename a_t, typename b_t>
__attribute__((noinline)) void fma_row(acc_t* __restrict acc, const a_t* __restrict a, const b_t* __restrict b, int64_t lo,
                    int64_t hi, int64_t off, int64_t stride) {
  if (stride == 1) {
    for (int64_t o = lo; o < hi; ++o) acc[o] += static_cast<acc_t>(a[o]) * static_cast<acc_t>(b[o + off]);
  } else {
    for (int64_t o = lo; o < hi; ++o) {
      acc[o] += static_cast<acc_t>(a[o]) * static_cast<acc_t>(b[o * stride + off]);
    }
  }
}

// acc[o*stride + off] += a[o] * b[o] for o in [lo, hi): the transpose of fma_row (distinct o write
// distinct elements, so this is still a plain loop).
template <typename acc_t, typename a_t, typename b_t>
inline void fma_row_transposed(acc_t* __restrict acc, const a_t* __restrict a, const b_t* __restrict b,
                               int64_t lo, int64_t hi, int64_t off, int64_t stride) {
  if (stride == 1) {
    for (int64_t o = lo; o < hi; ++o) acc[o + off] += static_cast<acc_t>(a[o]) * static_cast<acc_t>(b[o]);
  } else {
    for (int64_t o = lo; o < hi; ++o) {
      acc[o * stride + off] += static_cast<acc_t>(a[o]) * static_cast<acc_t>(b[o]);
    }
  }
}

template <typename acc_t, typename out_t>
inline void store_row(out_t* __restrict dst, const acc_t* __restrict src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<out_t>(src[i]);
}

// ---- stride-1 forward row, vectorised ------------------------------------------------------

#if defined(CPU_CAPABILITY_AVX2)
constexpr bool kVectorRows = true;
using FloatVec = at::vec::Vectorized<float>;
constexpr int64_t kStep = 2 * FloatVec::size();

// kStep values of T at p as two float registers, and back (bfloat16 rounded to nearest even).
template <typename T>
inline void load2(const T* p, FloatVec& a, FloatVec& b) {
  if constexpr (std::is_same<T, float>::value) {
    a = FloatVec::loadu(p);
    b = FloatVec::loadu(p + FloatVec::size());
  } else if constexpr (std::is_same<T, c10::BFloat16>::value) {
    std::tie(a, b) = at::vec::convert_bfloat16_float(at::vec::Vectorized<T>::loadu(p));
  }
}

template <typename T>
inline void store2(T* p, const FloatVec& a, const FloatVec& b) {
  if constexpr (std::is_same<T, float>::value) {
    a.store(p);
    b.store(p + FloatVec::size());
  } else if constexpr (std::is_same<T, c10::BFloat16>::value) {
    at::vec::convert_float_bfloat16(a, b).store(p);
  }
}
#else
constexpr bool kVectorRows = false;
constexpr int64_t kStep = 1;
#endif

template <typename scalar_t>
constexpr bool kHasVectorRow =
    kVectorRows && (std::is_same<scalar_t, float>::value || std::is_same<scalar_t, c10::BFloat16>::value);

// One output row at stride 1: out[o] = sum_{i, j} filt[i*K + j][o] * xrows[i][o + j*dil - pad],
// with xrows[i] == nullptr for input rows outside the frame. Columns where every tap is inside the
// frame run kStep at a time with the sum in registers; the edges (and any tail) run scalar with
// the bounds check of tap_range.
template <typename scalar_t, typename acc_t>
__attribute__((noinline)) void forward_row(scalar_t* __restrict out, const scalar_t* const* xrows,
                                           const FilterRows<scalar_t, acc_t>& filters, const Geometry& g) {
  const int64_t K = g.K, W = g.W, Wo = g.Wo, pad = g.pad, dil = g.dil;
  const int64_t inner_lo = std::min(Wo, pad), inner_hi = std::max(inner_lo, std::min(Wo, W - (K - 1) * dil + pad));
  int64_t o = inner_lo;
#if defined(CPU_CAPABILITY_AVX2)
  if constexpr (kHasVectorRow<scalar_t>) {
    for (; o + kStep <= inner_hi; o += kStep) {
      FloatVec s0(0.0f), s1(0.0f);
      for (int64_t i = 0; i < K; ++i) {
        if (xrows[i] == nullptr) continue;
        for (int64_t j = 0; j < K; ++j) {
          const acc_t* w = filters.row(i * K + j) + o;
          FloatVec x0, x1;
          load2(xrows[i] + o + j * dil - pad, x0, x1);
          s0 = at::vec::fmadd(FloatVec::loadu(w), x0, s0);
          s1 = at::vec::fmadd(FloatVec::loadu(w + FloatVec::size()), x1, s1);
        }
      }
      store2(out + o, s0, s1);
    }
  }
#endif
  auto scalar_column = [&](int64_t col) {
    acc_t sum = acc_t(0);
    for (int64_t i = 0; i < K; ++i) {
      if (xrows[i] == nullptr) continue;
      for (int64_t j = 0; j < K; ++j) {
        const int64_t ix = col + j * dil - pad;
        if (ix >= 0 && ix < W) sum += filters.row(i * K + j)[col] * static_cast<acc_t>(xrows[i][ix]);
      }
    }
    out[col] = static_cast<scalar_t>(sum);
  };
  for (int64_t col = 0; col < inner_lo; ++col) scalar_column(col);
  for (; o < Wo; ++o) scalar_column(o);
}

// Rows per task: enough tasks to balance threads, few enough that per-task set-up stays small.
constexpr int64_t kRowsPerTask = 16;

template <typename scalar_t>
void forward_impl(const scalar_t* x, const scalar_t* w, const WeightStrides& ws, scalar_t* out, const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t Cg = g.C / g.G, K = g.K, H = g.H, W = g.W, Ho = g.Ho, Wo = g.Wo;
  const int64_t blocks = ceil_div(Ho, kRowsPerTask);
  const ColumnTable<acc_t> cols(g);
  at::parallel_for(0, g.N * g.G * blocks, 1, [&](int64_t begin, int64_t end) {
    FilterRows<scalar_t, acc_t> filters(w, ws, g, cols);
    std::vector<acc_t> acc_buf(Wo);
    std::vector<const scalar_t*> xrows(K);
    acc_t* __restrict acc = acc_buf.data();
    for (int64_t task = begin; task < end; ++task) {
      const int64_t yb = task % blocks, ng = task / blocks, gi = ng % g.G, n = ng / g.G;
      const int64_t y_end = std::min(Ho, (yb + 1) * kRowsPerTask);
      for (int64_t y = yb * kRowsPerTask; y < y_end; ++y) {
        filters.load(n, gi, y);
        for (int64_t c = gi * Cg; c < (gi + 1) * Cg; ++c) {
          if (g.stride == 1) {
            for (int64_t i = 0; i < K; ++i) {
              const int64_t iy = y - g.pad + i * g.dil;
              xrows[i] = iy >= 0 && iy < H ? x + ((n * g.C + c) * H + iy) * W : nullptr;
            }
            forward_row(out + ((n * g.C + c) * Ho + y) * Wo, xrows.data(), filters, g);
            continue;
          }
          std::fill(acc, acc + Wo, acc_t(0));
          for (int64_t i = 0; i < K; ++i) {
            const int64_t iy = y * g.stride - g.pad + i * g.dil;
            if (iy < 0 || iy >= H) continue;
            const scalar_t* xrow = x + ((n * g.C + c) * H + iy) * W;
            for (int64_t j = 0; j < K; ++j) {
              const int64_t off = j * g.dil - g.pad;
              int64_t lo, hi;
              tap_range(off, g.stride, W, Wo, lo, hi);
              fma_row(acc, filters.row(i * K + j), xrow, lo, hi, off, g.stride);
            }
          }
          store_row(out + ((n * g.C + c) * Ho + y) * Wo, acc, Wo);
        }
      }
    }
  });
}

template <typename scalar_t>
void grad_input_impl(const scalar_t* go, const scalar_t* w, const WeightStrides& ws, scalar_t* gx,
                     const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t Cg = g.C / g.G, K = g.K, H = g.H, W = g.W, Ho = g.Ho, Wo = g.Wo;
  // Input rows per task: the task accumulates Cg x R x W values, kept around 128 KiB.
  const int64_t R = std::max<int64_t>(1, std::min<int64_t>(32, (32768 / (Cg * W))));
  const int64_t blocks = ceil_div(H, R);
  const ColumnTable<acc_t> cols(g);
  at::parallel_for(0, g.N * g.G * blocks, 1, [&](int64_t begin, int64_t end) {
    FilterRows<scalar_t, acc_t> filters(w, ws, g, cols);
    std::vector<acc_t> acc_buf(Cg * R * W);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t rb = task % blocks, ng = task / blocks, gi = ng % g.G, n = ng / g.G;
      const int64_t r0 = rb * R, r1 = std::min(H, r0 + R), rows = r1 - r0;
      std::fill(acc_buf.begin(), acc_buf.begin() + Cg * rows * W, acc_t(0));
      // Output rows y with y*stride - pad + i*dil in [r0, r1) for some tap row i.
      const int64_t y_lo = std::max<int64_t>(0, -floor_div(-(r0 + g.pad - (K - 1) * g.dil), g.stride));
      const int64_t y_hi = std::min(Ho, floor_div(r1 - 1 + g.pad, g.stride) + 1);
      for (int64_t y = y_lo; y < y_hi; ++y) {
        filters.load(n, gi, y);
        for (int64_t cc = 0; cc < Cg; ++cc) {
          const scalar_t* gorow = go + ((n * g.C + gi * Cg + cc) * Ho + y) * Wo;
          for (int64_t i = 0; i < K; ++i) {
            const int64_t iy = y * g.stride - g.pad + i * g.dil;
            if (iy < r0 || iy >= r1) continue;
            acc_t* accrow = acc_buf.data() + (cc * rows + iy - r0) * W;
            for (int64_t j = 0; j < K; ++j) {
              const int64_t off = j * g.dil - g.pad;
              int64_t lo, hi;
              tap_range(off, g.stride, W, Wo, lo, hi);
              fma_row_transposed(accrow, filters.row(i * K + j), gorow, lo, hi, off, g.stride);
            }
          }
        }
      }
      for (int64_t cc = 0; cc < Cg; ++cc) {
        store_row(gx + ((n * g.C + gi * Cg + cc) * H + r0) * W, acc_buf.data() + cc * rows * W, rows * W);
      }
    }
  });
}

// Full-resolution filter gradient of one (n, group, output row y, tap (i, j)) into acc (Wo values):
// the dot product over the group's channels of grad_out's row and the tap's shifted input row.
// Returns false (acc untouched) when the tap's input row lies outside the frame: gradient zero.
template <typename scalar_t, typename acc_t>
inline bool filter_grad_row(const scalar_t* go, const scalar_t* x, const Geometry& g, int64_t n, int64_t gi,
                            int64_t y, int64_t i, int64_t j, acc_t* acc) {
  const int64_t Cg = g.C / g.G;
  const int64_t iy = y * g.stride - g.pad + i * g.dil;
  if (iy < 0 || iy >= g.H) return false;
  const int64_t off = j * g.dil - g.pad;
  int64_t lo, hi;
  tap_range(off, g.stride, g.W, g.Wo, lo, hi);
  std::fill(acc, acc + g.Wo, acc_t(0));
  for (int64_t c = gi * Cg; c < (gi + 1) * Cg; ++c) {
    fma_row(acc, go + ((n * g.C + c) * g.Ho + y) * g.Wo, x + ((n * g.C + c) * g.H + iy) * g.W, lo, hi, off,
            g.stride);
  }
  return true;
}

template <typename scalar_t>
void grad_weight_impl(const scalar_t* go, const scalar_t* x, scalar_t* gw, const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t K = g.K, KK = K * K, Ho = g.Ho, Wo = g.Wo;
  const int64_t blocks = ceil_div(Ho, kRowsPerTask);
  at::parallel_for(0, g.N * g.G * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc_buf(Wo);
    acc_t* acc = acc_buf.data();
    for (int64_t task = begin; task < end; ++task) {
      const int64_t yb = task % blocks, ng = task / blocks, gi = ng % g.G, n = ng / g.G;
      const int64_t y_end = std::min(Ho, (yb + 1) * kRowsPerTask);
      for (int64_t y = yb * kRowsPerTask; y < y_end; ++y) {
        for (int64_t t = 0; t < KK; ++t) {
          scalar_t* dst = gw + ((ng * KK + t) * Ho + y) * Wo;
          if (filter_grad_row(go, x, g, n, gi, y, t / K, t % K, acc)) {
            store_row(dst, acc, Wo);
          } else {
            std::fill(dst, dst + Wo, scalar_t(0));
          }
        }
      }
    }
  });
}

// filter_scale > 1: each task owns a block of low-resolution rows [q0, q1) and gathers the
// full-resolution gradient rows y that read them (y in [(q0 - 1) f, (q1 + 1) f)), folding them back
// through the upsampling's adjoint: first vertically into full-width rows (unit-stride
// accumulation), then, once per low row, horizontally.
template <typename scalar_t>
void grad_weight_upsampled_impl(const scalar_t* go, const scalar_t* x, scalar_t* gw, const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t K = g.K, KK = K * K, Wo = g.Wo, hl = g.hl, wl = g.wl, f = g.scale;
  // Low rows per task: the K*K x Q x Wo vertical accumulator stays around 256 KiB.
  const int64_t Q = std::max<int64_t>(1, std::min<int64_t>({hl, 8, 65536 / (KK * Wo)}));
  const int64_t blocks = ceil_div(hl, Q);
  const ColumnTable<acc_t> cols(g);
  at::parallel_for(0, g.N * g.G * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc_buf(Wo), vert(KK * Q * Wo), low(wl);
    acc_t* acc = acc_buf.data();
    for (int64_t task = begin; task < end; ++task) {
      const int64_t qb = task % blocks, ng = task / blocks, gi = ng % g.G, n = ng / g.G;
      const int64_t q0 = qb * Q, q1 = std::min(hl, q0 + Q), rows = q1 - q0;
      std::fill(vert.begin(), vert.end(), acc_t(0));
      const int64_t y_lo = std::max<int64_t>(0, (q0 - 1) * f), y_hi = std::min(g.Ho, (q1 + 1) * f);
      for (int64_t y = y_lo; y < y_hi; ++y) {
        int64_t ys[2];
        acc_t ls[2];
        upsample_source<acc_t>(y, hl, f, ys[0], ys[1], ls[0], ls[1]);
        bool use[2];
        for (int s = 0; s < 2; ++s) use[s] = ys[s] >= q0 && ys[s] < q1 && ls[s] != acc_t(0);
        if (!use[0] && !use[1]) continue;
        for (int64_t t = 0; t < KK; ++t) {
          if (!filter_grad_row(go, x, g, n, gi, y, t / K, t % K, acc)) continue;
          for (int s = 0; s < 2; ++s) {
            if (!use[s]) continue;
            acc_t* __restrict v = vert.data() + (t * Q + ys[s] - q0) * Wo;
            const acc_t l = ls[s];
            for (int64_t xo = 0; xo < Wo; ++xo) v[xo] += l * acc[xo];
          }
        }
      }
      for (int64_t t = 0; t < KK; ++t) {
        for (int64_t q = 0; q < rows; ++q) {
          const acc_t* v = vert.data() + (t * Q + q) * Wo;
          std::fill(low.begin(), low.end(), acc_t(0));
          for (int64_t xo = 0; xo < Wo; ++xo) {
            low[cols.x0[xo]] += cols.l0[xo] * v[xo];
            low[cols.x1[xo]] += cols.l1[xo] * v[xo];
          }
          store_row(gw + ((ng * KK + t) * hl + q0 + q) * wl, low.data(), wl);
        }
      }
    }
  });
}

WeightStrides strides_of(const at::Tensor& w) {
  return WeightStrides{w.stride(0), w.stride(1), w.stride(2), w.stride(3), w.stride(4)};
}

}  // namespace

void dynamic_filter2d_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& out,
                              const Geometry& g) {
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "dynamic_filter2d_cpu", [&] {
    forward_impl<scalar_t>(x.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(), strides_of(weight),
                           out.mutable_data_ptr<scalar_t>(), g);
  });
}

void dynamic_filter2d_grad_input(const at::Tensor& grad_out, const at::Tensor& weight, const at::Tensor& grad_x,
                                 const Geometry& g) {
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, grad_out.scalar_type(), "dynamic_filter2d_grad_input_cpu", [&] {
    grad_input_impl<scalar_t>(grad_out.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
                              strides_of(weight), grad_x.mutable_data_ptr<scalar_t>(), g);
  });
}

void dynamic_filter2d_grad_weight(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& grad_weight,
                                  const Geometry& g) {
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, grad_out.scalar_type(), "dynamic_filter2d_grad_weight_cpu", [&] {
    const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* gw = grad_weight.mutable_data_ptr<scalar_t>();
    if (g.scale == 1) {
      grad_weight_impl<scalar_t>(go, xp, gw, g);
    } else {
      grad_weight_upsampled_impl<scalar_t>(go, xp, gw, g);
    }
  });
}

}  // namespace cpu
}  // namespace vdeblur
