// CPU kernels of UniAttnProducer / UniAttnConsumer, exactly as docs/ops.md defines them, for
// both cache layouts of kernels.h (dynamic, op version 1; static, op version 2).
//
// A call runs in two phases. First the present caches are written: the past copied when it is
// not the present buffer itself, then the new rows (at rows P.. in the dynamic layout, at slots
// position_ids in the static one). Then attention reads keys and values from the present
// caches only, in items of (batch, KV head, query heads, block of query rows). An item walks
// the keys it may see in tiles of kTile rows: each tile is converted to float32 once and serves
// every query row of the item as small matrix products (scores = Q K^T, then P V), with an
// online softmax (running max and sum) in float32. The producer keeps its scores only when it
// emits shared_probs (short queries), normalizing them with the final lse.
//
// Threads: items are independent and their partition depends on the shapes alone, so results
// do not depend on the thread count. They run through the caller's ua_cpu_threads (ONNX
// Runtime's pool), or on the calling thread; the kernels never start threads of their own.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>
#include <type_traits>
#include <vector>

#include "common.h"
#include "element.h"
#include "threads.h"
#include "vec16.h"

namespace uniattn::cpu {
namespace {

constexpr int64_t kTile = 64;          // keys per tile
constexpr int64_t kRowsPerBlock = 32;  // query rows per prefill item
constexpr int64_t kTransposeRows = 8;  // from this many query rows on, scores use a transposed key tile
constexpr float kInfinity = std::numeric_limits<float>::infinity();

// keys_t[i, n] = keys[n, i], zero for n >= count: the layout scores_by_columns reads.
void transpose_tile(const float* keys, int64_t count, int64_t dim, float* keys_t) {
  for (int64_t i = 0; i < dim; ++i) {
    float* column = keys_t + i * kTile;
    for (int64_t n = 0; n < count; ++n) column[n] = keys[n * dim + i];
    for (int64_t n = count; n < kTile; ++n) column[n] = 0.f;
  }
}

// Register blocking: 4 rows x 64 floats of results stay in 16 vector registers (AVX-512; the
// narrower clones split each vector) while the inner loop streams the other operand.
constexpr int64_t kBlockRows = 4;

__attribute__((always_inline)) inline float max_of(Vec16 v) {
  float m = v[0];
  for (int i = 1; i < 16; ++i) m = v[i] > m ? v[i] : m;
  return m;
}

__attribute__((always_inline)) inline float sum_of(Vec16 v) {
  float s = 0.f;
  for (int i = 0; i < 16; ++i) s += v[i];
  return s;
}

// w[n] = e^(w[n] - shift) for n < count; returns their sum.
UA_VECTOR_CLONES float exp_shifted(float* w, int64_t count, float shift) {
  Vec16 sum{};
  int64_t n = 0;
  for (; n + 16 <= count; n += 16) {
    const Vec16 e = exp16(load16(w + n) - shift);
    store16(w + n, e);
    sum += e;
  }
  if (n < count) {  // the rest through a padded vector: -inf lanes add 0
    float rest[16];
    std::fill(rest, rest + 16, -kInfinity);
    std::copy(w + n, w + count, rest);
    const Vec16 e = exp16(load16(rest) - shift);
    store16(rest, e);
    std::copy(rest, rest + (count - n), w + n);
    sum += e;
  }
  return sum_of(sum);
}

// The sums of 16 vectors as the 16 lanes of one, keys in order: each level adds the two halves
// of every key's partial sums (16 -> 8 -> 4 -> 2 -> 1 lanes per key), packing two vectors into one.
__attribute__((always_inline)) inline Vec16 lane_sums(const Vec16 (&v)[16]) {
  const Int16x lo8 = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23}, hi8 = lo8 + 8;
  const Int16x lo4 = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27}, hi4 = lo4 + 4;
  const Int16x lo2 = {0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29}, hi2 = lo2 + 2;
  const Int16x lo1 = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30}, hi1 = lo1 + 1;
  Vec16 eight[8], four[4], two[2];
  for (int k = 0; k < 8; ++k)
    eight[k] = __builtin_shuffle(v[2 * k], v[2 * k + 1], lo8) + __builtin_shuffle(v[2 * k], v[2 * k + 1], hi8);
  for (int k = 0; k < 4; ++k)
    four[k] = __builtin_shuffle(eight[2 * k], eight[2 * k + 1], lo4) +
              __builtin_shuffle(eight[2 * k], eight[2 * k + 1], hi4);
  for (int k = 0; k < 2; ++k)
    two[k] = __builtin_shuffle(four[2 * k], four[2 * k + 1], lo2) + __builtin_shuffle(four[2 * k], four[2 * k + 1], hi2);
  return __builtin_shuffle(two[0], two[1], lo1) + __builtin_shuffle(two[0], two[1], hi1);
}

// tile[m, n] = dot(q[m], keys[n]) for m < rows, n < count (row stride kTile): the path of
// short queries (decode), which would not repay a transposed key tile. Keys in groups of 16
// (partial sums over the dimension in 16 registers, then lane_sums), the rest one by one.
UA_VECTOR_CLONES void scores_by_dots(const float* q, int64_t rows, const float* keys, int64_t count, int64_t dim,
                                     float* tile) {
  const int64_t grouped = dim % 16 == 0 ? count / 16 * 16 : 0;
  for (int64_t m = 0; m < rows; ++m) {
    const float* a = q + m * dim;
    for (int64_t n = 0; n < grouped; n += 16) {
      Vec16 partial[16] = {};
      for (int64_t i = 0; i < dim; i += 16) {
        const Vec16 x = load16(a + i);
#pragma GCC unroll 16
        for (int k = 0; k < 16; ++k) partial[k] += x * load16(keys + (n + k) * dim + i);
      }
      store16(tile + m * kTile + n, lane_sums(partial));
    }
    for (int64_t n = grouped; n < count; ++n) {
      const float* b = keys + n * dim;
      float sum = 0.f;
#pragma omp simd reduction(+ : sum)
      for (int64_t i = 0; i < dim; ++i) sum += a[i] * b[i];
      tile[m * kTile + n] = sum;
    }
  }
}

// One tile row of scores (kTile entries) before the softmax: w[n] *= scale for n in [lo, hi),
// -inf elsewhere (other keys of the row, and n >= count up to kTile). Returns the row's max.
UA_VECTOR_CLONES float scale_visible(float* w, int64_t lo, int64_t hi, float scale) {
  float row_max = -kInfinity;
#pragma omp simd reduction(max : row_max)
  for (int64_t n = 0; n < kTile; ++n) {
    const float v = n >= lo && n < hi ? w[n] * scale : -kInfinity;
    w[n] = v;
    row_max = v > row_max ? v : row_max;
  }
  return row_max;
}

// Largest of a tile row's kTile entries.
UA_VECTOR_CLONES float row_max(const float* w) {
  float row_max = -kInfinity;
#pragma omp simd reduction(max : row_max)
  for (int64_t n = 0; n < kTile; ++n) row_max = w[n] > row_max ? w[n] : row_max;
  return row_max;
}

// acc[i] *= factor for i < dim.
UA_VECTOR_CLONES void scale_row(float* acc, int64_t dim, float factor) {
#pragma omp simd
  for (int64_t i = 0; i < dim; ++i) acc[i] *= factor;
}

// tile[m, :] = sum_i q[m, i] * keys_t[i, :] (kTile = 64 columns).
UA_VECTOR_CLONES void scores_by_columns(const float* q, int64_t rows, const float* keys_t, int64_t dim,
                                        float* tile) {
  static_assert(kTile == 64, "one tile row is 4 vectors");
  int64_t m = 0;
  for (; m + kBlockRows <= rows; m += kBlockRows) {
    Vec16 acc[kBlockRows][4] = {};
    for (int64_t i = 0; i < dim; ++i) {
      const float* column = keys_t + i * kTile;
      const Vec16 k0 = load16(column), k1 = load16(column + 16), k2 = load16(column + 32), k3 = load16(column + 48);
#pragma GCC unroll 4
      for (int64_t r = 0; r < kBlockRows; ++r) {
        const float x = q[(m + r) * dim + i];
        acc[r][0] += x * k0, acc[r][1] += x * k1, acc[r][2] += x * k2, acc[r][3] += x * k3;
      }
    }
#pragma GCC unroll 4
    for (int64_t r = 0; r < kBlockRows; ++r)
      for (int c = 0; c < 4; ++c) store16(tile + (m + r) * kTile + 16 * c, acc[r][c]);
  }
  for (; m < rows; ++m) {
    Vec16 acc[4] = {};
    for (int64_t i = 0; i < dim; ++i) {
      const float x = q[m * dim + i];
      for (int c = 0; c < 4; ++c) acc[c] += x * load16(keys_t + i * kTile + 16 * c);
    }
    for (int c = 0; c < 4; ++c) store16(tile + m * kTile + 16 * c, acc[c]);
  }
}

// acc[m, :] += sum_n p[m, n] * values[n, :], skipping p == 0 (hidden keys: their values may
// be anything, even NaN, and must not reach the output). Columns in groups of 64 (4 vectors)
// for 4 rows at a time; a narrower rest column by column.
UA_VECTOR_CLONES void accumulate(const float* p, int64_t rows, const float* values, int64_t count, int64_t dim,
                                 float* acc) {
  int64_t d0 = 0;
  for (; d0 + 64 <= dim; d0 += 64) {
    int64_t m = 0;
    for (; m + kBlockRows <= rows; m += kBlockRows) {
      Vec16 sum[kBlockRows][4];
#pragma GCC unroll 4
      for (int64_t r = 0; r < kBlockRows; ++r)
        for (int c = 0; c < 4; ++c) sum[r][c] = load16(acc + (m + r) * dim + d0 + 16 * c);
      for (int64_t n = 0; n < count; ++n) {
        const float* v = values + n * dim + d0;
        const Vec16 v0 = load16(v), v1 = load16(v + 16), v2 = load16(v + 32), v3 = load16(v + 48);
#pragma GCC unroll 4
        for (int64_t r = 0; r < kBlockRows; ++r) {
          const float w = p[(m + r) * kTile + n];
          if (w == 0.f) continue;
          sum[r][0] += w * v0, sum[r][1] += w * v1, sum[r][2] += w * v2, sum[r][3] += w * v3;
        }
      }
#pragma GCC unroll 4
      for (int64_t r = 0; r < kBlockRows; ++r)
        for (int c = 0; c < 4; ++c) store16(acc + (m + r) * dim + d0 + 16 * c, sum[r][c]);
    }
    for (; m < rows; ++m) {
      Vec16 sum[4];
      for (int c = 0; c < 4; ++c) sum[c] = load16(acc + m * dim + d0 + 16 * c);
      for (int64_t n = 0; n < count; ++n) {
        const float w = p[m * kTile + n];
        if (w == 0.f) continue;
        for (int c = 0; c < 4; ++c) sum[c] += w * load16(values + n * dim + d0 + 16 * c);
      }
      for (int c = 0; c < 4; ++c) store16(acc + m * dim + d0 + 16 * c, sum[c]);
    }
  }
  if (d0 == dim) return;
  for (int64_t m = 0; m < rows; ++m) {
    float* out = acc + m * dim;
    for (int64_t n = 0; n < count; ++n) {
      const float w = p[m * kTile + n];
      if (w == 0.f) continue;
      const float* v = values + n * dim;
#pragma omp simd
      for (int64_t i = d0; i < dim; ++i) out[i] += w * v[i];
    }
  }
}

template <typename T>
void to_float_row(const T* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = to_float(src[i]);
}

template <typename T>
void from_float_row(const float* src, T* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = from_float<T>(src[i]);
}

// `count` contiguous rows of a cache as float32: float caches are read in place.
template <typename T>
const float* as_float(const T* rows, int64_t count, std::vector<float>& buffer) {
  if constexpr (std::is_same_v<T, float>) {
    return rows;
  } else {
    buffer.resize(size_t(count));
    to_float_row(rows, buffer.data(), count);
    return buffer.data();
  }
}

// ---- phase 1: the present caches ----------------------------------------------------------

// One (batch, KV head) slice of a cache: past copied when it is not the present buffer, then
// the new rows of the packed (B, L, Hkv*D) input.
template <typename T>
void write_slice(const ua_attention_desc& d, const void* past, void* present, const void* fresh,
                 const int64_t* position_ids, int64_t b, int64_t hk) {
  const int64_t dim = d.head_dim, rows = cache_len(d);
  T* dst = static_cast<T*>(present) + (b * d.kv_num_heads + hk) * rows * dim;
  const T* src = static_cast<const T*>(fresh) + (b * d.query_len * d.kv_num_heads + hk) * dim;
  const int64_t src_stride = d.kv_num_heads * dim;
  const size_t row_bytes = size_t(dim) * sizeof(T);
  if (static_layout(d)) {
    if (!in_place(d, past, present))
      std::memcpy(dst, static_cast<const T*>(past) + (b * d.kv_num_heads + hk) * rows * dim, row_bytes * rows);
    for (int64_t i = 0; i < d.query_len; ++i) {
      const int64_t slot = position_ids[b * d.query_len + i];
      if (slot >= 0 && slot < rows) std::memcpy(dst + slot * dim, src + i * src_stride, row_bytes);
    }
    return;
  }
  if (d.past_len > 0 && past == nullptr) return;  // an empty call may omit its caches
  if (d.past_len > 0 && !in_place(d, past, present))
    std::memcpy(dst, static_cast<const T*>(past) + (b * d.kv_num_heads + hk) * d.past_len * dim,
                row_bytes * d.past_len);
  for (int64_t i = 0; i < d.query_len; ++i) std::memcpy(dst + (d.past_len + i) * dim, src + i * src_stride, row_bytes);
}

// ---- phase 2: attention -------------------------------------------------------------------

// The keys query row i of batch row b may see: a half-open range, and in the dynamic layout
// the padding mask inside it.
struct RowKeys {
  const ua_attention_desc& d;
  const int64_t* mask;       // dynamic: attention_mask[b] (S); NULL in the static layout
  const int64_t* positions;  // static: position_ids[b] (L)

  RowKeys(const ua_attention_desc& desc, const int64_t* attention_mask, const int64_t* position_ids, int64_t b)
      : d(desc),
        mask(static_layout(desc) ? nullptr : attention_mask + b * key_len(desc)),
        positions(static_layout(desc) ? position_ids + b * desc.query_len : nullptr) {}

  SlotRange range(int64_t i) const {
    if (positions) return visible_slots(d, positions[i]);
    const int64_t position = d.past_len + i, keys = key_len(d);
    const int64_t begin = d.sliding_window > 0 ? std::max<int64_t>(0, position - d.sliding_window + 1) : 0;
    const int64_t end = d.is_causal ? std::min(keys, position + 1) : keys;
    return {begin, std::max(begin, end)};
  }
  bool hidden(int64_t j) const { return mask != nullptr && mask[j] == 0; }
  // How far row i's shared_probs entries are written (kernels.h): all S keys, or up to the
  // last position of the batch row.
  int64_t probs_end() const {
    if (!positions) return key_len(d);
    return std::clamp<int64_t>(positions[d.query_len - 1] + 1, 0, d.capacity);
  }
};

struct Item {
  int64_t batch, kv_head, row_begin, row_end;  // query heads: all of kv_head's group
  int64_t part, key_begin, key_end;  // the share of the keys this item walks (split keys)
};

// Items of (batch, KV head, row block, key part): each serves all g query heads of its KV
// head, so that the item reads its keys and values once (decode is bound by those reads: one
// item per query head measured 1.1-1.5x slower on 2 threads, from L2 re-reads). Prefill:
// blocks of kRowsPerBlock query rows. Short queries with few (batch, KV head) slices split
// their keys into parts of kKeysPerPart, merged afterwards (merge_parts), so that a decode
// step of one sequence still has work for every thread. The partition depends on the shapes
// and the positions only, never on the thread count.
struct Plan {
  static constexpr int64_t kKeysPerPart = 256, kMaxParts = 32, kEnoughSlices = 16;
  int64_t blocks, rows_per_block, parts, keys_per_part;

  Plan(const ua_attention_desc& d, int64_t key_extent) {
    rows_per_block = std::max<int64_t>(1, std::min(d.query_len, kRowsPerBlock));
    blocks = (d.query_len + rows_per_block - 1) / rows_per_block;
    const bool split = blocks == 1 && d.batch * d.kv_num_heads < kEnoughSlices;
    parts = split ? std::clamp<int64_t>((key_extent + kKeysPerPart - 1) / kKeysPerPart, 1, kMaxParts) : 1;
    const int64_t share = (key_extent + parts - 1) / parts;
    keys_per_part = (share + kTile - 1) / kTile * kTile;  // whole tiles
  }

  int64_t slices(const ua_attention_desc& d) const { return d.batch * d.kv_num_heads; }
  int64_t items(const ua_attention_desc& d) const { return slices(d) * blocks * parts; }

  Item item(const ua_attention_desc& d, int64_t index) const {
    const int64_t part = index % parts, turn = index / parts % blocks, slice = index / (parts * blocks);
    // Causal row blocks cost more the later they are: taken in pairs from both ends (0, n-1,
    // 1, n-2, ...), any contiguous run of items costs about the same, however the pool cuts.
    const int64_t block = turn % 2 == 0 ? turn / 2 : blocks - 1 - turn / 2;
    const int64_t begin = block * rows_per_block;
    const int64_t key_begin = part * keys_per_part;
    const int64_t key_end = parts == 1 ? std::numeric_limits<int64_t>::max() : key_begin + keys_per_part;
    return {slice / d.kv_num_heads, slice % d.kv_num_heads, begin, std::min(d.query_len, begin + rows_per_block),
            part, key_begin, key_end};
  }
};

struct Scratch {
  std::vector<float> query, keys, keys_t, values, tile, acc, max, sum, scores;
  std::vector<SlotRange> ranges;
};

enum class Weights { kSoftmax, kReuse, kRecompute };

// What an item reads and writes; the producer uses kSoftmax, the consumer kReuse / kRecompute.
struct Job {
  const ua_attention_desc& d;
  Weights weights;
  const void* query;         // (B, L, Hq*D): the producer's own, or producer_query
  const void* keys;          // (B, Hkv, rows, D) present_key / producer_key; NULL for kReuse
  const void* values;        // (B, Hkv, rows, D) present_value
  const int64_t* mask;
  const int64_t* positions;
  const void* probs_in;      // kReuse: shared_probs (B, Hq, L, rows)
  const float* lse_in;       // kRecompute: shared_lse
  void* output;
  void* probs_out;           // kSoftmax: shared_probs or NULL
  float* lse_out;            // kSoftmax: shared_lse or NULL
};

// The softmax state of split items (Plan::parts > 1), per (slice, part, row): running max, sum
// and the unnormalized output; and each row's scaled scores over all its keys (from key 0),
// which the producer's shared_probs are made of once the parts are merged.
struct Partials {
  int64_t kv_heads, parts, m_rows, key_extent;
  std::vector<float> max, sum, acc, scores;

  int64_t slice(const Item& item) const { return item.batch * kv_heads + item.kv_head; }
  // Index of row m of `item`'s part `part` in max / sum (times D in acc).
  int64_t state(const Item& item, int64_t part, int64_t m) const {
    return (slice(item) * parts + part) * m_rows + m;
  }
  // Row m's scores (key_extent of them, from key 0).
  float* row_scores(const Item& item, int64_t m) { return scores.data() + (slice(item) * m_rows + m) * key_extent; }
};

// The rows of an item: row m is query row row_begin + m / heads of head head_begin + m % heads;
// ranges[r] the keys query row r may see, [first, last) their union.
struct ItemRows {
  const ua_attention_desc& d;
  const Item& item;
  RowKeys keys;
  int64_t heads, head_begin, count_rows, m_rows, first, last;
  const std::vector<SlotRange>& ranges;

  ItemRows(const Job& job, const Item& it, std::vector<SlotRange>& range_buffer)
      : d(job.d), item(it), keys(job.d, job.mask, job.positions, it.batch), heads(job.d.num_heads / job.d.kv_num_heads),
        head_begin(it.kv_head * heads), count_rows(it.row_end - it.row_begin), m_rows(heads * count_rows), first(cache_len(job.d)), last(0),
        ranges(range_buffer) {
    // Dynamic reuse applies P over every key (docs/ops.md); otherwise each row its visible keys.
    const bool all_keys = job.weights == Weights::kReuse && !static_layout(d);
    range_buffer.resize(size_t(count_rows));
    for (int64_t r = 0; r < count_rows; ++r) {
      const SlotRange range = all_keys ? SlotRange{0, cache_len(d)} : keys.range(item.row_begin + r);
      range_buffer[r] = range;
      if (range.begin < range.end) first = std::min(first, range.begin), last = std::max(last, range.end);
    }
    if (first >= last) first = last = 0;
  }

  int64_t packed_row(int64_t m) const {  // (b, i, h) of the packed tensors
    return (item.batch * d.query_len + item.row_begin + m / heads) * d.num_heads + head_begin + m % heads;
  }
  int64_t stat_row(int64_t m) const {  // (b, h, i) of probs / lse
    return (item.batch * d.num_heads + head_begin + m % heads) * d.query_len + item.row_begin + m / heads;
  }
};

// Row m's outputs from its final softmax state (max, sum, unnormalized acc; the consumer's
// acc is its output): the producer's lse, and its shared_probs from `scores`, the row's scaled
// scores of keys scores_from.. (exponentiated in place).
template <typename T>
void finish_row(const Job& job, const ItemRows& r, int64_t m, float max, float sum, float* acc, float* scores,
                int64_t scores_from) {
  const ua_attention_desc& d = job.d;
  if (job.weights == Weights::kSoftmax) {
    // A row that sees no key: p = 0, output 0, lse = +inf (docs/ops.md).
    const bool seen = sum > 0.f;
    scale_row(acc, d.head_dim, seen ? 1.f / sum : 0.f);
    const float lse = seen ? max + std::log(sum) : kInfinity;
    if (job.lse_out) job.lse_out[r.stat_row(m)] = lse;
    if (job.probs_out) {
      const SlotRange range = r.ranges[m / r.heads];
      T* probs = static_cast<T*>(job.probs_out) + r.stat_row(m) * cache_len(d);
      exp_shifted(scores + (range.begin - scores_from), range.end - range.begin, lse);
      const int64_t end = r.keys.probs_end();
      for (int64_t j = 0; j < end; ++j)
        probs[j] = from_float<T>(j >= range.begin && j < range.end ? scores[j - scores_from] : 0.f);
    }
  }
  from_float_row(acc, static_cast<T*>(job.output) + r.packed_row(m) * d.head_dim, d.head_dim);
}

// One item: its rows over the keys [first, last) of its part. Unsplit, it finishes its rows;
// split, it leaves its state in `partials` for merge_parts.
template <typename T>
void attention_item(const Job& job, const Item& item, Scratch& s, Partials* partials) {
  const ua_attention_desc& d = job.d;
  const ItemRows r(job, item, s.ranges);
  const int64_t dim = d.head_dim, rows = cache_len(d), m_rows = r.m_rows, heads = r.heads;
  const int64_t first = std::max(r.first, item.key_begin), last = std::min(r.last, item.key_end);

  const bool uses_keys = job.weights != Weights::kReuse;
  const bool keep_scores = job.weights == Weights::kSoftmax && job.probs_out != nullptr;
  // Scores for shared_probs: this item's own (from key r.first), or the split row's (from 0).
  const int64_t span = partials ? partials->key_extent : r.last - r.first;
  const int64_t scores_from = partials ? 0 : r.first;
  float* scores = nullptr;
  if (keep_scores && partials) {
    scores = partials->row_scores(item, 0);
  } else if (keep_scores) {
    s.scores.resize(size_t(m_rows * span));
    scores = s.scores.data();
  }
  if (uses_keys) {
    s.query.resize(size_t(m_rows * dim));
    for (int64_t m = 0; m < m_rows; ++m)
      to_float_row(static_cast<const T*>(job.query) + r.packed_row(m) * dim, s.query.data() + m * dim, dim);
  }
  s.acc.assign(size_t(m_rows * dim), 0.f);
  s.max.assign(size_t(m_rows), -kInfinity);
  s.sum.assign(size_t(m_rows), 0.f);
  s.tile.resize(size_t(m_rows * kTile));
  const bool transposed = m_rows >= kTransposeRows;
  if (uses_keys && transposed) s.keys_t.resize(size_t(dim * kTile));

  const size_t slice = size_t((item.batch * d.kv_num_heads + item.kv_head) * rows * dim);
  const T* key_slice = uses_keys ? static_cast<const T*>(job.keys) + slice : nullptr;
  const T* value_slice = static_cast<const T*>(job.values) + slice;
  float* tile = s.tile.data();

  for (int64_t j0 = first; j0 < last; j0 += kTile) {
    const int64_t count = std::min(kTile, last - j0);
    if (uses_keys) {
      const float* keys = as_float(key_slice + j0 * dim, count * dim, s.keys);
      if (transposed) {
        transpose_tile(keys, count, dim, s.keys_t.data());
        scores_by_columns(s.query.data(), m_rows, s.keys_t.data(), dim, tile);
      } else {
        scores_by_dots(s.query.data(), m_rows, keys, count, dim, tile);
      }
    }
    for (int64_t m = 0; m < m_rows; ++m) {
      const SlotRange range = r.ranges[m / heads];
      float* w = tile + m * kTile;
      const int64_t lo = std::clamp(range.begin - j0, int64_t(0), count);
      const int64_t hi = std::clamp(range.end - j0, lo, count);
      if (job.weights == Weights::kReuse) {
        const T* p = static_cast<const T*>(job.probs_in) + r.stat_row(m) * rows + j0;
        for (int64_t n = 0; n < count; ++n) w[n] = n >= lo && n < hi ? to_float(p[n]) : 0.f;
        continue;
      }
      float tile_max = scale_visible(w, lo, hi, d.scale);
      if (r.keys.mask) {
        for (int64_t n = lo; n < hi; ++n)
          if (r.keys.hidden(j0 + n)) w[n] = -kInfinity;
        tile_max = row_max(w);
      }
      if (job.weights == Weights::kRecompute) {  // exp(s - lse) is the producer's softmax
        exp_shifted(w, kTile, job.lse_in[r.stat_row(m)]);
        continue;
      }
      if (keep_scores) std::memcpy(scores + m * span + (j0 - scores_from), w, size_t(count) * sizeof(float));
      if (tile_max == -kInfinity) {  // nothing visible here: weights 0, statistics unchanged
        std::fill(w, w + count, 0.f);
        continue;
      }
      const float new_max = std::max(s.max[m], tile_max);
      const float rescale = std::exp(s.max[m] - new_max);
      if (rescale != 1.f) {
        s.sum[m] *= rescale;
        scale_row(s.acc.data() + m * dim, dim, rescale);
      }
      s.sum[m] += exp_shifted(w, kTile, new_max);
      s.max[m] = new_max;
    }
    accumulate(tile, m_rows, as_float(value_slice + j0 * dim, count * dim, s.values), count, dim, s.acc.data());
  }

  if (partials) {
    const int64_t at = partials->state(item, item.part, 0);
    std::copy(s.max.begin(), s.max.end(), partials->max.begin() + at);
    std::copy(s.sum.begin(), s.sum.end(), partials->sum.begin() + at);
    std::copy(s.acc.begin(), s.acc.end(), partials->acc.begin() + at * dim);
    return;
  }
  for (int64_t m = 0; m < m_rows; ++m)
    finish_row<T>(job, r, m, s.max[m], s.sum[m], s.acc.data() + m * dim, scores + m * span, scores_from);
}

// The rows of a split slice (item of part 0) from its parts' states: the softmax states are
// combined at the largest max (a part that saw no key has max -inf and adds nothing); the
// consumer's weights are final already, so its parts' outputs add up.
template <typename T>
void merge_parts(const Job& job, const Item& item, Scratch& s, Partials& partials) {
  const ItemRows r(job, item, s.ranges);
  const int64_t dim = job.d.head_dim;
  const bool softmax = job.weights == Weights::kSoftmax;
  s.acc.resize(size_t(dim));
  for (int64_t m = 0; m < r.m_rows; ++m) {
    float max = -kInfinity, sum = 0.f;
    for (int64_t p = 0; p < partials.parts; ++p) max = std::max(max, partials.max[partials.state(item, p, m)]);
    std::fill(s.acc.begin(), s.acc.end(), 0.f);
    for (int64_t p = 0; p < partials.parts; ++p) {
      const int64_t at = partials.state(item, p, m);
      if (softmax && partials.max[at] == -kInfinity) continue;
      const float factor = softmax ? std::exp(partials.max[at] - max) : 1.f;
      sum += partials.sum[at] * factor;
      const float* acc = partials.acc.data() + at * dim;
      for (int64_t i = 0; i < dim; ++i) s.acc[i] += acc[i] * factor;
    }
    float* scores = job.probs_out && softmax ? partials.row_scores(item, m) : nullptr;
    finish_row<T>(job, r, m, max, sum, s.acc.data(), scores, 0);
  }
}

template <typename T>
void write_caches(const ua_attention_desc& d, const void* const (&past)[2], void* const (&present)[2],
                  const void* const (&fresh)[2], const int64_t* positions, int64_t slice) {
  for (int c = 0; c < 2; ++c)
    if (present[c] != nullptr)
      write_slice<T>(d, past[c], present[c], fresh[c], positions, slice / d.kv_num_heads, slice % d.kv_num_heads);
}

// How many keys (from slot 0) a row of the call may see: the static layout's last position + 1
// (positions were checked against the capacity), the dynamic layout's S.
int64_t key_extent(const ua_attention_desc& d, const int64_t* positions) {
  if (!static_layout(d)) return key_len(d);
  int64_t last = -1;
  for (int64_t i = 0; i < d.batch * d.query_len; ++i) last = std::max(last, positions[i]);
  return std::min(last + 1, d.capacity);
}

// Phase 1 then phase 2. `caches` names up to two (past, present, fresh) triples. Errors
// (out of memory for the float buffers) cannot cross the pool's threads as exceptions: the
// failing task records them.
template <typename T>
ua_status run(const char* op, const Job& job, const void* const (&past)[2], void* const (&present)[2],
              const void* const (&fresh)[2], const ua_cpu_threads* threads) {
  const ua_attention_desc& d = job.d;
  std::atomic<bool> out_of_memory{false};
  const int64_t slices = d.batch * d.kv_num_heads;
  // In place, phase 1 writes only the new rows: not worth a trip through the pool.
  const bool small_write = in_place(d, past[0] ? past[0] : past[1], present[0] ? present[0] : present[1]) ||
                           (!static_layout(d) && d.past_len == 0 && d.query_len <= kRowsPerBlock);
  auto write = [&](int64_t slice) { write_caches<T>(d, past, present, fresh, job.positions, slice); };
  if (small_write) {
    for (int64_t slice = 0; slice < slices; ++slice) write(slice);
  } else {
    for_each(threads, slices, write);
  }
  if (d.query_len == 0) return ok();

  const int64_t extent = key_extent(d, job.positions);
  const Plan plan(d, extent);
  Partials partials{d.kv_num_heads, plan.parts, d.query_len * (d.num_heads / d.kv_num_heads), extent, {}, {}, {}, {}};
  try {
    if (plan.parts > 1) {
      const size_t states = size_t(plan.slices(d) * plan.parts * partials.m_rows);
      partials.max.resize(states);
      partials.sum.resize(states);
      partials.acc.resize(states * size_t(d.head_dim));
      if (job.weights == Weights::kSoftmax && job.probs_out)
        partials.scores.resize(size_t(plan.slices(d) * partials.m_rows * partials.key_extent));
    }
  } catch (const std::bad_alloc&) {
    out_of_memory.store(true);
  }
  auto attend = [&](int64_t index) {
    thread_local Scratch scratch;
    try {
      attention_item<T>(job, plan.item(d, index), scratch, plan.parts > 1 ? &partials : nullptr);
    } catch (const std::bad_alloc&) {
      out_of_memory.store(true);
    }
  };
  if (!out_of_memory.load()) for_each(threads, plan.items(d), attend);
  auto merge = [&](int64_t slice) {
    thread_local Scratch scratch;
    try {
      merge_parts<T>(job, plan.item(d, slice * plan.parts), scratch, partials);
    } catch (const std::bad_alloc&) {
      out_of_memory.store(true);
    }
  };
  if (plan.parts > 1 && !out_of_memory.load()) for_each(threads, plan.slices(d), merge);
  if (out_of_memory.load())
    return fail(UA_DEVICE_ERROR, "%s (CPU): out of host memory for the float32 tile buffers (rows=%lld, D=%lld)", op,
                (long long)cache_len(d), (long long)d.head_dim);
  return ok();
}

template <typename T>
ua_status producer(const ua_attention_desc& d, const ua_producer_io& io, const ua_cpu_threads* threads) {
  const Job job{d, Weights::kSoftmax, io.query, io.present_key, io.present_value, io.attention_mask,
                io.position_ids, nullptr, nullptr, io.output, io.shared_probs, io.shared_lse};
  return run<T>("UniAttnProducer", job, {io.past_key, io.past_value}, {io.present_key, io.present_value},
                {io.key, io.value}, threads);
}

template <typename T>
ua_status consumer(const ua_attention_desc& d, const ua_consumer_io& io, const ua_cpu_threads* threads) {
  const bool reuse = io.shared_probs != nullptr;
  const Job job{d, reuse ? Weights::kReuse : Weights::kRecompute, io.producer_query, io.producer_key,
                io.present_value, io.attention_mask, io.position_ids, io.shared_probs, io.shared_lse,
                io.output, nullptr, nullptr};
  return run<T>("UniAttnConsumer", job, {io.past_value, nullptr}, {io.present_value, nullptr}, {io.value, nullptr},
                threads);
}

}  // namespace
}  // namespace uniattn::cpu

extern "C" {

ua_status ua_producer_cpu(const ua_attention_desc* desc, const ua_producer_io* io, const ua_cpu_threads* threads) {
  using namespace uniattn::cpu;
  if (ua_status status = uniattn::check_producer(desc, io, 0); status != UA_OK) return status;
  if (desc->batch == 0) return uniattn::ok();
  switch (desc->dtype) {
    case UA_FLOAT32: return producer<float>(*desc, *io, threads);
    case UA_FLOAT16: return producer<Float16>(*desc, *io, threads);
    default: return producer<BFloat16>(*desc, *io, threads);
  }
}

ua_status ua_consumer_cpu(const ua_attention_desc* desc, const ua_consumer_io* io, const ua_cpu_threads* threads) {
  using namespace uniattn::cpu;
  if (ua_status status = uniattn::check_consumer(desc, io, 0); status != UA_OK) return status;
  if (desc->batch == 0) return uniattn::ok();
  switch (desc->dtype) {
    case UA_FLOAT32: return consumer<float>(*desc, *io, threads);
    case UA_FLOAT16: return consumer<Float16>(*desc, *io, threads);
    default: return consumer<BFloat16>(*desc, *io, threads);
  }
}

}  // extern "C"
