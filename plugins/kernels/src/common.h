// Shared plumbing of the kernel library: argument checks against docs/ops.md and the
// thread-local error message behind ua_last_error(). Used by the CPU and CUDA kernels.
#pragma once

#include "uniattn/kernels.h"

namespace uniattn {

// Records `message` (printf-style) for ua_last_error() and returns `status`.
ua_status fail(ua_status status, const char* format, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

// Clears the last error and returns UA_OK.
ua_status ok();

// Where a call's position_ids live (static layout). Host memory (the CPU kernels): the checks
// below read them and refuse a position outside [0, capacity) with an error. Device memory (the
// CUDA kernels): the host must not read them (no synchronization, CUDA-graph capture), so the
// kernels themselves skip the write of such a token and clamp what its row reads to the cache.
enum class PositionMemory { host, device };

// Validates a descriptor and the pointers of a call; `max_head_dim` <= 0 means any.
ua_status check_producer(const ua_attention_desc* desc, const ua_producer_io* io, int64_t max_head_dim,
                         PositionMemory positions = PositionMemory::host);
ua_status check_consumer(const ua_attention_desc* desc, const ua_consumer_io* io, int64_t max_head_dim,
                         PositionMemory positions = PositionMemory::host);

// GatedSilu: sizes, pointers (when there is work) and no overlap between input and output.
ua_status check_gated_silu(ua_dtype dtype, int64_t rows, int64_t width, const void* gate_up, const void* output);

// Linear: a desc, sizes, pointers (when there is work) and no overlap between output and inputs.
ua_status check_linear(const ua_linear_desc* d, const void* input, const void* weight, const void* output);

// SplitRotary: sizes, pointers (when there is work) and no overlap between the tensors written
// and those read or written by another output. Positions are not checked (kernels clamp them).
ua_status check_split_rotary(const ua_split_rotary_desc* desc, const ua_split_rotary_io* io);

// Dynamic layout (capacity == 0): keys of the call, S = P + L.
inline int64_t key_len(const ua_attention_desc& d) { return d.past_len + d.query_len; }

inline bool static_layout(const ua_attention_desc& d) { return d.capacity > 0; }

// Rows per (batch, KV head) of the present caches (and of shared_probs' last axis when emitted):
// S in the dynamic layout, the capacity C in the static one.
inline int64_t cache_len(const ua_attention_desc& d) { return static_layout(d) ? d.capacity : key_len(d); }

// In place (kernels.h): the past cache is the present buffer itself. Dynamic layout: only
// with a past (P > 0); static layout: whenever the pointers are equal.
inline bool in_place(const ua_attention_desc& d, const void* past, const void* present) {
  return past != nullptr && past == present && (static_layout(d) || d.past_len > 0);
}

inline size_t dtype_size(ua_dtype t) { return t == UA_FLOAT32 ? 4 : 2; }

// Is key j visible to query row i (absolute position P + i)? mask_row is attention_mask[b].
inline bool visible(const ua_attention_desc& d, const int64_t* mask_row, int64_t i, int64_t j) {
  const int64_t q_pos = d.past_len + i;
  if (mask_row[j] == 0) return false;
  if (d.is_causal && j > q_pos) return false;
  if (d.sliding_window > 0 && q_pos - j >= d.sliding_window) return false;
  return true;
}

// Static layout: the slots a query at `position` sees, j <= position and inside the window,
// as a half-open range clipped to [0, capacity) (an out-of-range position reads nothing
// outside the cache; kernels.h leaves its results unspecified).
struct SlotRange {
  int64_t begin, end;
};

inline SlotRange visible_slots(const ua_attention_desc& d, int64_t position) {
  int64_t end = position + 1 < d.capacity ? position + 1 : d.capacity;
  int64_t begin = d.sliding_window > 0 ? position - d.sliding_window + 1 : 0;
  if (begin < 0) begin = 0;
  if (end < begin) end = begin;
  return {begin, end};
}

}  // namespace uniattn
