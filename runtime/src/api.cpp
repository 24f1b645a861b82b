// The C API of include/uniattn/runtime.h. Every entry point catches everything: a failure
// becomes a status code plus a thread-local message, never an abort or an exit.
#include <dlfcn.h>

#include <cstddef>
#include <filesystem>
#include <memory>
#include <new>
#include <string>

#include "error.h"
#include "generate.h"
#include "kernels.h"
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
constexpr const char* kKernelLibrary = "libuniattn_kernels.so";
// The kernel ABI from which the libraries implement op contract version 2 (static caches).
constexpr int kStaticCacheAbi = 2;
// uniattn_runtime_options up to intra_op_threads: what callers built against API version 1 pass.
constexpr size_t kOptionsV1Size = offsetof(uniattn_runtime_options, cuda_graphs);

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
  if (o.struct_size < kOptionsV1Size) {
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
  if (o.struct_size >= sizeof(uniattn_runtime_options) && o.cuda_graphs != 0 && o.cuda_graphs != 1) {
    throw Error(UNIATTN_INVALID_ARGUMENT, "cuda_graphs must be 0 or 1, got " + std::to_string(o.cuda_graphs));
  }
  if (o.device_id < 0 || o.intra_op_threads < 0) {
    throw Error(UNIATTN_INVALID_ARGUMENT, "device_id and intra_op_threads must be >= 0");
  }
}

// The kernel library beside the custom-op library (or this one): the wheel installs the
// three together.
std::filesystem::path kernel_library_path(const std::string& custom_op_library) {
  return (custom_op_library.empty() ? own_folder() : std::filesystem::path(custom_op_library).parent_path()) /
         kKernelLibrary;
}

// A static-cache artifact needs op version 2 from the custom-op library (kernel ABI >= 2):
// AUTO runs the function bodies instead of an older library (and says so), REQUIRE fails. The
// rule of the Python runtime (targets/ort/session.py).
void check_static_abi(const uniattn_runtime_options& options, std::string& custom_op_library, std::string& reason) {
  if (custom_op_library.empty()) return;
  std::string why;
  const uniattn::runtime::KernelLibrary* kernels = uniattn::runtime::load_kernels(kernel_library_path(custom_op_library), &why);
  const int abi = kernels != nullptr ? kernels->abi_version : 0;
  if (abi >= kStaticCacheAbi) return;
  if (options.custom_ops == UNIATTN_CUSTOM_OPS_REQUIRE) {
    throw Error(UNIATTN_LIBRARY_ERROR,
                "the custom-op library " + custom_op_library + " implements op version 1 only (kernel ABI " +
                    (kernels != nullptr ? std::to_string(abi) : "unknown: " + why) +
                    "), but this static-cache artifact needs op version 2. Rebuild the native libraries from this "
                    "checkout, or set custom_ops to OFF");
  }
  reason = " (the installed custom-op library implements op version 1 only; this artifact needs 2)";
  custom_op_library.clear();
}

// Static caches on CUDA: the kernel library (built with CUDA) copies between host and the
// device buffers decode is bound to.
const uniattn::runtime::KernelLibrary* device_copies(const std::string& custom_op_library) {
  const std::filesystem::path path = kernel_library_path(custom_op_library);
  std::string why;
  const uniattn::runtime::KernelLibrary* kernels = uniattn::runtime::load_kernels(path, &why);
  if (kernels != nullptr && (!kernels->has_cuda || kernels->cuda_copy == nullptr || kernels->cuda_zero == nullptr)) {
    why = path.string() + (kernels->has_cuda ? " predates ua_cuda_copy" : " was built without CUDA");
    kernels = nullptr;
  }
  if (kernels == nullptr) {
    throw Error(UNIATTN_LIBRARY_ERROR, "static-cache artifacts on CUDA need the kernel library built with CUDA (" +
                                           why + "). Build the native libraries with the CUDA toolkit (nvcc on PATH), "
                                           "or run on the CPU");
  }
  return kernels;
}

}  // namespace

extern "C" {

void uniattn_runtime_options_init(uniattn_runtime_options* options) {
  if (options == nullptr) return;
  *options = uniattn_runtime_options{};
  options->struct_size = sizeof(uniattn_runtime_options);
  options->cuda_graphs = 1;
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
    const auto& manifest = runtime->manifest;
    std::string custom_op_library = resolve_custom_op_library(*options);
    std::string bodies_reason;
    if (manifest.static_cache) check_static_abi(*options, custom_op_library, bodies_reason);
    const bool cuda = options->device == UNIATTN_DEVICE_CUDA;
    const bool cuda_graphs = options->struct_size < sizeof(uniattn_runtime_options) || options->cuda_graphs == 1;
    const uniattn::runtime::KernelLibrary* kernels =
        cuda && manifest.static_cache ? device_copies(custom_op_library) : nullptr;
    runtime->session = std::make_unique<uniattn::runtime::Session>(
        runtime->manifest,
        uniattn::runtime::SessionOptions{options->onnxruntime_library, custom_op_library, cuda, options->device_id,
                                         options->intra_op_threads, cuda_graphs, kernels});
    runtime->custom_ops = !custom_op_library.empty();
    const auto& session = *runtime->session;
    const auto& library = session.library();
    std::string caches = "dynamic caches";
    if (manifest.static_cache) {
      caches = "static caches of " + std::to_string(manifest.capacity) + " tokens";
      if (cuda) caches += session.cuda_graphs() ? ", CUDA graphs for decode" : ", no CUDA graphs";
    }
    runtime->description =
        "onnxruntime " + library.version + " (" + library.path + "), " +
        (cuda ? "CUDAExecutionProvider" : "CPUExecutionProvider") + ", " + caches + ", " +
        (runtime->custom_ops ? "custom-op library " + custom_op_library
                             : "ONNX function bodies (no custom-op library)" + bodies_reason) +
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

int64_t uniattn_runtime_cache_capacity(const uniattn_runtime* runtime) {
  return runtime != nullptr ? runtime->manifest.capacity : 0;
}

int uniattn_runtime_uses_cuda_graphs(const uniattn_runtime* runtime) {
  return runtime != nullptr && runtime->session->cuda_graphs() ? 1 : 0;
}

const char* uniattn_runtime_cuda_graph_warning(const uniattn_runtime* runtime) {
  return runtime != nullptr ? runtime->session->cuda_graph_warning().c_str() : "";
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
