/* C ABI over the shared-softmax attention kernels (docs/ops.md is the contract).
 *
 * Every backend calls these functions: the ONNX Runtime custom-op library, the TensorRT
 * plugin (through ctypes) and the tests. All tensors are dense, row-major, with the
 * layouts of docs/ops.md. Functions never abort: they return a status and leave a
 * message for ua_last_error().
 */
#ifndef UNIATTN_KERNELS_H
#define UNIATTN_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define UA_ABI_VERSION 2

typedef enum ua_dtype {
  UA_FLOAT32 = 0,
  UA_FLOAT16 = 1,
  UA_BFLOAT16 = 2
} ua_dtype;

typedef enum ua_status {
  UA_OK = 0,
  UA_INVALID_ARGUMENT = 1, /* shapes/pointers violate docs/ops.md */
  UA_UNSUPPORTED = 2,      /* valid, but not implemented here (e.g. CUDA not built) */
  UA_DEVICE_ERROR = 3      /* a CUDA call failed */
} ua_status;

/* Geometry of one attention call.
 *
 * Two cache layouts (docs/ops.md, op versions 1 and 2):
 *   capacity == 0  dynamic (v1): caches are (B, Hkv, P, D) in and (B, Hkv, S, D) out,
 *                  S = past_len + query_len; visibility from attention_mask.
 *   capacity  > 0  static (v2): caches are (B, Hkv, capacity, D) in and out; new token i of
 *                  row b goes to slot position_ids[b, i] and query (b, i) sees slots
 *                  j <= position_ids[b, i] (and inside the window). past_len and
 *                  attention_mask are ignored. Kernels read position_ids where the work runs
 *                  (on the device for CUDA) and touch only the slots a row uses, so one
 *                  desc serves every decode step (CUDA-graph safe). */
typedef struct ua_attention_desc {
  int64_t batch;        /* B */
  int64_t query_len;    /* L */
  int64_t past_len;     /* P (dynamic layout only) */
  int64_t num_heads;    /* Hq */
  int64_t kv_num_heads; /* Hkv, divides Hq */
  int64_t head_dim;     /* D */
  float scale;
  int32_t is_causal;      /* dynamic layout only; the static layout is always causal */
  int64_t sliding_window; /* 0 = unlimited */
  ua_dtype dtype;         /* of every T tensor */
  int64_t capacity;       /* 0 = dynamic layout; > 0 = static layout with this many slots */
} ua_attention_desc;

/* In place. Dynamic layout: when present_key == past_key (producer) or present_value ==
 * past_value (producer and consumer), with past_len > 0, that buffer has the present layout
 * (B, Hkv, S, D), S = past_len + query_len, with the first past_len rows of every (b, h) valid:
 * they are read in place, and only rows past_len..S-1 are written (from key / value).
 * Static layout: past and present are (B, Hkv, capacity, D); when they are the same buffer only
 * the slots position_ids[b, :] are written; when they differ the kernel first copies past to
 * present (the whole buffer), so the op is correct on runtimes that do not alias.
 * A producer's two caches must both alias their past or neither (UA_INVALID_ARGUMENT
 * otherwise). No other input may overlap an output. The CPU and CUDA kernels implement both.
 *
 * Static layout, shared_probs is (B, Hq, L, capacity): entries of visible slots hold p, entries
 * of hidden slots up to the row's last position hold 0, and entries beyond a row's last
 * position (position_ids[b, L-1]) are not written and must not be read. position_ids must
 * satisfy 0 <= position_ids[b, i] < capacity and position_ids[b, i] = position_ids[b, 0] + i.
 * A position outside [0, capacity): the CPU kernels (host memory) return UA_INVALID_ARGUMENT
 * before writing anything; the CUDA kernels (device memory, never read on the host) skip that
 * token's cache write and clamp what its row reads to the cache. Positions that are not
 * contiguous: unspecified results. In every case no kernel accesses memory outside the buffers. */
typedef struct ua_producer_io {
  const void* query;             /* (B, L, Hq*D) post-RoPE */
  const void* key;               /* (B, L, Hkv*D) post-RoPE */
  const void* value;             /* (B, L, Hkv*D) */
  const void* past_key;          /* (B, Hkv, P, D); may be NULL when P == 0; or present_key (in place) */
  const void* past_value;        /* (B, Hkv, P, D); may be NULL when P == 0; or present_value (in place) */
  const int64_t* attention_mask; /* (B, S) */
  void* output;                  /* (B, L, Hq*D) */
  void* present_key;             /* (B, Hkv, S, D) */
  void* present_value;           /* (B, Hkv, S, D) */
  void* shared_probs;            /* (B, Hq, L, S) or NULL: not emitted */
  float* shared_lse;             /* (B, Hq, L) or NULL: not emitted */
  const int64_t* position_ids;   /* (B, L): static layout only (NULL otherwise) */
} ua_producer_io;

typedef struct ua_consumer_io {
  const void* value;             /* (B, L, Hkv*D) */
  const void* past_value;        /* (B, Hkv, P, D); may be NULL when P == 0; or present_value (in place) */
  const int64_t* attention_mask; /* (B, S) */
  const void* shared_probs;      /* (B, Hq, L, S), or NULL: recompute from the next three */
  const float* shared_lse;       /* (B, Hq, L) */
  const void* producer_query;    /* (B, L, Hq*D) */
  const void* producer_key;      /* (B, Hkv, S, D) */
  void* output;                  /* (B, L, Hq*D) */
  void* present_value;           /* (B, Hkv, S, D) */
  const int64_t* position_ids;   /* (B, L): static layout only (NULL otherwise) */
} ua_consumer_io;

int ua_abi_version(void);
/* 1 when the library was built with the CUDA kernels. */
int ua_has_cuda(void);
/* Message of the last failure on this thread ("" if none). */
const char* ua_last_error(void);

/* Synchronous copy between host and device memory of `device` (direction inferred from the
 * pointers, unified addressing), and a zero fill of device memory. For hosts that link no
 * CUDA runtime of their own: the C runtime (runtime/) writes each decode step's ids and
 * positions into the device buffers a CUDA graph was captured with, and reads next_tokens
 * back. Both first wait for all work on the device (ONNX Runtime's non-blocking compute
 * stream does not synchronize with the default stream) and return when the copy or fill is
 * done. */
ua_status ua_cuda_copy(int device, void* dst, const void* src, size_t bytes);
ua_status ua_cuda_zero(int device, void* dst, size_t bytes);

/* CPU threading: the kernels split their work into independent tasks and hand them to the
 * caller's thread pool (ONNX Runtime's, through KernelContext_ParallelFor), so they never
 * start threads of their own. parallel_for(pool, count, fn, task) must call fn(task, i) once
 * for every i in [0, count), on any threads, and return when all calls are done. */
typedef void (*ua_task_fn)(void* task, size_t index);
typedef struct ua_cpu_threads {
  void (*parallel_for)(void* pool, size_t count, ua_task_fn fn, void* task);
  void* pool;
} ua_cpu_threads;

/* CPU: host pointers. threads == NULL runs everything on the calling thread. */
ua_status ua_producer_cpu(const ua_attention_desc* desc, const ua_producer_io* io, const ua_cpu_threads* threads);
ua_status ua_consumer_cpu(const ua_attention_desc* desc, const ua_consumer_io* io, const ua_cpu_threads* threads);

/* CUDA: device pointers, enqueued on `stream` (a cudaStream_t; NULL = default stream).
 * `workspace` must hold at least the bytes the *_workspace_size function returns for the
 * same desc (may be NULL when that is 0); that size depends on the desc alone (not on the
 * device), and the contents need no initialization; for the static layout it does not depend
 * on the positions, so it is the same for every decode step. Asynchronous: errors of the launch itself
 * are returned; the caller synchronizes. */
size_t ua_producer_cuda_workspace_size(const ua_attention_desc* desc, int emit_probs);
size_t ua_consumer_cuda_workspace_size(const ua_attention_desc* desc, int has_probs);
ua_status ua_producer_cuda(const ua_attention_desc* desc, const ua_producer_io* io,
                           void* workspace, void* stream);
ua_status ua_consumer_cuda(const ua_attention_desc* desc, const ua_consumer_io* io,
                           void* workspace, void* stream);

/* GatedSilu (docs/ops.md), the activation of a gated MLP over its fused gate/up projection:
 * gate_up is (rows, 2 * width) with the gate in the first `width` columns of each row and the
 * up projection in the last; output (rows, width) = silu(gate) * up = gate / (1 + exp(-gate))
 * * up, in float32 and rounded once to dtype. output must not overlap gate_up. CPU: host
 * pointers (threads as above); CUDA: device pointers, enqueued on `stream`, no workspace. */
ua_status ua_gated_silu_cpu(ua_dtype dtype, int64_t rows, int64_t width, const void* gate_up, void* output,
                            const ua_cpu_threads* threads);
ua_status ua_gated_silu_cuda(ua_dtype dtype, int64_t rows, int64_t width, const void* gate_up, void* output,
                             void* stream);

/* SplitRotary (docs/ops.md): the fused q/k/v projection of `tokens` tokens, each row
 * [q | k | v] of (num_heads + 2 * kv_num_heads) * head_dim elements, split into query (tokens,
 * num_heads * head_dim), key and value (tokens, kv_num_heads * head_dim), q and k rotated by
 * the token's position p (rotate-half form, the whole head): for i < head_dim / 2,
 *   out[i] = x[i] * cos[p, i] - x[i + head_dim / 2] * sin[p, i]
 *   out[i + head_dim / 2] = x[i + head_dim / 2] * cos[p, i] + x[i] * sin[p, i],
 * in float32 and rounded once to dtype; v is copied. cos_cache and sin_cache are (table_rows,
 * head_dim / 2) of dtype, position_ids (tokens) int64, clamped to [0, table_rows - 1]. No
 * output may overlap qkv or another output. */
typedef struct ua_split_rotary_desc {
  int64_t tokens;       /* B * L */
  int64_t num_heads;    /* heads of q */
  int64_t kv_num_heads; /* heads of k and of v */
  int64_t head_dim;     /* even */
  int64_t table_rows;   /* rows of the cos/sin tables (positions they cover) */
  ua_dtype dtype;
} ua_split_rotary_desc;

typedef struct ua_split_rotary_io {
  const void* qkv;
  const void* cos_cache;
  const void* sin_cache;
  const int64_t* position_ids;
  void* query;
  void* key;
  void* value;
} ua_split_rotary_io;

/* CPU: host pointers (threads as above); CUDA: device pointers, enqueued on `stream`, no
 * workspace, positions read on the device. */
ua_status ua_split_rotary_cpu(const ua_split_rotary_desc* desc, const ua_split_rotary_io* io,
                              const ua_cpu_threads* threads);
ua_status ua_split_rotary_cuda(const ua_split_rotary_desc* desc, const ua_split_rotary_io* io, void* stream);

/* Linear (docs/ops.md), a projection with its weight stored (out_features, in_features)
 * row-major: output (rows, out_features) = input (rows, in_features) x weight^T, float32
 * accumulation, one rounding to dtype. CUDA only (the CPU runs the op's ONNX body): up to
 * UA_LINEAR_GEMV_MAX_ROWS rows (a decode step at batch 1), 16-byte aligned input and weight
 * and in_features a multiple of 8, one GEMV kernel of this library; anything else through
 * cuBLAS (cublasGemmEx) with `cublas_handle`, a cublasHandle_t of the libcublas already
 * loaded in the process (the caller's runtime's) bound to `stream`, which may be NULL when no
 * call needs it (an error says so otherwise). Device pointers, enqueued on `stream`, no
 * workspace; output must not overlap the inputs. */
#define UA_LINEAR_GEMV_MAX_ROWS 1

typedef struct ua_linear_desc {
  int64_t rows;         /* product of the input's leading dimensions */
  int64_t in_features;  /* K */
  int64_t out_features; /* N */
  ua_dtype dtype;
} ua_linear_desc;

ua_status ua_linear_cuda(const ua_linear_desc* desc, const void* input, const void* weight, void* output,
                         void* cublas_handle, void* stream);

#ifdef __cplusplus
}
#endif

#endif /* UNIATTN_KERNELS_H */
