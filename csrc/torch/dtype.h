// at::ScalarType -> vdeblur::DType, for handing tensors to the torch-free CUDA launchers.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include "vdeblur/common.h"

namespace vdeblur {

inline DType to_dtype(c10::ScalarType t) {
  switch (t) {
    case c10::kFloat: return DType::Float32;
    case c10::kDouble: return DType::Float64;
    case c10::kHalf: return DType::Float16;
    case c10::kBFloat16: return DType::BFloat16;
    default: TORCH_CHECK(false, "vdeblur: unsupported dtype ", t, " (expected float32, float64, float16 or bfloat16)");
  }
}

}  // namespace vdeblur
