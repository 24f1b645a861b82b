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

// Static layout: new token i of row b into slot position_ids[b, i] of each target cache (slots
// outside the cache are skipped: invalid positions give unspecified results, never stray
// writes); the same launch zeroes the split-KV kernel's arrival counters, so a decode step
// costs one kernel before the attention instead of one per cache plus a memset.
template <typename T>
struct ScatterTargets {
  const T* fresh[2];  // (B, L, Hkv*D)
  T* present[2];      // (B, Hkv, C, D)
  int count;
};

template <typename T>
__global__ void __launch_bounds__(kThreads)
    scatter_kernel(const Geometry g, const ScatterTargets<T> t, int* counters, const int64_t counter_count) {
  const int64_t per_row = g.head_dim / 8, slices = g.batch * g.query_len * g.kv_heads * per_row;
  const int64_t first = int64_t(blockIdx.x) * kThreads + threadIdx.x, stride = int64_t(gridDim.x) * kThreads;
  for (int64_t x = first; x < counter_count; x += stride) counters[x] = 0;
  for (int64_t x = first; x < t.count * slices; x += stride) {
    const int which = x < slices ? 0 : 1;
    const int64_t slice = x - which * slices;
    const int64_t row = slice / per_row, col = (slice % per_row) * 8;  // row = (b * L + i) * Hkv + hk
    const int64_t hk = row % g.kv_heads, token = row / g.kv_heads, b = token / g.query_len;
    const int64_t slot = g.positions[token];
    if (slot < 0 || slot >= g.key_len) continue;
    store_slice(t.present[which] + ((b * g.kv_heads + hk) * g.key_len + slot) * g.head_dim + col,
                load_slice(t.fresh[which] + row * g.head_dim + col));
  }
}

template <typename T>
ua_status launch_scatter(const ua_attention_desc& d, const StaticWrite* writes, int count, const int64_t* positions,
                         int* counters, int64_t counter_count, cudaStream_t stream) {
  const Geometry g = geometry_of(d, positions);
  ScatterTargets<T> t{};
  t.count = d.query_len == 0 ? 0 : count;
  for (int i = 0; i < count; ++i) {
    t.fresh[i] = static_cast<const T*>(writes[i].fresh);
    t.present[i] = static_cast<T*>(writes[i].present);
  }
  const int64_t slices = t.count * d.batch * d.query_len * d.kv_num_heads * d.head_dim / 8;
  const int64_t work = slices > counter_count ? slices : counter_count;
  int64_t blocks = (work + kThreads - 1) / kThreads;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  if (blocks == 0) return UA_OK;
  const auto kernel = scatter_kernel<T>;
  UA_LAUNCH(kernel, dim3(unsigned(blocks)), dim3(kThreads), 0, stream, g, t, counters, counter_count);
  return launch_status("scatter");
}

}  // namespace

ua_status launch_static_append(const ua_attention_desc& d, const StaticWrite* writes, int count, bool scatter,
                               const int64_t* positions, int* counters, int64_t counter_count, cudaStream_t stream) {
  if (count < 1 || count > 2) return fail(UA_INVALID_ARGUMENT, "static append of %d caches (1 or 2)", count);
  for (int i = 0; i < count; ++i) {
    if (writes[i].past == writes[i].present) continue;
    // A runtime that does not alias: present = past first (no host sync).
    const size_t bytes = size_t(d.batch * d.kv_num_heads * d.capacity * d.head_dim) * dtype_size(d.dtype);
    if (cudaError_t e = cudaMemcpyAsync(writes[i].present, writes[i].past, bytes, cudaMemcpyDeviceToDevice, stream);
        e != cudaSuccess)
      return fail(UA_DEVICE_ERROR, "cannot copy past to present: %s", cudaGetErrorString(e));
  }
  if (!scatter) return UA_OK;
  switch (d.dtype) {
    case UA_FLOAT32: return launch_scatter<float>(d, writes, count, positions, counters, counter_count, stream);
    case UA_FLOAT16: return launch_scatter<__half>(d, writes, count, positions, counters, counter_count, stream);
    case UA_BFLOAT16:
      return launch_scatter<__nv_bfloat16>(d, writes, count, positions, counters, counter_count, stream);
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
