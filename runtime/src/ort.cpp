#include "ort.h"

#include <dlfcn.h>

#include <map>
#include <memory>
#include <mutex>

namespace uniattn::runtime {

namespace {

using GetApiBase = const OrtApiBase*(ORT_API_CALL*)(void);

OrtLibrary open_library(const std::string& path) {
  const std::string fix = "the path that `uniattn-export runtime-paths onnxruntime` prints";
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    throw Error(UNIATTN_LIBRARY_ERROR, "cannot load ONNX Runtime from " + path + " (" + dlerror() + "). " +
                                           "Install the onnxruntime (or onnxruntime-gpu) wheel and pass " + fix);
  }
  auto get_api_base = reinterpret_cast<GetApiBase>(dlsym(handle, "OrtGetApiBase"));
  if (get_api_base == nullptr) {
    throw Error(UNIATTN_LIBRARY_ERROR, path + " exports no OrtGetApiBase: it is not ONNX Runtime. Pass " + fix);
  }
  const OrtApiBase* base = get_api_base();
  OrtLibrary library;
  library.path = path;
  library.version = base->GetVersionString();
  library.api = base->GetApi(UA_ORT_API_VERSION);
  if (library.api == nullptr) {
    throw Error(UNIATTN_LIBRARY_ERROR, "ONNX Runtime " + library.version + " at " + path +
                                           " does not provide C API version " +
                                           std::to_string(UA_ORT_API_VERSION) +
                                           ". Use onnxruntime 1." + std::to_string(UA_ORT_API_VERSION) +
                                           " or newer (the project pins 1.31)");
  }
  return library;
}

}  // namespace

const OrtLibrary& load_onnxruntime(const char* path) {
  static std::mutex mutex;
  static std::map<std::string, std::unique_ptr<OrtLibrary>> loaded;
  const std::string key = path != nullptr ? path : "libonnxruntime.so.1";
  std::lock_guard<std::mutex> lock(mutex);
  auto found = loaded.find(key);
  if (found == loaded.end()) {
    found = loaded.emplace(key, std::make_unique<OrtLibrary>(open_library(key))).first;
  }
  return *found->second;
}

namespace {

// ORT's log lines of this thread since its last consume(), at most kLoggedLimit bytes.
thread_local std::string logged;
constexpr size_t kLoggedLimit = 2000;

// ORT's messages can span lines (the CUDA EP's "no device" error does); ours are one line.
std::string one_line(std::string text) {
  for (char& c : text) {
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  }
  while (!text.empty() && text.back() == ' ') text.pop_back();
  return text;
}

}  // namespace

void keep_log_line(void*, OrtLoggingLevel, const char*, const char*, const char*, const char* message) {
  if (message == nullptr || logged.size() >= kLoggedLimit) return;
  logged += (logged.empty() ? "" : "; ") + one_line(message);
  if (logged.size() > kLoggedLimit) logged.resize(kLoggedLimit);
}

std::string consume(const OrtApi* api, OrtStatus* status) {
  const std::string log = std::exchange(logged, std::string());  // one line already (keep_log_line)
  if (status == nullptr) return "";
  std::string message = one_line(api->GetErrorMessage(status));
  api->ReleaseStatus(status);
  if (message.empty()) message = "unknown error";
  if (!log.empty() && message.find(log) == std::string::npos) message += "; ONNX Runtime logged: " + log;
  return message;
}

void check(const OrtApi* api, OrtStatus* status, const std::string& what) {
  if (std::string message = consume(api, status); !message.empty()) throw Error(UNIATTN_ORT_ERROR, what + ": " + message);
}

}  // namespace uniattn::runtime
