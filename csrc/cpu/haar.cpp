// CPU Haar DWT / IDWT: one task per (n, c) plane runs every level of that plane, keeping the
// intermediate low band in a plane-sized scratch buffer (cache resident) in the accumulation type,
// so a multi-level call reads the input once and writes each output once.
#include "haar.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include "vdeblur/haar.h"

namespace vdeblur {
namespace cpu {
namespace {

using haar::butterfly;

// One DWT level of one plane: src (H, W) -> ll, h0, h1, h2 (each ceil(H/2) x ceil(W/2)).
// A missing bottom row / right column reads as zero (pywt "zero" mode).
template <typename in_t, typename ll_t, typename out_t, typename acc_t>
void dwt_level(const in_t* __restrict src, int64_t H, int64_t W, ll_t* __restrict ll,
               out_t* __restrict h0, out_t* __restrict h1, out_t* __restrict h2, acc_t s) {
  const int64_t h = (H + 1) / 2, w = (W + 1) / 2, w_pairs = W / 2;
  for (int64_t i = 0; i < h; ++i) {
    const in_t* __restrict r0 = src + 2 * i * W;
    const in_t* __restrict r1 = r0 + W;
    const bool has_r1 = 2 * i + 1 < H;
    const int64_t o = i * w;
    auto store = [&](int64_t j, acc_t a, acc_t b, acc_t c, acc_t d) {
      acc_t v0, v1, v2, v3;
      butterfly(a, b, c, d, s, v0, v1, v2, v3);
      ll[o + j] = static_cast<ll_t>(v0);
      h0[o + j] = static_cast<out_t>(v1);
      h1[o + j] = static_cast<out_t>(v2);
      h2[o + j] = static_cast<out_t>(v3);
    };
    if (has_r1) {
      for (int64_t j = 0; j < w_pairs; ++j) {
        store(j, static_cast<acc_t>(r0[2 * j]), static_cast<acc_t>(r0[2 * j + 1]),
              static_cast<acc_t>(r1[2 * j]), static_cast<acc_t>(r1[2 * j + 1]));
      }
      if (w_pairs < w) {
        store(w_pairs, static_cast<acc_t>(r0[W - 1]), acc_t(0), static_cast<acc_t>(r1[W - 1]), acc_t(0));
      }
    } else {
      for (int64_t j = 0; j < w_pairs; ++j) {
        store(j, static_cast<acc_t>(r0[2 * j]), static_cast<acc_t>(r0[2 * j + 1]), acc_t(0), acc_t(0));
      }
      if (w_pairs < w) store(w_pairs, static_cast<acc_t>(r0[W - 1]), acc_t(0), acc_t(0), acc_t(0));
    }
  }
}

// One IDWT level of one plane: ll, h0, h1, h2 (h x w) -> dst (Ho x Wo), Ho in {2h-1, 2h}.
template <typename ll_t, typename in_t, typename dst_t, typename acc_t>
void idwt_level(const ll_t* __restrict ll, const in_t* __restrict h0, const in_t* __restrict h1,
                const in_t* __restrict h2, int64_t h, int64_t w, dst_t* __restrict dst, int64_t Ho,
                int64_t Wo, acc_t t) {
  const int64_t w_pairs = Wo / 2;
  for (int64_t i = 0; i < h; ++i) {
    dst_t* __restrict r0 = dst + 2 * i * Wo;
    dst_t* __restrict r1 = r0 + Wo;
    const bool has_r1 = 2 * i + 1 < Ho;
    const int64_t o = i * w;
    auto block = [&](int64_t j, acc_t& a, acc_t& b, acc_t& c, acc_t& d) {
      butterfly(static_cast<acc_t>(ll[o + j]), static_cast<acc_t>(h0[o + j]),
                static_cast<acc_t>(h1[o + j]), static_cast<acc_t>(h2[o + j]), t, a, b, c, d);
    };
    // Branch-free main loops (the compiler vectorises them), then the odd last column.
    if (has_r1) {
      for (int64_t j = 0; j < w_pairs; ++j) {
        acc_t a, b, c, d;
        block(j, a, b, c, d);
        r0[2 * j] = static_cast<dst_t>(a);
        r0[2 * j + 1] = static_cast<dst_t>(b);
        r1[2 * j] = static_cast<dst_t>(c);
        r1[2 * j + 1] = static_cast<dst_t>(d);
      }
    } else {
      for (int64_t j = 0; j < w_pairs; ++j) {
        acc_t a, b, c, d;
        block(j, a, b, c, d);
        r0[2 * j] = static_cast<dst_t>(a);
        r0[2 * j + 1] = static_cast<dst_t>(b);
      }
    }
    if (w_pairs < w) {  // odd Wo: the last column has no right neighbour
      acc_t a, b, c, d;
      block(w_pairs, a, b, c, d);
      r0[2 * w_pairs] = static_cast<dst_t>(a);
      if (has_r1) r1[2 * w_pairs] = static_cast<dst_t>(c);
    }
  }
}

}  // namespace

void haar_dwt2d(const at::Tensor& x, const at::Tensor& ll, const std::vector<at::Tensor>& highs,
                double scale, bool band_layout) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int levels = static_cast<int>(highs.size());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "haar_dwt2d_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x_ptr = x.const_data_ptr<scalar_t>();
    scalar_t* ll_ptr = ll.mutable_data_ptr<scalar_t>();
    std::vector<scalar_t*> hi_ptr;
    for (const auto& t : highs) hi_ptr.push_back(t.mutable_data_ptr<scalar_t>());
    const int64_t scratch = levels > 1 ? highs[0].size(-2) * highs[0].size(-1) : 0;
    at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> buf(2 * scratch);  // ping-pong for the intermediate low bands
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / C, c = p % C;
        int64_t h_in = H, w_in = W;
        const acc_t* prev = nullptr;
        for (int l = 0; l < levels; ++l) {
          const int64_t h = (h_in + 1) / 2, w = (w_in + 1) / 2, hw = h * w;
          scalar_t* b0 = hi_ptr[l] + haar::highs_plane(n, c, 0, C, band_layout) * hw;
          scalar_t* b1 = hi_ptr[l] + haar::highs_plane(n, c, 1, C, band_layout) * hw;
          scalar_t* b2 = hi_ptr[l] + haar::highs_plane(n, c, 2, C, band_layout) * hw;
          const bool last = l == levels - 1;
          acc_t* next = buf.data() + (l % 2) * scratch;
          if (l == 0 && last) {
            dwt_level(x_ptr + p * H * W, h_in, w_in, ll_ptr + p * hw, b0, b1, b2, acc_t(scale));
          } else if (l == 0) {
            dwt_level(x_ptr + p * H * W, h_in, w_in, next, b0, b1, b2, acc_t(scale));
          } else if (last) {
            dwt_level(prev, h_in, w_in, ll_ptr + p * hw, b0, b1, b2, acc_t(scale));
          } else {
            dwt_level(prev, h_in, w_in, next, b0, b1, b2, acc_t(scale));
          }
          prev = next;
          h_in = h;
          w_in = w;
        }
      }
    });
  });
}

void haar_idwt2d(const at::Tensor& ll, const std::vector<at::Tensor>& highs, const at::Tensor& out,
                 double scale, bool band_layout) {
  const int64_t N = out.size(0), C = out.size(1), Ho = out.size(2), Wo = out.size(3);
  const int levels = static_cast<int>(highs.size());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, ll.scalar_type(), "haar_idwt2d_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* ll_ptr = ll.const_data_ptr<scalar_t>();
    scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
    std::vector<const scalar_t*> hi_ptr;
    for (const auto& t : highs) hi_ptr.push_back(t.const_data_ptr<scalar_t>());
    const int64_t scratch = levels > 1 ? highs[0].size(-2) * highs[0].size(-1) : 0;
    at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> buf(2 * scratch);
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / C, c = p % C;
        const acc_t* prev = nullptr;
        for (int l = levels - 1; l >= 0; --l) {
          const int64_t h = highs[l].size(-2), w = highs[l].size(-1), hw = h * w;
          const int64_t h_out = l == 0 ? Ho : highs[l - 1].size(-2);
          const int64_t w_out = l == 0 ? Wo : highs[l - 1].size(-1);
          const scalar_t* b0 = hi_ptr[l] + haar::highs_plane(n, c, 0, C, band_layout) * hw;
          const scalar_t* b1 = hi_ptr[l] + haar::highs_plane(n, c, 1, C, band_layout) * hw;
          const scalar_t* b2 = hi_ptr[l] + haar::highs_plane(n, c, 2, C, band_layout) * hw;
          acc_t* next = buf.data() + (l % 2) * scratch;
          const bool first = l == levels - 1;
          if (first && l == 0) {
            idwt_level(ll_ptr + p * hw, b0, b1, b2, h, w, out_ptr + p * Ho * Wo, h_out, w_out, acc_t(scale));
          } else if (first) {
            idwt_level(ll_ptr + p * hw, b0, b1, b2, h, w, next, h_out, w_out, acc_t(scale));
          } else if (l == 0) {
            idwt_level(prev, b0, b1, b2, h, w, out_ptr + p * Ho * Wo, h_out, w_out, acc_t(scale));
          } else {
            idwt_level(prev, b0, b1, b2, h, w, next, h_out, w_out, acc_t(scale));
          }
          prev = next;
        }
      }
    });
  });
}

}  // namespace cpu
}  // namespace vdeblur
