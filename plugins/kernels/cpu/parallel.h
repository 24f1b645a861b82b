// A minimal fork-join loop over std::thread: the kernels' work items are coarse (one per
// batch x KV head x block of query rows), so threads are started per call and pull items
// from a shared counter (causal rows have uneven cost).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

namespace uniattn::cpu {

inline int resolve_threads(int num_threads) {
  if (num_threads > 0) return num_threads;
  return std::max(1, int(std::thread::hardware_concurrency()));
}

// Runs body(item, state) for item in [0, count), where `state` is one State per thread
// (scratch buffers reused across that thread's items). Rethrows the first exception.
template <typename State, typename Body>
void parallel_for(int64_t count, int num_threads, Body body) {
  if (count <= 0) return;
  const int64_t threads = std::min<int64_t>(resolve_threads(num_threads), count);
  std::atomic<int64_t> next{0};
  std::exception_ptr failure;
  std::mutex failure_lock;
  auto worker = [&] {
    try {
      State state;
      for (int64_t item = next.fetch_add(1); item < count; item = next.fetch_add(1)) body(item, state);
    } catch (...) {
      next.store(count);  // stop the other workers early
      std::lock_guard<std::mutex> guard(failure_lock);
      if (!failure) failure = std::current_exception();
    }
  };
  std::vector<std::thread> helpers;
  helpers.reserve(size_t(threads - 1));
  for (int64_t t = 1; t < threads; ++t) {
    try {
      helpers.emplace_back(worker);
    } catch (const std::system_error&) {
      break;  // the system refused another thread: the started ones share the work
    }
  }
  worker();
  for (auto& helper : helpers) helper.join();
  if (failure) std::rethrow_exception(failure);
}

}  // namespace uniattn::cpu
