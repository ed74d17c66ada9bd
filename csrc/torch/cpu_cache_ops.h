// Two ops per op-family library on its CPU buffer cache (cpu/buffer_cache.h), for
// vdeblur_ops.empty_cpu_cache() / cpu_cache_bytes():
//   <family>_cpu_cache_bytes() -> int     bytes held while no tensor uses them
//   <family>_empty_cpu_cache() -> ()      gives them back to the OS
#pragma once

#include <torch/library.h>

#include "../cpu/buffer_cache.h"

#define VDEBLUR_DEFINE_CPU_CACHE_OPS(m, family)                                                      \
  m.def(family "_cpu_cache_bytes() -> int",                                                          \
        [] { return static_cast<int64_t>(::vdeblur::cpu::buffer_cache().cached_bytes()); });         \
  m.def(family "_empty_cpu_cache() -> ()", [] { ::vdeblur::cpu::buffer_cache().empty_cache(); })
