#include "session.h"

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "uniattn/op_schema.h"

namespace uniattn::runtime {

namespace {

// ONNX Runtime's name of CUDA device memory (onnxruntime::CUDA).
constexpr const char* kCudaMemory = "Cuda";

void append_cuda(const OrtLibrary& library, OrtSessionOptions* session_options, int device_id, bool cuda_graphs) {
  const OrtApi* api = library.api;
  try {
    Owned<OrtCUDAProviderOptionsV2> cuda_options(api->ReleaseCUDAProviderOptions);
    check(api, api->CreateCUDAProviderOptions(cuda_options.out()), "CreateCUDAProviderOptions");
    const std::string id = std::to_string(device_id);
    // use_tf32 is on by default in ORT's CUDA EP: float32 MatMuls would round their inputs to
    // 10 mantissa bits, far outside a float32 tolerance. enable_cuda_graph: the session may
    // capture runs that set a gpu_graph_id other than -1 (ORT refuses at creation when a node
    // is not on the CUDA EP or a Memcpy node exists).
    const char* keys[] = {"device_id", "use_tf32", "enable_cuda_graph"};
    const char* values[] = {id.c_str(), "0", cuda_graphs ? "1" : "0"};
    check(api, api->UpdateCUDAProviderOptions(cuda_options.get(), keys, values, 3), "UpdateCUDAProviderOptions");
    check(api, api->SessionOptionsAppendExecutionProvider_CUDA_V2(session_options, cuda_options.get()),
          "SessionOptionsAppendExecutionProvider_CUDA_V2");
  } catch (const Error& error) {
    const std::string message = error.what();
    const std::string fix = message.find("no CUDA-capable device") != std::string::npos
                                ? "No GPU is visible to this process (check CUDA_VISIBLE_DEVICES and the driver): "
                                  "run where one is, or on the CPU"
                                : "Pass the libonnxruntime.so of onnxruntime-gpu " + library.version +
                                      " with its CUDA libraries on the loader path, or run on the CPU";
    throw Error(UNIATTN_ORT_ERROR, "ONNX Runtime " + library.version + " at " + library.path +
                                       " cannot use the CUDA execution provider (" + message + "). " + fix);
  }
}

// ORT's refusal to enable graph capture for this graph ("This session cannot use the graph
// capture feature as requested by the user as all compute graph nodes have not been
// partitioned to the CUDAExecutionProvider", or the Memcpy/control-flow variants).
bool refuses_graph_capture(const std::string& message) {
  return message.find("graph capture") != std::string::npos || message.find("CUDA Graph") != std::string::npos ||
         message.find("CUDA graph") != std::string::npos;
}

// The nodes of an ORT profile (JSON events of one run) that ran off the CUDA EP, and the
// Memcpy nodes: what keeps ORT from capturing a CUDA graph. At most 12 named.
std::string off_device_nodes(const std::string& profile_file) {
  std::ifstream stream(profile_file);
  const nlohmann::json events = nlohmann::json::parse(stream);
  std::vector<std::string> found;
  std::set<std::string> seen;
  for (const auto& event : events) {
    if (event.value("cat", "") != "Node" || !event.contains("args")) continue;
    const auto& args = event.at("args");
    const std::string op = args.value("op_name", ""), provider = args.value("provider", "");
    std::string name = event.value("name", "");
    if (const size_t suffix = name.rfind("_kernel_time"); suffix != std::string::npos) name.resize(suffix);
    if ((provider != "CUDAExecutionProvider" || op.rfind("Memcpy", 0) == 0) && seen.insert(name).second) {
      found.push_back(op + " " + name + " on " + provider);
    }
  }
  std::string list;
  for (size_t i = 0; i < found.size() && i < 12; ++i) list += (i ? ", " : "") + found[i];
  if (found.size() > 12) list += " and " + std::to_string(found.size() - 12) + " more";
  return found.empty() ? "no node off the CUDA EP in a profiled run" : std::to_string(found.size()) + " nodes: " + list;
}

size_t element_size(ONNXTensorElementDataType type) {
  return type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT ? 4 : type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 ? 8 : 2;
}

}  // namespace

Session::Session(const Manifest& manifest, const SessionOptions& options)
    : manifest_(manifest),
      library_(load_onnxruntime(options.onnxruntime_library)),
      api_(library_.api),
      cuda_(options.cuda),
      device_id_(options.device_id),
      device_io_(options.cuda && manifest.static_cache),
      kernels_(options.kernels),
      env_(api_->ReleaseEnv),
      session_(api_->ReleaseSession),
      host_memory_(api_->ReleaseMemoryInfo),
      device_memory_(api_->ReleaseMemoryInfo),
      device_allocator_(api_->ReleaseAllocator),
      prefill_run_(api_->ReleaseRunOptions) {
  if (device_io_ && (kernels_ == nullptr || kernels_->cuda_copy == nullptr || kernels_->cuda_zero == nullptr)) {
    throw Error(UNIATTN_INTERNAL_ERROR, "static caches on CUDA need the kernel library's ua_cuda_copy");
  }
  // ORT keeps one environment per process: a later call returns it, with the first one's sink.
  check(api_, api_->CreateEnvWithCustomLogger(keep_log_line, nullptr, ORT_LOGGING_LEVEL_ERROR, "uniattn_runtime", env_.out()),
        "CreateEnvWithCustomLogger");
  const bool try_graphs = device_io_ && options.cuda_graphs;
  const std::string refusal = create_session(options, try_graphs);
  cuda_graphs_ = try_graphs && refusal.empty();
  // The placement check: ORT enables graph capture only when every node runs on the CUDA EP
  // and no Memcpy node exists, and says which rule failed. Decode then runs without graphs
  // (same tokens, a launch per node); one profiled run of the fallback session names the nodes.
  const std::string profile_prefix =
      refusal.empty() ? "" : (std::filesystem::temp_directory_path() / ("uniattn_placement_" + std::to_string(getpid()))).string();
  if (!refusal.empty()) {
    cuda_graph_warning_ = "ONNX Runtime cannot capture CUDA graphs of " + manifest_.model_file.string() + " (" +
                          refusal + "); decode runs without them";
    create_session(options, false, profile_prefix);
  }
  check_io_names();
  check(api_, api_->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, host_memory_.out()),
        "CreateCpuMemoryInfo");
  if (cuda_) {
    check(api_, api_->CreateMemoryInfo(kCudaMemory, OrtArenaAllocator, options.device_id, OrtMemTypeDefault,
                                       device_memory_.out()),
          "CreateMemoryInfo(Cuda)");
    check(api_, api_->CreateAllocator(session_.get(), device_memory_.get(), device_allocator_.out()),
          "CreateAllocator(Cuda)");
  }
  if (!profile_prefix.empty()) cuda_graph_warning_ += " (" + placement_report() + ")";
  if (cuda_graphs_) {
    check(api_, api_->CreateRunOptions(prefill_run_.out()), "CreateRunOptions");
    check(api_, api_->AddRunConfigEntry(prefill_run_.get(), "gpu_graph_id", "-1"), "AddRunConfigEntry(gpu_graph_id)");
  }
}

// Runs a one-token prompt through the (profiling) session and lists the nodes the profile
// shows off the CUDA EP; ends the profiling (later runs are not profiled) and removes its file.
std::string Session::placement_report() {
  std::string failure;
  try {
    std::unique_ptr<StaticBatch> state = static_batch(1);
    static_prefill(*state, {0}, {1}, {0}, 1);
  } catch (const std::exception& error) {
    failure = error.what();
  }
  // Ended whatever happened above, so that no later run is profiled.
  OrtAllocator* allocator = nullptr;
  char* file = nullptr;
  std::string ended = consume(api_, api_->GetAllocatorWithDefaultOptions(&allocator));
  if (ended.empty()) ended = consume(api_, api_->SessionEndProfiling(session_.get(), allocator, &file));
  const std::string path = file != nullptr ? file : "";
  if (file != nullptr) consume(api_, api_->AllocatorFree(allocator, file));
  std::string report;
  try {
    if (failure.empty() && ended.empty()) report = off_device_nodes(path);
  } catch (const std::exception& error) {
    failure = error.what();
  }
  std::error_code ignored;
  if (!path.empty()) std::filesystem::remove(path, ignored);
  if (!failure.empty() || !ended.empty()) return "the nodes could not be listed: " + failure + ended;
  return report;
}

std::string Session::create_session(const SessionOptions& options, bool with_cuda_graphs,
                                    const std::string& profile_prefix) {
  Owned<OrtSessionOptions> session_options(api_->ReleaseSessionOptions);
  check(api_, api_->CreateSessionOptions(session_options.out()), "CreateSessionOptions");
  if (!profile_prefix.empty()) {
    check(api_, api_->EnableProfiling(session_options.get(), profile_prefix.c_str()), "EnableProfiling");
  }
  // Warnings about unused initializers and the like are noise for a service.
  check(api_, api_->SetSessionLogSeverityLevel(session_options.get(), ORT_LOGGING_LEVEL_ERROR),
        "SetSessionLogSeverityLevel");
  if (options.intra_op_threads > 0) {
    check(api_, api_->SetIntraOpNumThreads(session_options.get(), options.intra_op_threads), "SetIntraOpNumThreads");
  }
  if (!options.custom_op_library.empty()) {
    // Linear's CUDA kernel, for CUDA sessions only: on the CPU ONNX Runtime must run its body
    // (docs/ops.md), which it does only where the op is not registered.
    if (cuda_) {
      check(api_, api_->AddSessionConfigEntry(session_options.get(), uniattn::schema::kCudaLinearConfigKey, "1"),
            "AddSessionConfigEntry");
    }
    const std::string message =
        consume(api_, api_->RegisterCustomOpsLibrary_V2(session_options.get(), options.custom_op_library.c_str()));
    if (!message.empty()) {
      throw Error(UNIATTN_LIBRARY_ERROR, "ONNX Runtime cannot register the custom-op library " +
                                             options.custom_op_library + " (" + message +
                                             "). Rebuild it from this checkout, or set custom_ops to OFF");
    }
  }
  if (cuda_) append_cuda(library_, session_options.get(), options.device_id, with_cuda_graphs);
  const std::string model = manifest_.model_file.string();
  const std::string message =
      consume(api_, api_->CreateSession(env_.get(), model.c_str(), session_options.get(), session_.out()));
  if (!message.empty()) {
    std::string fix = "Re-export the model with this version of uniattn-export";
    if (manifest_.dtype == "bfloat16" && !cuda_) {
      fix = "Run bfloat16 artifacts on CUDA, or export float16 or float32 for the CPU";
    }
    if (with_cuda_graphs && refuses_graph_capture(message)) return message;
    throw Error(UNIATTN_ORT_ERROR, "ONNX Runtime cannot load " + model + " (" + message + "). " + fix);
  }
  return "";
}

// The manifest names the graph's I/O; the session must agree before anything is bound by name.
void Session::check_io_names() const {
  OrtAllocator* allocator = nullptr;
  check(api_, api_->GetAllocatorWithDefaultOptions(&allocator), "GetAllocatorWithDefaultOptions");
  using Count = OrtStatus*(ORT_API_CALL*)(const OrtSession*, size_t*) UA_ORT_NOEXCEPT;
  using Name = OrtStatus*(ORT_API_CALL*)(const OrtSession*, size_t, OrtAllocator*, char**) UA_ORT_NOEXCEPT;
  auto names = [&](Count count_of, Name name_of) {
    size_t count = 0;
    check(api_, count_of(session_.get(), &count), "SessionGet*Count");
    std::vector<std::string> names;
    for (size_t i = 0; i < count; ++i) {
      char* name = nullptr;
      check(api_, name_of(session_.get(), i, allocator, &name), "SessionGet*Name");
      names.emplace_back(name);
      check(api_, api_->AllocatorFree(allocator, name), "AllocatorFree");
    }
    return names;
  };
  if (names(api_->SessionGetInputCount, api_->SessionGetInputName) != manifest_.input_names ||
      names(api_->SessionGetOutputCount, api_->SessionGetOutputName) != manifest_.output_names) {
    throw Error(UNIATTN_ARTIFACT_ERROR, "the inputs/outputs of " + manifest_.model_file.string() +
                                            " differ from its manifest's. Re-export the model; the folder "
                                            "mixes files of different exports");
  }
}

std::vector<Owned<OrtValue>> Session::empty_caches(int64_t batch) const {
  OrtAllocator* allocator = device_allocator_.get();
  if (!cuda_) check(api_, api_->GetAllocatorWithDefaultOptions(&allocator), "GetAllocatorWithDefaultOptions");
  std::vector<Owned<OrtValue>> caches;
  for (const CacheTensor& cache : manifest_.caches) {
    const int64_t shape[4] = {batch, cache.kv_num_heads, 0, cache.head_dim};
    caches.emplace_back(api_->ReleaseValue);
    check(api_, api_->CreateTensorAsOrtValue(allocator, shape, 4, manifest_.cache_type, caches.back().out()),
          "CreateTensorAsOrtValue(" + cache.past + ")");
  }
  return caches;
}

Owned<OrtValue> Session::io_tensor(const std::vector<int64_t>& shape, ONNXTensorElementDataType type) const {
  OrtAllocator* allocator = device_io_ ? device_allocator_.get() : nullptr;
  if (allocator == nullptr) check(api_, api_->GetAllocatorWithDefaultOptions(&allocator), "GetAllocatorWithDefaultOptions");
  Owned<OrtValue> value(api_->ReleaseValue);
  check(api_, api_->CreateTensorAsOrtValue(allocator, shape.data(), shape.size(), type, value.out()),
        "CreateTensorAsOrtValue");
  return value;
}

void Session::device_call(ua_status status, const char* what) const {
  if (status != UA_OK) {
    throw Error(UNIATTN_ORT_ERROR, std::string(what) + " on CUDA device " + std::to_string(device_id_) +
                                       " failed: " + (kernels_->last_error ? kernels_->last_error() : ""));
  }
}

void Session::write(OrtValue* value, const void* host, size_t bytes) const {
  void* data = nullptr;
  check(api_, api_->GetTensorMutableData(value, &data), "GetTensorMutableData");
  if (device_io_) {
    device_call(kernels_->cuda_copy(device_id_, data, host, bytes), "copying to the device");
  } else {
    std::memcpy(data, host, bytes);
  }
}

void Session::read(void* host, OrtValue* value, size_t bytes) const {
  void* data = nullptr;
  check(api_, api_->GetTensorMutableData(value, &data), "GetTensorMutableData");
  if (device_io_) {
    device_call(kernels_->cuda_copy(device_id_, host, data, bytes), "copying from the device");
  } else {
    std::memcpy(host, data, bytes);
  }
}

std::unique_ptr<StaticBatch> Session::static_batch(int64_t batch) const {
  auto state = std::make_unique<StaticBatch>(api_);
  state->batch = batch;
  for (const CacheTensor& cache : manifest_.caches) {
    state->caches.push_back(io_tensor({batch, cache.kv_num_heads, manifest_.capacity, cache.head_dim}, manifest_.cache_type));
  }
  zero_caches(*state);
  state->ids = io_tensor({batch, 1}, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64);
  state->positions = io_tensor({batch, 1}, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64);
  // Decode reads the mask only through its row sums, clamped to index 0 (docs/export.md,
  // "Static caches"): one (B, C) buffer of ones serves every step.
  state->mask = io_tensor({batch, manifest_.capacity}, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64);
  write(state->mask.get(), std::vector<int64_t>(batch * manifest_.capacity, 1).data(),
        batch * manifest_.capacity * sizeof(int64_t));
  state->next_tokens = io_tensor({batch, 1}, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64);
  state->logits = io_tensor({batch, 1, manifest_.vocab_size}, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);

  check(api_, api_->CreateIoBinding(session_.get(), state->decode.out()), "CreateIoBinding");
  OrtIoBinding* binding = state->decode.get();
  check(api_, api_->BindInput(binding, "input_ids", state->ids.get()), "BindInput(input_ids)");
  check(api_, api_->BindInput(binding, "attention_mask", state->mask.get()), "BindInput(attention_mask)");
  check(api_, api_->BindInput(binding, "position_ids", state->positions.get()), "BindInput(position_ids)");
  check(api_, api_->BindOutput(binding, "logits", state->logits.get()), "BindOutput(logits)");
  check(api_, api_->BindOutput(binding, "next_tokens", state->next_tokens.get()), "BindOutput(next_tokens)");
  for (size_t i = 0; i < state->caches.size(); ++i) {
    check(api_, api_->BindInput(binding, manifest_.caches[i].past.c_str(), state->caches[i].get()), "BindInput");
    check(api_, api_->BindOutput(binding, manifest_.caches[i].present.c_str(), state->caches[i].get()), "BindOutput");
  }
  if (cuda_graphs_) {
    // One captured graph per batch size; id 0 is ORT's own default, so B >= 1 is free to use.
    check(api_, api_->CreateRunOptions(state->decode_run.out()), "CreateRunOptions");
    check(api_, api_->AddRunConfigEntry(state->decode_run.get(), "gpu_graph_id", std::to_string(batch).c_str()),
          "AddRunConfigEntry(gpu_graph_id)");
  }
  return state;
}

void Session::zero_caches(StaticBatch& state) const {
  for (size_t i = 0; i < state.caches.size(); ++i) {
    const CacheTensor& cache = manifest_.caches[i];
    // Zeros, not garbage: the function bodies weigh every slot, hidden ones by probability 0,
    // and 0 * NaN would be NaN.
    const size_t bytes =
        state.batch * cache.kv_num_heads * manifest_.capacity * cache.head_dim * element_size(manifest_.cache_type);
    void* data = nullptr;
    check(api_, api_->GetTensorMutableData(state.caches[i].get(), &data), "GetTensorMutableData");
    if (device_io_) {
      device_call(kernels_->cuda_zero(device_id_, data, bytes), "zeroing the caches");
    } else {
      std::memset(data, 0, bytes);
    }
  }
}

StaticBatch& Session::graph_batch(int64_t batch) {
  auto& state = graph_batches_[batch];
  if (state == nullptr) {
    state = static_batch(batch);
  } else {
    zero_caches(*state);
  }
  return *state;
}

void Session::static_prefill(StaticBatch& state, const std::vector<int64_t>& ids, const std::vector<int64_t>& mask,
                             const std::vector<int64_t>& positions, int64_t width) const {
  Owned<OrtValue> ids_value = host_int64(ids, state.batch, width);
  Owned<OrtValue> mask_value = host_int64(mask, state.batch, width);
  Owned<OrtValue> positions_value = host_int64(positions, state.batch, width);
  Owned<OrtIoBinding> binding(api_->ReleaseIoBinding);
  check(api_, api_->CreateIoBinding(session_.get(), binding.out()), "CreateIoBinding");
  check(api_, api_->BindInput(binding.get(), "input_ids", ids_value.get()), "BindInput(input_ids)");
  check(api_, api_->BindInput(binding.get(), "attention_mask", mask_value.get()), "BindInput(attention_mask)");
  check(api_, api_->BindInput(binding.get(), "position_ids", positions_value.get()), "BindInput(position_ids)");
  check(api_, api_->BindOutput(binding.get(), "logits", state.logits.get()), "BindOutput(logits)");
  check(api_, api_->BindOutput(binding.get(), "next_tokens", state.next_tokens.get()), "BindOutput(next_tokens)");
  for (size_t i = 0; i < state.caches.size(); ++i) {
    check(api_, api_->BindInput(binding.get(), manifest_.caches[i].past.c_str(), state.caches[i].get()), "BindInput");
    check(api_, api_->BindOutput(binding.get(), manifest_.caches[i].present.c_str(), state.caches[i].get()),
          "BindOutput");
  }
  check(api_, api_->RunWithBinding(session_.get(), prefill_run_.get(), binding.get()), "running the model");
}

void Session::static_decode(StaticBatch& state, const std::vector<int64_t>& ids,
                            const std::vector<int64_t>& positions) const {
  write(state.ids.get(), ids.data(), state.batch * sizeof(int64_t));
  write(state.positions.get(), positions.data(), state.batch * sizeof(int64_t));
  check(api_, api_->RunWithBinding(session_.get(), state.decode_run.get(), state.decode.get()), "running the model");
}

void Session::read_next_tokens(StaticBatch& state, std::vector<int64_t>& out) const {
  out.resize(state.batch);
  read(out.data(), state.next_tokens.get(), state.batch * sizeof(int64_t));
}

void Session::read_logits(StaticBatch& state, std::vector<float>& out) const {
  out.resize(state.batch * manifest_.vocab_size);
  read(out.data(), state.logits.get(), out.size() * sizeof(float));
}

Owned<OrtValue> Session::host_int64(const std::vector<int64_t>& data, int64_t batch, int64_t width) const {
  Owned<OrtValue> value(api_->ReleaseValue);
  const int64_t shape[2] = {batch, width};
  // ORT only reads this buffer (inputs); it stays owned by the caller's vector.
  check(api_,
        api_->CreateTensorWithDataAsOrtValue(host_memory_.get(), const_cast<int64_t*>(data.data()),
                                             data.size() * sizeof(int64_t), shape, 2,
                                             ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, value.out()),
        "CreateTensorWithDataAsOrtValue");
  return value;
}

std::vector<float> Session::step(const std::vector<int64_t>& input_ids, const std::vector<int64_t>& mask,
                                 const std::vector<int64_t>& position_ids, int64_t batch, int64_t length,
                                 std::vector<Owned<OrtValue>>& caches) const {
  Owned<OrtValue> ids = host_int64(input_ids, batch, length);
  Owned<OrtValue> attention = host_int64(mask, batch, static_cast<int64_t>(mask.size()) / batch);
  Owned<OrtValue> positions = host_int64(position_ids, batch, length);

  Owned<OrtIoBinding> binding(api_->ReleaseIoBinding);
  check(api_, api_->CreateIoBinding(session_.get(), binding.out()), "CreateIoBinding");
  check(api_, api_->BindInput(binding.get(), "input_ids", ids.get()), "BindInput(input_ids)");
  check(api_, api_->BindInput(binding.get(), "attention_mask", attention.get()), "BindInput(attention_mask)");
  check(api_, api_->BindInput(binding.get(), "position_ids", positions.get()), "BindInput(position_ids)");
  for (size_t i = 0; i < caches.size(); ++i) {
    check(api_, api_->BindInput(binding.get(), manifest_.caches[i].past.c_str(), caches[i].get()), "BindInput");
  }
  check(api_, api_->BindOutputToDevice(binding.get(), "logits", host_memory_.get()), "BindOutputToDevice(logits)");
  const OrtMemoryInfo* cache_memory = cuda_ ? device_memory_.get() : host_memory_.get();
  for (const CacheTensor& cache : manifest_.caches) {
    check(api_, api_->BindOutputToDevice(binding.get(), cache.present.c_str(), cache_memory), "BindOutputToDevice");
  }
  check(api_, api_->RunWithBinding(session_.get(), nullptr, binding.get()), "running the model");

  OrtAllocator* allocator = nullptr;
  check(api_, api_->GetAllocatorWithDefaultOptions(&allocator), "GetAllocatorWithDefaultOptions");
  OrtValue** outputs = nullptr;
  size_t count = 0;
  check(api_, api_->GetBoundOutputValues(binding.get(), allocator, &outputs, &count), "GetBoundOutputValues");
  // Own every output before anything can throw; the array itself came from `allocator`.
  std::vector<Owned<OrtValue>> owned;
  for (size_t i = 0; i < count; ++i) {
    owned.emplace_back(api_->ReleaseValue);
    *owned.back().out() = outputs[i];
  }
  check(api_, api_->AllocatorFree(allocator, outputs), "AllocatorFree");
  if (count != 1 + caches.size()) throw Error(UNIATTN_INTERNAL_ERROR, "ONNX Runtime returned an unexpected output count");

  Owned<OrtTensorTypeAndShapeInfo> info(api_->ReleaseTensorTypeAndShapeInfo);
  check(api_, api_->GetTensorTypeAndShape(owned[0].get(), info.out()), "GetTensorTypeAndShape(logits)");
  ONNXTensorElementDataType type;
  check(api_, api_->GetTensorElementType(info.get(), &type), "GetTensorElementType(logits)");
  size_t rank = 0;
  check(api_, api_->GetDimensionsCount(info.get(), &rank), "GetDimensionsCount(logits)");
  int64_t dims[3] = {0, 0, 0};
  if (rank == 3) check(api_, api_->GetDimensions(info.get(), dims, 3), "GetDimensions(logits)");
  if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || rank != 3 || dims[0] != batch || dims[2] != manifest_.vocab_size) {
    throw Error(UNIATTN_ARTIFACT_ERROR, "the model's logits are not float32 (batch, positions, " +
                                            std::to_string(manifest_.vocab_size) +
                                            "). Re-export the model with `uniattn-export model`");
  }
  void* data = nullptr;
  check(api_, api_->GetTensorMutableData(owned[0].get(), &data), "GetTensorMutableData(logits)");
  const float* logits = static_cast<const float*>(data);
  const int64_t positions_out = dims[1], vocab = dims[2];
  std::vector<float> last(batch * vocab);
  for (int64_t b = 0; b < batch; ++b) {
    std::memcpy(&last[b * vocab], logits + (b * positions_out + positions_out - 1) * vocab, vocab * sizeof(float));
  }
  for (size_t i = 0; i < caches.size(); ++i) caches[i] = std::move(owned[1 + i]);
  return last;
}

}  // namespace uniattn::runtime
