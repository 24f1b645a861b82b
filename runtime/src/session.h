// One ONNX Runtime session over the artifact's graph, stepped with IOBinding.
//
// Dynamic caches (op contract v1): the caches a step returns (present.*) are bound as the
// next step's past_key_values.* without leaving the execution provider's memory; only ids,
// mask and positions go in and the logits of the last position come out.
//
// Static caches (v2): a StaticBatch holds one zeroed buffer of capacity C per cache, bound as
// both past_key_values.* and present.* so the graph writes its new slots in place, plus
// persistent decode inputs (ids and positions (B, 1), a fixed (B, C) mask) and outputs
// (next_tokens (B, 1), logits (B, 1, V)), all bound once in one decode binding. Each decode
// step writes B ids and B positions into those buffers and reads back B next_tokens (greedy)
// or the B x V logits (sampling). On CUDA the buffers are device memory (copies through the
// kernel library, kernels.h), which is what lets ONNX Runtime replay a CUDA graph per batch
// size for decode (provider option enable_cuda_graph, run option gpu_graph_id = B; prefill
// runs uncaptured with gpu_graph_id = -1).
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "kernels.h"
#include "manifest.h"
#include "ort.h"

namespace uniattn::runtime {

struct SessionOptions {
  const char* onnxruntime_library;
  std::string custom_op_library;  // "" : none
  bool cuda;
  int device_id;
  int intra_op_threads;
  bool cuda_graphs;               // static artifacts on CUDA: capture decode steps (if ORT can)
  const KernelLibrary* kernels;   // static artifacts on CUDA: host <-> device copies
};

// The buffers of one static-cache batch (see the file comment).
struct StaticBatch {
  explicit StaticBatch(const OrtApi* api)
      : mask(api->ReleaseValue), ids(api->ReleaseValue), positions(api->ReleaseValue), next_tokens(api->ReleaseValue),
        logits(api->ReleaseValue), decode(api->ReleaseIoBinding), decode_run(api->ReleaseRunOptions) {}
  int64_t batch = 0;
  std::vector<Owned<OrtValue>> caches;  // (B, Hkv, C, D), past and present at once
  Owned<OrtValue> mask, ids, positions, next_tokens, logits;
  Owned<OrtIoBinding> decode;
  Owned<OrtRunOptions> decode_run;  // gpu_graph_id = B when CUDA graphs are on
};

class Session {
 public:
  Session(const Manifest& manifest, const SessionOptions& options);

  // Caches of a fresh batch: zero-length tensors on the execution provider's device.
  std::vector<Owned<OrtValue>> empty_caches(int64_t batch) const;

  // Run `length` new tokens per row over `caches` (replaced by the grown ones). `mask` covers
  // cached + new tokens. Returns the float32 logits of the last position, (batch, vocab).
  std::vector<float> step(const std::vector<int64_t>& input_ids, const std::vector<int64_t>& mask,
                          const std::vector<int64_t>& position_ids, int64_t batch, int64_t length,
                          std::vector<Owned<OrtValue>>& caches) const;

  // Static caches. A new batch (caches zeroed, decode inputs/outputs bound); `zero_caches`
  // makes a batch ready for the next generation.
  std::unique_ptr<StaticBatch> static_batch(int64_t batch) const;
  void zero_caches(StaticBatch& state) const;
  // The prompt step: right-padded ids and mask (B, width), positions 0..width-1; next_tokens
  // and logits land in the batch's output buffers.
  void static_prefill(StaticBatch& state, const std::vector<int64_t>& ids, const std::vector<int64_t>& mask,
                      const std::vector<int64_t>& positions, int64_t width) const;
  // One decode step: B token ids at B positions (each row's slot), through the decode binding.
  void static_decode(StaticBatch& state, const std::vector<int64_t>& ids, const std::vector<int64_t>& positions) const;
  void read_next_tokens(StaticBatch& state, std::vector<int64_t>& out) const;  // (B)
  void read_logits(StaticBatch& state, std::vector<float>& out) const;         // (B, V)

  // True when decode steps replay CUDA graphs (requested, and ONNX Runtime accepted the
  // graph: every node on the CUDA EP, no Memcpy). Those batches live in the session, one per
  // batch size (the graph captured their addresses), and one generation uses them at a time.
  bool cuda_graphs() const { return cuda_graphs_; }
  // Why CUDA graphs were requested but are off ("" otherwise).
  const std::string& cuda_graph_warning() const { return cuda_graph_warning_; }
  StaticBatch& graph_batch(int64_t batch);
  std::mutex& graph_mutex() { return graph_mutex_; }

  const Manifest& manifest() const { return manifest_; }
  const OrtLibrary& library() const { return library_; }

 private:
  // Creates session_ (profiling into `profile_prefix`* when given); returns ORT's refusal of
  // graph capture ("" when none) instead of throwing it.
  std::string create_session(const SessionOptions& options, bool with_cuda_graphs,
                             const std::string& profile_prefix = "");
  std::string placement_report();
  Owned<OrtValue> io_tensor(const std::vector<int64_t>& shape, ONNXTensorElementDataType type) const;
  void write(OrtValue* value, const void* host, size_t bytes) const;
  void read(void* host, OrtValue* value, size_t bytes) const;
  void device_call(ua_status status, const char* what) const;

  Owned<OrtValue> host_int64(const std::vector<int64_t>& data, int64_t batch, int64_t width) const;
  void check_io_names() const;

  const Manifest& manifest_;
  const OrtLibrary& library_;
  const OrtApi* api_;
  bool cuda_;
  int device_id_;
  bool device_io_;  // static caches on CUDA: I/O buffers in device memory
  bool cuda_graphs_ = false;
  std::string cuda_graph_warning_;
  const KernelLibrary* kernels_;
  Owned<OrtEnv> env_;
  Owned<OrtSession> session_;
  Owned<OrtMemoryInfo> host_memory_;
  Owned<OrtMemoryInfo> device_memory_;
  Owned<OrtAllocator> device_allocator_;  // CUDA only: allocates the caches there
  Owned<OrtRunOptions> prefill_run_;      // gpu_graph_id = -1 (uncaptured) when CUDA graphs are on
  std::mutex graph_mutex_;
  std::map<int64_t, std::unique_ptr<StaticBatch>> graph_batches_;
};

}  // namespace uniattn::runtime
