// The C API of include/uniattn/runtime.h. Every entry point catches everything: a failure
// becomes a status code plus a thread-local message, never an abort or an exit.
#include <dlfcn.h>

#include <filesystem>
#include <memory>
#include <new>
#include <string>

#include "error.h"
#include "generate.h"
#include "manifest.h"
#include "sampling.h"
#include "session.h"
#include "uniattn/runtime.h"

using uniattn::runtime::Error;

struct uniattn_runtime {
  uniattn::runtime::Manifest manifest;  // outlives the session, which refers to it
  std::unique_ptr<uniattn::runtime::Session> session;
  std::string description;
  bool custom_ops = false;
};

struct uniattn_generation {
  uniattn::runtime::Generated generated;
};

namespace {

thread_local std::string last_error;

constexpr const char* kCustomOpLibrary = "libuniattn_ort.so";

template <typename Body>
uniattn_status guarded(Body&& body) {
  try {
    last_error.clear();
    body();
    return UNIATTN_OK;
  } catch (const Error& error) {
    last_error = error.what();
    return error.status;
  } catch (const std::bad_alloc&) {
    last_error = "out of memory";
    return UNIATTN_OUT_OF_MEMORY;
  } catch (const std::exception& error) {
    last_error = std::string("internal error: ") + error.what();
    return UNIATTN_INTERNAL_ERROR;
  } catch (...) {
    last_error = "internal error: unknown exception";
    return UNIATTN_INTERNAL_ERROR;
  }
}

// The folder this library was loaded from: the wheel installs the custom-op library beside it.
std::filesystem::path own_folder() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&uniattn_runtime_create), &info) == 0 || info.dli_fname == nullptr) return {};
  return std::filesystem::path(info.dli_fname).parent_path();
}

std::string resolve_custom_op_library(const uniattn_runtime_options& options) {
  if (options.custom_ops == UNIATTN_CUSTOM_OPS_OFF) return "";
  const std::filesystem::path path =
      options.custom_op_library != nullptr ? std::filesystem::path(options.custom_op_library) : own_folder() / kCustomOpLibrary;
  if (std::filesystem::is_regular_file(path)) return path.string();
  if (options.custom_ops == UNIATTN_CUSTOM_OPS_REQUIRE || options.custom_op_library != nullptr) {
    throw Error(UNIATTN_LIBRARY_ERROR, "the custom-op library " + path.string() +
                                           " does not exist. Build the native libraries (pip install .), pass "
                                           "custom_op_library, or set custom_ops to OFF");
  }
  return "";
}

void check_options(const uniattn_runtime_options& o) {
  if (o.struct_size < sizeof(uniattn_runtime_options)) {
    throw Error(UNIATTN_INVALID_ARGUMENT, "uniattn_runtime_options.struct_size is " + std::to_string(o.struct_size) +
                                              ". Initialize the options with uniattn_runtime_options_init");
  }
  if (o.artifact_dir == nullptr) {
    throw Error(UNIATTN_INVALID_ARGUMENT, "artifact_dir is required. Pass the -o folder of `uniattn-export model`");
  }
  if (o.device != UNIATTN_DEVICE_CPU && o.device != UNIATTN_DEVICE_CUDA) {
    throw Error(UNIATTN_INVALID_ARGUMENT, "unknown device " + std::to_string(o.device) + ". Use UNIATTN_DEVICE_CPU or _CUDA");
  }
  if (o.custom_ops < UNIATTN_CUSTOM_OPS_AUTO || o.custom_ops > UNIATTN_CUSTOM_OPS_OFF) {
    throw Error(UNIATTN_INVALID_ARGUMENT, "unknown custom_ops mode " + std::to_string(o.custom_ops) +
                                              ". Use UNIATTN_CUSTOM_OPS_AUTO, _REQUIRE or _OFF");
  }
  if (o.device_id < 0 || o.intra_op_threads < 0) {
    throw Error(UNIATTN_INVALID_ARGUMENT, "device_id and intra_op_threads must be >= 0");
  }
}

}  // namespace

extern "C" {

void uniattn_runtime_options_init(uniattn_runtime_options* options) {
  if (options == nullptr) return;
  *options = uniattn_runtime_options{};
  options->struct_size = sizeof(uniattn_runtime_options);
}

void uniattn_generate_request_init(uniattn_generate_request* request) {
  if (request == nullptr) return;
  *request = uniattn_generate_request{};
  request->struct_size = sizeof(uniattn_generate_request);
  request->eos_token_id = -1;
  request->temperature = 1.0;
  request->top_p = 1.0;
}

uniattn_status uniattn_runtime_create(const uniattn_runtime_options* options, uniattn_runtime** out) {
  if (out != nullptr) *out = nullptr;
  return guarded([&] {
    if (options == nullptr || out == nullptr) throw Error(UNIATTN_INVALID_ARGUMENT, "options and out are required");
    check_options(*options);
    auto runtime = std::make_unique<uniattn_runtime>();
    runtime->manifest = uniattn::runtime::read_manifest(options->artifact_dir);
    const std::string custom_op_library = resolve_custom_op_library(*options);
    const bool cuda = options->device == UNIATTN_DEVICE_CUDA;
    runtime->session = std::make_unique<uniattn::runtime::Session>(
        runtime->manifest, uniattn::runtime::SessionOptions{options->onnxruntime_library, custom_op_library, cuda,
                                                           options->device_id, options->intra_op_threads});
    runtime->custom_ops = !custom_op_library.empty();
    const auto& library = runtime->session->library();
    const auto& manifest = runtime->manifest;
    runtime->description =
        "onnxruntime " + library.version + " (" + library.path + "), " +
        (cuda ? "CUDAExecutionProvider" : "CPUExecutionProvider") + ", " +
        (runtime->custom_ops ? "custom-op library " + custom_op_library : "ONNX function bodies (no custom-op library)") +
        ", " + manifest.dtype + ", " + std::to_string(manifest.num_layers) + " layers (" +
        std::to_string(manifest.num_consumers) + " consumers)";
    *out = runtime.release();
  });
}

void uniattn_runtime_destroy(uniattn_runtime* runtime) { delete runtime; }

const char* uniattn_runtime_description(const uniattn_runtime* runtime) {
  return runtime != nullptr ? runtime->description.c_str() : "";
}

int64_t uniattn_runtime_vocab_size(const uniattn_runtime* runtime) {
  return runtime != nullptr ? runtime->manifest.vocab_size : 0;
}

int uniattn_runtime_uses_custom_ops(const uniattn_runtime* runtime) {
  return runtime != nullptr && runtime->custom_ops ? 1 : 0;
}

uniattn_status uniattn_generate(uniattn_runtime* runtime, const uniattn_generate_request* request,
                                uniattn_generation** out) {
  if (out != nullptr) *out = nullptr;
  return guarded([&] {
    if (runtime == nullptr || request == nullptr || out == nullptr) {
      throw Error(UNIATTN_INVALID_ARGUMENT, "runtime, request and out are required");
    }
    if (request->struct_size < sizeof(uniattn_generate_request)) {
      throw Error(UNIATTN_INVALID_ARGUMENT, "uniattn_generate_request.struct_size is " +
                                                std::to_string(request->struct_size) +
                                                ". Initialize the request with uniattn_generate_request_init");
    }
    auto generation = std::make_unique<uniattn_generation>();
    generation->generated = uniattn::runtime::generate(*runtime->session, runtime->manifest.vocab_size,
                                                       runtime->manifest.max_positions, *request);
    *out = generation.release();
  });
}

int64_t uniattn_generation_batch_size(const uniattn_generation* g) { return g != nullptr ? g->generated.batch : 0; }
int64_t uniattn_generation_num_steps(const uniattn_generation* g) { return g != nullptr ? g->generated.steps : 0; }
const int64_t* uniattn_generation_tokens(const uniattn_generation* g) {
  return g != nullptr ? g->generated.tokens.data() : nullptr;
}
const int64_t* uniattn_generation_lengths(const uniattn_generation* g) {
  return g != nullptr ? g->generated.lengths.data() : nullptr;
}
const float* uniattn_generation_logits(const uniattn_generation* g) {
  return g != nullptr && !g->generated.logits.empty() ? g->generated.logits.data() : nullptr;
}
void uniattn_generation_destroy(uniattn_generation* generation) { delete generation; }

void uniattn_random_uniform(uint64_t seed, double* out, size_t count) {
  if (out == nullptr) return;
  uniattn::runtime::NumpyRandom random(seed);
  for (size_t i = 0; i < count; ++i) out[i] = random.uniform();
}

const char* uniattn_last_error(void) { return last_error.c_str(); }

const char* uniattn_status_name(uniattn_status status) {
  switch (status) {
    case UNIATTN_OK: return "UNIATTN_OK";
    case UNIATTN_INVALID_ARGUMENT: return "UNIATTN_INVALID_ARGUMENT";
    case UNIATTN_ARTIFACT_ERROR: return "UNIATTN_ARTIFACT_ERROR";
    case UNIATTN_LIBRARY_ERROR: return "UNIATTN_LIBRARY_ERROR";
    case UNIATTN_ORT_ERROR: return "UNIATTN_ORT_ERROR";
    case UNIATTN_OUT_OF_MEMORY: return "UNIATTN_OUT_OF_MEMORY";
    case UNIATTN_INTERNAL_ERROR: return "UNIATTN_INTERNAL_ERROR";
  }
  return "UNIATTN_UNKNOWN_STATUS";
}

int uniattn_runtime_api_version(void) { return UNIATTN_RUNTIME_API_VERSION; }

}  // extern "C"
