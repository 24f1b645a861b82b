// A CPU emulator for the CUDA kernels of plugins/kernels/cuda, used by
// tests/plugins/test_cuda_emulated.py: the .cu files compile as C++ with this header forced in
// front (-include) and -DUA_CUDA_EMULATE, and every CUDA thread runs as a fiber.
//
// What it models, because the kernels depend on it:
//   * blocks run one after another (a cluster's blocks together); the threads are fibers
//     that switch only at __syncthreads, cluster barriers and warp collectives, in a random
//     order each round, so a read that lacks a barrier sees stale (poisoned) data instead of
//     the right value by luck;
//   * a cluster's blocks read each other's shared memory (cluster_peer); a block's shared
//     memory is poisoned once all its threads have exited, so a peer reading it later (no
//     cluster barrier before the exit) gets NaN;
//   * warp collectives (__shfl_xor_sync, mma.sync, ldmatrix) wait for all 32 lanes and fail
//     when the lanes disagree on which collective they execute;
//   * mma.m16n8k16 and ldmatrix.m8n8.x4 follow the fragment layouts of the PTX ISA, written
//     here from the ISA's tables independently of the kernels' indexing;
//   * cp.async copies land only at cp.async.wait_group, and shared memory starts as NaN;
//   * the device has UA_EMU_SMS multiprocessors running one block each (what the split-KV
//     planner sizes its grid from), and memsets, copies and global atomics act at once;
//   * a barrier that not all threads reach, a thread that exits while others wait, a
//     misaligned 16-byte access or a write past the dynamic shared memory is reported through
//     cudaGetLastError(), which the kernels' launchers already check.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <setjmp.h>
#include <ucontext.h>
#include <vector_types.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#define __launch_bounds__(...)

namespace ua_emu {

constexpr size_t kStackBytes = 128 * 1024;
constexpr size_t kSmemGuard = 256;
constexpr unsigned char kPoison = 0xFF;  // NaN as float, fp16 and bf16
#ifndef UA_EMU_CLUSTER_BLOCKS
#define UA_EMU_CLUSTER_BLOCKS 4
#endif
constexpr int kMaxClusterBlocks = UA_EMU_CLUSTER_BLOCKS;  // what the device reports as its cluster limit

struct Block;

struct PendingCopy {
  void* dst;
  unsigned char bytes[16];
  int group;
};

// Fibers start through makecontext/swapcontext once, then switch with _setjmp/_longjmp,
// which unlike swapcontext make no system call.
struct Thread {
  ucontext_t context;
  jmp_buf resume;
  bool started = false;
  std::vector<char> stack;
  Block* block = nullptr;
  uint3 index;
  int linear = 0;
  bool finished = false;
  std::vector<PendingCopy> pending;
  int committed_groups = 0;
};

struct Barrier {
  int arrived = 0;
  uint64_t generation = 0;
  int any = 0;
  int result[2] = {0, 0};
};

struct Warp {
  unsigned char data[32][80];
  int kind[32];
  Barrier barrier;
};

struct Block {
  uint3 index;
  std::vector<unsigned char> smem_storage;
  unsigned char* smem = nullptr;
  std::vector<Thread> threads;
  std::vector<Warp> warps;
  Barrier barrier;
  int running = 0;  // threads not yet exited
};

struct Machine {
  dim3 grid, block;
  size_t smem_bytes = 0;
  std::vector<Block> blocks;  // the running cluster (one block without clusters)
  Barrier cluster_barrier;
  uint64_t cluster_launches = 0;
  uint64_t dependent_launches = 0;  // launch_dependent(): programmatic dependent launches on the GPU
  Thread* current = nullptr;
  ucontext_t scheduler;
  jmp_buf scheduler_resume;
  std::function<void()> body;
  std::mt19937 rng{20240611u};
  uint64_t progress = 0;
  std::string error;  // first failure of the running launch
  cudaError_t last_error = cudaSuccess;
  std::string last_message;
};

inline Machine& machine() {
  static Machine m;
  return m;
}

inline void yield() {
  Machine& m = machine();
  if (_setjmp(m.current->resume) == 0) _longjmp(m.scheduler_resume, 1);
}

inline void resume(Thread& t) {
  Machine& m = machine();
  m.current = &t;
  if (_setjmp(m.scheduler_resume) != 0) return;
  if (!t.started) {
    t.started = true;
    swapcontext(&m.scheduler, &t.context);
  } else {
    _longjmp(t.resume, 1);
  }
}

// Records a failure and parks the calling fiber for good (the scheduler abandons the block).
[[noreturn]] inline void fail(const std::string& message) {
  Machine& m = machine();
  if (m.error.empty()) m.error = message;
  for (;;) yield();
}

inline void arrive(Barrier& b, int expected, int flag, int* result) {
  const uint64_t generation = b.generation;
  b.any |= flag;
  if (++b.arrived == expected) {
    b.result[generation & 1] = b.any;
    b.any = 0;
    b.arrived = 0;
    ++b.generation;
    ++machine().progress;
  } else {
    while (b.generation == generation) yield();
  }
  if (result != nullptr) *result = b.result[generation & 1];
}

inline int block_barrier(int flag) {
  Block& b = *machine().current->block;
  int result = 0;
  arrive(b.barrier, int(b.threads.size()), flag, &result);
  return result;
}

inline void cluster_barrier() {
  Machine& m = machine();
  if (m.blocks.size() < 2) fail("cluster barrier in a launch without clusters");
  arrive(m.cluster_barrier, int(m.blocks.size() * m.blocks[0].threads.size()), 0, nullptr);
}

// `local` (in the caller's shared memory) as seen in the block of cluster rank `rank`.
template <typename V>
V* cluster_peer(V* local, int rank) {
  Machine& m = machine();
  const Block& own = *m.current->block;
  const size_t offset = size_t(reinterpret_cast<unsigned char*>(const_cast<std::remove_cv_t<V>*>(local)) - own.smem);
  if (m.blocks.size() < 2 || rank < 0 || rank >= int(m.blocks.size()))
    fail("cluster_peer: rank " + std::to_string(rank) + " outside the cluster");
  if (offset >= m.smem_bytes) fail("cluster_peer: address outside the block's shared memory");
  return reinterpret_cast<V*>(m.blocks[size_t(rank)].smem + offset);
}

// All 32 lanes deposit `in`; each computes its result from everyone's deposits.
template <typename Out, typename In, typename Compute>
Out warp_collective(int kind, const In& in, Compute compute) {
  static_assert(sizeof(In) <= sizeof(Warp::data[0]), "collective input too large");
  Machine& m = machine();
  const int lane = m.current->linear % 32;
  Warp& w = m.current->block->warps[m.current->linear / 32];
  std::memcpy(w.data[lane], &in, sizeof(In));
  w.kind[lane] = kind;
  arrive(w.barrier, 32, 0, nullptr);
  for (int l = 0; l < 32; ++l)
    if (w.kind[l] != kind) fail("lanes of one warp executed different warp collectives");
  auto deposit = [&](int l) {
    In v;
    std::memcpy(&v, w.data[l], sizeof(In));
    return v;
  };
  const Out out = compute(lane, deposit);
  arrive(w.barrier, 32, 0, nullptr);
  return out;
}

enum Kind { kShuffle = 1, kMma = 2, kLdmatrix = 3, kLdmatrixTrans = 4, kVote = 5 };

inline void check_aligned(const void* p, size_t bytes, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % bytes != 0)
    fail(std::string(what) + ": address not " + std::to_string(bytes) + "-byte aligned");
}
inline void check_aligned16(const void* p, const char* what) { check_aligned(p, 16, what); }

template <typename T>
float half_to_float(uint16_t bits) {
  if constexpr (std::is_same<T, __half>::value) {
    __half_raw raw;
    raw.x = bits;
    return __half2float(__half(raw));
  } else {
    __nv_bfloat16_raw raw;
    raw.x = bits;
    return __bfloat162float(__nv_bfloat16(raw));
  }
}

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}: fragment layouts of the PTX ISA.
//   A (16x16): a_i at row g + 8*((i/2)%2), column 2t + (i%2) + 8*(i/4)   (g = lane/4, t = lane%4)
//   B (16x8):  b_i at row 2t + (i%2) + 8*(i/2), column g
//   C (16x8):  c_i at row g + 8*(i/2),        column 2t + (i%2)
// Element i of a 16-bit operand sits in register i/2, low half first.
template <typename T>
void mma_16x8x16(float (&acc)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  struct In {
    uint32_t a[4];
    uint32_t b[2];
    float c[4];
  };
  In in{{a[0], a[1], a[2], a[3]}, {b0, b1}, {acc[0], acc[1], acc[2], acc[3]}};
  struct Out {
    float d[4];
  };
  const Out out = warp_collective<Out>(kMma, in, [](int lane, auto deposit) {
    auto element = [](uint32_t reg, int half) { return uint16_t(half ? reg >> 16 : reg & 0xFFFF); };
    auto a_at = [&](int row, int col) {
      const int i = (col % 2) + 2 * (row / 8) + 4 * (col / 8);
      const In src = deposit((row % 8) * 4 + (col % 8) / 2);
      return half_to_float<T>(element(src.a[i / 2], i % 2));
    };
    auto b_at = [&](int row, int col) {
      const int i = (row % 2) + 2 * (row / 8);
      const In src = deposit(col * 4 + (row % 8) / 2);
      return half_to_float<T>(element(src.b[i / 2], i % 2));
    };
    const In mine = deposit(lane);
    Out o;
    for (int i = 0; i < 4; ++i) {
      const int row = lane / 4 + 8 * (i / 2), col = (lane % 4) * 2 + (i % 2);
      double sum = 0.0;
      for (int k = 0; k < 16; ++k) sum += double(a_at(row, k)) * double(b_at(k, col));
      o.d[i] = float(double(mine.c[i]) + sum);
    }
    return o;
  });
  for (int i = 0; i < 4; ++i) acc[i] = out.d[i];
}

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lanes 8m..8m+7 address the rows of
// matrix m; lane l receives in register m the elements (l/4, 2(l%4)) and (l/4, 2(l%4)+1) of
// matrix m, or with .trans (2(l%4), l/4) and (2(l%4)+1, l/4).
inline void ldmatrix_x4(uint32_t (&r)[4], const void* row_address, bool trans) {
  check_aligned16(row_address, "ldmatrix row");
  struct In {
    const void* p;
  };
  struct Out {
    uint32_t r[4];
  };
  const Out out = warp_collective<Out>(trans ? kLdmatrixTrans : kLdmatrix, In{row_address}, [&](int lane, auto deposit) {
    auto at = [&](int matrix, int row, int col) {
      return static_cast<const uint16_t*>(deposit(matrix * 8 + row).p)[col];
    };
    Out o;
    for (int m = 0; m < 4; ++m) {
      const int r0 = lane / 4, c0 = 2 * (lane % 4);
      const uint16_t lo = trans ? at(m, c0, r0) : at(m, r0, c0);
      const uint16_t hi = trans ? at(m, c0 + 1, r0) : at(m, r0, c0 + 1);
      o.r[m] = uint32_t(lo) | (uint32_t(hi) << 16);
    }
    return o;
  });
  for (int m = 0; m < 4; ++m) r[m] = out.r[m];
}

inline void cp_async_16(void* dst, const void* src, bool fill) {
  check_aligned16(dst, "cp.async destination");
  PendingCopy c;
  c.dst = dst;
  if (fill) {
    check_aligned16(src, "cp.async source");
    std::memcpy(c.bytes, src, 16);
  } else {
    std::memset(c.bytes, 0, 16);
  }
  Thread* t = machine().current;
  c.group = t->committed_groups;
  t->pending.push_back(c);
}

inline void cp_async_commit() { ++machine().current->committed_groups; }

inline void cp_async_wait_all() {
  Thread* t = machine().current;
  std::vector<PendingCopy> still;
  for (const PendingCopy& c : t->pending) {
    if (c.group < t->committed_groups)
      std::memcpy(c.dst, c.bytes, 16);
    else
      still.push_back(c);
  }
  t->pending.swap(still);
}

inline unsigned char* dynamic_smem() { return machine().current->block->smem; }

inline bool smem_guard_intact(const Block& b) {
  const size_t bytes = machine().smem_bytes;
  for (size_t i = 0; i < kSmemGuard; ++i)
    if (b.smem[bytes + i] != kPoison) return false;
  return true;
}

inline void fiber_main() {
  Machine& m = machine();
  m.body();
  Block& b = *m.current->block;
  m.current->finished = true;
  ++m.progress;
  if (b.barrier.arrived > 0) fail("a thread exited while others wait at __syncthreads");
  if (m.cluster_barrier.arrived > 0) fail("a thread exited while others wait at a cluster barrier");
  if (--b.running == 0 && m.blocks.size() > 1) {  // its shared memory is gone for the peers
    if (!smem_guard_intact(b)) fail("write past the end of dynamic shared memory");
    std::memset(b.smem, kPoison, m.smem_bytes);
  }
  _longjmp(m.scheduler_resume, 1);
}

// Runs the blocks whose indices are given (a cluster, or one block) to completion.
inline bool run_blocks(const std::vector<uint3>& indices) {
  Machine& m = machine();
  const int n = int(m.block.x * m.block.y * m.block.z);
  m.blocks.resize(indices.size());
  m.cluster_barrier = Barrier{};
  std::vector<Thread*> all;
  for (size_t k = 0; k < indices.size(); ++k) {
    Block& b = m.blocks[k];
    b.index = indices[k];
    b.threads.resize(size_t(n));
    b.warps.assign(size_t(n / 32), Warp{});
    b.barrier = Barrier{};
    b.running = n;
    b.smem_storage.assign(m.smem_bytes + 16 + kSmemGuard, kPoison);
    const uintptr_t base = reinterpret_cast<uintptr_t>(b.smem_storage.data());
    b.smem = b.smem_storage.data() + ((16 - base % 16) % 16);
    for (int i = 0; i < n; ++i) {
      Thread& t = b.threads[size_t(i)];
      t.stack.resize(kStackBytes);
      t.block = &b;
      t.index = uint3{unsigned(i % m.block.x), unsigned(i / m.block.x % m.block.y), unsigned(i / (m.block.x * m.block.y))};
      t.linear = i;
      t.finished = false;
      t.started = false;
      t.pending.clear();
      t.committed_groups = 0;
      getcontext(&t.context);
      t.context.uc_stack.ss_sp = t.stack.data();
      t.context.uc_stack.ss_size = t.stack.size();
      t.context.uc_link = &m.scheduler;
      makecontext(&t.context, fiber_main, 0);
      all.push_back(&t);
    }
  }
  for (;;) {
    std::shuffle(all.begin(), all.end(), m.rng);
    const uint64_t before = m.progress;
    bool all_done = true;
    for (Thread* t : all) {
      if (t->finished) continue;
      all_done = false;
      resume(*t);
      if (!m.error.empty()) return false;
    }
    if (all_done) break;
    if (m.progress == before) {
      m.error = "deadlock: threads wait at barriers that not all threads reach";
      return false;
    }
  }
  if (m.blocks.size() == 1 && !smem_guard_intact(m.blocks[0])) {
    m.error = "write past the end of dynamic shared memory";
    return false;
  }
  return true;
}

// cluster: blocks along x that run together (1: no clusters). dependent: launched by
// launch_dependent(); the kernels before it have finished here, so it only counts.
template <typename Body>
void launch(dim3 grid, dim3 block, size_t smem_bytes, Body&& body, unsigned cluster = 1, bool dependent = false) {
  Machine& m = machine();
  const unsigned threads = block.x * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535 || threads == 0 ||
      threads > 1024 || threads % 32 != 0 || smem_bytes > 227 * 1024 || cluster == 0 ||
      cluster > unsigned(kMaxClusterBlocks) || grid.x % cluster != 0) {
    m.last_error = cudaErrorInvalidConfiguration;
    m.last_message = "invalid launch configuration";
    return;
  }
  m.grid = grid;
  m.block = block;
  m.smem_bytes = smem_bytes;
  m.body = std::function<void()>(body);
  m.error.clear();
  if (cluster > 1) ++m.cluster_launches;
  if (dependent) ++m.dependent_launches;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; x += cluster) {
        std::vector<uint3> indices;
        for (unsigned k = 0; k < cluster; ++k) indices.push_back(uint3{x + k, y, z});
        if (!run_blocks(indices)) {
          m.last_error = cudaErrorLaunchFailure;
          char where[96];
          std::snprintf(where, sizeof(where), " (block %u,%u,%u)", m.current->block->index.x,
                        m.current->block->index.y, z);
          m.last_message = m.error + where;
          m.blocks.clear();
          return;
        }
      }
}

}  // namespace ua_emu

#define threadIdx (ua_emu::machine().current->index)
#define blockIdx (ua_emu::machine().current->block->index)
#define blockDim (ua_emu::machine().block)
#define gridDim (ua_emu::machine().grid)

inline void __syncthreads() { ua_emu::block_barrier(0); }
inline int __syncthreads_or(int flag) { return ua_emu::block_barrier(flag != 0); }

template <typename V>
V __shfl_xor_sync(unsigned mask, V value, int lane_mask) {
  if (mask != 0xffffffffu) ua_emu::fail("__shfl_xor_sync with a partial mask");
  return ua_emu::warp_collective<V>(ua_emu::kShuffle, value,
                                    [&](int lane, auto deposit) { return deposit(lane ^ lane_mask); });
}

// Lane `source` of the caller's segment of `width` lanes.
template <typename V>
V __shfl_sync(unsigned mask, V value, int source, int width = 32) {
  if (mask != 0xffffffffu) ua_emu::fail("__shfl_sync with a partial mask");
  return ua_emu::warp_collective<V>(ua_emu::kShuffle, value, [&](int lane, auto deposit) {
    return deposit(lane / width * width + source % width);
  });
}

inline int __any_sync(unsigned mask, int predicate) {
  if (mask != 0xffffffffu) ua_emu::fail("__any_sync with a partial mask");
  return ua_emu::warp_collective<int>(ua_emu::kVote, predicate != 0, [](int, auto deposit) {
    int any = 0;
    for (int l = 0; l < 32; ++l) any |= deposit(l);
    return any;
  });
}

template <typename V>
V atomicAdd(V* address, V value) {
  const V old = *address;
  *address = old + value;
  return old;
}

// Blocks run one after another: every write is visible to the next block already.
inline void __threadfence() {}

template <typename V>
V __ldcs(const V* p) {
  return *p;
}
template <typename V>
V __ldcg(const V* p) {
  return *p;
}
template <typename V>
V __ldg(const V* p) {
  return *p;
}

inline cudaError_t cudaGetLastError() {
  ua_emu::Machine& m = ua_emu::machine();
  const cudaError_t e = m.last_error;
  m.last_error = cudaSuccess;
  return e;
}

#ifndef UA_EMU_SMS
#define UA_EMU_SMS 6
#endif

inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int) {
  if (attribute != cudaDevAttrMultiProcessorCount) return cudaErrorInvalidValue;
  *value = UA_EMU_SMS;
  return cudaSuccess;
}

template <typename Kernel>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, Kernel, int, size_t) {
  *blocks = 1;
  return cudaSuccess;
}

inline cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) {
  std::memset(p, value, bytes);
  return cudaSuccess;
}

inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t) {
  // The kernels copy device to device; ua_cuda_copy lets the runtime infer the direction. In
  // the emulator host and device memory are one.
  if (kind != cudaMemcpyDeviceToDevice && kind != cudaMemcpyDefault) return cudaErrorInvalidValue;
  std::memcpy(dst, src, bytes);
  return cudaSuccess;
}

// Kernels run to completion when launched here, so every synchronization is immediate.
inline cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : cudaErrorInvalidDevice; }
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }

inline const char* cudaGetErrorString(cudaError_t e) {
  return e == cudaSuccess ? "no error" : ua_emu::machine().last_message.c_str();
}

// Cluster launches so far (tests/plugins/test_cuda_emulated.py checks that the cluster
// path really ran); weak: every translation unit includes this header.
extern "C" __attribute__((weak)) unsigned long long ua_emu_cluster_launches() {
  return ua_emu::machine().cluster_launches;
}

// Programmatic dependent launches so far (the kernels launch_dependent() starts).
extern "C" __attribute__((weak)) unsigned long long ua_emu_dependent_launches() {
  return ua_emu::machine().dependent_launches;
}
