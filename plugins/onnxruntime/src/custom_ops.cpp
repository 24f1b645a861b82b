// ONNX Runtime custom-op library: domain `uniattn`, ops UniAttnProducer and UniAttnConsumer
// (docs/ops.md) for CPUExecutionProvider and, when the kernels were built with CUDA,
// CUDAExecutionProvider. ORT loads it through SessionOptions.register_custom_ops_library
// and calls RegisterCustomOps, the only exported symbol.
//
// One OrtCustomOp per (op, element type, provider): ORT merges same-named ops into one
// schema whose T inputs accept float, float16 and bfloat16, picks the kernel whose types
// match the node, and infers the output types from it. The ops and the domain are static
// objects: ORT keeps pointers to them for as long as any session uses them.
#include <array>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <string>
#include <vector>

#include "uniattn/kernels.h"
#include "uniattn/ort_abi.h"

namespace {

constexpr ONNXTensorElementDataType T = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;  // the op's T in the tables below
constexpr ONNXTensorElementDataType INT64 = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
constexpr ONNXTensorElementDataType FLOAT = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
constexpr int64_t kDefaultProbsMaxQueryLen = 16;

struct Signature {
  const char* name;
  std::vector<const char*> inputs, outputs;
  std::vector<ONNXTensorElementDataType> input_types, output_types;
  size_t required_outputs;  // the rest are optional
};

const Signature kProducer{"UniAttnProducer",
                          {"query", "key", "value", "past_key", "past_value", "attention_mask"},
                          {"output", "present_key", "present_value", "shared_probs", "shared_lse"},
                          {T, T, T, T, T, INT64},
                          {T, T, T, T, FLOAT},
                          3};
const Signature kConsumer{"UniAttnConsumer",
                          {"value", "past_value", "attention_mask", "shared_probs", "shared_lse", "producer_query",
                           "producer_key"},
                          {"output", "present_value"},
                          {T, T, INT64, T, FLOAT, T, T},
                          {T, T},
                          2};

struct OpDef : OrtCustomOp {
  const Signature* signature;
  const char* provider;
  ONNXTensorElementDataType element_type;
  ua_dtype dtype;
  bool cuda;
};

std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char* fmt, ...) {
  char buffer[1024];
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(buffer, sizeof(buffer), fmt, args);
  va_end(args);
  return buffer;
}

using Shape = std::vector<int64_t>;

std::string to_string(const Shape& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

// The state of one node: its attributes, read once when ORT creates the kernel.
struct Kernel {
  const OrtApi* api;
  const OpDef* op;
  std::string node;
  int64_t num_heads = 0, kv_num_heads = 0, is_causal = 1, sliding_window = 0;
  int64_t probs_max_query_len = kDefaultProbsMaxQueryLen;
  float scale = 0.f;

  OrtStatus* error(OrtErrorCode code, const std::string& message) const {
    return api->CreateStatus(code, (std::string(op->signature->name) + " node '" + node + "': " + message).c_str());
  }

  OrtStatus* kernel_error(ua_status status) const {
    const OrtErrorCode code = status == UA_INVALID_ARGUMENT ? ORT_INVALID_ARGUMENT
                              : status == UA_UNSUPPORTED    ? ORT_NOT_IMPLEMENTED
                                                            : ORT_EP_FAIL;
    return error(code, ua_last_error());
  }

  ua_attention_desc desc(int64_t batch, int64_t query_len, int64_t past_len, int64_t head_dim) const {
    return {batch, query_len, past_len, num_heads, kv_num_heads, head_dim, scale, int32_t(is_causal != 0),
            sliding_window, op->dtype, 0};
  }
};

#define UA_RETURN_IF_ERROR(expr)                   \
  do {                                             \
    if (OrtStatus* status_ = (expr)) return status_; \
  } while (0)

OrtStatus* read_attribute(const Kernel& k, const OrtKernelInfo* info, const char* name, int64_t* value,
                          bool required) {
  if (OrtStatus* status = k.api->KernelInfoGetAttribute_int64(info, name, value)) {
    k.api->ReleaseStatus(status);
    if (required) return k.error(ORT_INVALID_ARGUMENT, format("the int attribute '%s' is missing or not an int", name));
  }
  return nullptr;
}

// The node's name, only for messages: "" if ORT cannot tell.
std::string node_name(const OrtApi* api, const OrtKernelInfo* info) {
  size_t size = 0;
  std::vector<char> name;
  OrtStatus* status = api->KernelInfo_GetNodeName(info, nullptr, &size);
  if (status == nullptr && size > 0) {
    name.resize(size);
    status = api->KernelInfo_GetNodeName(info, name.data(), &size);
  }
  const bool known = status == nullptr && !name.empty();
  api->ReleaseStatus(status);
  return known ? name.data() : "";
}

OrtStatus* read_attributes(Kernel& k, const OrtKernelInfo* info) {
  k.node = node_name(k.api, info);
  UA_RETURN_IF_ERROR(read_attribute(k, info, "num_heads", &k.num_heads, true));
  UA_RETURN_IF_ERROR(read_attribute(k, info, "kv_num_heads", &k.kv_num_heads, true));
  UA_RETURN_IF_ERROR(read_attribute(k, info, "is_causal", &k.is_causal, false));
  UA_RETURN_IF_ERROR(read_attribute(k, info, "sliding_window", &k.sliding_window, false));
  if (k.op->signature == &kProducer)
    UA_RETURN_IF_ERROR(read_attribute(k, info, "probs_max_query_len", &k.probs_max_query_len, false));
  if (OrtStatus* status = k.api->KernelInfoGetAttribute_float(info, "scale", &k.scale)) {
    k.api->ReleaseStatus(status);
    return k.error(ORT_INVALID_ARGUMENT, "the float attribute 'scale' is missing or not a float");
  }
  if (k.num_heads <= 0 || k.kv_num_heads <= 0 || k.num_heads % k.kv_num_heads != 0)
    return k.error(ORT_INVALID_ARGUMENT, format("num_heads=%lld must be a positive multiple of kv_num_heads=%lld",
                                                (long long)k.num_heads, (long long)k.kv_num_heads));
  if (k.sliding_window < 0 || k.probs_max_query_len < 0 || !std::isfinite(k.scale))
    return k.error(ORT_INVALID_ARGUMENT,
                   format("sliding_window=%lld and probs_max_query_len=%lld must be >= 0 and scale=%g finite",
                          (long long)k.sliding_window, (long long)k.probs_max_query_len, k.scale));
  return nullptr;
}

struct Tensor {
  Shape shape;
  void* data = nullptr;

  int64_t dim(size_t i) const { return i < shape.size() ? shape[i] : -1; }
};

OrtStatus* shape_of(const OrtApi* api, const OrtValue* value, Shape& shape) {
  OrtTensorTypeAndShapeInfo* info = nullptr;
  UA_RETURN_IF_ERROR(api->GetTensorTypeAndShape(value, &info));
  size_t rank = 0;
  OrtStatus* status = api->GetDimensionsCount(info, &rank);
  if (status == nullptr) {
    shape.resize(rank);
    status = api->GetDimensions(info, shape.data(), rank);
  }
  api->ReleaseTensorTypeAndShapeInfo(info);
  return status;
}

// All inputs of the node, in the op's order.
template <size_t N>
OrtStatus* inputs(const Kernel& k, const OrtKernelContext* context, std::array<Tensor, N>& tensors) {
  for (size_t i = 0; i < N; ++i) {
    const OrtValue* value = nullptr;
    UA_RETURN_IF_ERROR(k.api->KernelContext_GetInput(context, i, &value));
    if (value == nullptr)
      return k.error(ORT_INVALID_ARGUMENT, format("input '%s' is missing", k.op->signature->inputs[i]));
    UA_RETURN_IF_ERROR(shape_of(k.api, value, tensors[i].shape));
    // ORT hands inputs out as const values; the data pointer is only read.
    UA_RETURN_IF_ERROR(k.api->GetTensorMutableData(const_cast<OrtValue*>(value), &tensors[i].data));
  }
  return nullptr;
}

// Allocates output `index` with `shape`; leaves `data` NULL when the node omits it.
OrtStatus* output(const Kernel& k, OrtKernelContext* context, size_t index, const Shape& shape, void*& data,
                  const OrtValue** value_out = nullptr) {
  data = nullptr;
  size_t count = 0;
  UA_RETURN_IF_ERROR(k.api->KernelContext_GetOutputCount(context, &count));
  if (index >= count) return nullptr;
  OrtValue* value = nullptr;
  UA_RETURN_IF_ERROR(k.api->KernelContext_GetOutput(context, index, shape.data(), shape.size(), &value));
  if (value == nullptr) return nullptr;
  if (value_out) *value_out = value;
  return k.api->GetTensorMutableData(value, &data);
}

// "<name> has shape [..] but [..] <layout> is expected (<why>)" unless actual == expected.
OrtStatus* expect_shape(const Kernel& k, const Tensor& tensor, size_t input_index, const Shape& expected,
                        const char* layout, const std::string& why) {
  if (tensor.shape == expected) return nullptr;
  return k.error(ORT_INVALID_ARGUMENT, format("%s has shape %s but %s %s is expected (%s)",
                                              k.op->signature->inputs[input_index], to_string(tensor.shape).c_str(),
                                              to_string(expected).c_str(), layout, why.c_str()));
}

// Scratch for a CUDA kernel from the allocator ORT uses for the op's outputs, returned
// after the launch: ORT runs the op's stream in order, so a later user of the block waits
// for this kernel.
class Workspace {
 public:
  Workspace(const OrtApi* api) : api_(api) {}
  ~Workspace() {
    if (data_) api_->ReleaseStatus(api_->AllocatorFree(allocator_, data_));
    if (allocator_) api_->ReleaseAllocator(allocator_);
  }
  OrtStatus* allocate(const OrtKernelContext* context, const OrtValue* like, size_t bytes) {
    if (bytes == 0) return nullptr;
    const OrtMemoryInfo* memory = nullptr;
    UA_RETURN_IF_ERROR(api_->GetTensorMemoryInfo(like, &memory));
    UA_RETURN_IF_ERROR(api_->KernelContext_GetAllocator(context, memory, &allocator_));
    return api_->AllocatorAlloc(allocator_, bytes, &data_);
  }
  void* data() const { return data_; }

 private:
  const OrtApi* api_;
  OrtAllocator* allocator_ = nullptr;
  void* data_ = nullptr;
};

// The call's sizes, derived from the node's first input (packed, (B, L, heads*D)) and its
// past cache ((B, Hkv, P, D)); `why` says so in error messages.
struct Geometry {
  int64_t batch = 0, length = 0, dim = 0, past = 0, keys = 0;
  std::string why;
};

OrtStatus* geometry(const Kernel& k, const Tensor& packed, size_t packed_index, int64_t heads, const char* heads_name,
                    const Tensor& cache, size_t cache_index, Geometry& g) {
  const auto& names = k.op->signature->inputs;
  if (packed.shape.size() != 3 || packed.dim(2) == 0 || packed.dim(2) % heads != 0)
    return k.error(ORT_INVALID_ARGUMENT, format("%s has shape %s but (B, L, %s*D) with %s=%lld is expected",
                                                names[packed_index], to_string(packed.shape).c_str(), heads_name,
                                                heads_name, (long long)heads));
  g.batch = packed.dim(0), g.length = packed.dim(1), g.dim = packed.dim(2) / heads;
  g.past = cache.shape.size() == 4 ? cache.dim(2) : 0, g.keys = g.past + g.length;
  g.why = format("%s %s with num_heads=%lld, kv_num_heads=%lld, so D=%lld; %s %s", names[packed_index],
                 to_string(packed.shape).c_str(), (long long)k.num_heads, (long long)k.kv_num_heads,
                 (long long)g.dim, names[cache_index], to_string(cache.shape).c_str());
  return nullptr;
}

// The two implementations of one op behind the kernel ABI.
template <typename Io>
struct Implementations {
  ua_status (*cpu)(const ua_attention_desc*, const Io*, const ua_cpu_threads*);
  size_t (*cuda_workspace_size)(const ua_attention_desc*, int);
  ua_status (*cuda)(const ua_attention_desc*, const Io*, void*, void*);
};

const Implementations<ua_producer_io> kProducerImpl{ua_producer_cpu, ua_producer_cuda_workspace_size,
                                                    ua_producer_cuda};
const Implementations<ua_consumer_io> kConsumerImpl{ua_consumer_cpu, ua_consumer_cuda_workspace_size,
                                                    ua_consumer_cuda};

// Runs the node's kernel: on the CPU with all cores, or on ORT's CUDA compute stream with
// scratch from the allocator of the op's first output. `with_probs` is the *_workspace_size flag.
template <typename Io>
OrtStatus* launch(const Kernel& k, OrtKernelContext* context, const OrtValue* first_output,
                  const ua_attention_desc& desc, const Io& io, bool with_probs, const Implementations<Io>& impl) {
  ua_status status;
  if (k.op->cuda) {
    void* stream = nullptr;
    UA_RETURN_IF_ERROR(k.api->KernelContext_GetGPUComputeStream(context, &stream));
    Workspace workspace(k.api);
    UA_RETURN_IF_ERROR(workspace.allocate(context, first_output, impl.cuda_workspace_size(&desc, with_probs)));
    status = impl.cuda(&desc, &io, workspace.data(), stream);
  } else {
    status = impl.cpu(&desc, &io, nullptr);
  }
  return status == UA_OK ? nullptr : k.kernel_error(status);
}

OrtStatus* compute_producer(const Kernel& k, OrtKernelContext* context) {
  std::array<Tensor, 6> in;
  UA_RETURN_IF_ERROR(inputs(k, context, in));
  const Tensor &query = in[0], &key = in[1], &value = in[2], &past_key = in[3], &past_value = in[4], &mask = in[5];
  Geometry g;
  UA_RETURN_IF_ERROR(geometry(k, query, 0, k.num_heads, "num_heads", past_key, 3, g));
  const int64_t batch = g.batch, length = g.length, dim = g.dim, past = g.past, keys = g.keys;
  const Shape packed_kv{batch, length, k.kv_num_heads * dim}, cache{batch, k.kv_num_heads, past, dim};
  UA_RETURN_IF_ERROR(expect_shape(k, key, 1, packed_kv, "(B, L, kv_num_heads*D)", g.why));
  UA_RETURN_IF_ERROR(expect_shape(k, value, 2, packed_kv, "(B, L, kv_num_heads*D)", g.why));
  UA_RETURN_IF_ERROR(expect_shape(k, past_key, 3, cache, "(B, kv_num_heads, P, D)", g.why));
  UA_RETURN_IF_ERROR(expect_shape(k, past_value, 4, cache, "(B, kv_num_heads, P, D)", g.why));
  UA_RETURN_IF_ERROR(expect_shape(k, mask, 5, {batch, keys}, "(B, P + L)", g.why));

  const bool emit_probs = length <= k.probs_max_query_len;
  ua_producer_io io{query.data, key.data, value.data, past_key.data, past_value.data,
                    static_cast<const int64_t*>(mask.data), nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
  const OrtValue* out_value = nullptr;
  void* probs = nullptr;
  void* lse = nullptr;
  UA_RETURN_IF_ERROR(output(k, context, 0, {batch, length, k.num_heads * dim}, io.output, &out_value));
  UA_RETURN_IF_ERROR(output(k, context, 1, {batch, k.kv_num_heads, keys, dim}, io.present_key));
  UA_RETURN_IF_ERROR(output(k, context, 2, {batch, k.kv_num_heads, keys, dim}, io.present_value));
  UA_RETURN_IF_ERROR(output(k, context, 3, {batch, k.num_heads, length, emit_probs ? keys : 0}, probs));
  UA_RETURN_IF_ERROR(output(k, context, 4, {batch, k.num_heads, length}, lse));
  io.shared_probs = emit_probs ? probs : nullptr;
  io.shared_lse = static_cast<float*>(lse);

  return launch(k, context, out_value, k.desc(batch, length, past, dim), io, io.shared_probs != nullptr,
                kProducerImpl);
}

OrtStatus* compute_consumer(const Kernel& k, OrtKernelContext* context) {
  std::array<Tensor, 7> in;
  UA_RETURN_IF_ERROR(inputs(k, context, in));
  const Tensor &value = in[0], &past_value = in[1], &mask = in[2], &probs = in[3], &lse = in[4],
               &producer_query = in[5], &producer_key = in[6];
  Geometry g;
  UA_RETURN_IF_ERROR(geometry(k, value, 0, k.kv_num_heads, "kv_num_heads", past_value, 1, g));
  const int64_t batch = g.batch, length = g.length, dim = g.dim, past = g.past, keys = g.keys;
  UA_RETURN_IF_ERROR(expect_shape(k, past_value, 1, {batch, k.kv_num_heads, past, dim}, "(B, kv_num_heads, P, D)", g.why));
  UA_RETURN_IF_ERROR(expect_shape(k, mask, 2, {batch, keys}, "(B, P + L)", g.why));
  const bool reuse_probs = probs.dim(3) == keys && keys > 0;
  UA_RETURN_IF_ERROR(expect_shape(k, probs, 3, {batch, k.num_heads, length, reuse_probs ? keys : 0},
                                  "(B, num_heads, L, P + L or 0)", g.why));
  UA_RETURN_IF_ERROR(expect_shape(k, lse, 4, {batch, k.num_heads, length}, "(B, num_heads, L)", g.why));
  UA_RETURN_IF_ERROR(
      expect_shape(k, producer_query, 5, {batch, length, k.num_heads * dim}, "(B, L, num_heads*D)", g.why));
  UA_RETURN_IF_ERROR(
      expect_shape(k, producer_key, 6, {batch, k.kv_num_heads, keys, dim}, "(B, kv_num_heads, P + L, D)", g.why));

  ua_consumer_io io{value.data,        past_value.data, static_cast<const int64_t*>(mask.data),
                    reuse_probs ? probs.data : nullptr, static_cast<const float*>(lse.data),
                    producer_query.data, producer_key.data, nullptr, nullptr, nullptr};
  const OrtValue* out_value = nullptr;
  UA_RETURN_IF_ERROR(output(k, context, 0, {batch, length, k.num_heads * dim}, io.output, &out_value));
  UA_RETURN_IF_ERROR(output(k, context, 1, {batch, k.kv_num_heads, keys, dim}, io.present_value));

  return launch(k, context, out_value, k.desc(batch, length, past, dim), io, reuse_probs, kConsumerImpl);
}

const OpDef* as_def(const OrtCustomOp* op) { return static_cast<const OpDef*>(op); }

ONNXTensorElementDataType resolve(const OpDef* op, ONNXTensorElementDataType type) {
  return type == T ? op->element_type : type;
}

OrtStatus* ORT_API_CALL create_kernel(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info,
                                      void** kernel) {
  auto* k = new Kernel{api, as_def(op), {}};
  if (OrtStatus* status = read_attributes(*k, info)) {
    delete k;
    return status;
  }
  *kernel = k;
  return nullptr;
}

OrtStatus* ORT_API_CALL compute(void* kernel, OrtKernelContext* context) {
  const Kernel& k = *static_cast<const Kernel*>(kernel);
  return k.op->signature == &kProducer ? compute_producer(k, context) : compute_consumer(k, context);
}

OpDef make_op(const Signature& signature, ONNXTensorElementDataType element_type, ua_dtype dtype, bool cuda) {
  OpDef op{};
  op.version = UA_ORT_API_VERSION;
  op.signature = &signature;
  op.provider = cuda ? "CUDAExecutionProvider" : "CPUExecutionProvider";
  op.element_type = element_type;
  op.dtype = dtype;
  op.cuda = cuda;
  op.GetName = [](const OrtCustomOp* self) { return as_def(self)->signature->name; };
  op.GetExecutionProviderType = [](const OrtCustomOp* self) { return as_def(self)->provider; };
  op.GetInputType = [](const OrtCustomOp* self, size_t i) {
    return resolve(as_def(self), as_def(self)->signature->input_types[i]);
  };
  op.GetInputTypeCount = [](const OrtCustomOp* self) { return as_def(self)->signature->inputs.size(); };
  op.GetOutputType = [](const OrtCustomOp* self, size_t i) {
    return resolve(as_def(self), as_def(self)->signature->output_types[i]);
  };
  op.GetOutputTypeCount = [](const OrtCustomOp* self) { return as_def(self)->signature->outputs.size(); };
  op.KernelDestroy = [](void* kernel) { delete static_cast<Kernel*>(kernel); };
  op.GetInputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
  op.GetOutputCharacteristic = [](const OrtCustomOp* self, size_t i) {
    return i < as_def(self)->signature->required_outputs ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  };
  op.GetInputMemoryType = [](const OrtCustomOp*, size_t) { return OrtMemTypeDefault; };
  op.GetVariadicInputMinArity = [](const OrtCustomOp*) { return 1; };
  op.GetVariadicInputHomogeneity = [](const OrtCustomOp*) { return 1; };
  op.GetVariadicOutputMinArity = [](const OrtCustomOp*) { return 1; };
  op.GetVariadicOutputHomogeneity = [](const OrtCustomOp*) { return 1; };
  op.CreateKernelV2 = create_kernel;
  op.KernelComputeV2 = compute;
  return op;
}

std::vector<OpDef> all_ops() {
  const struct {
    ONNXTensorElementDataType element_type;
    ua_dtype dtype;
  } types[] = {{FLOAT, UA_FLOAT32},
               {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, UA_FLOAT16},
               {ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16, UA_BFLOAT16}};
  std::vector<OpDef> ops;
  for (bool cuda : {false, true}) {
    if (cuda && !ua_has_cuda()) continue;
    for (const Signature* signature : {&kProducer, &kConsumer})
      for (const auto& type : types) ops.push_back(make_op(*signature, type.element_type, type.dtype, cuda));
  }
  return ops;
}

// The `uniattn` domain, created on first registration and released when ORT unloads the
// library (after the sessions that used it).
class Domain {
 public:
  static OrtStatus* add_to(const OrtApi* api, OrtSessionOptions* options) {
    static Domain domain(api);
    if (domain.handle_ == nullptr) return api->CreateStatus(ORT_FAIL, domain.error_.c_str());
    return api->AddCustomOpDomain(options, domain.handle_);
  }

 private:
  explicit Domain(const OrtApi* api) : api_(api), ops_(all_ops()) {
    OrtStatus* status = api->CreateCustomOpDomain("uniattn", &handle_);
    for (size_t i = 0; status == nullptr && i < ops_.size(); ++i) status = api->CustomOpDomain_Add(handle_, &ops_[i]);
    if (status != nullptr) {
      error_ = std::string("uniattn: could not create the custom-op domain: ") + api->GetErrorMessage(status);
      api->ReleaseStatus(status);
      api->ReleaseCustomOpDomain(handle_);
      handle_ = nullptr;
    }
  }
  ~Domain() { api_->ReleaseCustomOpDomain(handle_); }

  const OrtApi* api_;
  std::vector<OpDef> ops_;
  OrtCustomOpDomain* handle_ = nullptr;
  std::string error_;
};

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(UA_ORT_API_VERSION);
  if (api == nullptr) {
    // CreateStatus is entry 0 of every API version.
    const std::string message = format("uniattn: the custom-op library needs ONNX Runtime >= 1.%d (C API %d); this "
                                       "runtime is %s",
                                       UA_ORT_API_VERSION, UA_ORT_API_VERSION, api_base->GetVersionString());
    return api_base->GetApi(1)->CreateStatus(ORT_FAIL, message.c_str());
  }
  return Domain::add_to(api, options);
}
