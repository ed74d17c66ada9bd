// Large outputs are freshly allocated on every call (glibc serves blocks above its mmap threshold,
// 32 MiB at most, straight from the kernel), so first-touch page faults, not the kernels, can
// dominate writing them: 16k faults for a 64 MiB tensor. Ask Linux for transparent huge pages on
// the 2 MiB-aligned interior of the buffer before any thread touches it (what PyTorch's
// THP_MEM_ALLOC_ENABLE does for every allocation); a no-op where THP is off or unsupported.
// Caveat, measured here: with /sys/kernel/mm/transparent_hugepage/defrag = madvise a fault may
// compact memory synchronously, so on a fragmented machine a call can stall for tens of ms; the
// ConvGRU gates (outputs of 16-32 MiB) do not use it for that reason.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace vdeblur {
namespace cpu {

inline void prefer_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t end = begin + static_cast<uintptr_t>(t.nbytes());
  const uintptr_t lo = (begin + kHuge - 1) & ~(kHuge - 1), hi = end & ~(kHuge - 1);
  if (hi >= lo + kHuge) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

}  // namespace cpu
}  // namespace vdeblur
