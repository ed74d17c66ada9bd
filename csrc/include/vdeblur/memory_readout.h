// Element maths of the memory readout (DESIGN.md 4.5), shared by the CPU kernels and any CUDA
// kernel: the affinity from a dot product, a branch-free exp that compilers vectorise, the
// online-softmax update and the per-query k-best list.
#pragma once

#include <cstdint>
#include <cmath>
#include <limits>

#include "common.h"
#include "fast_math.h"

namespace vdeblur {
namespace memory_readout {

// S = dot_scale * (k . q) - norm_scale * |k|^2 with dot_scale = 2*scale, norm_scale = scale for
// "l2" (the extra-channel form [2q, -1] . [k, |k|^2]) and dot_scale = scale, norm_scale = 0 for
// "dot". The kernels run the dot products as GEMMs and apply the |k|^2 channel as a per-memory
// bias, which is the same arithmetic as the extra channel without copying the keys.
template <typename T>
VDEBLUR_HOST_DEVICE T dot_scale(bool l2, T scale) { return l2 ? T(2) * scale : scale; }
template <typename T>
VDEBLUR_HOST_DEVICE T norm_scale(bool l2, T scale) { return l2 ? scale : T(0); }


// Online softmax: a running max m and sum l of exp(s - m) per query. Returns the factor that
// rescales everything accumulated so far when the max moves to new_max.
template <typename T>
VDEBLUR_HOST_DEVICE T rescale_factor(T old_max, T new_max) {
  return old_max == -std::numeric_limits<T>::infinity() ? T(0) : fast_exp(old_max - new_max);
}

}  // namespace memory_readout
}  // namespace vdeblur
