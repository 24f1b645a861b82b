// ONNX Runtime through its stable C ABI (plugins/onnxruntime/include/uniattn/ort_abi.h),
// loaded at run time from the libonnxruntime.so of the pip wheel: no SDK, no link-time
// dependency, so one build of this library works with onnxruntime and onnxruntime-gpu.
#pragma once

#include <string>
#include <utility>

#include "error.h"
#include "uniattn/ort_abi.h"

namespace uniattn::runtime {

struct OrtLibrary {
  const OrtApi* api = nullptr;
  std::string path;     // what was dlopen()ed
  std::string version;  // GetVersionString(), e.g. "1.31.1"
};

// dlopen `path` (NULL: the loader's "libonnxruntime.so.1") once per process and path; the
// library stays loaded for the life of the process (ORT keeps global state).
const OrtLibrary& load_onnxruntime(const char* path);

// The sink of the runtime's ORT environment. ORT's own log lines (severity error and up) never
// reach stderr, where a service prints one line per failure: each is kept for the thread that
// logged it and added to the next error message that thread reads through consume() (the CUDA
// provider's loader, for one, logs why it failed and returns a shorter status).
void keep_log_line(void* param, OrtLoggingLevel severity, const char* category, const char* logid,
                   const char* code_location, const char* message);

// The message of `status`, which it releases, followed by what ORT logged on this thread since
// the last call; "" for success (NULL), which also forgets the logged lines.
std::string consume(const OrtApi* api, OrtStatus* status);

// Throws Error(UNIATTN_ORT_ERROR, "<what>: <ORT's message>") when `status` is an error.
void check(const OrtApi* api, OrtStatus* status, const std::string& what);

// An owned ORT object, released through the API's Release* entry.
template <typename T>
class Owned {
 public:
  using Release = void(ORT_API_CALL*)(T*) UA_ORT_NOEXCEPT;
  explicit Owned(Release release) : release_(release) {}
  Owned(Owned&& other) noexcept : release_(other.release_), ptr_(std::exchange(other.ptr_, nullptr)) {}
  Owned& operator=(Owned&& other) noexcept {
    reset();
    release_ = other.release_;
    ptr_ = std::exchange(other.ptr_, nullptr);
    return *this;
  }
  Owned(const Owned&) = delete;
  Owned& operator=(const Owned&) = delete;
  ~Owned() { reset(); }

  T* get() const { return ptr_; }
  T** out() {
    reset();
    return &ptr_;
  }
  void reset() {
    if (ptr_ != nullptr) release_(std::exchange(ptr_, nullptr));
  }

 private:
  Release release_;
  T* ptr_ = nullptr;
};

}  // namespace uniattn::runtime
