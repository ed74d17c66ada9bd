// CPU temporal_attention (TFN Eqs. 1-9): the work is split into tiles of P pixels of one frame
// stack; workers take tiles from a shared counter.
//
// A tile gathers L and M of its P pixels into cache-resident scratch laid out channel-major,
// X[c][t * P + p] (a C x J matrix, J = T * P), so that
//   * the five linear layers are C x C (or 2C x C for the H/F and K/V pairs that share an input)
//     by C x J GEMMs (BLAS sgemm / dgemm),
//   * the per-pixel T x T attention and the element-wise gate maths are loops over p, which the
//     compiler vectorises (p is the contiguous index in both the tile and the (N,T,C,H,W) input).
// Every T x C intermediate lives only in the tile's scratch. The backward pass recomputes the
// forward of the tile from l and m, accumulates the weight gradients of its tiles in a private
// partial sum per chunk of tiles (no races, deterministic), and sums the partials at the end.
//
// bfloat16 / float16 inputs (S below) compute in float32 (T = at::opmath_type<S>), as the Triton
// kernels do: the tile gather converts into the float32 scratch it writes anyway, the weights are
// converted once per call, and the scatters round back to S. float32 / float64 have S == T and
// run exactly the code they ran before.
#include "temporal_attention.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <type_traits>
#include <vector>

#include "vdeblur/temporal_attention.h"

namespace vdeblur {
namespace cpu {
namespace {

namespace ta = vdeblur::temporal_attention;


// ---- BLAS -------------------------------------------------------------------------------------
// ATen's own gemm wrapper (at::native::cpublas::gemm) is not exported from libtorch, so the tiles
// call the Fortran BLAS that libtorch links (MKL or OpenBLAS export sgemm_ / dgemm_). The symbols
// are weak: on a torch without them, the same product goes through at::addmm_out on the buffers.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
            const double* beta, double* c, const int* ldc) __attribute__((weak));
}

// Column-major C (m x n) = alpha op(A) op(B) + beta C, as BLAS defines it.
template <typename T>
void gemm_fallback(char ta, char tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
                   int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  // A column-major (r x s) buffer read as a row-major (s x r) tensor is its transpose.
  auto as_op = [&](const T* ptr, char trans, int64_t rows, int64_t cols, int64_t ld) {
    const bool no_t = trans == 'N';
    auto view = at::from_blob(const_cast<T*>(ptr), {no_t ? cols : rows, no_t ? rows : cols}, {ld, 1}, opts);
    return no_t ? view.t() : view;  // op(X), rows x cols
  };
  auto op_a = as_op(a, ta, m, k, lda);
  auto op_b = as_op(b, tb, k, n, ldb);
  auto c_t = at::from_blob(c, {n, m}, {ldc, 1}, opts);  // C^T = op(B)^T op(A)^T
  if (beta == T(0)) c_t.zero_();
  at::addmm_out(c_t, c_t, op_b.t(), op_a.t(), beta, alpha);
}

template <typename T>
void gemm(char ta, char tb, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b,
          int64_t ldb, T beta, T* c, int64_t ldc) {
  const int mi = static_cast<int>(m), ni = static_cast<int>(n), ki = static_cast<int>(k);
  const int ldai = static_cast<int>(lda), ldbi = static_cast<int>(ldb), ldci = static_cast<int>(ldc);
  const T one = 1;
#ifndef VDEBLUR_TA_FORCE_GEMM_FALLBACK  // defined only to test the fallback
  if constexpr (std::is_same_v<T, float>) {
    if (sgemm_ != nullptr) return sgemm_(&ta, &tb, &mi, &ni, &ki, &one, a, &ldai, b, &ldbi, &beta, c, &ldci);
  } else {
    if (dgemm_ != nullptr) return dgemm_(&ta, &tb, &mi, &ni, &ki, &one, a, &ldai, b, &ldbi, &beta, c, &ldci);
  }
#endif
  gemm_fallback(ta, tb, m, n, k, one, a, lda, b, ldb, beta, c, ldc);
}

constexpr int64_t kMaxTile = 64;  // pixels per tile (the p loops vectorise over these)

// Which linear layer is which, in op order (w_h, b_h, w_f, ...).
enum Linear { kH = 0, kF = 1, kQ = 2, kK = 3, kV = 4 };

struct Geometry {
  int64_t N, T, C, HW, heads, d;  // d = C / heads
  int64_t P, J;                   // pixels per tile, J = T * P columns of a tile matrix
  int64_t tiles_per_image, tiles;
};

// Pixels per tile: as many as keep `buffers` C x (T * P) scratch matrices within ~512 KiB
// (L2 resident), a multiple of 16 between 16 and kMaxTile.
Geometry make_geometry(const at::Tensor& l, int64_t heads, int buffers, size_t elem) {
  Geometry g{};
  g.N = l.size(0);
  g.T = l.size(1);
  g.C = l.size(2);
  g.HW = l.size(3) * l.size(4);
  g.heads = heads;
  g.d = g.C / heads;
  const int64_t per_pixel = static_cast<int64_t>(buffers) * g.T * g.C * static_cast<int64_t>(elem);
  g.P = std::clamp<int64_t>((512 * 1024 / per_pixel) / 16 * 16, 16, kMaxTile);
  g.J = g.T * g.P;
  g.tiles_per_image = (g.HW + g.P - 1) / g.P;
  g.tiles = g.N * g.tiles_per_image;
  return g;
}

// Weights and biases of the five layers. The (H, F) and (K, V) pairs read the same input, so
// their weights are also stacked into (2C, C) matrices: one GEMM computes both layers, and one
// GEMM back-propagates through both.
// For S != T (half inputs) w and b point at float copies in `converted`, made once per call.
template <typename T>
struct Params {
  const T* w[ta::kNumLinear];
  const T* b[ta::kNumLinear];
  std::vector<T> w_hf, w_kv;  // [W_h; W_f] and [W_k; W_v]
  std::vector<T> converted[2 * ta::kNumLinear];
};

template <typename S, typename T>
Params<T> params_of(const TemporalAttentionParams& p, int64_t C) {
  Params<T> out{};
  for (int i = 0; i < ta::kNumLinear; ++i) {
    if constexpr (std::is_same_v<S, T>) {
      out.w[i] = p[2 * i].data_ptr<T>();
      out.b[i] = p[2 * i + 1].data_ptr<T>();
    } else {
      for (int j : {2 * i, 2 * i + 1}) {
        const S* src = p[j].data_ptr<S>();
        out.converted[j].assign(src, src + p[j].numel());
      }
      out.w[i] = out.converted[2 * i].data();
      out.b[i] = out.converted[2 * i + 1].data();
    }
  }
  auto stack = [&](int a, int b) {
    std::vector<T> w(out.w[a], out.w[a] + C * C);
    w.insert(w.end(), out.w[b], out.w[b] + C * C);
    return w;
  };
  out.w_hf = stack(kH, kF);
  out.w_kv = stack(kK, kV);
  return out;
}

// ---- tile matrices (C rows, J = T * P columns, row-major) --------------------------------------
// A layer pair is a (2C x J) matrix: the first layer's C rows, then the second's.

// out (rows x J) = beta * out + W X for W (rows x C): the linear layers x W^T applied to every
// (t, p) column. Row-major out is column-major out^T = X^T W^T, BLAS's (N, N) product.
template <typename T>
void linear(const T* w, int64_t rows, const T* x, T* out, const Geometry& g, T beta) {
  gemm('N', 'N', g.J, rows, g.C, x, g.J, w, g.C, beta, out, g.J);
}

// out (C x J) = beta * out + W^T G for W (rows x C), G (rows x J): the input gradient.
template <typename T>
void linear_input_grad(const T* w, int64_t rows, const T* grad, T* out, const Geometry& g,
                       T beta) {
  gemm('N', 'T', g.J, g.C, rows, grad, g.J, w, g.C, beta, out, g.J);
}

// dW (rows x C) += G X^T and db (rows) += row sums of G: the weight and bias gradients.
template <typename T>
void linear_param_grad(const T* grad, int64_t rows, const T* x, T* dw, T* db, const Geometry& g) {
  gemm('T', 'N', g.C, rows, g.J, x, g.J, grad, g.J, T(1), dw, g.C);
  const int64_t J = g.J;
  for (int64_t c = 0; c < rows; ++c) {
    const T* __restrict row = grad + c * J;
    T lanes[16] = {};  // 16 independent partial sums: vectorises without reassociation
    int64_t j = 0;
    for (; j + 16 <= J; j += 16)
      for (int k = 0; k < 16; ++k) lanes[k] += row[j + k];
    T s = 0;
    for (; j < J; ++j) s += row[j];
    for (int k = 0; k < 16; ++k) s += lanes[k];
    db[c] += s;
  }
}

// Gather a tile of src (N, T, C, HW) into dst[c][t * P + p] (converting S to T); pixels past the
// image are zero, so they contribute nothing to any gradient.
template <typename S, typename T>
void load_tile(const S* src, T* dst, const Geometry& g, int64_t n, int64_t p0, int64_t np) {
  for (int64_t t = 0; t < g.T; ++t) {
    for (int64_t c = 0; c < g.C; ++c) {
      const S* __restrict s = src + ((n * g.T + t) * g.C + c) * g.HW + p0;
      T* __restrict d = dst + c * g.J + t * g.P;
      std::copy(s, s + np, d);
      std::fill(d + np, d + g.P, T(0));
    }
  }
}

// Scatter the first np pixels of a tile into dst (N, T, C, HW), rounding T to S; with `add`, dst
// gets src + add (summed in T).
template <typename T, typename S>
void store_tile(const T* src, S* dst, const Geometry& g, int64_t n, int64_t p0, int64_t np,
                const T* add = nullptr) {
  for (int64_t t = 0; t < g.T; ++t) {
    for (int64_t c = 0; c < g.C; ++c) {
      const T* __restrict s = src + c * g.J + t * g.P;
      S* __restrict d = dst + ((n * g.T + t) * g.C + c) * g.HW + p0;
      if (add == nullptr) {
        std::copy(s, s + np, d);
      } else {
        const T* __restrict a = add + c * g.J + t * g.P;
        for (int64_t p = 0; p < np; ++p) d[p] = static_cast<S>(s[p] + a[p]);
      }
    }
  }
}

// ---- the memory update (Eqs. 1-6) --------------------------------------------------------------

// zh <- H^ = tanh(zh + b_h), zf <- F = sigmoid(zf + b_f), mnew <- M' = M + F (H^ - M).
template <typename T>
void gates(T* zh, T* zf, const T* m, T* mnew, const Params<T>& prm, const Geometry& g) {
  for (int64_t c = 0; c < g.C; ++c) {
    const T bh = prm.b[kH][c], bf = prm.b[kF][c];
    T* __restrict h = zh + c * g.J;
    T* __restrict f = zf + c * g.J;
    const T* __restrict mm = m + c * g.J;
    T* __restrict out = mnew + c * g.J;
    for (int64_t j = 0; j < g.J; ++j) {
      const T hh = fast_tanh(h[j] + bh);
      const T ff = fast_sigmoid(f[j] + bf);
      h[j] = hh;
      f[j] = ff;
      out[j] = ta::memory_update(mm[j], hh, ff);
    }
  }
}

template <typename T>
void add_bias(T* x, const T* b, const Geometry& g) {
  for (int64_t c = 0; c < g.C; ++c) {
    T* __restrict row = x + c * g.J;
    const T bc = b[c];
    for (int64_t j = 0; j < g.J; ++j) row[j] += bc;
  }
}

// ---- per-pixel T x T attention of one head (Eqs. 8-9) ------------------------------------------

// a[(t * T + s) * P + p] = softmax_s(scale * sum_c q[c][t,p] k[c][s,p]) over channels c0..c0+d.
template <typename T>
void head_attention(const T* q, const T* k, T* a, const Geometry& g, int64_t c0, T scale) {
  const int64_t P = g.P, J = g.J, TT = g.T;
  for (int64_t t = 0; t < TT; ++t) {
    for (int64_t s = 0; s < TT; ++s) {
      T* __restrict acc = a + (t * TT + s) * P;
      std::fill(acc, acc + P, T(0));
      for (int64_t c = c0; c < c0 + g.d; ++c) {
        const T* __restrict qr = q + c * J + t * P;
        const T* __restrict kr = k + c * J + s * P;
        for (int64_t p = 0; p < P; ++p) acc[p] += qr[p] * kr[p];
      }
    }
    T mx[kMaxTile], sum[kMaxTile];
    T* __restrict row = a + t * TT * P;
    for (int64_t p = 0; p < P; ++p) mx[p] = scale * row[p];
    for (int64_t s = 1; s < TT; ++s)
      for (int64_t p = 0; p < P; ++p) mx[p] = std::max(mx[p], scale * row[s * P + p]);
    std::fill(sum, sum + P, T(0));
    for (int64_t s = 0; s < TT; ++s) {
      for (int64_t p = 0; p < P; ++p) {
        const T e = fast_exp(scale * row[s * P + p] - mx[p]);
        row[s * P + p] = e;
        sum[p] += e;
      }
    }
    for (int64_t p = 0; p < P; ++p) sum[p] = T(1) / sum[p];
    for (int64_t s = 0; s < TT; ++s)
      for (int64_t p = 0; p < P; ++p) row[s * P + p] *= sum[p];
  }
}

// out[c][t,p] = sum_s a[t,s,p] v[c][s,p] for the channels of one head.
template <typename T>
void head_apply(const T* a, const T* v, T* out, const Geometry& g, int64_t c0) {
  const int64_t P = g.P, J = g.J, TT = g.T;
  for (int64_t c = c0; c < c0 + g.d; ++c) {
    for (int64_t t = 0; t < TT; ++t) {
      T* __restrict o = out + c * J + t * P;
      std::fill(o, o + P, T(0));
      for (int64_t s = 0; s < TT; ++s) {
        const T* __restrict ar = a + (t * TT + s) * P;
        const T* __restrict vr = v + c * J + s * P;
        for (int64_t p = 0; p < P; ++p) o[p] += ar[p] * vr[p];
      }
    }
  }
}

// attn (N, heads, HW, T, T) <-> a[(t * T + s) * P + p] of one head.
template <typename T, typename S>
void store_attention(const T* a, S* attn, const Geometry& g, int64_t n, int64_t h, int64_t p0,
                     int64_t np) {
  const int64_t TT = g.T * g.T;
  S* base = attn + ((n * g.heads + h) * g.HW + p0) * TT;
  for (int64_t ts = 0; ts < TT; ++ts)
    for (int64_t p = 0; p < np; ++p) base[p * TT + ts] = static_cast<S>(a[ts * g.P + p]);
}

template <typename S, typename T>
void add_attention_grad(const S* grad_attn, T* da, const Geometry& g, int64_t n, int64_t h,
                        int64_t p0, int64_t np) {
  const int64_t TT = g.T * g.T;
  const S* base = grad_attn + ((n * g.heads + h) * g.HW + p0) * TT;
  for (int64_t ts = 0; ts < TT; ++ts)
    for (int64_t p = 0; p < np; ++p) da[ts * g.P + p] += static_cast<T>(base[p * TT + ts]);
}

// Backward of one head's attention, in place. In: a (the softmax), go = dL', q, k, v.
// Out: v <- dV, go <- dQ, k <- dK (each channel's K is read for dQ before dK overwrites it);
// da is T*T*P scratch.
template <typename S, typename T>
void head_attention_backward(const T* a, T* go, const T* q, T* k, T* v, T* da, const Geometry& g,
                             int64_t c0, T scale, const S* grad_attn, int64_t n, int64_t h,
                             int64_t p0, int64_t np) {
  const int64_t P = g.P, J = g.J, TT = g.T, c1 = c0 + g.d;
  // dA[t,s] = sum_c dL'[c][t] V[c][s] (+ the gradient reaching attn itself).
  for (int64_t t = 0; t < TT; ++t) {
    for (int64_t s = 0; s < TT; ++s) {
      T* __restrict acc = da + (t * TT + s) * P;
      std::fill(acc, acc + P, T(0));
      for (int64_t c = c0; c < c1; ++c) {
        const T* __restrict gr = go + c * J + t * P;
        const T* __restrict vr = v + c * J + s * P;
        for (int64_t p = 0; p < P; ++p) acc[p] += gr[p] * vr[p];
      }
    }
  }
  if (grad_attn != nullptr) add_attention_grad(grad_attn, da, g, n, h, p0, np);
  // dV[c][s] = sum_t A[t,s] dL'[c][t]   (V is no longer needed: overwrite it).
  for (int64_t c = c0; c < c1; ++c) {
    for (int64_t s = 0; s < TT; ++s) {
      T* __restrict o = v + c * J + s * P;
      std::fill(o, o + P, T(0));
      for (int64_t t = 0; t < TT; ++t) {
        const T* __restrict ar = a + (t * TT + s) * P;
        const T* __restrict gr = go + c * J + t * P;
        for (int64_t p = 0; p < P; ++p) o[p] += ar[p] * gr[p];
      }
    }
  }
  // dS = scale * A (dA - sum_s dA A), the softmax backward, in place in da.
  for (int64_t t = 0; t < TT; ++t) {
    T dot[kMaxTile];
    std::fill(dot, dot + P, T(0));
    const T* __restrict ar = a + t * TT * P;
    T* __restrict dr = da + t * TT * P;
    for (int64_t s = 0; s < TT; ++s)
      for (int64_t p = 0; p < P; ++p) dot[p] += ar[s * P + p] * dr[s * P + p];
    for (int64_t s = 0; s < TT; ++s)
      for (int64_t p = 0; p < P; ++p) dr[s * P + p] = scale * ar[s * P + p] * (dr[s * P + p] - dot[p]);
  }
  // Per channel: dQ[c][t] = sum_s dS[t,s] K[c][s] (over dL'), then dK[c][s] = sum_t dS[t,s] Q[c][t]
  // (over K, which this channel no longer needs).
  for (int64_t c = c0; c < c1; ++c) {
    for (int64_t t = 0; t < TT; ++t) {
      T* __restrict o = go + c * J + t * P;
      std::fill(o, o + P, T(0));
      for (int64_t s = 0; s < TT; ++s) {
        const T* __restrict dr = da + (t * TT + s) * P;
        const T* __restrict kr = k + c * J + s * P;
        for (int64_t p = 0; p < P; ++p) o[p] += dr[p] * kr[p];
      }
    }
    for (int64_t s = 0; s < TT; ++s) {
      T* __restrict o = k + c * J + s * P;
      std::fill(o, o + P, T(0));
      for (int64_t t = 0; t < TT; ++t) {
        const T* __restrict dr = da + (t * TT + s) * P;
        const T* __restrict qr = q + c * J + t * P;
        for (int64_t p = 0; p < P; ++p) o[p] += dr[p] * qr[p];
      }
    }
  }
}

// ---- scheduling ----------------------------------------------------------------------------------
// Workers take tiles (chunks in the backward) from a shared counter rather than a static split:
// on a machine shared with other jobs a descheduled thread then delays only the tile it holds.

// Backward: tiles go in at most kMaxChunks fixed chunks, one gradient partial each. Small chunks
// keep the tail short (a worker waits at most for one chunk); the partials stay under 32 MiB.
constexpr int64_t kMaxChunks = 64;
constexpr int64_t kPartialBudget = int64_t(32) << 20;

int64_t workers(int64_t items) {
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), items));
}

// ---- forward -----------------------------------------------------------------------------------

constexpr int kForwardBuffers = 5;

// S: the tensors' dtype; the scratch, GEMMs and softmax run in T = at::opmath_type<S>.
template <typename S, typename T = at::opmath_type<S>>
void forward_impl(const at::Tensor& l_t, const at::Tensor& m_t, const TemporalAttentionParams& pt,
                  T scale, int64_t heads, const at::Tensor& l_out_t, const at::Tensor& m_out_t,
                  const at::Tensor& attn_t) {
  const Geometry g = make_geometry(l_t, heads, kForwardBuffers, sizeof(T));
  const Params<T> prm = params_of<S, T>(pt, g.C);
  const S* l = l_t.data_ptr<S>();
  const S* m = m_t.data_ptr<S>();
  S* l_out = l_out_t.data_ptr<S>();
  S* m_out = m_out_t.data_ptr<S>();
  S* attn = attn_t.defined() ? attn_t.data_ptr<S>() : nullptr;
  const int64_t mat = g.C * g.J;

  std::atomic<int64_t> next_tile{0};
  at::parallel_for(0, workers(g.tiles), 1, [&](int64_t, int64_t) {
    std::vector<T> scratch(kForwardBuffers * mat + g.T * g.T * g.P);
    T* bl = scratch.data();  // L, later L' (the attention output)
    T* bm = bl + mat;        // M, later Q
    T* bi = bm + mat;        // I = M + L, later M'
    T* bh = bi + mat;        // H^, later K
    T* bf = bh + mat;        // F, later V (right after bh: the pair is one 2C x J matrix)
    T* ba = bf + mat;        // one head's T x T x P attention
    for (int64_t tile; (tile = next_tile.fetch_add(1)) < g.tiles;) {
      const int64_t n = tile / g.tiles_per_image;
      const int64_t p0 = (tile % g.tiles_per_image) * g.P;
      const int64_t np = std::min(g.P, g.HW - p0);
      load_tile(l, bl, g, n, p0, np);
      load_tile(m, bm, g, n, p0, np);
      for (int64_t j = 0; j < mat; ++j) bi[j] = bl[j] + bm[j];  // Eq. 1
      linear(prm.w_hf.data(), 2 * g.C, bi, bh, g, T(0));  // bh, bf <- I W_h^T, I W_f^T
      gates(bh, bf, bm, bi, prm, g);  // Eqs. 2-6: bi <- M'
      store_tile(bi, m_out, g, n, p0, np);
      linear(prm.w[kQ], g.C, bi, bm, g, T(0));  // Eq. 7: bm <- Q
      linear(prm.w_kv.data(), 2 * g.C, bl, bh, g, T(0));  // bh, bf <- K, V
      add_bias(bm, prm.b[kQ], g);
      add_bias(bh, prm.b[kK], g);
      add_bias(bf, prm.b[kV], g);
      for (int64_t h = 0; h < g.heads; ++h) {  // Eqs. 8-9: bl <- L'
        head_attention(bm, bh, ba, g, h * g.d, scale);
        head_apply(ba, bf, bl, g, h * g.d);
        if (attn != nullptr) store_attention(ba, attn, g, n, h, p0, np);
      }
      store_tile(bl, l_out, g, n, p0, np);
    }
  });
}

// ---- backward ----------------------------------------------------------------------------------

constexpr int kBackwardBuffers = 11;

template <typename S, typename T = at::opmath_type<S>>
void backward_impl(const at::Tensor& gl_t, const at::Tensor& gm_t, const at::Tensor& ga_t,
                   const at::Tensor& l_t, const at::Tensor& m_t, const TemporalAttentionParams& pt,
                   T scale, int64_t heads, const std::vector<at::Tensor>& grads) {
  const Geometry g = make_geometry(l_t, heads, kBackwardBuffers, sizeof(T));
  const Params<T> prm = params_of<S, T>(pt, g.C);
  const S* l = l_t.data_ptr<S>();
  const S* m = m_t.data_ptr<S>();
  const S* gl = gl_t.data_ptr<S>();
  const S* gm = gm_t.data_ptr<S>();
  const S* ga = ga_t.defined() ? ga_t.data_ptr<S>() : nullptr;
  S* dl = grads[0].data_ptr<S>();
  S* dm = grads[1].data_ptr<S>();
  const int64_t mat = g.C * g.J;
  const int64_t CC = g.C * g.C;

  // Tiles go in fixed chunks, each with its own partial sum of the weight / bias gradients:
  // no two workers share a partial, and the sums do not depend on which worker took which chunk.
  const int64_t partial_size = ta::kNumLinear * (CC + g.C);
  const int64_t affordable = kPartialBudget / (partial_size * static_cast<int64_t>(sizeof(T)));
  const int64_t chunks = std::clamp<int64_t>(std::min(g.tiles, affordable), 1, kMaxChunks);
  std::vector<T> partials(chunks * partial_size, T(0));

  std::atomic<int64_t> next_chunk{0};
  at::parallel_for(0, workers(chunks), 1, [&](int64_t, int64_t) {
    std::vector<T> scratch(kBackwardBuffers * mat + g.T * g.T * g.P * 2);
    T* bl = scratch.data();   // L
    T* bm = bl + mat;         // M, later dM (direct path)
    T* bi = bm + mat;         // I = L + M
    T* bh = bi + mat;         // H^, later dZ_h
    T* bf = bh + mat;         // F, later dZ_f      (bh, bf: one 2C x J pair)
    T* bmn = bf + mat;        // M'
    T* bq = bmn + mat;        // Q, later dL (through K and V)
    T* bk = bq + mat;         // K, later dK, later dI
    T* bv = bk + mat;         // V, later dV        (bk, bv: one 2C x J pair)
    T* bg = bv + mat;         // dL', later dQ
    T* bdm = bg + mat;        // dM' (total)
    T* ba = bdm + mat;        // one head's attention
    T* bda = ba + g.T * g.T * g.P;  // its dA, later dS
    for (int64_t chunk; (chunk = next_chunk.fetch_add(1)) < chunks;) {
      T* part = partials.data() + chunk * partial_size;
      T* dw[ta::kNumLinear];
      T* db[ta::kNumLinear];
      for (int i = 0; i < ta::kNumLinear; ++i) {  // pairs (h, f) and (k, v) are adjacent
        dw[i] = part + i * CC;
        db[i] = part + ta::kNumLinear * CC + i * g.C;
      }
      const int64_t tile_begin = g.tiles * chunk / chunks, tile_end = g.tiles * (chunk + 1) / chunks;
      for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
        const int64_t n = tile / g.tiles_per_image;
        const int64_t p0 = (tile % g.tiles_per_image) * g.P;
        const int64_t np = std::min(g.P, g.HW - p0);
        // Recompute the forward of the tile.
        load_tile(l, bl, g, n, p0, np);
        load_tile(m, bm, g, n, p0, np);
        for (int64_t j = 0; j < mat; ++j) bi[j] = bl[j] + bm[j];
        linear(prm.w_hf.data(), 2 * g.C, bi, bh, g, T(0));
        gates(bh, bf, bm, bmn, prm, g);
        linear(prm.w[kQ], g.C, bmn, bq, g, T(0));
        linear(prm.w_kv.data(), 2 * g.C, bl, bk, g, T(0));
        add_bias(bq, prm.b[kQ], g);
        add_bias(bk, prm.b[kK], g);
        add_bias(bv, prm.b[kV], g);
        // Attention backward, head by head: bg <- dQ, bk <- dK, bv <- dV.
        load_tile(gl, bg, g, n, p0, np);
        for (int64_t h = 0; h < g.heads; ++h) {
          head_attention(bq, bk, ba, g, h * g.d, scale);
          head_attention_backward(ba, bg, bq, bk, bv, bda, g, h * g.d, scale, ga, n, h, p0, np);
        }
        linear_param_grad(bg, g.C, bmn, dw[kQ], db[kQ], g);
        linear_param_grad(bk, 2 * g.C, bl, dw[kK], db[kK], g);  // W_k and W_v at once
        load_tile(gm, bdm, g, n, p0, np);
        linear_input_grad(prm.w[kQ], g.C, bg, bdm, g, T(1));  // dM' = dM'_out + dQ W_q
        linear_input_grad(prm.w_kv.data(), 2 * g.C, bk, bq, g, T(0));  // dL = dK W_k + dV W_v
        // Backward of Eqs. 2-6, element-wise: bh <- dZ_h, bf <- dZ_f, bm <- dM (direct path).
        for (int64_t j = 0; j < mat; ++j) {
          ta::memory_update_backward(bdm[j], bh[j], bf[j], bm[j], bh[j], bf[j], bm[j]);
        }
        linear_param_grad(bh, 2 * g.C, bi, dw[kH], db[kH], g);  // W_h and W_f at once
        linear_input_grad(prm.w_hf.data(), 2 * g.C, bh, bk, g, T(0));  // dI = dZ_h W_h + dZ_f W_f
        store_tile(bq, dl, g, n, p0, np, bk);  // Eq. 1: I = M + L feeds both
        store_tile(bm, dm, g, n, p0, np, bk);
      }
    }
  });

  // Sum the partials into the parameter gradients (for S != T: in T, then rounded once).
  std::vector<T> sum_buf(std::is_same_v<S, T> ? 0 : CC + g.C);
  for (int i = 0; i < ta::kNumLinear; ++i) {
    S* dw_s = grads[2 + 2 * i].data_ptr<S>();
    S* db_s = grads[3 + 2 * i].data_ptr<S>();
    T* dw;
    T* db;
    if constexpr (std::is_same_v<S, T>) {
      dw = dw_s;
      db = db_s;
    } else {
      dw = sum_buf.data();
      db = dw + CC;
    }
    std::fill(dw, dw + CC, T(0));
    std::fill(db, db + g.C, T(0));
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      const T* part = partials.data() + chunk * partial_size;
      for (int64_t j = 0; j < CC; ++j) dw[j] += part[i * CC + j];
      for (int64_t c = 0; c < g.C; ++c) db[c] += part[ta::kNumLinear * CC + i * g.C + c];
    }
    if constexpr (!std::is_same_v<S, T>) {
      std::copy(dw, dw + CC, dw_s);
      std::copy(db, db + g.C, db_s);
    }
  }
}

}  // namespace

void temporal_attention_forward(const at::Tensor& l, const at::Tensor& m,
                                const TemporalAttentionParams& params, double scale, int64_t heads,
                                const at::Tensor& l_out, const at::Tensor& m_out,
                                const at::Tensor& attn) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, l.scalar_type(), "temporal_attention_cpu", [&] {
    forward_impl<scalar_t>(l, m, params, static_cast<at::opmath_type<scalar_t>>(scale), heads, l_out, m_out,
                           attn);
  });
}

void temporal_attention_backward(const at::Tensor& grad_l_out, const at::Tensor& grad_m_out,
                                 const at::Tensor& grad_attn, const at::Tensor& l,
                                 const at::Tensor& m, const TemporalAttentionParams& params,
                                 double scale, int64_t heads, const std::vector<at::Tensor>& grads) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, l.scalar_type(), "temporal_attention_backward_cpu", [&] {
    backward_impl<scalar_t>(grad_l_out, grad_m_out, grad_attn, l, m, params,
                            static_cast<at::opmath_type<scalar_t>>(scale), heads, grads);
  });
}

}  // namespace cpu
}  // namespace vdeblur
