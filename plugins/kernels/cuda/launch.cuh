// What the entry points (entry.cu) hand to the kernel launchers: which rows a key/value
// sequence is read from, what each attention kernel computes, and how the split-KV
// kernel cuts the key axis (which fixes its workspace).
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "uniattn/kernels.h"

#ifndef UA_CUDA_EMULATE
#include <cuda_runtime.h>
#endif

namespace uniattn {
namespace cuda {

// Where row j of a (B, Hkv, S, D) key or value sequence lives: rows j < split in a BNSH
// tensor `cache` of `cache_rows` rows per head (the past cache, or a full present cache),
// rows j >= split in the packed (B, L, Hkv*D) projection `packed` (row j - split).
struct RowSource {
  const void* cache;
  int64_t cache_rows;
  const void* packed;
  int64_t split;
};

// How the split-KV kernel weighs the keys of a query row.
enum class Weights {
  kSoftmax,    // producer: online softmax of scale * q.k (optionally emitting P and lse)
  kGivenProbs, // consumer decode: the producer's shared_probs as they are
  kFromLse,    // consumer: exp(scale * q.k - lse) from the producer's query, keys and lse
};

struct SplitKvArgs {
  Weights weights;
  const void* query;      // kSoftmax: query; kFromLse: producer_query; (B, L, Hq*D)
  RowSource keys;         // kSoftmax, kFromLse
  RowSource values;
  void* present_key;      // fused cache copy destinations (B, Hkv, S, D), or NULL
  void* present_value;
  bool copy_past;         // false: rows j < P already sit in present (in-place append)
  const int64_t* mask;    // (B, S); NULL in the static layout
  const int64_t* positions;  // static layout: position_ids (B, L); NULL otherwise
  bool counters_zeroed;   // the static append already zeroed the plan's arrival counters
  int cluster;            // blocks per cluster (split_kv_cluster), 0: the split plan
  // Clusters write the new rows themselves (no scatter before them): rows at slots
  // positions[b, 0..L) are read from keys/values.packed and stored into these present caches
  // (B, Hkv, C, D); NULL: nothing to write (a scatter did, or no such cache).
  void* write_key;
  void* write_value;
  const void* probs_in;   // kGivenProbs: (B, Hq, L, S)
  const float* lse_in;    // kFromLse: (B, Hq, L)
  void* probs_out;        // kSoftmax: shared_probs to emit, or NULL
  float* lse_out;         // kSoftmax: shared_lse to emit, or NULL
  void* output;           // (B, L, Hq*D)
};

// How the split-KV kernel may cover a call, independently of the device (so that the
// workspace size is a function of the descriptor alone): blocks own up to 4 query rows of one
// KV head (a "row group": of the g heads x L tokens sharing that KV head, so with g <= 4 and
// one token each K/V row is read once for all of them) and one split of the key axis. The
// launch picks the number of splits in [min_splits, max_splits] from the device's SM count.
struct SplitKvPlan {
  int lanes_per_key;      // lanes sharing one key row (8, 16 or 32: D <= 64, 128, 256)
  int row_tiles;          // row groups per KV head
  int64_t align;          // split lengths are multiples of it
  int64_t min_split_len;  // every warp of a block gets at least one step of keys
  int min_splits;         // more when P is emitted: a block keeps its split's scores in shared memory
  int max_splits;
  size_t partial_out_offset, partial_stats_offset, arrivals_offset;
  int64_t arrival_counters;  // ints at arrivals_offset (0 when max_splits == 1)
  size_t workspace_bytes;
};

SplitKvPlan plan_split_kv(const ua_attention_desc& desc, Weights weights, bool emit_probs);

ua_status launch_split_kv(const ua_attention_desc& desc, const SplitKvArgs& args, const SplitKvPlan& plan,
                          void* workspace, cudaStream_t stream);

// Blocks per cluster the split-KV kernel takes for a static-layout call (0: the split plan;
// always 0 in the dynamic layout). A function of the desc and the device: one captured step
// replays the same launch.
ua_status split_kv_cluster(const ua_attention_desc& desc, const SplitKvPlan& plan, Weights weights, bool emit_probs,
                           int& cluster);

// Tensor-core prefill (fp16/bf16): producer = flash attention (online softmax) writing the
// output and optionally lse; consumer = the same walk with exp(s - lse) from the producer's
// query/keys. Keys and values are read from present caches (B, Hkv, S, D).
struct FlashArgs {
  bool consumer;
  const void* query;    // (B, L, Hq*D): the layer's query, or the producer's
  const void* keys;     // present key cache (the producer's for a consumer)
  const void* values;   // present value cache of this layer
  const int64_t* mask;  // NULL in the static layout
  const int64_t* positions;  // static layout: position_ids (B, L); NULL otherwise
  const float* lse_in;  // consumer
  float* lse_out;       // producer, or NULL
  void* output;
};

bool flash_supports(const ua_attention_desc& desc);
ua_status launch_flash(const ua_attention_desc& desc, const FlashArgs& args, cudaStream_t stream);

// present = concat(source rows); rows j < P are skipped when !copy_past.
ua_status launch_append(const ua_attention_desc& desc, const RowSource& source, void* present, bool copy_past,
                        cudaStream_t stream);

// One cache of the static layout (capacity > 0): its past and present (B, Hkv, C, D) and the
// layer's new rows, packed (B, L, Hkv*D).
struct StaticWrite {
  const void* past;
  const void* fresh;
  void* present;
};

// For each of `count` (1 or 2) caches: present = past (a device copy, skipped when they alias),
// then, with `scatter`, new token i of row b into slot position_ids[b, i] of present; the same
// kernel zeroes `counter_count` ints at `counters` (the split-KV arrival counters that follow,
// or none). Without `scatter` (the cluster path writes the new rows itself) only the copies.
ua_status launch_static_append(const ua_attention_desc& desc, const StaticWrite* writes, int count, bool scatter,
                               const int64_t* positions, int* counters, int64_t counter_count, cudaStream_t stream);

// Reports a failed launch (or an earlier asynchronous error) for ua_last_error(); `launch`:
// what a launch call returned (launch_dependent, launch_clusters), where it returns one.
ua_status launch_status(const char* kernel, cudaError_t launch = cudaSuccess);

}  // namespace cuda
}  // namespace uniattn
