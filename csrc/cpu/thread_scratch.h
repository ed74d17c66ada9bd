// Scratch tiles for the workers of a parallel CPU kernel, kept per thread from call to call.
//
// Why: a worker's 128-256 KiB tile, allocated and freed on every call, sits at or above glibc's
// mmap threshold, so each call mmaps and munmaps it in every worker (page faults, TLB shootdowns
// across the cores). Measured at MemDeblur's eval shapes (2 threads): a 3x3 conv run right after
// the full-softmax memory_readout took 1.08 / 0.99 ms (first / second call) against 0.79 / 0.74 ms
// after the reference readout; with glibc's mmap / trim thresholds raised, or with these tiles,
// 0.71 / 0.67 against 0.73 / 0.67 ms. The tiles grow and are never freed (a few hundred KiB per
// thread and slot), like the tile buffers of a BLAS.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace vdeblur {
namespace cpu {

constexpr int kScratchSlots = 8;

// A (sizes) tensor over this thread's scratch slot `slot`, not owning its memory: valid until the
// same thread asks for the same slot again. Contents are unspecified.
template <typename T>
at::Tensor thread_scratch(int slot, at::IntArrayRef sizes, const at::TensorOptions& opts) {
  thread_local std::vector<double> slots[kScratchSlots];  // double: 8-byte alignment for any T
  int64_t count = 1;
  for (const int64_t s : sizes) count *= s;
  const size_t words = (static_cast<size_t>(count) * sizeof(T) + sizeof(double) - 1) / sizeof(double);
  std::vector<double>& buf = slots[slot];
  if (buf.size() < words) buf.resize(words);
  return at::from_blob(buf.data(), sizes, opts.dtype(c10::CppTypeToScalarType<T>::value));
}

}  // namespace cpu
}  // namespace vdeblur
