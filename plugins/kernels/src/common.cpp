#include "common.h"

#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <string>

namespace uniattn {
namespace {
thread_local std::string last_error;

ua_status check_geometry(const ua_attention_desc* d, int64_t max_head_dim) {
  if (d == nullptr) return fail(UA_INVALID_ARGUMENT, "attention descriptor is NULL");
  if (d->batch < 0 || d->query_len < 0 || d->past_len < 0)
    return fail(UA_INVALID_ARGUMENT, "negative size: batch=%lld query_len=%lld past_len=%lld",
                (long long)d->batch, (long long)d->query_len, (long long)d->past_len);
  if (d->num_heads <= 0 || d->kv_num_heads <= 0 || d->num_heads % d->kv_num_heads != 0)
    return fail(UA_INVALID_ARGUMENT,
                "num_heads=%lld must be a positive multiple of kv_num_heads=%lld",
                (long long)d->num_heads, (long long)d->kv_num_heads);
  if (d->head_dim <= 0) return fail(UA_INVALID_ARGUMENT, "head_dim=%lld must be positive", (long long)d->head_dim);
  if (max_head_dim > 0 && (d->head_dim > max_head_dim || d->head_dim % 8 != 0))
    return fail(UA_UNSUPPORTED, "head_dim=%lld unsupported here (need a multiple of 8 up to %lld)",
                (long long)d->head_dim, (long long)max_head_dim);
  if (d->dtype != UA_FLOAT32 && d->dtype != UA_FLOAT16 && d->dtype != UA_BFLOAT16)
    return fail(UA_INVALID_ARGUMENT, "unknown dtype code %d", (int)d->dtype);
  if (d->sliding_window < 0)
    return fail(UA_INVALID_ARGUMENT, "sliding_window=%lld must be >= 0", (long long)d->sliding_window);
  if (d->capacity < 0) return fail(UA_INVALID_ARGUMENT, "capacity=%lld must be >= 0", (long long)d->capacity);
  if (d->capacity > 0 && d->query_len > d->capacity)
    return fail(UA_INVALID_ARGUMENT, "static layout: query_len=%lld exceeds capacity=%lld", (long long)d->query_len,
                (long long)d->capacity);
  return UA_OK;
}

// Static layout, positions in host memory: every token's slot inside the caches.
ua_status check_positions(const ua_attention_desc* d, const int64_t* position_ids, const char* op) {
  for (int64_t t = 0; t < d->batch * d->query_len; ++t)
    if (position_ids[t] < 0 || position_ids[t] >= d->capacity)
      return fail(UA_INVALID_ARGUMENT,
                  "%s (static layout): position_ids[%lld, %lld] = %lld is outside the cache slots 0..%lld "
                  "(capacity %lld): the sequence does not fit the caches",
                  op, (long long)(t / d->query_len), (long long)(t % d->query_len), (long long)position_ids[t],
                  (long long)(d->capacity - 1), (long long)d->capacity);
  return UA_OK;
}
}  // namespace

ua_status fail(ua_status status, const char* format, ...) {
  char buffer[512];
  va_list args;
  va_start(args, format);
  std::vsnprintf(buffer, sizeof(buffer), format, args);
  va_end(args);
  last_error = buffer;
  return status;
}

ua_status ok() {
  last_error.clear();
  return UA_OK;
}

ua_status check_producer(const ua_attention_desc* d, const ua_producer_io* io, int64_t max_head_dim,
                         PositionMemory positions) {
  if (ua_status s = check_geometry(d, max_head_dim); s != UA_OK) return s;
  if (io == nullptr) return fail(UA_INVALID_ARGUMENT, "producer io is NULL");
  if (in_place(*d, io->past_key, io->present_key) != in_place(*d, io->past_value, io->present_value))
    return fail(UA_INVALID_ARGUMENT,
                "producer: present_key and present_value must both alias their past (in-place append) or neither");
  if (d->capacity > 0) {  // static layout: the caches always exist, positions replace the mask
    if (d->batch == 0) return UA_OK;
    if (!io->past_key || !io->past_value || !io->present_key || !io->present_value)
      return fail(UA_INVALID_ARGUMENT, "producer (static layout): past/present caches must not be NULL");
    if (d->query_len == 0) return UA_OK;
    if (!io->query || !io->key || !io->value || !io->position_ids || !io->output)
      return fail(UA_INVALID_ARGUMENT, "producer (static layout): a required tensor pointer is NULL");
    return positions == PositionMemory::host ? check_positions(d, io->position_ids, "producer") : UA_OK;
  }
  if (d->batch == 0 || d->query_len == 0) return UA_OK;  // empty call: nothing is read
  if (!io->query || !io->key || !io->value || !io->attention_mask || !io->output ||
      !io->present_key || !io->present_value)
    return fail(UA_INVALID_ARGUMENT, "producer: a required tensor pointer is NULL");
  if (d->past_len > 0 && (!io->past_key || !io->past_value))
    return fail(UA_INVALID_ARGUMENT, "producer: past_len=%lld but past_key/past_value is NULL",
                (long long)d->past_len);
  return UA_OK;
}

ua_status check_consumer(const ua_attention_desc* d, const ua_consumer_io* io, int64_t max_head_dim,
                         PositionMemory positions) {
  if (ua_status s = check_geometry(d, max_head_dim); s != UA_OK) return s;
  if (io == nullptr) return fail(UA_INVALID_ARGUMENT, "consumer io is NULL");
  if (d->capacity > 0) {
    if (d->batch == 0) return UA_OK;
    if (!io->past_value || !io->present_value)
      return fail(UA_INVALID_ARGUMENT, "consumer (static layout): past_value/present_value must not be NULL");
    if (d->query_len == 0) return UA_OK;
    if (!io->value || !io->position_ids || !io->output)
      return fail(UA_INVALID_ARGUMENT, "consumer (static layout): a required tensor pointer is NULL");
    if (positions == PositionMemory::host)
      if (ua_status s = check_positions(d, io->position_ids, "consumer"); s != UA_OK) return s;
  } else {
    if (d->batch == 0 || d->query_len == 0) return UA_OK;
    if (!io->value || !io->attention_mask || !io->output || !io->present_value)
      return fail(UA_INVALID_ARGUMENT, "consumer: a required tensor pointer is NULL");
  }
  if (d->capacity == 0 && d->past_len > 0 && !io->past_value)
    return fail(UA_INVALID_ARGUMENT, "consumer: past_len=%lld but past_value is NULL", (long long)d->past_len);
  if (!io->shared_probs && (!io->shared_lse || !io->producer_query || !io->producer_key))
    return fail(UA_INVALID_ARGUMENT,
                "consumer: without shared_probs it needs shared_lse, producer_query and producer_key");
  return UA_OK;
}

namespace {

// The bytes [begin, end) of a tensor named `name`, for the checks that an op's outputs overlap
// none of the tensors it reads or its other outputs.
struct Bytes {
  const char* name;
  uintptr_t begin, end;

  Bytes(const char* tensor, const void* data, uintptr_t size)
      : name(tensor), begin(reinterpret_cast<uintptr_t>(data)), end(begin + size) {}
  bool overlaps(const Bytes& other) const { return begin < other.end && other.begin < end; }
};

}  // namespace

ua_status check_gated_silu(ua_dtype dtype, int64_t rows, int64_t width, const void* gate_up, const void* output) {
  if (dtype != UA_FLOAT32 && dtype != UA_FLOAT16 && dtype != UA_BFLOAT16)
    return fail(UA_INVALID_ARGUMENT, "gated_silu: unknown dtype code %d", (int)dtype);
  if (rows < 0 || width < 0)
    return fail(UA_INVALID_ARGUMENT, "gated_silu: negative size: rows=%lld width=%lld", (long long)rows,
                (long long)width);
  if (rows == 0 || width == 0) return ok();
  if (gate_up == nullptr || output == nullptr)
    return fail(UA_INVALID_ARGUMENT, "gated_silu: gate_up and output must not be NULL");
  const uintptr_t element = dtype_size(dtype);
  if (Bytes("output", output, uintptr_t(rows * width) * element)
          .overlaps(Bytes("gate_up", gate_up, uintptr_t(rows * 2 * width) * element)))
    return fail(UA_INVALID_ARGUMENT, "gated_silu: output overlaps gate_up");
  return ok();
}

ua_status check_linear(const ua_linear_desc* d, const void* input, const void* weight, const void* output) {
  if (d == nullptr) return fail(UA_INVALID_ARGUMENT, "linear: desc must not be NULL");
  if (d->dtype != UA_FLOAT32 && d->dtype != UA_FLOAT16 && d->dtype != UA_BFLOAT16)
    return fail(UA_INVALID_ARGUMENT, "linear: unknown dtype code %d", (int)d->dtype);
  if (d->rows < 0 || d->in_features < 0 || d->out_features < 0)
    return fail(UA_INVALID_ARGUMENT, "linear: negative size: rows=%lld in_features=%lld out_features=%lld",
                (long long)d->rows, (long long)d->in_features, (long long)d->out_features);
  if (d->rows == 0 || d->out_features == 0) return ok();
  if (input == nullptr || weight == nullptr || output == nullptr)
    return fail(UA_INVALID_ARGUMENT, "linear: input, weight and output must not be NULL");
  const uintptr_t element = dtype_size(d->dtype);
  const Bytes out("output", output, uintptr_t(d->rows * d->out_features) * element);
  for (const Bytes& in : {Bytes("input", input, uintptr_t(d->rows * d->in_features) * element),
                          Bytes("weight", weight, uintptr_t(d->out_features * d->in_features) * element)})
    if (out.overlaps(in)) return fail(UA_INVALID_ARGUMENT, "linear: output overlaps %s", in.name);
  return ok();
}

ua_status check_split_rotary(const ua_split_rotary_desc* d, const ua_split_rotary_io* io) {
  if (d == nullptr || io == nullptr) return fail(UA_INVALID_ARGUMENT, "split_rotary: desc and io must not be NULL");
  if (d->dtype != UA_FLOAT32 && d->dtype != UA_FLOAT16 && d->dtype != UA_BFLOAT16)
    return fail(UA_INVALID_ARGUMENT, "split_rotary: unknown dtype code %d", (int)d->dtype);
  if (d->tokens < 0 || d->num_heads <= 0 || d->kv_num_heads <= 0 || d->head_dim <= 0 || d->head_dim % 2 != 0 ||
      d->table_rows <= 0)
    return fail(UA_INVALID_ARGUMENT,
                "split_rotary: tokens=%lld must be >= 0, num_heads=%lld, kv_num_heads=%lld and table_rows=%lld "
                "positive, head_dim=%lld positive and even",
                (long long)d->tokens, (long long)d->num_heads, (long long)d->kv_num_heads, (long long)d->table_rows,
                (long long)d->head_dim);
  if (d->tokens == 0) return ok();
  if (!io->qkv || !io->cos_cache || !io->sin_cache || !io->position_ids || !io->query || !io->key || !io->value)
    return fail(UA_INVALID_ARGUMENT, "split_rotary: a tensor pointer is NULL");
  const uintptr_t element = dtype_size(d->dtype), D = uintptr_t(d->head_dim), n = uintptr_t(d->tokens);
  const uintptr_t table = uintptr_t(d->table_rows) * (D / 2) * element;
  const Bytes written[] = {Bytes("query", io->query, n * uintptr_t(d->num_heads) * D * element),
                           Bytes("key", io->key, n * uintptr_t(d->kv_num_heads) * D * element),
                           Bytes("value", io->value, n * uintptr_t(d->kv_num_heads) * D * element)};
  const Bytes read[] = {Bytes("qkv", io->qkv, n * uintptr_t(d->num_heads + 2 * d->kv_num_heads) * D * element),
                        Bytes("cos_cache", io->cos_cache, table), Bytes("sin_cache", io->sin_cache, table),
                        Bytes("position_ids", io->position_ids, n * sizeof(int64_t))};
  for (size_t w = 0; w < 3; ++w) {
    for (const Bytes& other : read)
      if (written[w].overlaps(other))
        return fail(UA_INVALID_ARGUMENT, "split_rotary: %s overlaps %s", written[w].name, other.name);
    for (size_t o = w + 1; o < 3; ++o)
      if (written[w].overlaps(written[o]))
        return fail(UA_INVALID_ARGUMENT, "split_rotary: %s overlaps %s", written[w].name, written[o].name);
  }
  return ok();
}

}  // namespace uniattn

extern "C" {
int ua_abi_version(void) { return UA_ABI_VERSION; }
const char* ua_last_error(void) { return uniattn::last_error.c_str(); }
}
