// Device building blocks of the CUDA kernels: element types and 8-element row slices,
// warp reductions, and the tensor-core instructions (mma.sync, ldmatrix, cp.async) that
// exist on every target (sm_80, sm_86, sm_89, sm_90).
//
// The kernels also compile as plain C++ against tests/plugins/cuda_emu.h (UA_CUDA_EMULATE),
// which runs them on the CPU thread by thread so CI can check their logic without a GPU.
// Everything that has no C++ meaning (launch syntax, dynamic shared memory, inline PTX)
// therefore goes through the macros and wrappers of this file.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <atomic>

#include "launch.cuh"

#ifndef UA_CUDA_EMULATE
#include <cuda_runtime.h>
#define UA_LAUNCH(kernel, grid, block, smem, stream, ...) \
  kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)
#define UA_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#else
#define UA_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ua_emu::launch((grid), (block), (smem), [&] { kernel(__VA_ARGS__); })
#define UA_DYNAMIC_SMEM(name) unsigned char* name = ua_emu::dynamic_smem()
#endif

namespace uniattn {
namespace cuda {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// The shape of one call as every kernel reads it (kernel arguments derive from it).
// key_len is the cache length the kernels index: S = P + L (dynamic layout) or the capacity
// C (static layout, where `positions` says which slots each query row sees).
struct Geometry {
  int64_t batch, query_len, past_len, key_len, num_heads, kv_heads, head_dim;
  float scale_log2;  // scale * log2(e): scores live in the log2 domain (exp2)
  int is_causal;
  int64_t window;
  const int64_t* positions;  // static layout: position_ids (B, L) in device memory; NULL: dynamic
};

inline Geometry geometry_of(const ua_attention_desc& d, const int64_t* positions) {
  const bool fixed = d.capacity > 0;
  return Geometry{d.batch,     d.query_len,    fixed ? 0 : d.past_len, fixed ? d.capacity : d.past_len + d.query_len,
                  d.num_heads, d.kv_num_heads, d.head_dim,             d.scale * kLog2e,
                  fixed ? 1 : d.is_causal,     d.sliding_window,       fixed ? positions : nullptr};
}

// Absolute position of query token i of batch row b: P + i (dynamic layout), or its slot
// position_ids[b, i] (static layout), read on the device and clamped to [-1, key_len] so that
// invalid positions (unspecified results, kernels.h) never turn into accesses outside the cache.
__device__ __forceinline__ int64_t query_position(const Geometry& g, int64_t b, int64_t i) {
  if (g.positions == nullptr) return g.past_len + i;
  const int64_t p = g.positions[b * g.query_len + i];
  return p < -1 ? -1 : p > g.key_len ? g.key_len : p;
}

// ---- programmatic dependent launch (sm_90) ---------------------------------------------
// A batch-1 decode step is a chain of kernels of a few microseconds each, and a kernel starts
// only when the one before it in the stream has finished: its launch, its ramp-up and, for a
// projection, the first trip of its weight rows to memory sit on the step's critical path.
// A kernel launched by launch_dependent() may instead start while the kernel before it still
// runs, once every block of that kernel has called allow_dependents() (a kernel that never
// calls it, as ONNX Runtime's own: once it has finished, as before). Until it has called
// wait_for_upstream(), such a kernel may only read what no kernel of the step writes (a
// projection's weight) and may write nothing (a buffer it writes may be one the earlier kernel
// still reads); wait_for_upstream() returns once the earlier kernels have finished and their
// writes are visible. Both are no-ops in launches without the attribute and before sm_90.
__device__ __forceinline__ void allow_dependents() {
#if !defined(UA_CUDA_EMULATE) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void wait_for_upstream() {
#if !defined(UA_CUDA_EMULATE) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Starts moving `bytes` (a multiple of 16) at `p` (16-byte aligned) from memory into L2 and
// returns at once (sm_90's bulk prefetch; nothing before).
__device__ __forceinline__ void prefetch_l2(const void* p, uint32_t bytes) {
#if defined(UA_CUDA_EMULATE)
  ua_emu::check_aligned(p, 16, "bulk prefetch");
  if (bytes % 16 != 0) ua_emu::fail("bulk prefetch of a size that is not a multiple of 16");
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
#endif
}

// Off by default until measured and checked on a GPU (NOTES.md, "Dependent launches"): with 0,
// launch_dependent() and launch_clusters() launch as before and Linear's GEMV asks L2 for
// nothing, so the GPU runs what it ran before. The emulated build takes the path as if on
// (the emulator checks its arithmetic and alignment; kernels run one after another there).
#ifndef UA_DEPENDENT_LAUNCH
#ifdef UA_CUDA_EMULATE
#define UA_DEPENDENT_LAUNCH 1
#else
#define UA_DEPENDENT_LAUNCH 0
#endif
#endif

#ifndef UA_CUDA_EMULATE
// Whether the current device takes programmatic dependent launches (compute capability 9.0
// and later), asked once per device.
inline bool dependent_launch_available() {
  static std::atomic<int> known[64];  // 0: not asked yet, 1: no, 2: yes
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  std::atomic<int>& slot = known[device & 63];
  if (slot.load() == 0) {
    int major = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
      (void)cudaGetLastError();
      major = 0;
    }
    slot.store(major >= 9 ? 2 : 1);
  }
  return slot.load() == 2;
}

// Launches `kernel`, which follows the rules above, so that it may overlap the kernel before it.
// Returns the launch call's error, for launch_status(kernel, launch_dependent(...)).
template <typename... Params, typename... Args>
cudaError_t launch_dependent(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                             const Args&... args) {
  if (!UA_DEPENDENT_LAUNCH || !dependent_launch_available()) {
    kernel<<<grid, block, smem, stream>>>(args...);
    return cudaSuccess;
  }
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &attribute;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, args...);
}
#else
template <typename... Params, typename... Args>
cudaError_t launch_dependent(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t,
                             const Args&... args) {
  ua_emu::launch(grid, block, smem, [&] { kernel(args...); }, 1, true);
  return cudaSuccess;
}
#endif

// ---- thread block clusters (sm_90) -----------------------------------------------------
// A cluster's blocks run at the same time and read each other's shared memory: the split-KV
// kernel combines its splits through it instead of through global memory and a counter.
// Only launched where the device has clusters (compute capability 9.0 and later); the
// instances built for older targets trap if ever reached.

// Every thread of every block of the cluster arrives; shared-memory writes before it are
// visible to the whole cluster after it. Not the `.aligned` form, which requires each warp to
// arrive converged, and the callers come from loops whose trip count differs between lanes
// (NOTES.md, "Clusters": what compute-sanitizer synccheck reports on this kernel).
__device__ __forceinline__ void cluster_sync() {
#if defined(UA_CUDA_EMULATE)
  ua_emu::cluster_barrier();
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.release;\n\tbarrier.cluster.wait.acquire;" ::: "memory");
#else
  __trap();
#endif
}

// A block barrier that does not need converged warps: `barrier.sync` without `.aligned`
// (__syncthreads() is `bar.sync`, the `.aligned` form); the same memory ordering. For the
// barriers the split-KV kernel reaches from per-lane loops (NOTES.md, "Clusters": synccheck).
__device__ __forceinline__ void block_sync() {
#if defined(UA_CUDA_EMULATE)
  __syncthreads();
#else
  asm volatile("barrier.sync 0;" ::: "memory");
#endif
}

// The address of `local` (this block's shared memory) in the block of cluster rank `rank`.
template <typename V>
__device__ __forceinline__ V* cluster_peer(V* local, int rank) {
#if defined(UA_CUDA_EMULATE)
  return ua_emu::cluster_peer(local, rank);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  uint64_t peer;  // a generic address: ordinary loads through it read the peer's shared memory
  asm volatile("mapa.u64 %0, %1, %2;" : "=l"(peer) : "l"(reinterpret_cast<uint64_t>(local)), "r"(rank));
  return reinterpret_cast<V*>(peer);
#else
  __trap();
  return local;
#endif
}

// Launches `kernel` on clusters of `cluster` blocks along x (grid.x is a multiple of it), as a
// dependent launch where launch_dependent() makes one (the kernel follows the rules above).
#ifndef UA_CUDA_EMULATE
template <typename Kernel, typename... Args>
cudaError_t launch_clusters(Kernel kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t stream, int cluster,
                            const Args&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attributes[2]{};
  attributes[0].id = cudaLaunchAttributeClusterDimension;
  attributes[0].val.clusterDim.x = unsigned(cluster);
  attributes[0].val.clusterDim.y = 1;
  attributes[0].val.clusterDim.z = 1;
  attributes[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attributes[1].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attributes;
  config.numAttrs = UA_DEPENDENT_LAUNCH && dependent_launch_available() ? 2 : 1;
  return cudaLaunchKernelEx(&config, kernel, args...);
}

// The largest cluster (blocks along x) `kernel` can be launched with on the current device,
// up to `wanted`; 0 where the device has no clusters.
template <typename Kernel>
cudaError_t max_cluster_blocks(Kernel kernel, dim3 block, size_t smem, int wanted, int& blocks) {
  blocks = 0;
  int device = 0, major = 0;
  if (cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return e;
  if (cudaError_t e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device); e != cudaSuccess)
    return e;
  if (major < 9) return cudaSuccess;
  // Above 8 blocks a cluster is "non-portable": allowed per kernel, then asked of the device.
  if (wanted > 8 && cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) != cudaSuccess) {
    (void)cudaGetLastError();
    wanted = 8;
  }
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(unsigned(wanted));
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  int most = 0;
  if (cudaError_t e = cudaOccupancyMaxPotentialClusterSize(&most, kernel, &config); e != cudaSuccess) return e;
  blocks = most < wanted ? most : wanted;
  return cudaSuccess;
}
#else
template <typename Kernel, typename... Args>
cudaError_t launch_clusters(Kernel kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t, int cluster,
                            const Args&... args) {
  ua_emu::launch(grid, block, smem, [&] { kernel(args...); }, unsigned(cluster), true);
  return cudaSuccess;
}
template <typename Kernel>
cudaError_t max_cluster_blocks(Kernel, dim3, size_t, int wanted, int& blocks) {
  blocks = wanted < ua_emu::kMaxClusterBlocks ? wanted : ua_emu::kMaxClusterBlocks;
  return cudaSuccess;
}
#endif

// ---- element types ---------------------------------------------------------------------

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Two floats rounded to T and packed low-first into one 32-bit register (mma operand).
template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
template <> __device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// Eight consecutive elements of a row: the unit one thread moves with 16-byte accesses
// (two of them for float). D is a multiple of 8, so a row is a whole number of slices.
template <typename T>
struct Slice8 {
  uint4 raw[sizeof(T) / 2];
};

// How a load may be cached. kStreaming: data read once (K/V rows), evicted from L2 first so
// that what is read again soon (shared_probs, partial results) stays there. kL2: data that
// other blocks of the same grid wrote, read past L1 (which is not coherent across SMs).
// kReadOnly: data no thread writes while the kernel runs, through the read-only data cache.
enum class Load { kNormal, kStreaming, kL2, kReadOnly };

template <Load kHow, typename V>
__device__ __forceinline__ V load_as(const V* p) {
#ifdef UA_CUDA_EMULATE
  ua_emu::check_aligned(p, sizeof(V), "vector load");  // the GPU faults on a misaligned one
#endif
  if constexpr (kHow == Load::kStreaming) return __ldcs(p);
  else if constexpr (kHow == Load::kL2) return __ldcg(p);
  else if constexpr (kHow == Load::kReadOnly) return __ldg(p);
  else return *p;
}

template <typename T, Load kHow = Load::kNormal>
__device__ __forceinline__ Slice8<T> load_slice(const T* p) {
  Slice8<T> s;
  const uint4* src = reinterpret_cast<const uint4*>(p);
#pragma unroll
  for (int i = 0; i < int(sizeof(T) / 2); ++i) s.raw[i] = load_as<kHow>(src + i);
  return s;
}

template <typename T>
__device__ __forceinline__ void store_slice(T* p, const Slice8<T>& s) {
  uint4* dst = reinterpret_cast<uint4*>(p);
#ifdef UA_CUDA_EMULATE
  ua_emu::check_aligned(dst, sizeof(uint4), "vector store");
#endif
#pragma unroll
  for (int i = 0; i < int(sizeof(T) / 2); ++i) dst[i] = s.raw[i];
}

__device__ __forceinline__ void slice_to_floats(const Slice8<float>& s, float (&f)[8]) {
  const float* v = reinterpret_cast<const float*>(s.raw);
#pragma unroll
  for (int e = 0; e < 8; ++e) f[e] = v[e];
}
template <typename T> struct PairOf;
template <> struct PairOf<__half> { using type = __half2; };
template <> struct PairOf<__nv_bfloat16> { using type = __nv_bfloat162; };
__device__ __forceinline__ float2 pair_to_float2(__half2 x) { return __half22float2(x); }
__device__ __forceinline__ float2 pair_to_float2(__nv_bfloat162 x) { return __bfloat1622float2(x); }

// fp16 / bf16: four packed pairs.
template <typename T>
__device__ __forceinline__ void slice_to_floats(const Slice8<T>& s, float (&f)[8]) {
  const typename PairOf<T>::type* v = reinterpret_cast<const typename PairOf<T>::type*>(s.raw);
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const float2 x = pair_to_float2(v[e]);
    f[2 * e] = x.x;
    f[2 * e + 1] = x.y;
  }
}

// Eight floats rounded to T as one slice (the inverse of slice_to_floats).
template <typename T>
__device__ __forceinline__ Slice8<T> floats_to_slice(const float (&f)[8]) {
  Slice8<T> s;
  T* e = reinterpret_cast<T*>(s.raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) e[i] = from_float<T>(f[i]);
  return s;
}

// Row j of a key/value sequence for batch b, KV head hk (see RowSource).
template <typename T>
__device__ __forceinline__ const T* source_row(const RowSource& s, int64_t b, int64_t hk, int64_t j,
                                               int64_t query_len, int64_t kv_heads, int64_t head_dim) {
  if (j < s.split)
    return static_cast<const T*>(s.cache) + ((b * kv_heads + hk) * s.cache_rows + j) * head_dim;
  return static_cast<const T*>(s.packed) + ((b * query_len + (j - s.split)) * kv_heads + hk) * head_dim;
}

// ---- warp reductions ---------------------------------------------------------------------

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x = fmaxf(x, __shfl_xor_sync(kFullMask, x, offset));
  return x;
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(kFullMask, x, offset);
  return x;
}

// ---- tensor-core instructions ------------------------------------------------------------
// Fragment layouts are those of the PTX ISA for mma.m16n8k16 (f16/bf16 inputs, f32
// accumulators) and ldmatrix.m8n8.x4.b16; the kernels index accumulators by them.

// acc += A (16x16, row-major fragment a) * B (16x8, column fragment b0, b1).
template <typename T>
__device__ __forceinline__ void mma_16x8x16(float (&acc)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

#ifndef UA_CUDA_EMULATE
template <>
__device__ __forceinline__ void mma_16x8x16<__half>(float (&acc)[4], const uint32_t (&a)[4], uint32_t b0,
                                                    uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma_16x8x16<__nv_bfloat16>(float (&acc)[4], const uint32_t (&a)[4], uint32_t b0,
                                                           uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8x8 b16 matrices; lanes 8m..8m+7 give the row addresses of matrix m.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(smem_row)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(smem_row)));
}

// 16 bytes global -> shared, asynchronous; copies zeros instead when `fill` is false.
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src, bool fill) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(smem_dst)),
               "l"(gmem_src), "r"(fill ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }
#else
template <>
__device__ __forceinline__ void mma_16x8x16<__half>(float (&acc)[4], const uint32_t (&a)[4], uint32_t b0,
                                                    uint32_t b1) {
  ua_emu::mma_16x8x16<__half>(acc, a, b0, b1);
}
template <>
__device__ __forceinline__ void mma_16x8x16<__nv_bfloat16>(float (&acc)[4], const uint32_t (&a)[4], uint32_t b0,
                                                           uint32_t b1) {
  ua_emu::mma_16x8x16<__nv_bfloat16>(acc, a, b0, b1);
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) { ua_emu::ldmatrix_x4(r, p, false); }
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  ua_emu::ldmatrix_x4(r, p, true);
}
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool fill) {
  ua_emu::cp_async_16(dst, src, fill);
}
__device__ __forceinline__ void cp_async_commit() { ua_emu::cp_async_commit(); }
__device__ __forceinline__ void cp_async_wait_all() { ua_emu::cp_async_wait_all(); }
#endif

}  // namespace cuda
}  // namespace uniattn
