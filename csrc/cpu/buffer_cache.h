// A small cache of large CPU output buffers, so that a kernel's output does not come fresh from
// the OS on every call.
//
// Why: glibc serves every block above its mmap threshold (32 MiB at most) straight from the OS and
// gives it back on free, so each call pays first-touch page faults and an munmap: measured here
// (Linux 6.18 VM), 0.33 ms per MiB to fault in and 0.07 ms per MiB to unmap, against 0.02 ms per
// MiB to write it at copy bandwidth. A ConvGRU step's 32-64 MiB gradients spent more time in page
// faults than in the kernels. Transparent huge pages are no cure here: with THP defrag = madvise a
// fault may compact memory synchronously and stall for tens of ms.
//
// What: outputs of at least kMinBytes made by empty_output() take their storage from a list of
// freed buffers of the same (2 MiB-rounded) size when there is one; a freed buffer goes back to the
// list, and when the list then holds more than the cap the least recently freed buffers are
// released. Smaller tensors use PyTorch's CPU allocator as usual. Like PyTorch's CUDA caching
// allocator, the memory stays reserved by the process: each op family keeps its own cache of at
// most VDEBLUR_CPU_CACHE_MIB (default 256; 0 turns the cache off) that no tensor uses, and
// empty_cache() releases all of it (vdeblur_ops.empty_cpu_cache() from Python). Allocations are
// reported to the PyTorch profiler like the default allocator's, so profiled peak memory is right.
#pragma once

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <vector>

namespace vdeblur {
namespace cpu {

class BufferCache final : public c10::Allocator {
 public:
  static constexpr size_t kMinBytes = size_t{32} << 20;  // glibc's largest mmap threshold
  static constexpr size_t kRound = size_t{2} << 20;

  BufferCache() : cap_(read_cap()) {}

  c10::DataPtr allocate(size_t nbytes) override {
    if (nbytes < kMinBytes || cap_ == 0) return c10::GetDefaultCPUAllocator()->allocate(nbytes);
    const size_t size = (nbytes + kRound - 1) / kRound * kRound;
    void* data = take(size);
    if (data == nullptr) data = fresh(size);
    auto* block = new Block{this, data, size};
    report(data, static_cast<int64_t>(size));
    return {data, block, &give_back, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  size_t cached_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return free_bytes_;
  }

  // Releases every cached buffer (the ones tensors still use come back, and are kept, later).
  void empty_cache() {
    std::vector<Block> released;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      released.swap(free_);
      free_bytes_ = 0;
    }
    for (const auto& b : released) c10::free_cpu(b.data);
  }

 private:
  struct Block {
    BufferCache* owner;
    void* data;
    size_t size;
  };

  static size_t read_cap() {
    const char* env = std::getenv("VDEBLUR_CPU_CACHE_MIB");
    if (env == nullptr || *env == '\0') return size_t{256} << 20;
    char* end = nullptr;
    const long long mib = std::strtoll(env, &end, 10);
    TORCH_CHECK(end != env && *end == '\0' && mib >= 0,
                "VDEBLUR_CPU_CACHE_MIB must be a whole number of MiB (0 turns the cache off), got '", env, "'");
    return static_cast<size_t>(mib) << 20;
  }

  static void report(void* data, int64_t bytes) {
    if (c10::memoryProfilingEnabled())
      c10::reportMemoryUsageToProfiler(data, bytes, 0, 0, c10::Device(c10::DeviceType::CPU));
  }

  void* fresh(size_t size) {
    try {
      return c10::alloc_cpu(size);
    } catch (const c10::Error&) {  // out of memory: what the cache holds may be what is missing
      empty_cache();
      return c10::alloc_cpu(size);
    }
  }

  void* take(size_t size) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (size_t i = free_.size(); i-- > 0;) {  // most recently freed first: its pages are warm
      if (free_[i].size == size) {
        void* data = free_[i].data;
        free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(i));
        free_bytes_ -= size;
        return data;
      }
    }
    return nullptr;
  }

  static void give_back(void* ctx) {
    auto* block = static_cast<Block*>(ctx);
    report(block->data, -static_cast<int64_t>(block->size));
    block->owner->keep(*block);
    delete block;
  }

  void keep(const Block& block) {
    std::vector<void*> released;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      free_.push_back(block);
      free_bytes_ += block.size;
      size_t drop = 0;  // least recently freed first
      while (free_bytes_ > cap_) {
        free_bytes_ -= free_[drop].size;
        released.push_back(free_[drop++].data);
      }
      free_.erase(free_.begin(), free_.begin() + static_cast<std::ptrdiff_t>(drop));
    }
    for (void* data : released) c10::free_cpu(data);
  }

  const size_t cap_;
  std::mutex mutex_;
  std::vector<Block> free_;  // oldest first
  size_t free_bytes_ = 0;
};

// Everything below is per translation unit: each op family's torch/<family>.cpp has its own cache,
// whether the families are separate libraries (setup.py) or one (CMake). Both functions must stay
// in the anonymous namespace: an inline function with external linkage would be merged across
// translation units, and every family would share whichever cache the linker kept.
namespace {

// Never destroyed, so tensors that outlive static destruction at exit can still hand their buffers
// back.
[[maybe_unused]] BufferCache& buffer_cache() {
  static BufferCache* cache = new BufferCache();
  return *cache;
}

// at::empty(sizes, options) for a kernel's output: on CPU with storage from the buffer cache,
// elsewhere as usual. Contiguous either way.
[[maybe_unused]] at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  if (options.device().type() != c10::DeviceType::CPU) return at::empty(sizes, options);
  return at::detail::empty_generic(sizes, &buffer_cache(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(options.dtype()), c10::MemoryFormat::Contiguous);
}

}  // namespace

}  // namespace cpu
}  // namespace vdeblur
