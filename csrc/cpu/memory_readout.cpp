// CPU memory readout (MemDeblur Eqs. 5-7) without the N x Nm x Nq affinity.
//
// Full softmax, forward: one task per (batch, tile of BQ queries) streams over tiles of BM memory
// positions: S = K_t^T Q_t (GEMM), online softmax per query column, O_i += V_i,t P for every value
// tensor with the same P (GEMM). Extra memory per thread: one BM x BQ tile and the O_i tiles.
// Full softmax, backward (FlashAttention-2): one task per (batch, memory tile) owns that tile's
// dK, dV and loops over query tiles, recomputing P from the saved log-sum-exp; dQ goes to a
// per-thread accumulator summed at the end (no atomics).
// Top-k, forward: per (batch, query tile), S = K_t^T Q_t tiles stream through per-query candidate
// lists (one vector compare tests a memory row against 16 queries' thresholds; few scores pass).
// The thresholds start near each query's k-th largest score of the first memory tile (a
// vectorised bisection over all queries at once) and rise by bisection, not sorting, when a list
// fills; then a softmax over each query's k kept scores; a second pass gathers the k kept value
// columns per query from per-thread transposed blocks of the value matrices (one parallel
// region). Extra memory O(N Nq k + threads Nm kCB).
// Top-k, backward: gathers and scatters through the kept (weight, index) pairs, one task per
// channel row so that scatters never race.
// bfloat16 / float16 inputs (S below) compute in float32 (T), as the Triton twins do: the full
// softmax kernels read q, k, v in S and run their GEMMs as S x S -> float32 products (MKL's
// gemm_bf16bf16f32 / gemm_f16f16f32: AMX on CPUs that have it), with P and dS rounded to S for
// the products that take them (as FlashAttention does); softmax, statistics and accumulators stay
// float32. The top-k kernels run in float32 on float32 copies. `stat` is float32 for S inputs.
#include "memory_readout.h"
#include "thread_scratch.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <c10/util/ParallelGuard.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <type_traits>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "vdeblur/memory_readout.h"

namespace vdeblur {
namespace cpu {
namespace {

using namespace vdeblur::memory_readout;

constexpr int64_t kBQ = 128;  // queries per tile
constexpr int64_t kBM = 256;  // memory positions per tile (a BM x BQ float tile is 128 KiB)
constexpr int64_t kTopBQ = 256;  // queries per tile of the top-k forward, when there are enough

// Threads: at::parallel_for (the build compiles with -fopenmp; BLAS calls on tiles inside a task
// see the enclosing parallel region and run single-threaded instead of forking their own teams).
// Below kMinParallelWork (about a millisecond of multiply-adds) one worker runs everything:
// starting threads would cost more than it saves.
constexpr int64_t kMinParallelWork = int64_t(1) << 21;

int64_t worker_count(int64_t tasks, int64_t work_per_task) {
  if (tasks * work_per_task < kMinParallelWork) return 1;
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), tasks));
}

// fn(worker, begin, end) over [0, tasks) in contiguous chunks, worker in
// [0, worker_count(tasks, work_per_task)); work_per_task is a rough count of multiply-adds.
template <typename F>
void parallel_tasks(int64_t tasks, int64_t work_per_task, const F& fn) {
  if (tasks <= 0) return;
  const int64_t workers = worker_count(tasks, work_per_task);
  const int64_t chunk = ceil_div(tasks, workers);
  // Tasks call ATen ops (GEMMs on tiles): OpenMP workers must see the caller's thread-local
  // dispatch state (autograd already handled above this kernel, grad mode, ...).
  const at::ThreadLocalState state;
  at::parallel_for(0, workers, 1, [&](int64_t b, int64_t e) {
    at::ThreadLocalStateGuard tls(state);
    for (int64_t w = b; w < e; ++w) fn(w, w * chunk, std::min(tasks, (w + 1) * chunk));
  });
}

int64_t channel_sum(const std::vector<at::Tensor>& values) {
  int64_t sum = 0;
  for (const auto& v : values) sum += v.size(1);
  return sum;
}

// A contiguous (rows, cols) matrix over raw storage, for GEMMs into per-thread scratch.
at::Tensor mat(void* data, int64_t rows, int64_t cols, const at::TensorOptions& opts) {
  return at::from_blob(data, {rows, cols}, opts);
}

// |k_p|^2 per memory position (N, Nm) in T, from keys in S; only for "l2".
// Computed in plain loops, like every other pass here: a torch op on the calling thread would
// start OpenMP threads that keep spinning while our workers run.
template <typename S, typename T = S>
at::Tensor key_norms(const at::Tensor& k, bool l2) {
  if (!l2) return at::Tensor();
  const int64_t N = k.size(0), Ck = k.size(1), Nm = k.size(2);
  at::Tensor kn = at::empty({N, Nm}, k.options().dtype(c10::CppTypeToScalarType<T>::value));
  parallel_tasks(N, Ck * Nm, [&](int64_t, int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      T* dst = kn.data_ptr<T>() + n * Nm;
      std::fill(dst, dst + Nm, T(0));
      for (int64_t c = 0; c < Ck; ++c) {
        const S* row = k.data_ptr<S>() + n * k.stride(0) + c * k.stride(1);
        for (int64_t p = 0; p < Nm; ++p) {
          const T x = static_cast<T>(row[p]);
          dst[p] += x * x;
        }
      }
    }
  });
  return kn;
}

// ---- GEMMs on tiles ------------------------------------------------------------------------------
// float32 / float64 tiles go through at::addmm_out. Half tiles (S = bfloat16 / float16) go
// through MKL's mixed-precision Fortran GEMMs, S x S -> float32 with float32 accumulation, which
// libtorch's MKL exports (weak symbols: without them the product runs in float32 on converted
// copies).
extern "C" {
void gemm_bf16bf16f32_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const uint16_t* a, const int* lda, const uint16_t* b, const int* ldb,
                       const float* beta, float* c, const int* ldc) __attribute__((weak));
void gemm_f16f16f32_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                     const float* alpha, const uint16_t* a, const int* lda, const uint16_t* b, const int* ldb,
                     const float* beta, float* c, const int* ldc) __attribute__((weak));
}

// A 2-D view as a BLAS (column-major) operand: 'N' when its rows are contiguous (the memory is
// the transpose, column-major), 'T' when its columns are; ld its leading dimension.
struct BlasOperand {
  char trans;
  int ld;
};

bool blas_operand(const at::Tensor& x, BlasOperand& op) {
  const int64_t r = x.size(0), c = x.size(1);
  if (x.stride(1) == 1 || c == 1) {
    op = {'N', static_cast<int>(std::max<int64_t>({x.stride(0), c, 1}))};
    return true;
  }
  if (x.stride(0) == 1 || r == 1) {
    op = {'T', static_cast<int>(std::max<int64_t>({x.stride(1), r, 1}))};
    return true;
  }
  return false;
}

// out (m, n), float32 with contiguous rows, = beta * out + alpha * a (m, k) @ b (k, n) for half a, b.
// Row-major out is column-major out^T = b^T a^T: b is BLAS's first operand.
template <typename S>
void half_gemm(at::Tensor out, const at::Tensor& a, const at::Tensor& b, float beta, float alpha) {
  auto fn = std::is_same_v<S, at::BFloat16> ? gemm_bf16bf16f32_ : gemm_f16f16f32_;
  BlasOperand oa{}, ob{};
  if (fn == nullptr || out.stride(1) != 1 || !blas_operand(a, oa) || !blas_operand(b, ob)) {
    at::addmm_out(out, out, a.to(at::kFloat), b.to(at::kFloat), beta, alpha);
    return;
  }
  const int m = static_cast<int>(b.size(1)), n = static_cast<int>(a.size(0)), k = static_cast<int>(a.size(1));
  const int ldc = static_cast<int>(std::max<int64_t>({out.stride(0), out.size(1), 1}));
  fn(&ob.trans, &oa.trans, &m, &n, &k, &alpha, reinterpret_cast<const uint16_t*>(b.data_ptr<S>()), &ob.ld,
     reinterpret_cast<const uint16_t*>(a.data_ptr<S>()), &oa.ld, &beta, out.data_ptr<float>(), &ldc);
}

// out = beta * out + alpha * a @ b: at::addmm_out for float32 / float64 (as before), the mixed GEMM
// for half a, b into a float32 out.
template <typename S>
void tile_gemm(at::Tensor out, const at::Tensor& a, const at::Tensor& b, const at::Scalar& beta,
               const at::Scalar& alpha) {
  if constexpr (std::is_same_v<S, at::opmath_type<S>>) {
    at::addmm_out(out, out, a, b, beta, alpha);
  } else {
    half_gemm<S>(out, a, b, beta.to<float>(), alpha.to<float>());
  }
}

// S: the inputs' dtype; T: the scratch / softmax dtype (float32 for half S, else S).
template <typename S, typename T = at::opmath_type<S>>
void full_forward_impl(const at::Tensor& q, const at::Tensor& k, const std::vector<at::Tensor>& values,
                       const std::vector<at::Tensor>& outs, const at::Tensor& lse, bool l2, T scale) {
  constexpr bool kHalf = !std::is_same_v<S, T>;
  const int64_t N = q.size(0), Nq = q.size(2), Nm = k.size(2);
  const int64_t nv = static_cast<int64_t>(values.size()), cv_sum = channel_sum(values);
  const T ds = dot_scale<T>(l2, scale), ns = norm_scale<T>(l2, scale);
  const at::Tensor kn = key_norms<S, T>(k, l2);
  const int64_t n_qt = ceil_div(Nq, kBQ);
  int64_t cv_max = 0;
  for (const auto& v : values) cv_max = std::max(cv_max, v.size(1));
  const auto opts = q.options().dtype(c10::CppTypeToScalarType<T>::value);

  parallel_tasks(N * n_qt, (q.size(1) + cv_sum) * kBQ * Nm, [&](int64_t, int64_t begin, int64_t end) {
    at::Tensor s_buf = thread_scratch<T>(0, {kBM * kBQ}, opts);
    at::Tensor o_buf = thread_scratch<T>(1, {nv, cv_max * kBQ}, opts);
    at::Tensor p_half = kHalf ? thread_scratch<S>(2, {kBM * kBQ}, q.options()) : at::Tensor();  // P rounded to S
    std::vector<T> m(kBQ), l(kBQ), corr(kBQ), tile_max(kBQ), tile_sum(kBQ);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / n_qt, q0 = (task % n_qt) * kBQ, bq = std::min(kBQ, Nq - q0);
      const at::Tensor qt = q[n].narrow(1, q0, bq);  // (Ck, bq)
      std::vector<at::Tensor> o(nv);
      for (int64_t i = 0; i < nv; ++i) {
        o[i] = mat(o_buf[i].data_ptr<T>(), values[i].size(1), bq, opts);
        o[i].zero_();
      }
      std::fill(m.begin(), m.end(), -std::numeric_limits<T>::infinity());
      std::fill(l.begin(), l.end(), T(0));
      for (int64_t p0 = 0; p0 < Nm; p0 += kBM) {
        const int64_t bm = std::min(kBM, Nm - p0);
        at::Tensor st = mat(s_buf.data_ptr<T>(), bm, bq, opts);
        tile_gemm<S>(st, k[n].narrow(1, p0, bm).t(), qt, 0, ds);  // (bm, bq)
        T* s = st.data_ptr<T>();
        const T* knp = l2 ? kn[n].data_ptr<T>() + p0 : nullptr;
        std::fill(tile_max.begin(), tile_max.begin() + bq, -std::numeric_limits<T>::infinity());
        for (int64_t p = 0; p < bm; ++p) {
          T* row = s + p * bq;
          const T bias = l2 ? ns * knp[p] : T(0);
          for (int64_t j = 0; j < bq; ++j) {
            const T v = row[j] - bias;
            row[j] = v;
            tile_max[j] = v > tile_max[j] ? v : tile_max[j];
          }
        }
        bool rescale = false;
        for (int64_t j = 0; j < bq; ++j) {
          const T new_max = std::max(m[j], tile_max[j]);
          corr[j] = rescale_factor(m[j], new_max);
          rescale |= corr[j] != T(1);
          m[j] = new_max;
          tile_sum[j] = T(0);
        }
        for (int64_t p = 0; p < bm; ++p) {
          T* row = s + p * bq;
          for (int64_t j = 0; j < bq; ++j) {
            const T e = fast_exp(row[j] - m[j]);
            row[j] = e;
            tile_sum[j] += e;
          }
          if constexpr (kHalf) {
            S* prow = p_half.data_ptr<S>() + p * bq;
            for (int64_t j = 0; j < bq; ++j) prow[j] = static_cast<S>(row[j]);
          }
        }
        for (int64_t j = 0; j < bq; ++j) l[j] = l[j] * corr[j] + tile_sum[j];
        const at::Tensor pt = kHalf ? mat(p_half.data_ptr<S>(), bm, bq, q.options()) : st;
        for (int64_t i = 0; i < nv; ++i) {
          if (rescale) {
            T* od = o[i].data_ptr<T>();
            for (int64_t c = 0; c < o[i].size(0); ++c)
              for (int64_t j = 0; j < bq; ++j) od[c * bq + j] *= corr[j];
          }
          tile_gemm<S>(o[i], values[i][n].narrow(1, p0, bm), pt, 1, 1);
        }
      }
      T* lse_row = lse.data_ptr<T>() + n * Nq + q0;
      for (int64_t j = 0; j < bq; ++j) {
        lse_row[j] = m[j] + std::log(l[j]);
        corr[j] = T(1) / l[j];
      }
      for (int64_t i = 0; i < nv; ++i) {
        const int64_t cv = values[i].size(1);
        const T* od = o[i].data_ptr<T>();
        S* dst = outs[i].data_ptr<S>() + n * cv * Nq + q0;
        for (int64_t c = 0; c < cv; ++c)
          for (int64_t j = 0; j < bq; ++j) dst[c * Nq + j] = static_cast<S>(od[c * bq + j] * corr[j]);
      }
    }
  });
}

// One query's candidates for its k largest scores: every score above the threshold is appended;
// when the buffer is full, the threshold is raised to a value t with at least k candidates >= t
// (found by bisection on the value with vectorised counts, no sort) and only the candidates >= t
// stay. No score below t can be among the k largest, and a later score equal to t only ties.
// Amortised O(1) per candidate, and few scores pass once the threshold is good, so the
// vectorised threshold test (scan_row) does almost all the work. The threshold lives in a
// per-tile array so that scan_row compares a whole row of queries at once. An exact selection
// (nth_element) runs only at the end, or when ties or infinities defeat the bisection.
template <typename T>
struct Candidates {
  T* vals;       // cap scores
  int64_t* idx;  // cap memory positions
  T* scratch;    // cap values, shared by the lists of one thread
  T* thr;
  int64_t k, cap, count;

  void init(T* v, int64_t* ix, T* sc, T* threshold, int64_t kk, int64_t capacity) {
    vals = v;
    idx = ix;
    scratch = sc;
    thr = threshold;
    k = kk;
    cap = capacity;
    count = 0;
    *thr = -std::numeric_limits<T>::infinity();
  }
  int64_t count_at_least(T t) const {
    int64_t c = 0;
    for (int64_t i = 0; i < count; ++i) c += vals[i] >= t;
    return c;
  }
  void keep_at_least(T t) {  // keeps the candidates >= t, in order
    int64_t kept = 0;
    for (int64_t i = 0; i < count; ++i) {
      const bool keep = vals[i] >= t;
      vals[kept] = vals[i];
      idx[kept] = idx[i];
      kept += keep;
    }
    count = kept;
  }
  // Raises the threshold as far as a few bisection steps allow; false when that freed too little
  // room (many equal scores, infinite scores) and an exact selection has to run instead.
  bool raise_threshold() {
    T lo = *thr, hi = vals[0];
    for (int64_t i = 1; i < count; ++i) hi = vals[i] > hi ? vals[i] : hi;
    if (!(std::isfinite(lo) && std::isfinite(hi))) return false;
    // count(>= lo) >= k holds throughout (every candidate is > *thr).
    const int64_t enough = k + k / 4;
    int64_t c = count;
    for (int it = 0; it < 16 && c > enough; ++it) {
      const T mid = lo + (hi - lo) * T(0.5);
      if (!(mid > lo && mid < hi)) break;
      const int64_t cm = count_at_least(mid);
      if (cm >= k) {
        lo = mid;
        c = cm;
      } else {
        hi = mid;
      }
    }
    if (c > (k + cap) / 2) return false;
    keep_at_least(lo);
    *thr = lo;
    return true;
  }
  void keep_best() {  // exactly the k largest (ties at the k-th broken arbitrarily), thr = the k-th
    for (int64_t i = 0; i < count; ++i) scratch[i] = vals[i];
    std::nth_element(scratch, scratch + k - 1, scratch + count, std::greater<T>());
    const T kth = scratch[k - 1];
    int64_t above = 0;
    for (int64_t i = 0; i < count; ++i) above += vals[i] > kth;
    // Keep the entries above the k-th largest and as many equal to it as fill k (ties).
    int64_t ties = k - above, kept = 0;
    for (int64_t i = 0; i < count; ++i) {
      const bool keep = vals[i] > kth || (vals[i] == kth && ties-- > 0);
      if (keep) {
        vals[kept] = vals[i];
        idx[kept++] = idx[i];
      }
    }
    *thr = kth;
    count = k;
  }
  void push(T s, int64_t p) {  // caller checked s > *thr
    vals[count] = s;
    idx[count++] = p;
    if (count == cap && !raise_threshold()) keep_best();
  }
  void finish() {
    if (count > k) keep_best();
    // Only NaN scores can leave fewer than k candidates: keep the indices in range, let NaN flow.
    while (count < k) {
      vals[count] = std::numeric_limits<T>::quiet_NaN();
      idx[count++] = 0;
    }
  }
};

// Offers score row[j] - bias of memory position p to query j's list, for every j in [0, bq)
// whose score beats its threshold.
template <typename T>
void scan_row(const T* row, T bias, const T* thr, Candidates<T>* lists, int64_t bq, int64_t p) {
  for (int64_t j = 0; j < bq; ++j) {
    const T s = row[j] - bias;
    if (s > thr[j]) lists[j].push(s, p);
  }
}

#if defined(__AVX512F__) || defined(__AVX2__)
// float: compare 16 (AVX-512) or 8 (AVX2) queries at once and visit only the set mask bits.
template <>
void scan_row<float>(const float* row, float bias, const float* thr, Candidates<float>* lists, int64_t bq,
                     int64_t p) {
  int64_t j = 0;
#if defined(__AVX512F__)
  const __m512 b = _mm512_set1_ps(bias);
  for (; j + 16 <= bq; j += 16) {
    const __m512 s = _mm512_sub_ps(_mm512_loadu_ps(row + j), b);
    uint32_t m = _mm512_cmp_ps_mask(s, _mm512_loadu_ps(thr + j), _CMP_GT_OQ);
    while (m) {
      const int l = __builtin_ctz(m);
      m &= m - 1;
      lists[j + l].push(row[j + l] - bias, p);
    }
  }
#else
  const __m256 b = _mm256_set1_ps(bias);
  for (; j + 8 <= bq; j += 8) {
    const __m256 s = _mm256_sub_ps(_mm256_loadu_ps(row + j), b);
    uint32_t m = _mm256_movemask_ps(_mm256_cmp_ps(s, _mm256_loadu_ps(thr + j), _CMP_GT_OQ));
    while (m) {
      const int l = __builtin_ctz(m);
      m &= m - 1;
      lists[j + l].push(row[j + l] - bias, p);
    }
  }
#endif
  for (; j < bq; ++j) {
    const float s = row[j] - bias;
    if (s > thr[j]) lists[j].push(s, p);
  }
}
#endif

// A starting threshold per query from the first memory tile, so that few of its scores become
// candidates: split the tile's bm >= k rows into k groups and take each query's smallest group
// maximum. Those k maxima are k distinct scores >= it, so no score below it is among the k
// largest; the threshold is lowered by one ulp so that scores equal to it still pass the strict
// test. NaN scores never win a comparison and are ignored, as in scan_row.
constexpr int kThresholdSteps = 8;

template <typename T>
void initial_thresholds(const T* s, const T* knp, T ns, T* thr, int64_t bm, int64_t bq, int64_t K) {
  constexpr T inf = std::numeric_limits<T>::infinity();
  T gmax[kTopBQ], lo[kTopBQ], hi[kTopBQ], mid[kTopBQ];
  int32_t cnt[kTopBQ];
  for (int64_t j = 0; j < bq; ++j) {
    lo[j] = inf;
    hi[j] = -inf;
  }
  for (int64_t g = 0; g < K; ++g) {
    const int64_t r0 = g * bm / K, r1 = (g + 1) * bm / K;
    for (int64_t j = 0; j < bq; ++j) gmax[j] = -inf;
    for (int64_t p = r0; p < r1; ++p) {
      const T* row = s + p * bq;
      const T bias = knp ? ns * knp[p] : T(0);
      for (int64_t j = 0; j < bq; ++j) {
        const T v = row[j] - bias;
        gmax[j] = v > gmax[j] ? v : gmax[j];
      }
    }
    for (int64_t j = 0; j < bq; ++j) {
      lo[j] = gmax[j] < lo[j] ? gmax[j] : lo[j];
      hi[j] = gmax[j] > hi[j] ? gmax[j] : hi[j];
    }
  }
  // Bisection on the value, all queries at once: lo stays a value with at least k scores >= it.
  for (int it = 0; it < kThresholdSteps; ++it) {
    for (int64_t j = 0; j < bq; ++j) {
      mid[j] = lo[j] + (hi[j] - lo[j]) * T(0.5);
      cnt[j] = 0;
    }
    for (int64_t p = 0; p < bm; ++p) {
      const T* row = s + p * bq;
      const T bias = knp ? ns * knp[p] : T(0);
      for (int64_t j = 0; j < bq; ++j) cnt[j] += (row[j] - bias) >= mid[j] ? 1 : 0;
    }
    for (int64_t j = 0; j < bq; ++j) {
      if (!(mid[j] > lo[j] && mid[j] < hi[j])) continue;  // converged, or lo/hi not finite
      if (cnt[j] >= K) lo[j] = mid[j];
      else hi[j] = mid[j];
    }
  }
  for (int64_t j = 0; j < bq; ++j) thr[j] = std::nextafter(lo[j], -inf);
}

// out_i[n, :, q] = sum_t weight[n, t, q] values_i[n, :, index[n, t, q]]. One task per block of
// kCB channels of one value matrix (and one batch item): the block is transposed to (Nm, kCB), so
// that a kept memory position is one contiguous row and the weighted sum of k rows vectorises
// over channels, then every query is gathered from it. The per-thread transposed block is the
// only scratch (Nm * kCB elements), and a single parallel region covers the whole gather.
template <typename T>
void gather_values(const std::vector<at::Tensor>& values, const at::Tensor& weight, const at::Tensor& index,
                   const std::vector<at::Tensor>& outs) {
  constexpr int64_t kQB = 16;  // output rows are written kQB values at a time
  constexpr int64_t kCB = 32;  // channels per transposed block
  const int64_t N = weight.size(0), K = weight.size(1), Nq = weight.size(2), Nm = values[0].size(2);
  std::vector<int64_t> first_task(values.size() + 1, 0);  // tasks of value i: [first_task[i], first_task[i+1])
  for (size_t i = 0; i < values.size(); ++i)
    first_task[i + 1] = first_task[i] + N * ceil_div(values[i].size(1), kCB);
  parallel_tasks(first_task.back(), kCB * (Nm + K * Nq), [&](int64_t, int64_t begin, int64_t end) {
    std::vector<T> vt_buf(Nm * kCB), acc_buf(kQB * kCB);
    T* vd = vt_buf.data();  // (Nm, cb)
    T* acc = acc_buf.data();
    for (int64_t task = begin; task < end; ++task) {
      size_t i = 0;
      while (task >= first_task[i + 1]) ++i;
      const int64_t cv = values[i].size(1), vstride = values[i].stride(1), n_cb = ceil_div(cv, kCB);
      const int64_t r = task - first_task[i], n = r / n_cb, c0 = (r % n_cb) * kCB;
      const int64_t cb = std::min(kCB, cv - c0);
      const T* src = values[i].data_ptr<T>() + n * values[i].stride(0) + c0 * vstride;
      for (int64_t p = 0; p < Nm; ++p)
        for (int64_t c = 0; c < cb; ++c) vd[p * cb + c] = src[c * vstride + p];
      const T* w = weight.data_ptr<T>() + n * K * Nq;
      const int64_t* ix = index.data_ptr<int64_t>() + n * K * Nq;
      T* dst = outs[i].data_ptr<T>() + n * cv * Nq + c0 * Nq;
      for (int64_t q0 = 0; q0 < Nq; q0 += kQB) {
        const int64_t nb = std::min(kQB, Nq - q0);
        for (int64_t jj = 0; jj < nb; ++jj) {
          T* a = acc + jj * cb;
          std::fill(a, a + cb, T(0));
          for (int64_t t = 0; t < K; ++t) {
            const T wt = w[t * Nq + q0 + jj];
            const T* row = vd + ix[t * Nq + q0 + jj] * cb;
            for (int64_t c = 0; c < cb; ++c) a[c] += wt * row[c];
          }
        }
        for (int64_t c = 0; c < cb; ++c)
          for (int64_t jj = 0; jj < nb; ++jj) dst[c * Nq + q0 + jj] = acc[jj * cb + c];
      }
    }
  });
}

template <typename T>
void topk_forward_impl(const at::Tensor& q, const at::Tensor& k, const std::vector<at::Tensor>& values,
                       const std::vector<at::Tensor>& outs, const at::Tensor& weight, const at::Tensor& index,
                       bool l2, T scale) {
  const int64_t N = q.size(0), Nq = q.size(2), Nm = k.size(2), K = weight.size(1);
  const T ds = dot_scale<T>(l2, scale), ns = norm_scale<T>(l2, scale);
  const at::Tensor kn = key_norms<T>(k, l2);
  // Wider query tiles make the K^T Q GEMMs about 10% faster (Ck is short); keep the narrow ones
  // when wide tiles would leave threads without work.
  const int64_t bq_max = N * ceil_div(Nq, kTopBQ) >= 2 * at::get_num_threads() ? kTopBQ : kBQ;
  const int64_t n_qt = ceil_div(Nq, bq_max);
  const auto opts = q.options();

  parallel_tasks(N * n_qt, q.size(1) * bq_max * Nm, [&](int64_t, int64_t begin, int64_t end) {
    at::Tensor s_buf = thread_scratch<T>(0, {bq_max * kBM}, opts);
    const int64_t cap = 2 * K;  // the threshold rises when cap candidates are waiting
    std::vector<T> cand_vals(bq_max * cap), scratch(cap), thr(bq_max);
    std::vector<int64_t> cand_idx(bq_max * cap);
    std::vector<Candidates<T>> lists(bq_max);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / n_qt, q0 = (task % n_qt) * bq_max, bq = std::min(bq_max, Nq - q0);
      const at::Tensor qt = q[n].narrow(1, q0, bq);  // (Ck, bq)
      for (int64_t j = 0; j < bq; ++j) lists[j].init(&cand_vals[j * cap], &cand_idx[j * cap], scratch.data(), &thr[j], K, cap);
      for (int64_t p0 = 0; p0 < Nm; p0 += kBM) {
        const int64_t bm = std::min(kBM, Nm - p0);
        at::Tensor st = mat(s_buf.data_ptr<T>(), bm, bq, opts);
        at::addmm_out(st, st, k[n].narrow(1, p0, bm).t(), qt, 0, ds);  // (bm, bq)
        const T* knp = l2 ? kn[n].data_ptr<T>() + p0 : nullptr;
        const T* s = st.data_ptr<T>();
        if (p0 == 0 && bm >= K) initial_thresholds<T>(s, knp, ns, thr.data(), bm, bq, K);
        for (int64_t p = 0; p < bm; ++p)
          scan_row<T>(s + p * bq, l2 ? ns * knp[p] : T(0), thr.data(), lists.data(), bq, p0 + p);
      }
      // Softmax over each query's k kept scores; the (k, Nq) layout keeps query rows contiguous.
      T* w = weight.data_ptr<T>() + n * K * Nq + q0;
      int64_t* ix = index.data_ptr<int64_t>() + n * K * Nq + q0;
      for (int64_t j = 0; j < bq; ++j) {
        Candidates<T>& kb = lists[j];
        kb.finish();
        T mx = kb.vals[0];
        for (int64_t t = 1; t < K; ++t) mx = std::max(mx, kb.vals[t]);
        T sum = 0;
        for (int64_t t = 0; t < K; ++t) sum += (kb.vals[t] = fast_exp(kb.vals[t] - mx));
        const T inv = T(1) / sum;
        for (int64_t t = 0; t < K; ++t) {
          w[t * Nq + j] = kb.vals[t] * inv;
          ix[t * Nq + j] = kb.idx[t];
        }
      }
    }
  });
  gather_values<T>(values, weight, index, outs);
}

template <typename S, typename T = at::opmath_type<S>>
void full_backward_impl(const std::vector<at::Tensor>& grads, const at::Tensor& q, const at::Tensor& k,
                        const std::vector<at::Tensor>& values, const std::vector<at::Tensor>& outs,
                        const at::Tensor& lse, const at::Tensor& gq, const at::Tensor& gk,
                        const std::vector<at::Tensor>& gvs, bool l2, T scale) {
  constexpr bool kHalf = !std::is_same_v<S, T>;
  const int64_t N = q.size(0), Ck = q.size(1), Nq = q.size(2), Nm = k.size(2);
  const int64_t nv = static_cast<int64_t>(values.size()), cv_sum = channel_sum(values);
  const T ds = dot_scale<T>(l2, scale), ns = norm_scale<T>(l2, scale);
  const at::Tensor kn = key_norms<S, T>(k, l2);
  const auto opts = q.options().dtype(c10::CppTypeToScalarType<T>::value);
  // D[n, q] = sum_i sum_c dO_i[c, q] O_i[c, q]: the softmax backward's per-query correction.
  at::Tensor delta = at::empty({N, Nq}, opts);
  parallel_tasks(N, cv_sum * Nq, [&](int64_t, int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      T* dl = delta.data_ptr<T>() + n * Nq;
      std::fill(dl, dl + Nq, T(0));
      for (int64_t i = 0; i < nv; ++i) {
        const int64_t cv = values[i].size(1);
        const S* g = grads[i].data_ptr<S>() + n * cv * Nq;
        const S* o = outs[i].data_ptr<S>() + n * cv * Nq;
        for (int64_t c = 0; c < cv; ++c)
          for (int64_t j = 0; j < Nq; ++j) dl[j] += static_cast<T>(g[c * Nq + j]) * static_cast<T>(o[c * Nq + j]);
      }
    }
  });
  const int64_t n_mt = ceil_div(Nm, kBM), n_qt = ceil_div(Nq, kBQ);
  const int64_t work_per_tile = (3 * Ck + 2 * cv_sum) * kBM * Nq;
  const int64_t threads = worker_count(N * n_mt, work_per_tile);
  // dQ per thread, laid out in (query tile, Ck, BQ) blocks so each GEMM writes a contiguous block.
  at::Tensor gq_acc = at::empty({threads, N, n_qt, Ck, kBQ}, opts);  // each worker zeroes its own
  int64_t cv_max = 0;
  for (const auto& v : values) cv_max = std::max(cv_max, v.size(1));

  parallel_tasks(N * n_mt, work_per_tile, [&](int64_t tid, int64_t begin, int64_t end) {
    at::Tensor mine = gq_acc[tid];
    std::fill(mine.data_ptr<T>(), mine.data_ptr<T>() + mine.numel(), T(0));
    at::Tensor p_buf = thread_scratch<T>(0, {kBM * kBQ}, opts), dp_buf = thread_scratch<T>(1, {kBM * kBQ}, opts);
    at::Tensor gk_buf = thread_scratch<T>(2, {Ck * kBM}, opts), gv_buf = thread_scratch<T>(3, {nv, cv_max * kBM}, opts);
    // P and dS rounded to S, for the products that take them (half inputs only).
    at::Tensor p_half = kHalf ? thread_scratch<S>(4, {kBM * kBQ}, q.options()) : at::Tensor();
    at::Tensor ds_half = kHalf ? thread_scratch<S>(5, {kBM * kBQ}, q.options()) : at::Tensor();
    std::vector<T> row_sum(kBM);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / n_mt, p0 = (task % n_mt) * kBM, bm = std::min(kBM, Nm - p0);
      const at::Tensor kt = k[n].narrow(1, p0, bm);  // (Ck, bm)
      at::Tensor gkt = mat(gk_buf.data_ptr<T>(), Ck, bm, opts);
      gkt.zero_();
      std::vector<at::Tensor> vt(nv), gvt(nv);
      for (int64_t i = 0; i < nv; ++i) {
        vt[i] = values[i][n].narrow(1, p0, bm);
        gvt[i] = mat(gv_buf[i].data_ptr<T>(), values[i].size(1), bm, opts);
        gvt[i].zero_();
      }
      std::fill(row_sum.begin(), row_sum.end(), T(0));
      const T* knp = l2 ? kn[n].data_ptr<T>() + p0 : nullptr;
      for (int64_t qi = 0; qi < n_qt; ++qi) {
        const int64_t q0 = qi * kBQ, bq = std::min(kBQ, Nq - q0);
        const at::Tensor qt = q[n].narrow(1, q0, bq);
        at::Tensor pt = mat(p_buf.data_ptr<T>(), bm, bq, opts);
        at::Tensor dpt = mat(dp_buf.data_ptr<T>(), bm, bq, opts);
        tile_gemm<S>(pt, kt.t(), qt, 0, ds);
        T* pd = pt.data_ptr<T>();
        const T* lse_row = lse.data_ptr<T>() + n * Nq + q0;
        for (int64_t p = 0; p < bm; ++p) {
          const T bias = l2 ? ns * knp[p] : T(0);
          T* row = pd + p * bq;
          for (int64_t j = 0; j < bq; ++j) row[j] = fast_exp(row[j] - bias - lse_row[j]);
          if constexpr (kHalf) {
            S* hrow = p_half.data_ptr<S>() + p * bq;
            for (int64_t j = 0; j < bq; ++j) hrow[j] = static_cast<S>(row[j]);
          }
        }
        const at::Tensor p_in = kHalf ? mat(p_half.data_ptr<S>(), bm, bq, q.options()) : pt;
        for (int64_t i = 0; i < nv; ++i) {
          const at::Tensor dot = grads[i][n].narrow(1, q0, bq);  // (Cv, bq)
          tile_gemm<S>(gvt[i], dot, p_in.t(), 1, 1);
          tile_gemm<S>(dpt, vt[i].t(), dot, i == 0 ? 0 : 1, 1);
        }
        T* dd = dpt.data_ptr<T>();
        const T* dl = delta.data_ptr<T>() + n * Nq + q0;
        for (int64_t p = 0; p < bm; ++p) {
          T* drow = dd + p * bq;
          const T* prow = pd + p * bq;
          T acc = 0;
          for (int64_t j = 0; j < bq; ++j) {
            drow[j] = prow[j] * (drow[j] - dl[j]);
            acc += drow[j];
          }
          row_sum[p] += acc;
          if constexpr (kHalf) {
            S* hrow = ds_half.data_ptr<S>() + p * bq;
            for (int64_t j = 0; j < bq; ++j) hrow[j] = static_cast<S>(drow[j]);
          }
        }
        const at::Tensor ds_in = kHalf ? mat(ds_half.data_ptr<S>(), bm, bq, q.options()) : dpt;
        // Block (Ck, bq) with row stride BQ: the columns past a short last tile stay zero.
        at::Tensor gqt = at::from_blob(gq_acc[tid][n][qi].data_ptr<T>(), {Ck, bq}, {kBQ, 1}, opts);
        tile_gemm<S>(gqt, kt, ds_in, 1, ds);
        tile_gemm<S>(gkt, qt, ds_in.t(), 1, ds);
      }
      T* gkd = gkt.data_ptr<T>();
      const S* kd = kt.data_ptr<S>();
      const int64_t kstride = kt.stride(0);
      S* gk_dst = gk.data_ptr<S>() + n * Ck * Nm + p0;
      for (int64_t c = 0; c < Ck; ++c)
        for (int64_t p = 0; p < bm; ++p) {
          T g = gkd[c * bm + p];
          if (l2) g -= T(2) * ns * static_cast<T>(kd[c * kstride + p]) * row_sum[p];  // d(-ns |k|^2)/dk
          gk_dst[c * Nm + p] = static_cast<S>(g);
        }
      for (int64_t i = 0; i < nv; ++i) {
        const int64_t cv = values[i].size(1);
        const T* src = gvt[i].data_ptr<T>();
        S* dst = gvs[i].data_ptr<S>() + n * cv * Nm + p0;
        for (int64_t c = 0; c < cv; ++c) std::copy(src + c * bm, src + (c + 1) * bm, dst + c * Nm);
      }
    }
  });
  // Sum the per-thread blocks and lay them out as (N, Ck, Nq); the block for a short last query
  // tile has unused (zero) columns past Nq.
  parallel_tasks(N * Ck, Nq * threads, [&](int64_t, int64_t begin, int64_t end) {
    const int64_t block = Ck * kBQ, per_thread = N * n_qt * block;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / Ck, c = r % Ck;
      S* dst = gq.data_ptr<S>() + r * Nq;
      for (int64_t j = 0; j < Nq; ++j) {
        const T* src = gq_acc.data_ptr<T>() + (n * n_qt + j / kBQ) * block + c * kBQ + j % kBQ;
        T acc = 0;
        for (int64_t t = 0; t < threads; ++t) acc += src[t * per_thread];
        dst[j] = static_cast<S>(acc);
      }
    }
  });
}

template <typename T>
void topk_backward_impl(const std::vector<at::Tensor>& grads, const at::Tensor& q, const at::Tensor& k,
                        const std::vector<at::Tensor>& values, const at::Tensor& weight, const at::Tensor& index,
                        const at::Tensor& gq, const at::Tensor& gk, const std::vector<at::Tensor>& gvs, bool l2,
                        T scale) {
  const int64_t N = q.size(0), Ck = q.size(1), Nq = q.size(2), Nm = k.size(2), K = weight.size(1);
  const int64_t nv = static_cast<int64_t>(values.size()), cv_sum = channel_sum(values);
  const T ds = dot_scale<T>(l2, scale), ns = norm_scale<T>(l2, scale);
  const T* w = weight.data_ptr<T>();
  const int64_t* ix = index.data_ptr<int64_t>();
  // dW[t, q] = sum_i sum_c V_i[c, idx[t, q]] dO_i[c, q], then dS = W (dW - sum_t W dW) in place.
  at::Tensor dw = at::empty({N, K, Nq}, q.options());
  T* dwd = dw.data_ptr<T>();
  constexpr int64_t kQC = 256;  // queries per task
  const int64_t n_qc = ceil_div(Nq, kQC);
  parallel_tasks(N * n_qc, kQC * K * cv_sum, [&](int64_t, int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / n_qc, q0 = (task % n_qc) * kQC, bq = std::min(kQC, Nq - q0);
      const int64_t base = n * K * Nq + q0;
      for (int64_t t = 0; t < K; ++t) {
        std::fill(dwd + base + t * Nq, dwd + base + t * Nq + bq, T(0));
        for (int64_t j = 0; j < bq; ++j) {
          const int64_t p = ix[base + t * Nq + j];
          TORCH_CHECK(p >= 0 && p < Nm, "vdeblur::memory_readout_backward: index ", p, " out of range [0, ", Nm, ")");
        }
      }
      for (int64_t i = 0; i < nv; ++i) {
        const at::Tensor vn = values[i][n];
        const T* vd = vn.data_ptr<T>();
        const int64_t cv = vn.size(0), vstride = vn.stride(0);
        const T* gd = grads[i].data_ptr<T>() + n * cv * Nq + q0;
        for (int64_t c = 0; c < cv; ++c) {
          const T* vrow = vd + c * vstride;
          const T* grow = gd + c * Nq;
          for (int64_t t = 0; t < K; ++t) {
            T* drow = dwd + base + t * Nq;
            const int64_t* irow = ix + base + t * Nq;
            for (int64_t j = 0; j < bq; ++j) drow[j] += vrow[irow[j]] * grow[j];
          }
        }
      }
      for (int64_t j = 0; j < bq; ++j) {
        T acc = 0;
        for (int64_t t = 0; t < K; ++t) acc += w[base + t * Nq + j] * dwd[base + t * Nq + j];
        for (int64_t t = 0; t < K; ++t) {
          const int64_t o = base + t * Nq + j;
          dwd[o] = w[o] * (dwd[o] - acc);
        }
      }
    }
  });
  // Per memory position, the sum of dS over the (t, q) that kept it ("l2" norm channel).
  at::Tensor row_sum = at::empty({N, Nm}, q.options());
  T* rs = row_sum.data_ptr<T>();
  parallel_tasks(N, K * Nq, [&](int64_t, int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      std::fill(rs + n * Nm, rs + (n + 1) * Nm, T(0));
      if (l2)
        for (int64_t o = n * K * Nq; o < (n + 1) * K * Nq; ++o) rs[n * Nm + ix[o]] += dwd[o];
    }
  });
  // One task per channel row: scatters into a row of dK / dV never race.
  int64_t rows = N * Ck;
  for (const auto& v : values) rows += N * v.size(1);
  parallel_tasks(rows, K * Nq, [&](int64_t, int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      if (r < N * Ck) {
        const int64_t n = r / Ck, c = r % Ck;
        const T* krow = k.data_ptr<T>() + n * k.stride(0) + c * k.stride(1);
        const T* qrow = q.data_ptr<T>() + n * q.stride(0) + c * q.stride(1);
        T* gqrow = gq.data_ptr<T>() + (n * Ck + c) * Nq;
        T* gkrow = gk.data_ptr<T>() + (n * Ck + c) * Nm;
        std::fill(gqrow, gqrow + Nq, T(0));
        std::fill(gkrow, gkrow + Nm, T(0));
        for (int64_t t = 0; t < K; ++t) {
          const T* drow = dwd + n * K * Nq + t * Nq;
          const int64_t* irow = ix + n * K * Nq + t * Nq;
          for (int64_t j = 0; j < Nq; ++j) {
            gqrow[j] += drow[j] * krow[irow[j]];
            gkrow[irow[j]] += drow[j] * qrow[j];
          }
        }
        for (int64_t j = 0; j < Nq; ++j) gqrow[j] *= ds;
        const T* rs = row_sum.data_ptr<T>() + n * Nm;
        for (int64_t p = 0; p < Nm; ++p) {
          gkrow[p] *= ds;
          if (l2) gkrow[p] -= T(2) * ns * krow[p] * rs[p];
        }
        continue;
      }
      int64_t rr = r - N * Ck, i = 0;
      while (rr >= N * values[i].size(1)) rr -= N * values[i++].size(1);
      const int64_t cv = values[i].size(1), n = rr / cv, c = rr % cv;
      const T* grow = grads[i].data_ptr<T>() + (n * cv + c) * Nq;
      T* gvrow = gvs[i].data_ptr<T>() + (n * cv + c) * Nm;
      std::fill(gvrow, gvrow + Nm, T(0));
      for (int64_t t = 0; t < K; ++t) {
        const T* wrow = w + n * K * Nq + t * Nq;
        const int64_t* irow = ix + n * K * Nq + t * Nq;
        for (int64_t j = 0; j < Nq; ++j) gvrow[irow[j]] += wrow[j] * grow[j];
      }
    }
  });
}

// ---- top-k with half inputs: float32 copies in, float32 results rounded back out ----------------
// A plain conversion pass per tensor (one more read and write of each input than the float32
// path; the top-k kernels are not GEMM bound). stat is float32 already and passes through.

bool is_half(const at::Tensor& t) {
  return t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf;
}

std::vector<at::Tensor> to_float(const std::vector<at::Tensor>& ts) {
  std::vector<at::Tensor> out;
  for (const auto& t : ts) out.push_back(t.to(at::kFloat).contiguous());
  return out;
}

std::vector<at::Tensor> empty_float(const std::vector<at::Tensor>& like) {
  std::vector<at::Tensor> out;
  for (const auto& t : like) out.push_back(at::empty(t.sizes(), t.options().dtype(at::kFloat)));
  return out;
}

void copy_into(const std::vector<at::Tensor>& dst, const std::vector<at::Tensor>& src) {
  for (size_t i = 0; i < dst.size(); ++i) dst[i].copy_(src[i]);
}

}  // namespace

void memory_readout_full_forward(const at::Tensor& query_key, const at::Tensor& memory_key,
                                 const std::vector<at::Tensor>& values, const std::vector<at::Tensor>& outs,
                                 const at::Tensor& lse, bool l2, double scale) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, query_key.scalar_type(), "memory_readout_full_forward", [&] {
    full_forward_impl<scalar_t>(query_key, memory_key, values, outs, lse, l2,
                                static_cast<at::opmath_type<scalar_t>>(scale));
  });
}

void memory_readout_topk_forward(const at::Tensor& query_key, const at::Tensor& memory_key,
                                 const std::vector<at::Tensor>& values, const std::vector<at::Tensor>& outs,
                                 const at::Tensor& weight, const at::Tensor& index, bool l2, double scale) {
  if (is_half(query_key)) {
    const auto f = empty_float(outs);
    memory_readout_topk_forward(query_key.to(at::kFloat), memory_key.to(at::kFloat), to_float(values), f, weight,
                                index, l2, scale);
    return copy_into(outs, f);
  }
  AT_DISPATCH_FLOATING_TYPES(query_key.scalar_type(), "memory_readout_topk_forward", [&] {
    topk_forward_impl<scalar_t>(query_key, memory_key, values, outs, weight, index, l2,
                                static_cast<scalar_t>(scale));
  });
}

void memory_readout_full_backward(const std::vector<at::Tensor>& grads, const at::Tensor& query_key,
                                  const at::Tensor& memory_key, const std::vector<at::Tensor>& values,
                                  const std::vector<at::Tensor>& outs, const at::Tensor& lse,
                                  const at::Tensor& grad_query_key, const at::Tensor& grad_memory_key,
                                  const std::vector<at::Tensor>& grad_values, bool l2, double scale) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, query_key.scalar_type(), "memory_readout_full_backward", [&] {
    full_backward_impl<scalar_t>(grads, query_key, memory_key, values, outs, lse, grad_query_key,
                                 grad_memory_key, grad_values, l2, static_cast<at::opmath_type<scalar_t>>(scale));
  });
}

void memory_readout_topk_backward(const std::vector<at::Tensor>& grads, const at::Tensor& query_key,
                                  const at::Tensor& memory_key, const std::vector<at::Tensor>& values,
                                  const at::Tensor& weight, const at::Tensor& index,
                                  const at::Tensor& grad_query_key, const at::Tensor& grad_memory_key,
                                  const std::vector<at::Tensor>& grad_values, bool l2, double scale) {
  if (is_half(query_key)) {
    const auto gq = empty_float({grad_query_key}), gk = empty_float({grad_memory_key});
    const auto gv = empty_float(grad_values);
    memory_readout_topk_backward(to_float(grads), query_key.to(at::kFloat), memory_key.to(at::kFloat),
                                 to_float(values), weight, index, gq[0], gk[0], gv, l2, scale);
    copy_into({grad_query_key, grad_memory_key}, {gq[0], gk[0]});
    return copy_into(grad_values, gv);
  }
  AT_DISPATCH_FLOATING_TYPES(query_key.scalar_type(), "memory_readout_topk_backward", [&] {
    topk_backward_impl<scalar_t>(grads, query_key, memory_key, values, weight, index, grad_query_key,
                                 grad_memory_key, grad_values, l2, static_cast<scalar_t>(scale));
  });
}

}  // namespace cpu
}  // namespace vdeblur
