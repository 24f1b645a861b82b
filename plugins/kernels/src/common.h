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

// Validates a descriptor and the pointers of a call; `max_head_dim` <= 0 means any.
ua_status check_producer(const ua_attention_desc* desc, const ua_producer_io* io, int64_t max_head_dim);
ua_status check_consumer(const ua_attention_desc* desc, const ua_consumer_io* io, int64_t max_head_dim);

inline int64_t key_len(const ua_attention_desc& d) { return d.past_len + d.query_len; }

// In-place append (kernels.h): the past cache is the present buffer itself.
inline bool in_place(const ua_attention_desc& d, const void* past, const void* present) {
  return d.past_len > 0 && past != nullptr && past == present;
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

}  // namespace uniattn
