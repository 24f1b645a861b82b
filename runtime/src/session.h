// One ONNX Runtime session over the artifact's graph, stepped with IOBinding: the caches a
// step returns (present.*) are bound as the next step's past_key_values.* without leaving
// the execution provider's memory; only ids, mask and positions go in and the logits of the
// last position come out.
#pragma once

#include <string>
#include <vector>

#include "manifest.h"
#include "ort.h"

namespace uniattn::runtime {

struct SessionOptions {
  const char* onnxruntime_library;
  std::string custom_op_library;  // "" : none
  bool cuda;
  int device_id;
  int intra_op_threads;
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

  const OrtLibrary& library() const { return library_; }

 private:
  Owned<OrtValue> host_int64(const std::vector<int64_t>& data, int64_t batch, int64_t width) const;
  void check_io_names() const;

  const Manifest& manifest_;
  const OrtLibrary& library_;
  const OrtApi* api_;
  bool cuda_;
  Owned<OrtEnv> env_;
  Owned<OrtSession> session_;
  Owned<OrtMemoryInfo> host_memory_;
  Owned<OrtMemoryInfo> device_memory_;
  Owned<OrtAllocator> device_allocator_;  // CUDA only: allocates the empty caches there
};

}  // namespace uniattn::runtime
