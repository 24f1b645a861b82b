// CPU kernels of UniAttnProducer / UniAttnConsumer, exactly as docs/ops.md defines them.
//
// Work is split into items of (batch, KV head, block of query rows). An item converts the
// K/V rows its queries can see into float32 buffers once and serves all g = Hq / Hkv query
// heads of that KV head from them, so every inner loop runs over contiguous floats of
// length D (dot products and axpys that the compiler vectorizes). The first block of each
// (batch, KV head) also writes that slice of the present caches.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>
#include <vector>

#include "common.h"
#include "element.h"
#include "parallel.h"

namespace uniattn::cpu {
namespace {

// Fewer rows per item would re-convert the same K/V rows too often.
constexpr int64_t kMinRowsPerItem = 8;
constexpr float kInfinity = std::numeric_limits<float>::infinity();

inline float dot(const float* a, const float* b, int64_t n) {
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

inline void axpy(float alpha, const float* x, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

template <typename T>
void to_float_row(const T* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = to_float(src[i]);
}

template <typename T>
void from_float_row(const float* src, T* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = from_float<T>(src[i]);
}

// Where key/value row j (0 <= j < S) of one (batch, KV head) slice lives: rows below
// `past_len` in the (B, Hkv, P, D) past cache, the rest in the packed (B, L, Hkv*D) input.
template <typename T>
struct CacheRows {
  const T* past;
  int64_t past_len;
  const T* fresh;
  int64_t fresh_stride;
  int64_t dim;

  const T* row(int64_t j) const { return j < past_len ? past + j * dim : fresh + (j - past_len) * fresh_stride; }
};

// An in-place past (kernels.h) is the present buffer: S rows per (batch, KV head).
template <typename T>
CacheRows<T> cache_rows(const ua_attention_desc& d, const void* past, const void* present, const void* fresh,
                        int64_t b, int64_t hk) {
  const int64_t dim = d.head_dim;
  const int64_t past_stride = in_place(d, past, present) ? key_len(d) : d.past_len;
  const T* past_slice = past ? static_cast<const T*>(past) + (b * d.kv_num_heads + hk) * past_stride * dim : nullptr;
  const T* fresh_slice =
      fresh ? static_cast<const T*>(fresh) + (b * d.query_len * d.kv_num_heads + hk) * dim : nullptr;
  return {past_slice, d.past_len, fresh_slice, d.kv_num_heads * dim, dim};
}

// A (B, Hkv, S, D) tensor seen through the same interface (all rows are "past").
template <typename T>
CacheRows<T> present_rows(const ua_attention_desc& d, const void* present, int64_t b, int64_t hk) {
  const int64_t dim = d.head_dim;
  const int64_t s = key_len(d);
  return {static_cast<const T*>(present) + (b * d.kv_num_heads + hk) * s * dim, s, nullptr, 0, dim};
}

template <typename T>
void write_present(const ua_attention_desc& d, const CacheRows<T>& rows, void* present, int64_t b, int64_t hk) {
  if (present == nullptr || (d.past_len > 0 && rows.past == nullptr)) return;  // an empty call may omit them
  const int64_t dim = d.head_dim;
  T* dst = static_cast<T*>(present) + (b * d.kv_num_heads + hk) * key_len(d) * dim;
  if (d.past_len > 0 && rows.past != dst) std::memcpy(dst, rows.past, size_t(d.past_len * dim) * sizeof(T));
  for (int64_t i = 0; i < d.query_len; ++i)
    std::memcpy(dst + (d.past_len + i) * dim, rows.fresh + i * rows.fresh_stride, size_t(dim) * sizeof(T));
}

template <typename T>
void load_rows(const CacheRows<T>& rows, int64_t begin, int64_t end, std::vector<float>& out) {
  out.resize(size_t((end - begin) * rows.dim));
  for (int64_t j = begin; j < end; ++j) to_float_row(rows.row(j), out.data() + (j - begin) * rows.dim, rows.dim);
}

// Keys that query row `row` may see, before the padding mask: causal and sliding-window
// limits of docs/ops.md as a half-open range (both ends grow with the row).
struct KeyRange {
  int64_t begin, end;
};

KeyRange key_range(const ua_attention_desc& d, int64_t row) {
  const int64_t position = d.past_len + row;
  const int64_t begin = d.sliding_window > 0 ? std::max<int64_t>(0, position - d.sliding_window + 1) : 0;
  const int64_t end = d.is_causal ? std::min(key_len(d), position + 1) : key_len(d);
  return {begin, std::max(begin, end)};
}

struct Item {
  int64_t batch, kv_head, row_begin, row_end;
  bool first_block;  // writes the present caches of (batch, kv_head)
};

// Items of (batch, KV head, row block): enough blocks for about two items per thread.
struct Plan {
  int64_t blocks, rows_per_block;

  Plan(const ua_attention_desc& d, int num_threads) {
    const int64_t slices = d.batch * d.kv_num_heads;
    const int64_t wanted = (2 * int64_t(resolve_threads(num_threads)) + slices - 1) / slices;
    const int64_t most = std::max<int64_t>(1, (d.query_len + kMinRowsPerItem - 1) / kMinRowsPerItem);
    const int64_t chosen = std::clamp<int64_t>(wanted, 1, most);
    rows_per_block = std::max<int64_t>(1, (d.query_len + chosen - 1) / chosen);
    blocks = std::max<int64_t>(1, (d.query_len + rows_per_block - 1) / rows_per_block);
  }

  int64_t items(const ua_attention_desc& d) const { return d.batch * d.kv_num_heads * blocks; }

  Item item(const ua_attention_desc& d, int64_t index) const {
    const int64_t block = index % blocks;
    const int64_t slice = index / blocks;
    const int64_t begin = block * rows_per_block;
    return {slice / d.kv_num_heads, slice % d.kv_num_heads, begin, std::min(d.query_len, begin + rows_per_block),
            block == 0};
  }
};

struct Scratch {
  std::vector<float> keys, values, query, weights, accum;
};

// Σ_j weights[j] * values[j] over the loaded rows, rounded to T into `out`.
template <typename T>
void weighted_sum(const float* weights, int64_t count, const float* values, int64_t dim, std::vector<float>& accum,
                  T* out) {
  accum.assign(size_t(dim), 0.f);
  for (int64_t j = 0; j < count; ++j)
    if (weights[j] != 0.f) axpy(weights[j], values + j * dim, accum.data(), dim);
  from_float_row(accum.data(), out, dim);
}

template <typename T>
void producer_item(const ua_attention_desc& d, const ua_producer_io& io, const Item& item, Scratch& s) {
  const int64_t dim = d.head_dim, group = d.num_heads / d.kv_num_heads, keys = key_len(d);
  const CacheRows<T> k_rows = cache_rows<T>(d, io.past_key, io.present_key, io.key, item.batch, item.kv_head);
  const CacheRows<T> v_rows = cache_rows<T>(d, io.past_value, io.present_value, io.value, item.batch, item.kv_head);
  if (item.first_block) {
    write_present(d, k_rows, io.present_key, item.batch, item.kv_head);
    write_present(d, v_rows, io.present_value, item.batch, item.kv_head);
  }
  if (item.row_begin == item.row_end) return;
  const int64_t first = key_range(d, item.row_begin).begin, last = key_range(d, item.row_end - 1).end;
  load_rows(k_rows, first, last, s.keys);
  load_rows(v_rows, first, last, s.values);
  s.query.resize(size_t(dim));
  s.weights.resize(size_t(last - first));
  const int64_t* mask = io.attention_mask + item.batch * keys;
  const T* query = static_cast<const T*>(io.query);
  T* output = static_cast<T*>(io.output);
  T* probs = static_cast<T*>(io.shared_probs);

  for (int64_t h = item.kv_head * group; h < (item.kv_head + 1) * group; ++h) {
    for (int64_t i = item.row_begin; i < item.row_end; ++i) {
      const int64_t row = (item.batch * d.query_len + i) * d.num_heads + h;  // (b, i, h) of packed tensors
      const int64_t stat = (item.batch * d.num_heads + h) * d.query_len + i;  // (b, h, i) of probs / lse
      const KeyRange range = key_range(d, i);
      to_float_row(query + row * dim, s.query.data(), dim);
      float* w = s.weights.data() + (range.begin - first);
      const int64_t count = range.end - range.begin;
      float max_score = -kInfinity;
      for (int64_t j = 0; j < count; ++j) {
        if (mask[range.begin + j] == 0) {
          w[j] = -kInfinity;
          continue;
        }
        w[j] = d.scale * dot(s.query.data(), s.keys.data() + (range.begin + j - first) * dim, dim);
        max_score = std::max(max_score, w[j]);
      }
      float lse = kInfinity;  // a row that sees no key: p = 0, output 0, lse = +inf
      if (max_score == -kInfinity) {
        std::fill(w, w + count, 0.f);
      } else {
        float sum = 0.f;
        for (int64_t j = 0; j < count; ++j) sum += (w[j] = std::exp(w[j] - max_score));
        const float inverse = 1.f / sum;
        for (int64_t j = 0; j < count; ++j) w[j] *= inverse;
        lse = max_score + std::log(sum);
      }
      weighted_sum(w, count, s.values.data() + (range.begin - first) * dim, dim, s.accum, output + row * dim);
      if (io.shared_lse) io.shared_lse[stat] = lse;
      if (probs) {
        T* probs_row = probs + stat * keys;
        std::fill(probs_row, probs_row + keys, from_float<T>(0.f));
        from_float_row(w, probs_row + range.begin, count);
      }
    }
  }
}

template <typename T>
void consumer_item(const ua_attention_desc& d, const ua_consumer_io& io, const Item& item, Scratch& s) {
  const int64_t dim = d.head_dim, group = d.num_heads / d.kv_num_heads, keys = key_len(d);
  const CacheRows<T> v_rows = cache_rows<T>(d, io.past_value, io.present_value, io.value, item.batch, item.kv_head);
  if (item.first_block) write_present(d, v_rows, io.present_value, item.batch, item.kv_head);
  if (item.row_begin == item.row_end) return;
  const bool reuse_probs = io.shared_probs != nullptr;
  // Decode reuses P over every key; prefill recomputes over the keys its rows may see.
  const int64_t first = reuse_probs ? 0 : key_range(d, item.row_begin).begin;
  const int64_t last = reuse_probs ? keys : key_range(d, item.row_end - 1).end;
  load_rows(v_rows, first, last, s.values);
  if (!reuse_probs) {
    load_rows(present_rows<T>(d, io.producer_key, item.batch, item.kv_head), first, last, s.keys);
    s.query.resize(size_t(dim));
  }
  s.weights.resize(size_t(last - first));
  const int64_t* mask = io.attention_mask + item.batch * keys;
  T* output = static_cast<T*>(io.output);

  for (int64_t h = item.kv_head * group; h < (item.kv_head + 1) * group; ++h) {
    for (int64_t i = item.row_begin; i < item.row_end; ++i) {
      const int64_t row = (item.batch * d.query_len + i) * d.num_heads + h;
      const int64_t stat = (item.batch * d.num_heads + h) * d.query_len + i;
      if (reuse_probs) {
        to_float_row(static_cast<const T*>(io.shared_probs) + stat * keys, s.weights.data(), keys);
        weighted_sum(s.weights.data(), keys, s.values.data(), dim, s.accum, output + row * dim);
        continue;
      }
      // exp(s - lse) is the producer's softmax: no running max or sum needed.
      const KeyRange range = key_range(d, i);
      const float lse = io.shared_lse[stat];
      to_float_row(static_cast<const T*>(io.producer_query) + row * dim, s.query.data(), dim);
      float* w = s.weights.data() + (range.begin - first);
      const int64_t count = range.end - range.begin;
      for (int64_t j = 0; j < count; ++j)
        w[j] = mask[range.begin + j] == 0
                   ? 0.f
                   : std::exp(d.scale * dot(s.query.data(), s.keys.data() + (range.begin + j - first) * dim, dim) -
                              lse);
      weighted_sum(w, count, s.values.data() + (range.begin - first) * dim, dim, s.accum, output + row * dim);
    }
  }
}

template <typename Io>
using ItemFn = void (*)(const ua_attention_desc&, const Io&, const Item&, Scratch&);

// Runs the item function of d.dtype over all items; `items` holds the float32, float16
// and bfloat16 instantiations in ua_dtype order.
template <typename Io>
ua_status run(const char* op, const ua_attention_desc& d, const Io& io, int num_threads, const ItemFn<Io> (&items)[3]) {
  const ItemFn<Io> item_fn = items[d.dtype];
  const Plan plan(d, num_threads);
  try {
    parallel_for<Scratch>(plan.items(d), num_threads,
                          [&](int64_t index, Scratch& scratch) { item_fn(d, io, plan.item(d, index), scratch); });
  } catch (const std::bad_alloc&) {
    return fail(UA_DEVICE_ERROR, "%s (CPU): out of host memory for the float32 row buffers (S=%lld, D=%lld)", op,
                (long long)key_len(d), (long long)d.head_dim);
  } catch (const std::exception& error) {
    return fail(UA_DEVICE_ERROR, "%s (CPU): %s", op, error.what());
  }
  return ok();
}

const ItemFn<ua_producer_io> kProducerItems[3] = {producer_item<float>, producer_item<Float16>,
                                                  producer_item<BFloat16>};
const ItemFn<ua_consumer_io> kConsumerItems[3] = {consumer_item<float>, consumer_item<Float16>,
                                                  consumer_item<BFloat16>};

}  // namespace
}  // namespace uniattn::cpu

extern "C" {

ua_status ua_producer_cpu(const ua_attention_desc* desc, const ua_producer_io* io, int num_threads) {
  if (ua_status status = uniattn::check_producer(desc, io, 0); status != UA_OK) return status;
  if (desc->batch == 0) return uniattn::ok();
  return uniattn::cpu::run("UniAttnProducer", *desc, *io, num_threads, uniattn::cpu::kProducerItems);
}

ua_status ua_consumer_cpu(const ua_attention_desc* desc, const ua_consumer_io* io, int num_threads) {
  if (ua_status status = uniattn::check_consumer(desc, io, 0); status != UA_OK) return status;
  if (desc->batch == 0) return uniattn::ok();
  return uniattn::cpu::run("UniAttnConsumer", *desc, *io, num_threads, uniattn::cpu::kConsumerItems);
}

}  // extern "C"
