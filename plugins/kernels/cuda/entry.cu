// The C ABI of the CUDA kernels (plugins/kernels/include/uniattn/kernels.h): argument
// checks, the choice of kernel, workspace sizes. Everything is enqueued on the caller's
// stream; nothing is allocated and nothing waits for the device.
//
// Which kernel runs:
//   producer emitting shared_probs, consumer given shared_probs, float32, or at most
//   kFewRows query rows per KV head (decode)   -> split-KV kernel (split_kv.cu), which
//                                                 also writes the present caches
//   otherwise (fp16/bf16 prefill)              -> append.cu + tensor-core flash.cu
//
// In-place append (present_* == past_*, kernels.h): past rows are read from the present
// buffer and only the new rows are written.
//
// Static layout (capacity > 0, kernels.h): the new rows go to their slots first
// (launch_static_append: a device copy of past when present does not alias it, then one
// scatter kernel by position_ids for all of the op's caches, which also zeroes the split-KV
// kernel's arrival counters), then the same attention kernels read the present caches alone,
// each row only the slots its position lets it see. Where the split-KV kernel runs as clusters
// (split_kv_cluster: small batches on sm_90) it writes the new rows itself and reads them from
// the projections: no scatter kernel, one launch per op when the caches alias. Positions stay on the device and the launch
// geometry and workspace depend on the desc alone: nothing here synchronizes, allocates or
// reads device memory, so a decode step can be captured in a CUDA graph and replayed with new
// position_ids.
#include <stdint.h>

#include "../src/common.h"
#include "device.cuh"
#include "launch.cuh"

namespace uniattn {
namespace cuda {
namespace {

constexpr int64_t kMaxHeadDim = 256;
constexpr int64_t kFewRows = 16;
constexpr int64_t kMaxGridDim = 65535;

struct Named {
  const char* name;
  const void* pointer;
};

template <size_t N>
ua_status check_aligned(const Named (&tensors)[N]) {
  for (const Named& t : tensors)
    if (t.pointer != nullptr && (reinterpret_cast<uintptr_t>(t.pointer) & 15) != 0)
      return fail(UA_INVALID_ARGUMENT, "%s must be 16-byte aligned for the CUDA kernels (address %p)", t.name,
                  t.pointer);
  return UA_OK;
}

ua_status check_grid(const ua_attention_desc& d) {
  if (d.batch > kMaxGridDim || d.num_heads > kMaxGridDim)
    return fail(UA_UNSUPPORTED, "batch=%lld and num_heads=%lld must be at most %lld on CUDA", (long long)d.batch,
                (long long)d.num_heads, (long long)kMaxGridDim);
  const int64_t keys = geometry_of(d, nullptr).key_len;
  if (d.batch * d.num_heads * d.query_len > INT32_MAX || keys > INT32_MAX)
    return fail(UA_UNSUPPORTED, "batch*num_heads*query_len=%lld and key length %lld must stay below 2^31 on CUDA",
                (long long)(d.batch * d.num_heads * d.query_len), (long long)keys);
  return UA_OK;
}

// Just enough validity for a workspace query (which has no status to report).
bool plannable(const ua_attention_desc* d) {
  return d != nullptr && d->batch > 0 && d->query_len > 0 && d->past_len >= 0 && d->capacity >= 0 &&
         d->kv_num_heads > 0 && d->num_heads % d->kv_num_heads == 0 && d->head_dim > 0 && d->head_dim <= kMaxHeadDim;
}

bool use_split_kv(const ua_attention_desc& d, bool with_probs) {
  return with_probs || !flash_supports(d) || d.num_heads / d.kv_num_heads * d.query_len <= kFewRows;
}

// What the CUDA kernels require beyond docs/ops.md: grid limits and 16-byte aligned rows.
template <size_t N>
ua_status admit(const ua_attention_desc& d, const Named (&tensors)[N]) {
  if (ua_status s = check_grid(d); s != UA_OK) return s;
  return check_aligned(tensors);
}

ua_status finish(ua_status s) { return s == UA_OK ? ok() : s; }

ua_status need_workspace(const char* op, const SplitKvPlan& plan, const void* workspace) {
  if (plan.workspace_bytes > 0 && workspace == nullptr)
    return fail(UA_INVALID_ARGUMENT, "%s: workspace is NULL but %zu bytes are needed (see %s_cuda_workspace_size)",
                op, plan.workspace_bytes, op);
  return UA_OK;
}

// Keys or values of one layer: past rows from the past cache (or from present itself when
// appending in place), new rows from the packed projection. Static layout: every row from the
// present cache, where launch_static_append has put the new ones.
RowSource layer_rows(const ua_attention_desc& d, const void* past, const void* present, const void* fresh,
                     bool in_place) {
  if (d.capacity > 0) return RowSource{present, d.capacity, nullptr, d.capacity};
  return RowSource{in_place ? present : past, in_place ? d.past_len + d.query_len : d.past_len, fresh, d.past_len};
}

// The split-KV kernel's arrival counters in the workspace (none when the plan has one split).
int* arrivals(const SplitKvPlan& plan, void* workspace) {
  if (plan.arrival_counters == 0) return nullptr;
  return reinterpret_cast<int*>(static_cast<unsigned char*>(workspace) + plan.arrivals_offset);
}

}  // namespace

ua_status launch_status(const char* kernel, cudaError_t launch) {
  const cudaError_t last = cudaGetLastError();  // read (and cleared) either way
  const cudaError_t e = launch != cudaSuccess ? launch : last;
  if (e != cudaSuccess)
    return fail(UA_DEVICE_ERROR, "CUDA kernel %s could not run: %s", kernel, cudaGetErrorString(e));
  return UA_OK;
}

}  // namespace cuda
}  // namespace uniattn

using namespace uniattn;
using namespace uniattn::cuda;

extern "C" {

int ua_has_cuda(void) { return 1; }

ua_status ua_cuda_copy(int device, void* dst, const void* src, size_t bytes) {
  cudaError_t e = cudaSetDevice(device);
  // After the work other streams (ONNX Runtime's non-blocking one) queued on the buffers.
  if (e == cudaSuccess) e = cudaDeviceSynchronize();
  if (e == cudaSuccess) e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, cudaStreamLegacy);
  // A pageable host->device copy may return before the DMA is done: wait for it.
  if (e == cudaSuccess) e = cudaStreamSynchronize(cudaStreamLegacy);
  if (e != cudaSuccess) return fail(UA_DEVICE_ERROR, "ua_cuda_copy of %zu bytes failed: %s", bytes, cudaGetErrorString(e));
  return ok();
}

ua_status ua_cuda_zero(int device, void* dst, size_t bytes) {
  cudaError_t e = cudaSetDevice(device);
  if (e == cudaSuccess) e = cudaDeviceSynchronize();
  if (e == cudaSuccess) e = cudaMemsetAsync(dst, 0, bytes, cudaStreamLegacy);
  if (e == cudaSuccess) e = cudaStreamSynchronize(cudaStreamLegacy);
  if (e != cudaSuccess) return fail(UA_DEVICE_ERROR, "ua_cuda_zero of %zu bytes failed: %s", bytes, cudaGetErrorString(e));
  return ok();
}

size_t ua_producer_cuda_workspace_size(const ua_attention_desc* desc, int emit_probs) {
  if (!plannable(desc) || !use_split_kv(*desc, emit_probs != 0)) return 0;
  return plan_split_kv(*desc, Weights::kSoftmax, emit_probs != 0).workspace_bytes;
}

size_t ua_consumer_cuda_workspace_size(const ua_attention_desc* desc, int has_probs) {
  if (!plannable(desc) || !use_split_kv(*desc, has_probs != 0)) return 0;
  return plan_split_kv(*desc, has_probs ? Weights::kGivenProbs : Weights::kFromLse, false).workspace_bytes;
}

ua_status ua_producer_cuda(const ua_attention_desc* desc, const ua_producer_io* io, void* workspace, void* stream_ptr) {
  if (ua_status s = check_producer(desc, io, kMaxHeadDim, PositionMemory::device); s != UA_OK) return s;
  const ua_attention_desc& d = *desc;
  if (d.batch == 0) return ok();
  const Named tensors[] = {{"query", io->query},         {"key", io->key},
                           {"value", io->value},         {"past_key", io->past_key},
                           {"past_value", io->past_value}, {"present_key", io->present_key},
                           {"present_value", io->present_value}};
  if (ua_status s = admit(d, tensors); s != UA_OK) return s;
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const bool in_place = uniattn::in_place(d, io->past_key, io->present_key);  // both or neither: checked
  const RowSource keys = layer_rows(d, io->past_key, io->present_key, io->key, in_place);
  const RowSource values = layer_rows(d, io->past_value, io->present_value, io->value, in_place);

  const bool emit_probs = io->shared_probs != nullptr;
  const bool split_kv = d.query_len > 0 && use_split_kv(d, emit_probs);
  const SplitKvPlan plan = split_kv ? plan_split_kv(d, Weights::kSoftmax, emit_probs) : SplitKvPlan{};
  if (split_kv)
    if (ua_status s = need_workspace("ua_producer", plan, workspace); s != UA_OK) return s;
  int cluster = 0;
  if (split_kv && d.capacity > 0)
    if (ua_status s = split_kv_cluster(d, plan, Weights::kSoftmax, emit_probs, cluster); s != UA_OK) return s;
  if (d.capacity > 0) {
    const StaticWrite writes[] = {{io->past_key, io->key, io->present_key},
                                  {io->past_value, io->value, io->present_value}};
    if (ua_status s = launch_static_append(d, writes, 2, cluster == 0, io->position_ids, arrivals(plan, workspace),
                                           plan.arrival_counters, stream);
        s != UA_OK)
      return s;
    if (d.query_len == 0) return ok();
  } else if (d.query_len == 0) {  // present = past
    if (d.past_len == 0 || in_place || !io->past_key || !io->past_value || !io->present_key || !io->present_value)
      return ok();
    if (ua_status s = launch_append(d, keys, io->present_key, true, stream); s != UA_OK) return s;
    return finish(launch_append(d, values, io->present_value, true, stream));
  }

  if (split_kv) {
    SplitKvArgs args{};
    args.weights = Weights::kSoftmax;
    args.query = io->query;
    args.keys = keys;
    args.values = values;
    if (d.capacity == 0) {  // the static layout's new rows are in place already
      args.present_key = io->present_key;
      args.present_value = io->present_value;
      args.mask = io->attention_mask;
    }
    args.copy_past = !in_place;
    args.positions = io->position_ids;
    args.counters_zeroed = d.capacity > 0;
    args.cluster = cluster;
    if (cluster > 0) {  // the new rows: read from the projections, written by the kernel
      args.keys.packed = io->key;
      args.values.packed = io->value;
      args.write_key = io->present_key;
      args.write_value = io->present_value;
    }
    args.probs_out = io->shared_probs;
    args.lse_out = io->shared_lse;
    args.output = io->output;
    return finish(launch_split_kv(d, args, plan, workspace, stream));
  }
  if (d.capacity == 0) {
    if (ua_status s = launch_append(d, keys, io->present_key, !in_place, stream); s != UA_OK) return s;
    if (ua_status s = launch_append(d, values, io->present_value, !in_place, stream); s != UA_OK) return s;
  }
  FlashArgs args{};
  args.consumer = false;
  args.query = io->query;
  args.keys = io->present_key;
  args.values = io->present_value;
  args.mask = d.capacity == 0 ? io->attention_mask : nullptr;
  args.positions = io->position_ids;
  args.lse_out = io->shared_lse;
  args.output = io->output;
  return finish(launch_flash(d, args, stream));
}

ua_status ua_consumer_cuda(const ua_attention_desc* desc, const ua_consumer_io* io, void* workspace, void* stream_ptr) {
  if (ua_status s = check_consumer(desc, io, kMaxHeadDim, PositionMemory::device); s != UA_OK) return s;
  const ua_attention_desc& d = *desc;
  if (d.batch == 0) return ok();
  const Named tensors[] = {{"value", io->value},
                           {"past_value", io->past_value},
                           {"present_value", io->present_value},
                           {"producer_query", io->producer_query},
                           {"producer_key", io->producer_key}};
  if (ua_status s = admit(d, tensors); s != UA_OK) return s;
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const bool in_place = uniattn::in_place(d, io->past_value, io->present_value);
  const RowSource values = layer_rows(d, io->past_value, io->present_value, io->value, in_place);

  const bool has_probs = io->shared_probs != nullptr;
  const Weights weights = has_probs ? Weights::kGivenProbs : Weights::kFromLse;
  const bool split_kv = d.query_len > 0 && use_split_kv(d, has_probs);
  const SplitKvPlan plan = split_kv ? plan_split_kv(d, weights, false) : SplitKvPlan{};
  if (split_kv)
    if (ua_status s = need_workspace("ua_consumer", plan, workspace); s != UA_OK) return s;
  int cluster = 0;
  if (split_kv && d.capacity > 0)
    if (ua_status s = split_kv_cluster(d, plan, weights, false, cluster); s != UA_OK) return s;
  if (d.capacity > 0) {
    const StaticWrite writes[] = {{io->past_value, io->value, io->present_value}};
    if (ua_status s = launch_static_append(d, writes, 1, cluster == 0, io->position_ids, arrivals(plan, workspace),
                                           plan.arrival_counters, stream);
        s != UA_OK)
      return s;
    if (d.query_len == 0) return ok();
  } else if (d.query_len == 0) {  // present = past
    if (d.past_len == 0 || in_place || !io->past_value || !io->present_value) return ok();
    return finish(launch_append(d, values, io->present_value, true, stream));
  }

  if (split_kv) {
    const int64_t key_len = geometry_of(d, nullptr).key_len;
    SplitKvArgs args{};
    args.weights = weights;
    args.query = io->producer_query;
    args.keys = RowSource{io->producer_key, key_len, nullptr, key_len};
    args.values = values;
    if (d.capacity == 0) {  // the static layout's new rows are in place already
      args.present_value = io->present_value;
      args.mask = io->attention_mask;
    }
    args.copy_past = !in_place;
    args.positions = io->position_ids;
    args.counters_zeroed = d.capacity > 0;
    args.cluster = cluster;
    if (cluster > 0) {  // the new rows: read from the projection, written by the kernel
      args.values.packed = io->value;
      args.write_value = io->present_value;
    }
    args.probs_in = io->shared_probs;
    args.lse_in = io->shared_lse;
    args.output = io->output;
    return finish(launch_split_kv(d, args, plan, workspace, stream));
  }
  if (d.capacity == 0)
    if (ua_status s = launch_append(d, values, io->present_value, !in_place, stream); s != UA_OK) return s;
  FlashArgs args{};
  args.consumer = true;
  args.query = io->producer_query;
  args.keys = io->producer_key;
  args.values = io->present_value;
  args.mask = d.capacity == 0 ? io->attention_mask : nullptr;
  args.positions = io->position_ids;
  args.lse_in = io->shared_lse;
  args.output = io->output;
  return finish(launch_flash(d, args, stream));
}

}  // extern "C"
