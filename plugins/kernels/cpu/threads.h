// The CPU kernels' one way to run independent tasks: on the caller's thread pool
// (ua_cpu_threads, ONNX Runtime's), or on the calling thread when there is none. The kernels
// never start threads of their own.
#pragma once

#include <cstddef>
#include <cstdint>

#include "uniattn/kernels.h"

namespace uniattn::cpu {

// Runs fn(i) for i in [0, count) on the caller's pool, or here when there is none.
template <typename Fn>
void for_each(const ua_cpu_threads* threads, int64_t count, Fn& fn) {
  if (count <= 0) return;
  if (threads == nullptr || threads->parallel_for == nullptr || count == 1) {
    for (int64_t i = 0; i < count; ++i) fn(i);
    return;
  }
  threads->parallel_for(
      threads->pool, size_t(count), [](void* task, size_t i) { (*static_cast<Fn*>(task))(int64_t(i)); }, &fn);
}

}  // namespace uniattn::cpu
