// present = concat(past, new) for the prefill path, where the attention kernel reads whole
// present caches (the split-KV kernel fuses this copy into its own reads instead); and the
// static layout's write of the new tokens into their slots (every path: the attention
// kernels then read the static cache alone).
#include "../src/common.h"
#include "device.cuh"
#include "launch.cuh"

namespace uniattn {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 8192;

template <typename T>
struct AppendArgs : Geometry {
  int64_t slices;  // B*Hkv*S*D/8
  RowSource source;
  T* present;
  bool copy_past;
};

template <typename T>
__global__ void __launch_bounds__(kThreads) append_kernel(const AppendArgs<T> a) {
  const int64_t per_row = a.head_dim / 8;
  for (int64_t x = int64_t(blockIdx.x) * kThreads + threadIdx.x; x < a.slices; x += int64_t(gridDim.x) * kThreads) {
    const int64_t row = x / per_row, col = (x % per_row) * 8;
    const int64_t j = row % a.key_len, bh = row / a.key_len;
    if (!a.copy_past && j < a.past_len) continue;
    const T* src = source_row<T>(a.source, bh / a.kv_heads, bh % a.kv_heads, j, a.query_len, a.kv_heads, a.head_dim);
    store_slice(a.present + row * a.head_dim + col, load_slice(src + col));
  }
}

template <typename T>
ua_status launch_typed(const ua_attention_desc& d, const RowSource& source, void* present, bool copy_past,
                       cudaStream_t stream) {
  AppendArgs<T> a;
  static_cast<Geometry&>(a) = geometry_of(d, nullptr);
  a.slices = d.batch * d.kv_num_heads * a.key_len * d.head_dim / 8;
  a.source = source;
  a.present = static_cast<T*>(present);
  a.copy_past = copy_past;
  int64_t blocks = (a.slices + kThreads - 1) / kThreads;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  if (blocks == 0) return UA_OK;
  const auto kernel = append_kernel<T>;
  UA_LAUNCH(kernel, dim3(unsigned(blocks)), dim3(kThreads), 0, stream, a);
  return launch_status("append");
}

// Static layout: new token i of row b into slot position_ids[b, i] (slots outside the cache
// are skipped: invalid positions give unspecified results, never stray writes).
template <typename T>
__global__ void __launch_bounds__(kThreads) scatter_kernel(const Geometry g, const T* fresh, T* present) {
  const int64_t per_row = g.head_dim / 8, slices = g.batch * g.query_len * g.kv_heads * per_row;
  for (int64_t x = int64_t(blockIdx.x) * kThreads + threadIdx.x; x < slices; x += int64_t(gridDim.x) * kThreads) {
    const int64_t row = x / per_row, col = (x % per_row) * 8;  // row = (b * L + i) * Hkv + hk
    const int64_t hk = row % g.kv_heads, token = row / g.kv_heads, b = token / g.query_len;
    const int64_t slot = g.positions[token];
    if (slot < 0 || slot >= g.key_len) continue;
    store_slice(present + ((b * g.kv_heads + hk) * g.key_len + slot) * g.head_dim + col,
                load_slice(fresh + row * g.head_dim + col));
  }
}

template <typename T>
ua_status launch_scatter(const ua_attention_desc& d, const void* fresh, void* present, const int64_t* positions,
                         cudaStream_t stream) {
  const Geometry g = geometry_of(d, positions);
  int64_t blocks = (d.batch * d.query_len * d.kv_num_heads * d.head_dim / 8 + kThreads - 1) / kThreads;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  if (blocks == 0) return UA_OK;
  const auto kernel = scatter_kernel<T>;
  UA_LAUNCH(kernel, dim3(unsigned(blocks)), dim3(kThreads), 0, stream, g, static_cast<const T*>(fresh),
            static_cast<T*>(present));
  return launch_status("scatter");
}

}  // namespace

ua_status launch_static_append(const ua_attention_desc& d, const void* past, const void* fresh, void* present,
                               const int64_t* positions, cudaStream_t stream) {
  if (past != present) {  // a runtime that does not alias: present = past first (no host sync)
    const size_t bytes = size_t(d.batch * d.kv_num_heads * d.capacity * d.head_dim) * dtype_size(d.dtype);
    if (cudaError_t e = cudaMemcpyAsync(present, past, bytes, cudaMemcpyDeviceToDevice, stream); e != cudaSuccess)
      return fail(UA_DEVICE_ERROR, "cannot copy past to present: %s", cudaGetErrorString(e));
  }
  if (d.query_len == 0) return UA_OK;
  switch (d.dtype) {
    case UA_FLOAT32: return launch_scatter<float>(d, fresh, present, positions, stream);
    case UA_FLOAT16: return launch_scatter<__half>(d, fresh, present, positions, stream);
    case UA_BFLOAT16: return launch_scatter<__nv_bfloat16>(d, fresh, present, positions, stream);
  }
  return fail(UA_INVALID_ARGUMENT, "unknown dtype code %d", int(d.dtype));
}

ua_status launch_append(const ua_attention_desc& d, const RowSource& source, void* present, bool copy_past,
                        cudaStream_t stream) {
  switch (d.dtype) {
    case UA_FLOAT32: return launch_typed<float>(d, source, present, copy_past, stream);
    case UA_FLOAT16: return launch_typed<__half>(d, source, present, copy_past, stream);
    case UA_BFLOAT16: return launch_typed<__nv_bfloat16>(d, source, present, copy_past, stream);
  }
  return fail(UA_INVALID_ARGUMENT, "unknown dtype code %d", int(d.dtype));
}

}  // namespace cuda
}  // namespace uniattn
