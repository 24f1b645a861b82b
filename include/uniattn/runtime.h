/* uniattn runtime: generation over an exported UniAttn artifact from C and C++ services.
 *
 * libuniattn_runtime.so loads an artifact folder written by `uniattn-export model ... --target
 * ort` (model.onnx + uniattn_manifest.json), runs it with ONNX Runtime and returns generated
 * token ids (and, on request, the logits of every step). It needs no ONNX Runtime SDK: it
 * dlopen()s the libonnxruntime.so that the onnxruntime (or onnxruntime-gpu) pip wheel ships,
 * whose path `uniattn-export runtime-paths onnxruntime` prints, and registers the project's
 * custom-op library (libuniattn_ort.so, installed next to this library) so the `uniattn`
 * nodes run the fused kernels.
 *
 * Generation follows the Python runtime (uniattn_export/targets/session.py) step for step:
 * a row that emitted eos gets pad_token_id afterwards, and generation stops when every row
 * finished or after max_new_tokens. The KV cache (no K for consumer layers) and the shared
 * softmax state live inside ONNX Runtime (device memory on CUDA) and never leave it.
 * Two kinds of artifact (the manifest's cache mode, `uniattn-export model --cache`):
 *   dynamic  prompts left-padded with pad_token_id (attention mask 0), position ids count
 *            real tokens only; the caches grow by one token per step.
 *   static   caches of a fixed capacity C, allocated once per generation (zeroed) and bound
 *            as past and present so the graph updates them in place; prompts right-padded,
 *            positions 0..width-1, then each row's next token at position = its length.
 *            Greedy decoding copies only the graph's next_tokens (B ids) to the host per
 *            step; sampling and return_logits copy the logits. The longest prompt +
 *            max_new_tokens must fit C (checked before anything runs). On CUDA, decode steps
 *            replay one CUDA graph per batch size (cuda_graphs, below): all decode inputs and
 *            outputs live in device buffers bound once, and each step writes B ids and B
 *            positions into them.
 *
 * Sampling is reproducible across languages: the random draws are those of NumPy's
 * `numpy.random.default_rng(seed).random()` (PCG64 seeded through SeedSequence), one draw
 * per batch row per step, and the choice rule is the Python runtime's
 * (`choose_tokens`: temperature, then top-k, then top-p, then inverse-CDF on the draw). Given
 * the same logits both runtimes pick the same tokens, except when a draw falls within
 * float64 rounding (~1e-16) of a cumulative-probability boundary.
 *
 * Errors: every function that can fail returns a uniattn_status; the message of the last
 * failure on the calling thread is uniattn_last_error(). Nothing here aborts or exits.
 * Threads: a runtime may be used by several threads at once (uniattn_generate keeps its
 * caches per call), except that with CUDA graphs on, the caches and buffers of a batch size
 * belong to the runtime (the captured graph holds their addresses), so its generations run
 * one at a time; a uniattn_generation belongs to the caller.
 */
#ifndef UNIATTN_RUNTIME_H
#define UNIATTN_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Version 2 added uniattn_runtime_options.cuda_graphs and the cache/CUDA-graph queries.
 * uniattn_runtime_options_init fills the whole struct of this version: rebuild callers
 * against this header (the library still accepts options of version 1 sizes, struct_size). */
#define UNIATTN_RUNTIME_API_VERSION 2

typedef enum uniattn_status {
  UNIATTN_OK = 0,
  UNIATTN_INVALID_ARGUMENT = 1, /* a bad option or request (NULL pointer, out-of-range value) */
  UNIATTN_ARTIFACT_ERROR = 2,   /* the artifact folder is missing, incomplete, modified after export
                                   (sha256 of a listed file), inconsistent or not supported */
  UNIATTN_LIBRARY_ERROR = 3,    /* libonnxruntime or the custom-op library cannot be loaded */
  UNIATTN_ORT_ERROR = 4,        /* ONNX Runtime refused (session creation, execution provider, run) */
  UNIATTN_OUT_OF_MEMORY = 5,
  UNIATTN_INTERNAL_ERROR = 6
} uniattn_status;

typedef enum uniattn_device {
  UNIATTN_DEVICE_CPU = 0,
  UNIATTN_DEVICE_CUDA = 1 /* needs onnxruntime-gpu's libonnxruntime.so and its CUDA libraries */
} uniattn_device;

typedef enum uniattn_custom_ops {
  UNIATTN_CUSTOM_OPS_AUTO = 0,    /* register the custom-op library when it exists */
  UNIATTN_CUSTOM_OPS_REQUIRE = 1, /* fail when it cannot be registered */
  UNIATTN_CUSTOM_OPS_OFF = 2      /* never: ONNX Runtime runs the model-local function bodies */
} uniattn_custom_ops;

typedef struct uniattn_runtime uniattn_runtime;
typedef struct uniattn_generation uniattn_generation;

typedef struct uniattn_runtime_options {
  uint32_t struct_size;            /* sizeof(uniattn_runtime_options); set by _init */
  const char* artifact_dir;        /* required: the -o folder of `uniattn-export model` */
  const char* onnxruntime_library; /* path of libonnxruntime.so.1.N; NULL: "libonnxruntime.so.1" via the loader path */
  const char* custom_op_library;   /* NULL: libuniattn_ort.so in the folder of libuniattn_runtime.so */
  int32_t custom_ops;              /* uniattn_custom_ops, default AUTO */
  int32_t device;                  /* uniattn_device, default CPU */
  int32_t device_id;               /* CUDA device ordinal, default 0 */
  int32_t intra_op_threads;        /* ONNX Runtime intra-op threads; 0 (default): its own choice */
  /* API version 2 (read only when struct_size covers it): */
  int32_t cuda_graphs; /* static artifacts on CUDA: 1 (default) decode steps replay a CUDA graph per batch
                          size, or run without graphs (and uniattn_runtime_cuda_graph_warning says why)
                          when ONNX Runtime places a node off the CUDA EP or needs a Memcpy; 0: never */
} uniattn_runtime_options;

typedef struct uniattn_generate_request {
  uint32_t struct_size;          /* sizeof(uniattn_generate_request); set by _init */
  const int64_t* prompt_ids;     /* the prompts' token ids, concatenated */
  const int64_t* prompt_lengths; /* batch_size lengths (each >= 1) */
  int64_t batch_size;            /* >= 1 */
  int64_t max_new_tokens;        /* >= 1; the longest prompt + max_new_tokens <= the model's positions
                                    (config.json's max_position_embeddings) and, for static caches,
                                    <= the cache capacity */
  int64_t pad_token_id;          /* padding and the filler after eos; a valid token id (default 0) */
  int64_t eos_token_id;          /* -1 (default): none */
  int32_t do_sample;             /* 0 (default): greedy (argmax, first index on ties) */
  double temperature;            /* sampling: > 0 (default 1) */
  int64_t top_k;                 /* sampling: keep the k most likely tokens; 0 (default): all */
  double top_p;                  /* sampling: nucleus mass in (0, 1]; 1 (default): all */
  uint64_t seed;                 /* sampling: seed of the draws (default 0) */
  int32_t return_logits;         /* nonzero: keep each step's float32 logits of the last position */
} uniattn_generate_request;

/* Fill `options` / `request` with the defaults above (struct_size included). */
void uniattn_runtime_options_init(uniattn_runtime_options* options);
void uniattn_generate_request_init(uniattn_generate_request* request);

/* Load the artifact and create the ONNX Runtime session. *out is NULL on failure. */
uniattn_status uniattn_runtime_create(const uniattn_runtime_options* options, uniattn_runtime** out);
void uniattn_runtime_destroy(uniattn_runtime* runtime); /* NULL is a no-op */

/* One line: onnxruntime version and library, execution provider, kernels (custom-op library
 * or function bodies), dtype, layers. Owned by the runtime. */
const char* uniattn_runtime_description(const uniattn_runtime* runtime);
int64_t uniattn_runtime_vocab_size(const uniattn_runtime* runtime);
/* 1 when the custom-op library is registered, 0 when ONNX Runtime runs the function bodies. */
int uniattn_runtime_uses_custom_ops(const uniattn_runtime* runtime);
/* The artifact's cache capacity (tokens per row: prompt + new); 0 for dynamic caches. */
int64_t uniattn_runtime_cache_capacity(const uniattn_runtime* runtime);
/* 1 when decode steps replay CUDA graphs. */
int uniattn_runtime_uses_cuda_graphs(const uniattn_runtime* runtime);
/* Why CUDA graphs were requested but are off (ONNX Runtime's reason), or "". Owned by the runtime. */
const char* uniattn_runtime_cuda_graph_warning(const uniattn_runtime* runtime);

/* Generate for a batch of prompts (padded as the artifact's cache mode says). *out is NULL on failure. */
uniattn_status uniattn_generate(uniattn_runtime* runtime, const uniattn_generate_request* request,
                                uniattn_generation** out);

int64_t uniattn_generation_batch_size(const uniattn_generation* generation);
/* Steps run: max_new_tokens, or fewer when every row reached eos. */
int64_t uniattn_generation_num_steps(const uniattn_generation* generation);
/* (batch_size, num_steps) row-major: the token chosen at each step, pad_token_id after eos. */
const int64_t* uniattn_generation_tokens(const uniattn_generation* generation);
/* Per row: tokens up to and including its eos, or num_steps when it has none. */
const int64_t* uniattn_generation_lengths(const uniattn_generation* generation);
/* (batch_size, num_steps, vocab_size) row-major logits of each step's last position (the
 * distribution the step's token was chosen from), or NULL unless return_logits was set. */
const float* uniattn_generation_logits(const uniattn_generation* generation);
void uniattn_generation_destroy(uniattn_generation* generation); /* NULL is a no-op */

/* The first `count` draws of numpy.random.default_rng(seed).random(): what sampling uses. */
void uniattn_random_uniform(uint64_t seed, double* out, size_t count);

/* The message of the last failed call on this thread ("" if none); valid until the next call
 * into this library on the same thread. */
const char* uniattn_last_error(void);
const char* uniattn_status_name(uniattn_status status);
int uniattn_runtime_api_version(void);

#ifdef __cplusplus
}
#endif

#endif /* UNIATTN_RUNTIME_H */
