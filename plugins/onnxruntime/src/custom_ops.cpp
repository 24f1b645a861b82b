// ONNX Runtime custom-op library: domain `uniattn`, ops UniAttnProducer and UniAttnConsumer
// (docs/ops.md), versions 1 (dynamic caches) and 2 (fixed-capacity caches updated in place),
// and the graph ops GatedSilu (the gated MLP's activation), SplitRotary (the fused q/k/v
// projection split, q and k rotated) and Linear (a projection, weight (N, K)), one signature
// each under both versions, for CPUExecutionProvider and, when the kernels were built with CUDA,
// CUDAExecutionProvider; Linear for CUDA only, and only into sessions whose options carry the
// config entry schema::kCudaLinearConfigKey = "1": ORT runs a node's model-local body (a MatMul
// its own GEMM runs) only where no op of that name is registered at all, so a session that may
// place Linear on the CPU must not see the op (our runtimes set the entry for CUDA sessions).
// ORT loads it through SessionOptions.register_custom_ops_library and calls
// RegisterCustomOps, the only exported symbol.
//
// The ops' signatures and attributes come from uniattn/op_schema.h, generated from
// uniattn_export/export/op_schema.json (the contract's machine-readable form).
//
// One OrtCustomOp per (op, element type, provider): ORT merges same-named ops into one schema
// whose T inputs accept float, float16 and bfloat16, picks the kernel whose types match the
// node, and infers the output types from it. The ops and the domain are static objects: ORT
// keeps pointers to them for as long as any session uses them.
//
// Versions: ORT builds ONE schema per op name, with the since-version of the first op of that
// name, and matches kernels by that since-version, whatever opset the model imports (checked on
// ORT 1.31: with kernels registered as [1, 1] and [2, 2], a node of a model importing
// uniattn = 2 gets the [1, 1] kernel). So one kernel serves both versions (declared [1, 2]) and
// tells them apart per node: by its plugin_version attribute ("1" / "2", which the exporter
// writes for TensorRT), else by its shapes, which differ for every valid call (version 2's
// caches have a capacity C > 0 and its position_ids are (B, L); version 1's mask is (B, P + L),
// so a version-1 call with P > 0 never has an int64 input of width L there, and P == 0 is
// version 1: a version-2 cache is never empty). The two versions' signatures agree in every
// count, type and optionality (checked when the domain is built).
#include <array>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "uniattn/kernels.h"
#include "uniattn/op_schema.h"
#include "uniattn/ort_abi.h"

namespace {

constexpr ONNXTensorElementDataType INT64 = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
constexpr ONNXTensorElementDataType FLOAT = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;

// The ORT element type of a schema type ("T" is the op's element type).
ONNXTensorElementDataType ort_type(const char* type, ONNXTensorElementDataType t) {
  if (std::strcmp(type, "int64") == 0) return INT64;
  if (std::strcmp(type, "float") == 0) return FLOAT;
  return t;
}

using SchemaOp = uniattn::schema::Op;

// The schema entry of `name` at `version` (NULL if the JSON has none).
const SchemaOp* schema_of(const char* name, int version) {
  for (const SchemaOp& op : uniattn::schema::kOps)
    if (op.version == version && std::strcmp(op.name, name) == 0) return &op;
  return nullptr;
}

enum class OpKind { producer, consumer, gated_silu, split_rotary, linear };

struct OpDef : OrtCustomOp {
  OpKind kind;
  std::array<const SchemaOp*, 2> versions;  // versions 1 and 2 of the op (a graph op: its one entry twice)
  size_t schema_index;                      // of versions[1] in schema::kOps
  const char* provider;
  ONNXTensorElementDataType element_type;
  ua_dtype dtype;
  bool cuda;

  const SchemaOp& signature() const { return *versions[0]; }  // the same in both (all_ops checks)
  bool producer() const { return kind == OpKind::producer; }
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
  const SchemaOp* schema;    // the version of the call (names in messages)
  int declared_version = 0;  // from the plugin_version attribute; 0: absent
  int64_t num_heads = 0, kv_num_heads = 0, is_causal = 0, sliding_window = 0, probs_max_query_len = 0;
  float scale = 0.f;

  // The member holding the int attribute `name` of the schema (NULL: not one this library knows).
  int64_t* int_attribute(const char* name) {
    for (auto [known, field] : {std::pair{"num_heads", &num_heads}, {"kv_num_heads", &kv_num_heads},
                                {"is_causal", &is_causal}, {"sliding_window", &sliding_window},
                                {"probs_max_query_len", &probs_max_query_len}})
      if (std::strcmp(name, known) == 0) return field;
    return nullptr;
  }

  const char* input_name(size_t i) const { return schema->inputs[i].name; }

  OrtStatus* error(OrtErrorCode code, const std::string& message) const {
    return api->CreateStatus(code, (std::string(schema->name) + " node '" + node + "': " + message).c_str());
  }

  OrtStatus* kernel_error(ua_status status) const {
    const OrtErrorCode code = status == UA_INVALID_ARGUMENT ? ORT_INVALID_ARGUMENT
                              : status == UA_UNSUPPORTED    ? ORT_NOT_IMPLEMENTED
                                                            : ORT_EP_FAIL;
    return error(code, ua_last_error());
  }

  // capacity 0: the dynamic layout (version 1); > 0: the static layout (version 2).
  ua_attention_desc desc(int64_t batch, int64_t query_len, int64_t past_len, int64_t head_dim,
                         int64_t capacity) const {
    return {batch, query_len, past_len, num_heads, kv_num_heads, head_dim, scale, int32_t(is_causal != 0),
            sliding_window, op->dtype, capacity};
  }
};

#define UA_RETURN_IF_ERROR(expr)                   \
  do {                                             \
    if (OrtStatus* status_ = (expr)) return status_; \
  } while (0)

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

// The plugin_version attribute as a version number (0 when the node has none).
int plugin_version(const OrtApi* api, const OrtKernelInfo* info) {
  char text[16] = {};
  size_t size = sizeof(text);
  if (OrtStatus* status = api->KernelInfoGetAttribute_string(info, "plugin_version", text, &size)) {
    api->ReleaseStatus(status);
    return 0;
  }
  return std::atoi(text);
}

// Every attribute the schema lists for the op (both versions: the kernel serves both, and
// their defaults agree): ints and the float scale; an absent attribute takes the schema's
// default, or is an error when it has none. (The strings are TensorRT's plugin lookup; only
// plugin_version is read, to tell the versions apart.)
OrtStatus* read_attributes(Kernel& k, const OrtKernelInfo* info) {
  k.node = node_name(k.api, info);
  if (k.op->kind == OpKind::gated_silu || k.op->kind == OpKind::linear) return nullptr;  // no attributes
  k.declared_version = plugin_version(k.api, info);
  if (k.declared_version != 0 && k.declared_version != 1 && k.declared_version != 2)
    return k.error(ORT_INVALID_ARGUMENT,
                   format("plugin_version=\"%d\" is not a version of the op (1 or 2)", k.declared_version));
  for (const SchemaOp* op : k.op->versions)
  for (size_t i = 0; i < op->attribute_count; ++i) {
    const uniattn::schema::Attribute& attribute = op->attributes[i];
    OrtStatus* status = nullptr;
    if (std::strcmp(attribute.type, "int") == 0) {
      int64_t* field = k.int_attribute(attribute.name);
      if (field == nullptr)
        return k.error(ORT_FAIL, format("the op schema has an int attribute '%s' this library does not know",
                                        attribute.name));
      status = k.api->KernelInfoGetAttribute_int64(info, attribute.name, field);
      if (status && attribute.default_value) *field = std::strtoll(attribute.default_value, nullptr, 10);
    } else if (std::strcmp(attribute.type, "float") == 0) {
      status = k.api->KernelInfoGetAttribute_float(info, attribute.name, &k.scale);
      if (status && attribute.default_value) k.scale = std::strtof(attribute.default_value, nullptr);
    } else {
      continue;
    }
    if (status) {
      k.api->ReleaseStatus(status);
      if (!attribute.default_value)
        return k.error(ORT_INVALID_ARGUMENT,
                       format("the %s attribute '%s' is missing or not a %s", attribute.type, attribute.name,
                              attribute.type));
    }
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
      return k.error(ORT_INVALID_ARGUMENT, format("input '%s' is missing", k.input_name(i)));
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
                                              k.input_name(input_index), to_string(tensor.shape).c_str(),
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
// past cache ((B, Hkv, P, D), or (B, Hkv, C, D) in version 2: `past` is then the capacity);
// `why` says so in error messages.
struct Geometry {
  int64_t batch = 0, length = 0, dim = 0, past = 0, keys = 0;
  std::string why;
};

OrtStatus* geometry(const Kernel& k, const Tensor& packed, size_t packed_index, int64_t heads, const char* heads_name,
                    const Tensor& cache, size_t cache_index, Geometry& g) {
  auto names = [&](size_t i) { return k.input_name(i); };
  if (packed.shape.size() != 3 || packed.dim(2) == 0 || packed.dim(2) % heads != 0)
    return k.error(ORT_INVALID_ARGUMENT, format("%s has shape %s but (B, L, %s*D) with %s=%lld is expected",
                                                names(packed_index), to_string(packed.shape).c_str(), heads_name,
                                                heads_name, (long long)heads));
  g.batch = packed.dim(0), g.length = packed.dim(1), g.dim = packed.dim(2) / heads;
  g.past = cache.shape.size() == 4 ? cache.dim(2) : 0, g.keys = g.past + g.length;
  g.why = format("%s %s with num_heads=%lld, kv_num_heads=%lld, so D=%lld; %s %s", names(packed_index),
                 to_string(packed.shape).c_str(), (long long)k.num_heads, (long long)k.kv_num_heads,
                 (long long)g.dim, names(cache_index), to_string(cache.shape).c_str());
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

// ORT's intra-op thread pool behind ua_cpu_threads: the kernels' tasks run on the session's
// threads (KernelContext_ParallelFor), never on threads of their own.
struct OrtPool {
  const OrtApi* api;
  OrtKernelContext* context;

  static void parallel_for(void* pool, size_t count, ua_task_fn fn, void* task) {
    const OrtPool& self = *static_cast<const OrtPool*>(pool);
    if (OrtStatus* status = self.api->KernelContext_ParallelFor(self.context, fn, count, 0, task)) {
      self.api->ReleaseStatus(status);  // no pool to be had: the tasks run here
      for (size_t i = 0; i < count; ++i) fn(task, i);
    }
  }
};

// Runs a kernel of the node: cuda(stream) on ORT's CUDA compute stream, or cpu(threads) on
// ORT's thread pool; a failed status becomes the node's error.
template <typename Cuda, typename Cpu>
OrtStatus* run_kernel(const Kernel& k, OrtKernelContext* context, const Cuda& cuda, const Cpu& cpu) {
  ua_status status;
  if (k.op->cuda) {
    void* stream = nullptr;
    UA_RETURN_IF_ERROR(k.api->KernelContext_GetGPUComputeStream(context, &stream));
    status = cuda(stream);
  } else {
    OrtPool pool{k.api, context};
    const ua_cpu_threads threads{OrtPool::parallel_for, &pool};
    status = cpu(&threads);
  }
  return status == UA_OK ? nullptr : k.kernel_error(status);
}

// An attention op: on CUDA with scratch from the allocator of the op's first output.
// `with_probs` is the *_workspace_size flag.
template <typename Io>
OrtStatus* launch(const Kernel& k, OrtKernelContext* context, const OrtValue* first_output,
                  const ua_attention_desc& desc, const Io& io, bool with_probs, const Implementations<Io>& impl) {
  Workspace workspace(k.api);
  if (k.op->cuda)
    UA_RETURN_IF_ERROR(workspace.allocate(context, first_output, impl.cuda_workspace_size(&desc, with_probs)));
  return run_kernel(
      k, context, [&](void* stream) { return impl.cuda(&desc, &io, workspace.data(), stream); },
      [&](const ua_cpu_threads* threads) { return impl.cpu(&desc, &io, threads); });
}

// Version 1: caches (B, Hkv, P, D) in, (B, Hkv, P + L, D) out, visibility from attention_mask.
OrtStatus* compute_producer_v1(const Kernel& k, OrtKernelContext* context) {
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

  return launch(k, context, out_value, k.desc(batch, length, past, dim, 0), io, io.shared_probs != nullptr,
                kProducerImpl);
}

OrtStatus* compute_consumer_v1(const Kernel& k, OrtKernelContext* context) {
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

  return launch(k, context, out_value, k.desc(batch, length, past, dim, 0), io, reuse_probs, kConsumerImpl);
}

// Version 2: caches (B, Hkv, C, D) in and out (the runtime may bind both to one buffer: the
// kernels then write only the new slots), slots and visibility from position_ids (B, L).
OrtStatus* compute_producer_v2(const Kernel& k, OrtKernelContext* context) {
  std::array<Tensor, 6> in;
  UA_RETURN_IF_ERROR(inputs(k, context, in));
  const Tensor &query = in[0], &key = in[1], &value = in[2], &past_key = in[3], &past_value = in[4],
               &positions = in[5];
  Geometry g;
  UA_RETURN_IF_ERROR(geometry(k, query, 0, k.num_heads, "num_heads", past_key, 3, g));
  const int64_t batch = g.batch, length = g.length, dim = g.dim, capacity = g.past;
  const Shape packed_kv{batch, length, k.kv_num_heads * dim}, cache{batch, k.kv_num_heads, capacity, dim};
  UA_RETURN_IF_ERROR(expect_shape(k, key, 1, packed_kv, "(B, L, kv_num_heads*D)", g.why));
  UA_RETURN_IF_ERROR(expect_shape(k, value, 2, packed_kv, "(B, L, kv_num_heads*D)", g.why));
  UA_RETURN_IF_ERROR(expect_shape(k, past_key, 3, cache, "(B, kv_num_heads, C, D)", g.why));
  UA_RETURN_IF_ERROR(expect_shape(k, past_value, 4, cache, "(B, kv_num_heads, C, D)", g.why));
  UA_RETURN_IF_ERROR(expect_shape(k, positions, 5, {batch, length}, "(B, L)", g.why));
  if (capacity == 0 && batch > 0)
    return k.error(ORT_INVALID_ARGUMENT, "past_key has capacity 0: version 2 caches are (B, kv_num_heads, C, D) "
                                         "with C the maximum length");

  const bool emit_probs = length <= k.probs_max_query_len;
  ua_producer_io io{query.data, key.data, value.data, past_key.data, past_value.data, nullptr, nullptr, nullptr,
                    nullptr, nullptr, nullptr, static_cast<const int64_t*>(positions.data)};
  const OrtValue* out_value = nullptr;
  void* probs = nullptr;
  void* lse = nullptr;
  UA_RETURN_IF_ERROR(output(k, context, 0, {batch, length, k.num_heads * dim}, io.output, &out_value));
  UA_RETURN_IF_ERROR(output(k, context, 1, cache, io.present_key));
  UA_RETURN_IF_ERROR(output(k, context, 2, cache, io.present_value));
  UA_RETURN_IF_ERROR(output(k, context, 3, {batch, k.num_heads, length, emit_probs ? capacity : 0}, probs));
  UA_RETURN_IF_ERROR(output(k, context, 4, {batch, k.num_heads, length}, lse));
  io.shared_probs = emit_probs ? probs : nullptr;
  io.shared_lse = static_cast<float*>(lse);

  return launch(k, context, out_value, k.desc(batch, length, 0, dim, capacity), io, io.shared_probs != nullptr,
                kProducerImpl);
}

OrtStatus* compute_consumer_v2(const Kernel& k, OrtKernelContext* context) {
  std::array<Tensor, 7> in;
  UA_RETURN_IF_ERROR(inputs(k, context, in));
  const Tensor &value = in[0], &past_value = in[1], &positions = in[2], &probs = in[3], &lse = in[4],
               &producer_query = in[5], &producer_key = in[6];
  Geometry g;
  UA_RETURN_IF_ERROR(geometry(k, value, 0, k.kv_num_heads, "kv_num_heads", past_value, 1, g));
  const int64_t batch = g.batch, length = g.length, dim = g.dim, capacity = g.past;
  const Shape cache{batch, k.kv_num_heads, capacity, dim};
  UA_RETURN_IF_ERROR(expect_shape(k, past_value, 1, cache, "(B, kv_num_heads, C, D)", g.why));
  UA_RETURN_IF_ERROR(expect_shape(k, positions, 2, {batch, length}, "(B, L)", g.why));
  const bool reuse_probs = probs.dim(3) == capacity && capacity > 0;
  UA_RETURN_IF_ERROR(expect_shape(k, probs, 3, {batch, k.num_heads, length, reuse_probs ? capacity : 0},
                                  "(B, num_heads, L, C or 0)", g.why));
  UA_RETURN_IF_ERROR(expect_shape(k, lse, 4, {batch, k.num_heads, length}, "(B, num_heads, L)", g.why));
  UA_RETURN_IF_ERROR(
      expect_shape(k, producer_query, 5, {batch, length, k.num_heads * dim}, "(B, L, num_heads*D)", g.why));
  UA_RETURN_IF_ERROR(expect_shape(k, producer_key, 6, cache, "(B, kv_num_heads, C, D)", g.why));
  if (capacity == 0 && batch > 0)
    return k.error(ORT_INVALID_ARGUMENT, "past_value has capacity 0: version 2 caches are (B, kv_num_heads, C, D) "
                                         "with C the maximum length");

  ua_consumer_io io{value.data, past_value.data, nullptr, reuse_probs ? probs.data : nullptr,
                    static_cast<const float*>(lse.data), producer_query.data, producer_key.data, nullptr, nullptr,
                    static_cast<const int64_t*>(positions.data)};
  const OrtValue* out_value = nullptr;
  UA_RETURN_IF_ERROR(output(k, context, 0, {batch, length, k.num_heads * dim}, io.output, &out_value));
  UA_RETURN_IF_ERROR(output(k, context, 1, cache, io.present_value));

  return launch(k, context, out_value, k.desc(batch, length, 0, dim, capacity), io, reuse_probs, kConsumerImpl);
}

// GatedSilu: gate_up (..., 2*I) -> output (..., I) = silu(gate_up[..., :I]) * gate_up[..., I:].
OrtStatus* compute_gated_silu(const Kernel& k, OrtKernelContext* context) {
  std::array<Tensor, 1> in;
  UA_RETURN_IF_ERROR(inputs(k, context, in));
  const Tensor& gate_up = in[0];
  if (gate_up.shape.empty() || gate_up.shape.back() % 2 != 0)
    return k.error(ORT_INVALID_ARGUMENT, format("%s has shape %s but (..., 2*I) is expected: the gate and up "
                                                "projections side by side in an even last dimension",
                                                k.input_name(0), to_string(gate_up.shape).c_str()));
  Shape shape = gate_up.shape;
  const int64_t width = shape.back() / 2;
  shape.back() = width;
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < shape.size(); ++i) rows *= shape[i];
  void* out = nullptr;
  UA_RETURN_IF_ERROR(output(k, context, 0, shape, out));
  return run_kernel(
      k, context, [&](void* stream) { return ua_gated_silu_cuda(k.op->dtype, rows, width, gate_up.data, out, stream); },
      [&](const ua_cpu_threads* threads) {
        return ua_gated_silu_cpu(k.op->dtype, rows, width, gate_up.data, out, threads);
      });
}

// SplitRotary: qkv (B, L, (Hq + 2*Hkv)*D), cos/sin tables (M, D/2), position_ids (B, L) ->
// query (B, L, Hq*D), key and value (B, L, Hkv*D).
OrtStatus* compute_split_rotary(const Kernel& k, OrtKernelContext* context) {
  std::array<Tensor, 4> in;
  UA_RETURN_IF_ERROR(inputs(k, context, in));
  const Tensor &qkv = in[0], &cos_cache = in[1], &sin_cache = in[2], &positions = in[3];
  if (cos_cache.shape.size() != 2 || cos_cache.dim(0) <= 0 || cos_cache.dim(1) <= 0)
    return k.error(ORT_INVALID_ARGUMENT, format("%s has shape %s but (M, D/2) with M, D > 0 is expected",
                                                k.input_name(1), to_string(cos_cache.shape).c_str()));
  const int64_t dim = 2 * cos_cache.dim(1), heads = k.num_heads + 2 * k.kv_num_heads;
  const std::string why = format("%s %s: D=%lld", k.input_name(1), to_string(cos_cache.shape).c_str(), (long long)dim);
  UA_RETURN_IF_ERROR(expect_shape(k, sin_cache, 2, cos_cache.shape, "(M, D/2)", why));
  if (qkv.shape.size() != 3 || qkv.dim(2) != heads * dim)
    return k.error(ORT_INVALID_ARGUMENT,
                   format("%s has shape %s but (B, L, (num_heads + 2*kv_num_heads)*D) = (B, L, %lld) is expected "
                          "(num_heads=%lld, kv_num_heads=%lld, %s)",
                          k.input_name(0), to_string(qkv.shape).c_str(), (long long)(heads * dim),
                          (long long)k.num_heads, (long long)k.kv_num_heads, why.c_str()));
  const int64_t batch = qkv.dim(0), length = qkv.dim(1);
  UA_RETURN_IF_ERROR(expect_shape(k, positions, 3, {batch, length}, "(B, L)", why));
  const ua_split_rotary_desc desc{batch * length, k.num_heads, k.kv_num_heads, dim, cos_cache.dim(0), k.op->dtype};
  ua_split_rotary_io io{qkv.data, cos_cache.data, sin_cache.data, static_cast<const int64_t*>(positions.data),
                        nullptr, nullptr, nullptr};
  UA_RETURN_IF_ERROR(output(k, context, 0, {batch, length, k.num_heads * dim}, io.query));
  UA_RETURN_IF_ERROR(output(k, context, 1, {batch, length, k.kv_num_heads * dim}, io.key));
  UA_RETURN_IF_ERROR(output(k, context, 2, {batch, length, k.kv_num_heads * dim}, io.value));
  return run_kernel(
      k, context, [&](void* stream) { return ua_split_rotary_cuda(&desc, &io, stream); },
      [&](const ua_cpu_threads* threads) { return ua_split_rotary_cpu(&desc, &io, threads); });
}

// ONNX Runtime's CUDA resources (its onnxruntime_ep_resource.h): version 1 of the interface
// and the id of the cuBLAS handle of the kernel's stream.
constexpr int kCudaResourceVersion = 1;
constexpr int kCublasHandleResource = 10002;

// Linear: input (..., K), weight (N, K) -> output (..., N) = input x weight^T (CUDA only).
OrtStatus* compute_linear(const Kernel& k, OrtKernelContext* context) {
  std::array<Tensor, 2> in;
  UA_RETURN_IF_ERROR(inputs(k, context, in));
  const Tensor &input = in[0], &weight = in[1];
  if (weight.shape.size() != 2 || input.shape.empty() || input.shape.back() != weight.dim(1))
    return k.error(ORT_INVALID_ARGUMENT, format("%s has shape %s and %s %s, but (..., K) and (N, K) are expected",
                                                k.input_name(0), to_string(input.shape).c_str(), k.input_name(1),
                                                to_string(weight.shape).c_str()));
  Shape shape = input.shape;
  shape.back() = weight.dim(0);
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < shape.size(); ++i) rows *= shape[i];
  void* out = nullptr;
  UA_RETURN_IF_ERROR(output(k, context, 0, shape, out));
  // Without the handle (another provider's context) calls of few rows still run; the kernel
  // library says so for the others.
  void* cublas = nullptr;
  if (OrtStatus* status = k.api->KernelContext_GetResource(context, kCudaResourceVersion, kCublasHandleResource, &cublas)) {
    k.api->ReleaseStatus(status);
    cublas = nullptr;
  }
  const ua_linear_desc desc{rows, weight.dim(1), weight.dim(0), k.op->dtype};
  return run_kernel(
      k, context, [&](void* stream) { return ua_linear_cuda(&desc, input.data, weight.data, out, cublas, stream); },
      [&](const ua_cpu_threads*) { return UA_UNSUPPORTED; });
}

const OpDef* as_def(const OrtCustomOp* op) { return static_cast<const OpDef*>(op); }

OrtStatus* ORT_API_CALL create_kernel(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info,
                                      void** kernel) {
  auto* k = new Kernel{api, as_def(op), {}, as_def(op)->versions[0]};
  if (OrtStatus* status = read_attributes(*k, info)) {
    delete k;
    return status;
  }
  *kernel = k;
  return nullptr;
}

// The version of a call (see the top of this file): the node's plugin_version, else the shapes
// of its cache (input past_index) and of its int64 input (mask_index).
OrtStatus* call_version(const Kernel& k, const OrtKernelContext* context, size_t cache_index, size_t int_index,
                        size_t packed_index, int& version) {
  version = k.declared_version;
  if (version != 0) return nullptr;
  Shape cache, ints, packed;
  for (auto [index, shape] : {std::pair{cache_index, &cache}, {int_index, &ints}, {packed_index, &packed}}) {
    const OrtValue* value = nullptr;
    UA_RETURN_IF_ERROR(k.api->KernelContext_GetInput(context, index, &value));
    if (value) UA_RETURN_IF_ERROR(shape_of(k.api, value, *shape));
  }
  const bool has_capacity = cache.size() == 4 && cache[2] > 0;
  const bool width_l = ints.size() == 2 && packed.size() == 3 && ints[1] == packed[1];
  version = has_capacity && width_l ? 2 : 1;
  return nullptr;
}

OrtStatus* ORT_API_CALL compute(void* kernel, OrtKernelContext* context) {
  const Kernel& node = *static_cast<const Kernel*>(kernel);
  if (node.op->kind == OpKind::gated_silu) return compute_gated_silu(node, context);
  if (node.op->kind == OpKind::split_rotary) return compute_split_rotary(node, context);
  if (node.op->kind == OpKind::linear) return compute_linear(node, context);
  const bool producer = node.op->producer();
  int version = 0;
  UA_RETURN_IF_ERROR(producer ? call_version(node, context, 3, 5, 0, version)
                              : call_version(node, context, 1, 2, 0, version));
  Kernel k = node;  // names of this call's version in its messages
  k.schema = node.op->versions[version - 1];
  if (version == 1) return producer ? compute_producer_v1(k, context) : compute_consumer_v1(k, context);
  return producer ? compute_producer_v2(k, context) : compute_consumer_v2(k, context);
}

// GetMayInplace of schema::kOps[kIndex]: its aliases (version 2: present caches -> past caches)
// as input/output indices, arrays that ReleaseMayInplace frees. ORT reuses an input's buffer
// for the output when nothing else needs the input; the kernels see the equal pointers.
template <size_t kIndex>
size_t ORT_API_CALL may_inplace(int** input_index, int** output_index) {
  const uniattn::schema::Op& op = uniattn::schema::kOps[kIndex];
  std::vector<std::pair<int, int>> pairs;
  for (const uniattn::schema::Alias* alias = op.aliases; alias->output != nullptr; ++alias) {
    int input = -1, output = -1;
    for (size_t i = 0; i < op.input_count; ++i)
      if (std::strcmp(op.inputs[i].name, alias->input) == 0) input = int(i);
    for (size_t i = 0; i < op.output_count; ++i)
      if (std::strcmp(op.outputs[i].name, alias->output) == 0) output = int(i);
    if (input >= 0 && output >= 0) pairs.emplace_back(input, output);
  }
  *input_index = *output_index = nullptr;
  if (pairs.empty()) return 0;
  *input_index = new int[pairs.size()];
  *output_index = new int[pairs.size()];
  for (size_t i = 0; i < pairs.size(); ++i) (*input_index)[i] = pairs[i].first, (*output_index)[i] = pairs[i].second;
  return pairs.size();
}

void ORT_API_CALL release_may_inplace(int* input_index, int* output_index) {
  delete[] input_index;
  delete[] output_index;
}

template <size_t... kIndex>
constexpr std::array<size_t(ORT_API_CALL*)(int**, int**), sizeof...(kIndex)> may_inplace_table(
    std::index_sequence<kIndex...>) {
  return {may_inplace<kIndex>...};
}

constexpr auto kMayInplace = may_inplace_table(std::make_index_sequence<std::size(uniattn::schema::kOps)>());

OpDef make_op(OpKind kind, const SchemaOp& v1, const SchemaOp& v2, ONNXTensorElementDataType element_type,
             ua_dtype dtype, bool cuda) {
  OpDef op{};
  op.version = UA_ORT_API_VERSION;
  op.kind = kind;
  op.versions = {&v1, &v2};
  op.schema_index = size_t(&v2 - uniattn::schema::kOps);
  op.provider = cuda ? "CUDAExecutionProvider" : "CPUExecutionProvider";
  op.element_type = element_type;
  op.dtype = dtype;
  op.cuda = cuda;
  op.GetName = [](const OrtCustomOp* self) { return as_def(self)->signature().name; };
  op.GetExecutionProviderType = [](const OrtCustomOp* self) { return as_def(self)->provider; };
  op.GetInputType = [](const OrtCustomOp* self, size_t i) {
    return ort_type(as_def(self)->signature().inputs[i].type, as_def(self)->element_type);
  };
  op.GetInputTypeCount = [](const OrtCustomOp* self) { return as_def(self)->signature().input_count; };
  op.GetOutputType = [](const OrtCustomOp* self, size_t i) {
    return ort_type(as_def(self)->signature().outputs[i].type, as_def(self)->element_type);
  };
  op.GetOutputTypeCount = [](const OrtCustomOp* self) { return as_def(self)->signature().output_count; };
  op.KernelDestroy = [](void* kernel) { delete static_cast<Kernel*>(kernel); };
  op.GetInputCharacteristic = [](const OrtCustomOp* self, size_t i) {
    return as_def(self)->signature().inputs[i].optional ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  };
  op.GetOutputCharacteristic = [](const OrtCustomOp* self, size_t i) {
    return as_def(self)->signature().outputs[i].optional ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  };
  op.GetInputMemoryType = [](const OrtCustomOp*, size_t) { return OrtMemTypeDefault; };
  op.GetVariadicInputMinArity = [](const OrtCustomOp*) { return 1; };
  op.GetVariadicInputHomogeneity = [](const OrtCustomOp*) { return 1; };
  op.GetVariadicOutputMinArity = [](const OrtCustomOp*) { return 1; };
  op.GetVariadicOutputHomogeneity = [](const OrtCustomOp*) { return 1; };
  op.CreateKernelV2 = create_kernel;
  op.KernelComputeV2 = compute;
  // Every op of the domain serves both contract versions (the graph ops included).
  op.GetStartVersion = [](const OrtCustomOp*) { return 1; };
  op.GetEndVersion = [](const OrtCustomOp*) { return 2; };
  op.GetMayInplace = kMayInplace[op.schema_index];
  op.ReleaseMayInplace = release_may_inplace;
  return op;
}

// Version 2's signature must be version 1's up to names (one kernel serves both).
bool same_signature(const SchemaOp& a, const SchemaOp& b) {
  auto same = [](const uniattn::schema::Tensor* x, size_t n, const uniattn::schema::Tensor* y, size_t m) {
    if (n != m) return false;
    for (size_t i = 0; i < n; ++i)
      if (std::strcmp(x[i].type, y[i].type) != 0 || x[i].optional != y[i].optional) return false;
    return true;
  };
  return same(a.inputs, a.input_count, b.inputs, b.input_count) &&
         same(a.outputs, a.output_count, b.outputs, b.output_count);
}

// The ops to register (Linear with `linear`), or an error naming an op whose versions this
// library cannot serve.
std::vector<OpDef> all_ops(bool linear, std::string& error) {
  const struct {
    ONNXTensorElementDataType element_type;
    ua_dtype dtype;
  } types[] = {{FLOAT, UA_FLOAT32},
               {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, UA_FLOAT16},
               {ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16, UA_BFLOAT16}};
  std::vector<OpDef> ops;
  for (bool cuda : {false, true}) {
    if (cuda && !ua_has_cuda()) continue;
    for (auto [kind, name] : {std::pair{OpKind::producer, "UniAttnProducer"}, {OpKind::consumer, "UniAttnConsumer"}}) {
      const SchemaOp *v1 = schema_of(name, 1), *v2 = schema_of(name, 2);
      if (!v1 || !v2 || !same_signature(*v1, *v2)) {
        error = std::string("uniattn: the op schema's versions 1 and 2 of ") + name +
                " are missing or differ in their inputs/outputs' count, types or optionality";
        return {};
      }
      for (const auto& type : types) ops.push_back(make_op(kind, *v1, *v2, type.element_type, type.dtype, cuda));
    }
    // Graph ops: schema version 0, served under every version of the domain.
    for (auto [kind, name] : {std::pair{OpKind::gated_silu, "GatedSilu"}, {OpKind::split_rotary, "SplitRotary"},
                              {OpKind::linear, "Linear"}}) {
      if (kind == OpKind::linear && !(cuda && linear)) continue;  // see the top of this file
      const SchemaOp* graph_op = schema_of(name, 0);
      if (!graph_op) {
        error = std::string("uniattn: the op schema has no graph op ") + name;
        return {};
      }
      for (const auto& type : types)
        ops.push_back(make_op(kind, *graph_op, *graph_op, type.element_type, type.dtype, cuda));
    }
  }
  return ops;
}

// The `uniattn` domain, in two forms (with and without Linear on CUDA), each created on first
// registration and released when ORT unloads the library (after the sessions that used it).
class Domain {
 public:
  static OrtStatus* add_to(const OrtApi* api, OrtSessionOptions* options) {
    bool linear = false;
    UA_RETURN_IF_ERROR(cuda_linear_requested(api, options, linear));
    static Domain with_linear(api, true), without_linear(api, false);
    const Domain& domain = linear ? with_linear : without_linear;
    if (domain.handle_ == nullptr) return api->CreateStatus(ORT_FAIL, domain.error_.c_str());
    return api->AddCustomOpDomain(options, domain.handle_);
  }

 private:
  // Whether the session options carry schema::kCudaLinearConfigKey = "1".
  static OrtStatus* cuda_linear_requested(const OrtApi* api, const OrtSessionOptions* options, bool& requested) {
    int has = 0;
    UA_RETURN_IF_ERROR(api->HasSessionConfigEntry(options, uniattn::schema::kCudaLinearConfigKey, &has));
    if (!has) return nullptr;
    char value[8] = {};
    size_t size = sizeof(value);
    if (OrtStatus* status = api->GetSessionConfigEntry(options, uniattn::schema::kCudaLinearConfigKey, value, &size)) {
      api->ReleaseStatus(status);  // longer than any valid value
      value[0] = '\0';
    }
    if (std::strcmp(value, "1") != 0 && std::strcmp(value, "0") != 0)
      return api->CreateStatus(ORT_INVALID_ARGUMENT, (std::string("uniattn: session config entry ") +
                                                      uniattn::schema::kCudaLinearConfigKey + " must be 1 or 0")
                                                         .c_str());
    requested = value[0] == '1';
    return nullptr;
  }

  Domain(const OrtApi* api, bool linear) : api_(api), ops_(all_ops(linear, error_)) {
    if (ops_.empty()) return;
    OrtStatus* status = api->CreateCustomOpDomain(uniattn::schema::kDomain, &handle_);
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
  std::string error_;  // before ops_: all_ops() writes it
  std::vector<OpDef> ops_;
  OrtCustomOpDomain* handle_ = nullptr;
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
