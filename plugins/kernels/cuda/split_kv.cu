// Split-KV attention on CUDA cores: decode (flash-decoding), emission of shared_probs and
// shared_lse, the consumer's P . V, and every call the tensor-core kernel does not take
// (float32, few query rows). Decode is memory-bound (every K/V byte is used for a few
// multiply-adds), so everything here is arranged for bytes in flight:
//
// * A block owns a row group (up to R = 4 query rows of one KV head: the g heads x L tokens
//   sharing it, so every K/V row is read once for all of them) and one split of the key axis.
//   Its warps are independent: each streams whole steps of keys (warp w takes steps w,
//   w + kWarps, ...) with 16-byte loads, every lane keeping kKeys rows of K and V in flight,
//   and runs its own online softmax. No barrier inside the key loop.
// * Lanes: `kLanes` consecutive lanes cover one key row (8 elements each), so one load
//   instruction reads 32 / kLanes whole rows. A lane's kKeys keys are consecutive (the
//   consumer reads their P with one vector load). Dot products are summed across a row's
//   lanes by a transposing butterfly (each level halves the values a lane keeps), after which
//   every lane owns kHeld (key, row) scores; the weights travel back to the lanes holding the
//   V slices by shuffles.
// * Lazy rescaling: a warp keeps a reference max per row and rescales its accumulators only
//   when a score exceeds it by more than kRescaleSlack (log2 units), which after the first
//   step almost never happens: the common step has no cross-lane max at all. Weights stay
//   below 2^kRescaleSlack, harmless in fp32.
// * Splits are sized from the SM count (enough blocks to fill every SM at batch 1). At the
//   end the warps of a block combine through shared memory; with several splits each block
//   writes its partial output and (max, sum) to the workspace and the last block of a row
//   group to arrive (an atomic counter, zeroed before the launch) combines them.
// * The present-cache copy is fused: the blocks of row group 0 store every K/V row they load
//   (the concat costs one write and no extra read); in-place calls store only the new rows.
// * P emission without a second pass over K: a block keeps its split's scores in shared
//   memory; with one split it writes P = exp(s - lse) directly, otherwise exp(s - m_split),
//   which the last block rescales by exp(m_split - lse) (reading back what is likely still in
//   L2: K/V loads are marked evict-first).
// * Static layout (capacity > 0): the grid is the capacity's; splits past a row group's
//   visible slots exit at once (writing only the zeros P needs there), and the working splits
//   combine among themselves (NOTES.md, "Static layout").
// * Clusters (static layout, sm_90, calls whose row groups all fit one wave of clusters: the
//   decode of small batches, where latency, not bandwidth, sets the time): a row group's
//   blocks form one thread-block cluster and share the slots its rows see, split at run time
//   from the positions (a step at slot 100 gives every block a few keys, not one block all of
//   them). They combine through each other's shared memory: no partials in global memory, no
//   fence and counter, and P is written once, already normalized (NOTES.md, "Clusters").
#include <limits.h>
#include <math.h>

#include <string.h>

#include <atomic>
#include <type_traits>

#include "../src/common.h"
#include "device.cuh"
#include "launch.cuh"

namespace uniattn {
namespace cuda {
namespace {

// Warps per block. Small blocks let more of them share an SM whatever the register count.
#ifndef UA_DECODE_WARPS
#define UA_DECODE_WARPS 4
#endif
// Keys each lane streams per step: rows of K and V in flight (producer, recompute consumer),
// rows of V only in the consumer reusing P. Halved for float32 (twice the bytes per row).
#ifndef UA_KEYS_PER_THREAD
#define UA_KEYS_PER_THREAD 4
#endif
#ifndef UA_CONSUMER_KEYS_PER_THREAD
#define UA_CONSUMER_KEYS_PER_THREAD 8
#endif
// Upper bound on the blocks of one launch, whatever the device (fixes the workspace).
#ifndef UA_SPLIT_MAX_BLOCKS
#define UA_SPLIT_MAX_BLOCKS 4096
#endif
// Where the cluster path runs: 1 (the default) where the clusters of all row groups fit one
// wave of the device, 0 nowhere (the split plan everywhere; a shorter build, NOTES.md
// "Clusters"), 2 wherever the device and the shapes allow it (tests of the path on small
// devices; slower at batch 32 on an H100).
#ifndef UA_SPLIT_CLUSTERS
#define UA_SPLIT_CLUSTERS 1
#endif

constexpr int kWarps = UA_DECODE_WARPS;
constexpr int kThreads = 32 * kWarps;
constexpr int R = 4;  // query rows per block
constexpr float kRescaleSlack = 8.f;
constexpr int kMaxSplits = 256;          // splits whose combine factors live in shared memory
constexpr int64_t kMaxBlocks = UA_SPLIT_MAX_BLOCKS;
constexpr size_t kSmemBudget = 48 * 1024;  // no opt-in needed below 48 KB
constexpr int kMaxScoreKeys = 2048;
constexpr int kClusterBlocks = 16;        // blocks per cluster wanted (H100: 16 is allowed, 8 portable)
constexpr int64_t kMaxClusterKeys = 1024;  // a cluster block's keys at most: longer caches stream
                                           // faster through the split plan's many more blocks
constexpr float kInf = INFINITY;

__host__ __device__ constexpr int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
__host__ __device__ constexpr int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }
__host__ __device__ constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The shape of one kernel instance, shared by the planner (host) and the kernel.
__host__ __device__ constexpr int keys_per_thread(size_t element_size, Weights w) {
  return (w == Weights::kGivenProbs ? UA_CONSUMER_KEYS_PER_THREAD : UA_KEYS_PER_THREAD) /
         (element_size == 4 && (w == Weights::kGivenProbs ? UA_CONSUMER_KEYS_PER_THREAD : UA_KEYS_PER_THREAD) > 1
              ? 2
              : 1);
}
__host__ __device__ constexpr int step_keys(size_t element_size, Weights w, int lanes) {
  return 32 / lanes * keys_per_thread(element_size, w);
}
__host__ __device__ constexpr int64_t split_align(size_t element_size, Weights w, int lanes) {
  return imax(8, step_keys(element_size, w, lanes));  // P is written in chunks of 8 keys
}
// Floats of shared memory besides the scores: each row's shared_probs/lse and output offsets
// (2 x R int64), per-warp outputs and statistics, per-row statistics of the block and of the
// cluster, per-split combine factors, the last-block flag.
__host__ __device__ constexpr size_t fixed_floats(int lanes) {
  return 4 * R + size_t(kWarps) * R * lanes * 8 + 2 * kWarps * R + 4 * R + R * kMaxSplits + 1;
}
// Keys per split whose scores fit next to the rest (P emission only).
__host__ __device__ constexpr int64_t score_keys(bool emit, size_t element_size, Weights w, int lanes) {
  return emit ? imin(kMaxScoreKeys, int64_t((kSmemBudget / 4 - fixed_floats(lanes)) / R) /
                                        split_align(element_size, w, lanes) * split_align(element_size, w, lanes))
              : 0;
}

template <typename T, Weights W, bool kEmit, int kLanes>
struct Shape {
  static constexpr int kKeysPerLoad = 32 / kLanes;  // key rows one load instruction covers
  static constexpr int kKeys = keys_per_thread(sizeof(T), W);
  static constexpr int kStepKeys = kKeysPerLoad * kKeys;
  static constexpr int kDots = kKeys * R;  // dot products per lane and step
  // After the dot products are summed over a key row's lanes, each lane owns the scores of
  // kHeldKeys keys for all R rows, each key's scores being shared by kShared lanes.
  static constexpr int kHeldKeys = kKeys >= kLanes ? kKeys / kLanes : 1;
  static constexpr int kShared = kKeys >= kLanes ? 1 : kLanes / kKeys;
  static constexpr int kAccHeld = R * 8 / kKeysPerLoad;           // output values a lane owns at the end
  static constexpr int kDim = kLanes * 8;                          // largest head dim of the instance
  static constexpr int64_t kScoreKeys = score_keys(kEmit, sizeof(T), W, kLanes);
  static constexpr size_t kSmemBytes = (R * kScoreKeys + fixed_floats(kLanes)) * sizeof(float);
  static_assert(kSmemBytes <= kSmemBudget, "shared memory above the default 48 KB");
  static_assert((kKeys & (kKeys - 1)) == 0, "keys per thread must be a power of two");
};

// Resident warps per SM the register allocation must allow (65536 registers: 16 warps at 128
// registers a thread, 12 at 168). The consumer reusing P keeps fewer values live (no query,
// no scores) and fits 16 without spilling; the other kernels need up to 168.
#ifndef UA_PRODUCER_RESIDENT_WARPS
#define UA_PRODUCER_RESIDENT_WARPS 12
#endif
#ifndef UA_CONSUMER_RESIDENT_WARPS
#define UA_CONSUMER_RESIDENT_WARPS 16
#endif
template <Weights W>
constexpr int min_blocks() {
  const int warps = W == Weights::kGivenProbs ? UA_CONSUMER_RESIDENT_WARPS : UA_PRODUCER_RESIDENT_WARPS;
  return warps > kWarps ? warps / kWarps : 1;
}

template <typename T>
struct SplitKvKernelArgs : Geometry {
  int64_t group;  // g
  int row_tiles, splits, max_splits;  // clusters: splits = blocks per cluster
  int64_t split_len;                  // clusters: 0 (each block's keys follow from the positions)
  bool copy_past;     // false: rows j < P already sit in present (in-place append)
  bool vector_probs;  // shared_probs rows are 16-byte aligned (S % 8 == 0): chunks of 8 keys
  const T* query;
  RowSource keys, values;
  T* present_key;
  T* present_value;
  T* write_key;    // clusters: the present caches the new rows go to (SplitKvArgs), or NULL
  T* write_value;
  const int64_t* mask;  // NULL in the static layout
  const T* probs_in;
  const float* lse_in;
  T* probs_out;
  float* lse_out;
  T* output;
  float* partial_out;    // (rows, max_splits, D): each split's output before normalization
  float* partial_stats;  // (rows, max_splits, 2): each split's max (log2) and sum
  int* arrivals;         // (B, Hkv, row_tiles): splits done, zeroed before the launch
};

// Query row r of a row group: head h, token i, its index among the B*Hq*L rows, and the keys
// the causal and sliding-window conditions leave it (the padding mask is checked per key).
struct QueryRow {
  bool valid;
  int64_t h, i, global;
  int lo, hi;
};

template <typename T>
__device__ __forceinline__ QueryRow query_row(const SplitKvKernelArgs<T>& a, int64_t b, int64_t hk, int row_tile,
                                              int r) {
  QueryRow q;
  const int gr = row_tile * R + r;  // g * L query rows per KV head: far below 2^31 (32-bit division)
  q.valid = gr < a.group * a.query_len;
  const int idx = q.valid ? gr : 0, len = int(a.query_len);
  q.h = hk * a.group + idx / len;
  q.i = idx % len;
  q.global = (b * a.num_heads + q.h) * a.query_len + q.i;
  const int64_t position = query_position(a, b, q.i);
  q.hi = q.valid ? int(a.is_causal ? imin(a.key_len - 1, position) : a.key_len - 1) : -1;
  q.lo = q.valid ? int(a.window > 0 ? imax(0, position - a.window + 1) : 0) : INT_MAX;
  return q;
}

// Sums v[0..N) over the lanes that differ in bits kOffset..kLast of the lane index. While
// more than kKeep values remain, each level halves what a lane keeps (it sends the half its
// partner keeps): afterwards the lane whose bits read k holds the full sums of values
// [k * kKeep', ...), kKeep' = max(kKeep, N / 2^levels); below kKeep the levels sum in place.
template <int N, int kOffset, int kLast, int kKeep, int N0>
__device__ __forceinline__ void transpose_sum(float (&v)[N0], int lane) {
  if constexpr (kOffset >= kLast) {
    if constexpr (N > kKeep) {
      const bool upper = (lane & kOffset) != 0;
#pragma unroll
      for (int i = 0; i < N / 2; ++i) {
        const float send = upper ? v[i] : v[i + N / 2];
        const float keep = upper ? v[i + N / 2] : v[i];
        v[i] = keep + __shfl_xor_sync(kFullMask, send, kOffset);
      }
      transpose_sum<N / 2, kOffset / 2, kLast, kKeep>(v, lane);
    } else {
#pragma unroll
      for (int i = 0; i < N; ++i) v[i] += __shfl_xor_sync(kFullMask, v[i], kOffset);
      transpose_sum<N, kOffset / 2, kLast, kKeep>(v, lane);
    }
  }
}

// This lane's slice of the rows of a RowSource for one (batch, KV head): rows [split,
// fresh_end) from the packed projection, the others from the cache.
template <typename T>
struct LaneRows {
  const T* cache;
  const T* packed;
  __device__ __forceinline__ const T* row(int64_t j, int64_t split, int64_t fresh_end, int64_t head_dim,
                                          int64_t packed_stride) const {
    return j < split || j >= fresh_end ? cache + j * head_dim : packed + (j - split) * packed_stride;
  }
};

template <typename T>
__device__ __forceinline__ LaneRows<T> lane_rows(const RowSource& s, const Geometry& g, int64_t b, int64_t hk,
                                                 int slice) {
  const int64_t offset = slice * 8;
  LaneRows<T> rows;
  rows.cache = s.cache == nullptr
                   ? nullptr
                   : static_cast<const T*>(s.cache) + (b * g.kv_heads + hk) * s.cache_rows * g.head_dim + offset;
  rows.packed = s.packed == nullptr
                    ? nullptr
                    : static_cast<const T*>(s.packed) + (b * g.query_len * g.kv_heads + hk) * g.head_dim + offset;
  return rows;
}

// kKeys consecutive weights of one shared_probs row (`valid` of them inside the split);
// 16-byte loads where the row is aligned (`vector`) and the keys all valid.
template <typename T, int kKeys>
__device__ __forceinline__ void load_weights(const T* p, bool vector, int64_t valid, float (&w)[kKeys]) {
  constexpr int kBytes = kKeys * int(sizeof(T)), kPerChunk = 16 / int(sizeof(T));
  if constexpr (kBytes % 16 == 0) {
    if (vector && valid >= kKeys) {
#pragma unroll
      for (int c = 0; c < kBytes / 16; ++c) {
        const uint4 chunk = load_as<Load::kNormal>(reinterpret_cast<const uint4*>(p) + c);
        T e[kPerChunk];
        memcpy(e, &chunk, sizeof(chunk));
#pragma unroll
        for (int k = 0; k < kPerChunk; ++k) w[c * kPerChunk + k] = to_float(e[k]);
      }
      return;
    }
  }
#pragma unroll
  for (int k = 0; k < kKeys; ++k) w[k] = k < valid ? to_float(p[k]) : 0.f;
}

// The kernel's body; kCluster: the block is rank `blockIdx.x % splits` of its row group's
// cluster (split_kv_cluster_kernel), otherwise split `blockIdx.x / row_tiles` (split_kv_kernel).
template <typename T, Weights W, bool kEmit, int kLanes, bool kCluster>
__device__ __forceinline__ void split_kv(const SplitKvKernelArgs<T>& a) {
  using K = Shape<T, W, kEmit, kLanes>;
  constexpr int kKeys = K::kKeys, kDots = K::kDots, kDim = K::kDim;
  constexpr bool kSoftmax = W == Weights::kSoftmax;
  UA_DYNAMIC_SMEM(smem);
  // Each row's index among the B*Hq*L rows (-1: no row) and its output offset, computed once:
  // the divisions behind them would otherwise be inlined into every loop that needs a row,
  // and the code the last block runs alone must stay small (it is fetched cold).
  int64_t* s_row_global = reinterpret_cast<int64_t*>(smem);  // R
  int64_t* s_row_out = s_row_global + R;                      // R
  float* s_scores = reinterpret_cast<float*>(s_row_out + R);  // R x kScoreKeys: the split's scores (log2)
  float* s_acc = s_scores + R * K::kScoreKeys;          // kWarps x R x kDim: each warp's output
  float* s_warp_max = s_acc + kWarps * R * kDim;       // kWarps x R
  float* s_warp_sum = s_warp_max + kWarps * R;         // kWarps x R
  float* s_row = s_warp_sum + kWarps * R;              // R x 2: (max, sum) of the split, then of the row
  float* s_total = s_row + 2 * R;                      // R x 2: clusters: (max, sum) of the row
  float* s_factor = s_total + 2 * R;                   // R x kMaxSplits: exp(m_split - lse) per split
  int* s_last = reinterpret_cast<int*>(s_factor + R * kMaxSplits);

  // A dependent launch (device.cuh): the output projection after attention fetches its weight
  // while this kernel runs (linear.cu), and this kernel starts while SplitRotary finishes.
  allow_dependents();
  wait_for_upstream();
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int slice = lane % kLanes, key_group = lane / kLanes;
  const int D = int(a.head_dim);
  const bool slice_active = slice * 8 < D;
  const int row_tile = int(kCluster ? blockIdx.x / a.splits : blockIdx.x % a.row_tiles);
  const int split = int(kCluster ? blockIdx.x % a.splits : blockIdx.x / a.row_tiles);
  const int64_t hk = blockIdx.y, b = blockIdx.z;
  const int S = int(a.key_len);  // < 2^31 (entry.cu)
  int k0 = int(split * a.split_len), k1 = int(imin(S, k0 + a.split_len));  // clusters: set below
  const int rows_here = int(imin(R, a.group * a.query_len - int64_t(row_tile) * R));

  // The rows first: their indices, positions and the keys the causal and sliding-window
  // conditions leave each (the mask is checked per key): any row may see keys in
  // [attend_lo, attend_hi], every row sees [common_lo, common_hi]. The static layout's idle
  // splits exit on these alone; the others then load every query slice at once (one round
  // trip to memory, not one per row: loads inside per-row branches are not batched).
  int64_t row_global[R];  // -1: no row
  int64_t probs_row[R];   // row_global * S, -1: no row
  int64_t query_offset[R];
  int lo[R], hi[R];
  int attend_lo = INT_MAX, attend_hi = -1, common_lo = 0, common_hi = INT_MAX;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const QueryRow row = query_row(a, b, hk, row_tile, r);
    lo[r] = row.lo;
    hi[r] = row.hi;
    if (row.valid) {
      attend_lo = int(imin(attend_lo, row.lo));
      attend_hi = int(imax(attend_hi, row.hi));
      common_lo = int(imax(common_lo, row.lo));
      common_hi = int(imin(common_hi, row.hi));
    }
    row_global[r] = row.valid ? row.global : -1;
    probs_row[r] = row.valid ? row.global * S : -1;
    query_offset[r] = ((b * a.query_len + row.i) * a.num_heads + row.h) * D;
    if (tid == r) {
      s_row_global[r] = row_global[r];
      s_row_out[r] = query_offset[r];
    }
  }
  const bool fixed = a.positions != nullptr;  // static layout
  if (W == Weights::kGivenProbs && !fixed) {  // P is given for every key (0 where hidden)
    attend_lo = common_lo = 0;
    attend_hi = common_hi = S - 1;
  }

  // shared_probs of row `global`, keys j .. j+7 below `end`: one 16-byte store where the row allows.
  const auto store_probs = [&](int64_t global, int64_t j, const float (&f)[8], int64_t end) {
    T* dst = a.probs_out + global * S + j;
    if (a.vector_probs && j + 8 <= end) {
      store_slice(dst, floats_to_slice<T>(f));
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e)
        if (j + e < end) dst[e] = from_float<T>(f[e]);
    }
  };

  // Static layout: the grid is sized for the capacity, each row sees only the slots up to its
  // position (and inside the window). Splits no row of the group sees exit at once, after
  // writing the zeros their part of shared_probs holds up to the row's last position (docs/ops.md);
  // the others combine among themselves (first_split .. end_split).
  int first_split = 0, end_split = a.splits;
  // shared_probs is written for keys below it: up to the last token's slot (static layout)
  const int emit_end = fixed ? int(imin(S, query_position(a, b, a.query_len - 1) + 1)) : S;
  if (kCluster) {
    // The cluster's blocks share the slots [base, attend_hi] that some row of the group sees,
    // in equal parts (multiples of the step alignment: P chunks stay 16-byte aligned); every
    // block takes part in the combine, those without keys with an empty part. Zeros of
    // shared_probs below `base` (window-hidden slots) are written by all blocks in turn.
    constexpr int kAlign = int(split_align(sizeof(T), W, kLanes));
    const bool visible = attend_lo <= attend_hi;
    const int base = visible ? attend_lo / kAlign * kAlign : 0;
    const int span = visible ? attend_hi + 1 - base : 0;
    const int part = int(ceil_div(ceil_div(span, a.splits), kAlign) * kAlign);
    k0 = int(imin(S, base + int64_t(split) * part));
    k1 = int(imin(S, int64_t(k0) + part));
    if (kEmit) {
      const int zero_end = int(imin(emit_end, visible ? base : S));
      const float zeros[8] = {};
#pragma unroll
      for (int r = 0; r < R; ++r)
        if (r < rows_here)
          for (int c = split * kThreads + tid; c * 8 < zero_end; c += a.splits * kThreads)
            store_probs(row_global[r], int64_t(c) * 8, zeros, zero_end);
    }
    // The new rows into the present caches (no scatter ran): one block per (batch, KV head).
    // The cluster reads them from the projections, so nothing here waits for these stores.
    if (split == 0 && row_tile == 0) {
      const int per_row = D / 8, per_cache = int(a.query_len) * per_row;
      for (int x = tid; x < 2 * per_cache; x += kThreads) {
        const bool value = x >= per_cache;
        T* const cache = value ? a.write_value : a.write_key;
        const int i = (x % per_cache) / per_row, col = (x % per_row) * 8;
        const int64_t slot = query_position(a, b, i);
        if (cache == nullptr || slot < 0 || slot >= S) continue;
        const T* fresh = static_cast<const T*>(value ? a.values.packed : a.keys.packed);
        store_slice(cache + ((b * a.kv_heads + hk) * S + slot) * D + col,
                    load_slice(fresh + ((b * a.query_len + i) * a.kv_heads + hk) * D + col));
      }
    }
  } else if (fixed) {
    if (attend_lo > attend_hi || k0 > attend_hi || k1 <= attend_lo) {
      if (kEmit) {
        const int end = int(imin(k1, emit_end));
        const int chunks = int(ceil_div(imax(0, end - k0), 8));
        const float zeros[8] = {};
#pragma unroll
        for (int r = 0; r < R; ++r)
          if (r < rows_here)
            for (int c = tid; c < chunks; c += kThreads) store_probs(row_global[r], k0 + int64_t(c) * 8, zeros, end);
      }
      return;
    }
    first_split = int(attend_lo / a.split_len);
    end_split = int(attend_hi / a.split_len) + 1;
  }

  // The queries (this lane's slice, pre-scaled into the log2 domain) and lse (kFromLse, log2).
  float q[R][8];
  float lse[R];
  {
    Slice8<T> raw[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      raw[r] = Slice8<T>{};
      if (W != Weights::kGivenProbs && row_global[r] >= 0 && slice_active)
        raw[r] = load_slice(a.query + query_offset[r] + slice * 8);
      lse[r] = (W == Weights::kFromLse && row_global[r] >= 0) ? a.lse_in[row_global[r]] * kLog2e : kInf;
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      slice_to_floats(raw[r], q[r]);
#pragma unroll
      for (int e = 0; e < 8; ++e) q[r][e] *= a.scale_log2;
    }
  }
  const int active_splits = end_split - first_split;
  // Keys this block loads: its split (dynamic layout: it also copies them to present), or the
  // part of it that a row sees (static layout: slots beyond may hold anything, even NaN).
  const int load_lo = fixed ? int(imax(k0, attend_lo)) : k0, load_end = fixed ? int(imin(k1, attend_hi + 1)) : k1;

  // Where this lane's slice of key/value row j lives: rows j < split in the cache, the rest
  // in the packed projection.
  const LaneRows<T> k_src = lane_rows<T>(a.keys, a, b, hk, slice), v_src = lane_rows<T>(a.values, a, b, hk, slice);
  // Rows [split, fresh_end) of a source come from its packed projection: the new tokens after
  // the past (dynamic layout), or, for clusters, the tokens at slots [p0, p0 + L) that no
  // scatter has written (the contract's positions of a row are consecutive; any others only
  // change which rows are read, never where).
  int64_t key_split = a.keys.split, value_split = a.values.split, fresh_rows = INT64_MAX / 2;
  if (kCluster) {
    const int64_t p0 = query_position(a, b, 0);
    fresh_rows = a.query_len;
    if (a.keys.packed != nullptr) key_split = p0;
    if (a.values.packed != nullptr) value_split = p0;
  }
  const int cached = int(imin(key_split, value_split));  // keys below it: both rows in the caches
  const int64_t packed_stride = a.kv_heads * D;
  T* const present_k = a.present_key == nullptr ? nullptr : a.present_key + (b * a.kv_heads + hk) * S * D + slice * 8;
  T* const present_v =
      a.present_value == nullptr ? nullptr : a.present_value + (b * a.kv_heads + hk) * S * D + slice * 8;
  const bool copy_k = kSoftmax && row_tile == 0 && present_k != nullptr;
  const bool copy_v = row_tile == 0 && present_v != nullptr;
  const int64_t* mask = a.mask != nullptr ? a.mask + b * S : nullptr;  // NULL: static layout

  // Keys of a step this lane owns scores of (after the sum over a key row's lanes).
  const int held_key = K::kKeys >= kLanes ? slice * K::kHeldKeys : slice / K::kShared;
  float acc[R][8] = {};
  float row_max[R];  // kSoftmax: the warp's reference max per row (log2), warp-uniform
  float row_sum[R];  // kSoftmax: this lane's part of the sum of weights
#pragma unroll
  for (int r = 0; r < R; ++r) {
    row_max[r] = -kInf;
    row_sum[r] = 0.f;
  }

  // One step of kStepKeys keys. kFull: every key of the step is inside the split, in the
  // caches and visible to every row up to the mask (and, for the consumer, every row valid and
  // P 16-byte aligned): no per-key bounds, sources or row limits. The others: the step with the
  // new tokens, the split's ragged end, causal diagonals and window edges. The K/V rows a lane
  // holds are loaded by `load` (every load of the step before any use) and used by `step`.
  // (Loading a warp's next full step before this one's arithmetic was measured slower on the
  // H100, 2026-12-06: NOTES.md.)
  using Rows = Slice8<T>[kKeys];
  const auto load = [&](auto full, const int step0, Rows& k_rows, Rows& v_rows) {
    constexpr bool kFull = decltype(full)::value;
    const int key0 = step0 + key_group * kKeys;  // this lane's first key
    const int64_t row0 = int64_t(key0) * D;
    // Lanes past the head dim (D < kDim) load nothing, full steps included: their slice
    // pointer lies in the following rows (or past the end of the cache), and its values,
    // poisoned or garbage, would reach the scores as 0 * NaN.
#pragma unroll
    for (int u = 0; u < kKeys; ++u) {
      const int j = key0 + u;
      k_rows[u] = Slice8<T>{};
      v_rows[u] = Slice8<T>{};
      if (!slice_active || (!kFull && (j < load_lo || j >= load_end))) continue;
      if (W != Weights::kGivenProbs)
        k_rows[u] = load_slice<T, Load::kStreaming>(kFull ? k_src.cache + row0 + u * D
                                                          : k_src.row(j, key_split, key_split + fresh_rows, D,
                                                                      packed_stride));
      v_rows[u] = load_slice<T, Load::kStreaming>(kFull ? v_src.cache + row0 + u * D
                                                        : v_src.row(j, value_split, value_split + fresh_rows, D,
                                                                    packed_stride));
    }
  };
  const auto step = [&](auto full, const int step0, const bool copy, const Rows& k_rows, const Rows& v_rows) {
    constexpr bool kFull = decltype(full)::value;
    const int key0 = step0 + key_group * kKeys;  // this lane's first key
    const int64_t row0 = int64_t(key0) * D;
    if (copy) {  // full steps hold past keys only: stored unless the append is in place
#pragma unroll
      for (int u = 0; u < kKeys; ++u) {
        const int j = key0 + u;
        if (slice_active && (kFull || (j < k1 && (a.copy_past || j >= a.past_len)))) {
          if (copy_k) store_slice(present_k + row0 + u * D, k_rows[u]);
          if (copy_v) store_slice(present_v + row0 + u * D, v_rows[u]);
        }
      }
    }

    float w[kKeys][R];  // weight of each of this lane's keys for each row
    if constexpr (W == Weights::kGivenProbs) {
#pragma unroll
      for (int r = 0; r < R; ++r) {
        float row_w[kKeys];
        if (kFull)
          load_weights<T, kKeys>(a.probs_in + probs_row[r] + key0, true, kKeys, row_w);
        else if (probs_row[r] >= 0)  // static layout: P is unspecified past the group's last slot
          load_weights<T, kKeys>(a.probs_in + probs_row[r] + key0, a.vector_probs, load_end - key0, row_w);
        else
#pragma unroll
          for (int u = 0; u < kKeys; ++u) row_w[u] = 0.f;
#pragma unroll
        for (int u = 0; u < kKeys; ++u) w[u][r] = row_w[u];
      }
    } else {
      float dots[kDots];
#pragma unroll
      for (int u = 0; u < kKeys; ++u) {
        float k[8];
        slice_to_floats(k_rows[u], k);
#pragma unroll
        for (int r = 0; r < R; ++r) {
          float s = q[r][0] * k[0];
#pragma unroll
          for (int e = 1; e < 8; ++e) s = fmaf(q[r][e], k[e], s);
          dots[u * R + r] = s;
        }
      }
      transpose_sum<kDots, kLanes / 2, 1, R>(dots, lane);

      float p[K::kHeldKeys][R];
      bool rescale = false;
#pragma unroll
      for (int k = 0; k < K::kHeldKeys; ++k) {
        const int j = key0 + held_key + k;
        const bool real = (kFull || j < k1) && (mask == nullptr || mask[j] != 0);
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const float score = real && (kFull || (j >= lo[r] && j <= hi[r])) ? dots[k * R + r] : -kInf;
          if (kEmit && (kFull || j < k1)) s_scores[r * K::kScoreKeys + (j - k0)] = score;
          rescale |= score > row_max[r] + kRescaleSlack;
          p[k][r] = score;
        }
      }
      if (kSoftmax && __any_sync(kFullMask, rescale)) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
          float step_max = -kInf;
#pragma unroll
          for (int k = 0; k < K::kHeldKeys; ++k) step_max = fmaxf(step_max, p[k][r]);
          step_max = warp_max(step_max);
          if (step_max > row_max[r]) {
            const float alpha = exp2f(row_max[r] - step_max);
            row_max[r] = step_max;
            row_sum[r] *= alpha;
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[r][e] *= alpha;
          }
        }
      }
#pragma unroll
      for (int k = 0; k < K::kHeldKeys; ++k)
#pragma unroll
        for (int r = 0; r < R; ++r) {
          p[k][r] = p[k][r] == -kInf ? 0.f : exp2f(p[k][r] - (kSoftmax ? row_max[r] : lse[r]));
          row_sum[r] += p[k][r];
        }
      // Hand each weight to the lanes holding the V slices of its key.
#pragma unroll
      for (int u = 0; u < kKeys; ++u)
#pragma unroll
        for (int r = 0; r < R; ++r)
          w[u][r] = K::kKeys >= kLanes ? __shfl_sync(kFullMask, p[u % K::kHeldKeys][r], u / K::kHeldKeys, kLanes)
                                       : __shfl_sync(kFullMask, p[0][r], u * K::kShared, kLanes);
    }

#pragma unroll
    for (int u = 0; u < kKeys; ++u) {
      float v[8];
      slice_to_floats(v_rows[u], v);
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[r][e] = fmaf(w[u][r], v[e], acc[r][e]);
    }
  };

  const bool vector_weights = W != Weights::kGivenProbs || (rows_here == R && a.vector_probs &&
                                                            K::kKeys * sizeof(T) % 16 == 0);
  const int steps = (k1 - k0 + K::kStepKeys - 1) / K::kStepKeys;
  const auto is_full = [&](const int step0) {
    const int step_end = step0 + K::kStepKeys;
    return step_end <= k1 && step_end <= cached && step0 >= common_lo && step_end - 1 <= common_hi && vector_weights;
  };
  Rows k_rows, v_rows;
  for (int t = warp; t < steps; t += kWarps) {
    const int step0 = k0 + t * K::kStepKeys, step_end = step0 + K::kStepKeys;  // exclusive
    const bool copy = (copy_k || copy_v) && (a.copy_past || step_end > a.past_len);  // (all keys < S)
    if (step0 > attend_hi || step_end <= attend_lo) {  // no row sees these keys
      if (kEmit)
        for (int x = lane; x < R * K::kStepKeys; x += 32) {
          const int j = step0 + x % K::kStepKeys;
          if (j < k1) s_scores[(x / K::kStepKeys) * K::kScoreKeys + (j - k0)] = -kInf;
        }
      if (!copy) continue;
    }
    // (a copy-only step runs the general path: its weights are 0, its stores are what counts)
    if (is_full(step0)) {
      load(std::true_type{}, step0, k_rows, v_rows);
      step(std::true_type{}, step0, copy, k_rows, v_rows);
    } else {
      load(std::false_type{}, step0, k_rows, v_rows);
      step(std::false_type{}, step0, copy, k_rows, v_rows);
    }
  }

  // This warp's output: sum the key groups (lanes with the same slice), then to shared memory.
  {
    float flat[R * 8];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int e = 0; e < 8; ++e) flat[r * 8 + e] = acc[r][e];
    transpose_sum<R * 8, 16, kLanes, 1>(flat, lane);
    if (slice_active) {
#pragma unroll
      for (int i = 0; i < K::kAccHeld; ++i) {
        const int n = key_group * K::kAccHeld + i;
        s_acc[(warp * R + n / 8) * kDim + slice * 8 + n % 8] = flat[i];
      }
    }
  }
  if (kSoftmax) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const float sum = warp_sum(row_sum[r]) / float(K::kShared);  // each score sits in kShared lanes
      if (lane == 0) {
        s_warp_max[warp * R + r] = row_max[r];
        s_warp_sum[warp * R + r] = sum;
      }
    }
  }
  block_sync();  // not __syncthreads(): the warps come from per-lane branches (device.cuh)

  // The block's output: its warps combined.
  for (int x = tid; x < rows_here * D; x += kThreads) {
    const int r = x / D, d = x % D;
    float m = -kInf, l = 0.f, v = 0.f;
    if (kSoftmax)
      for (int w = 0; w < kWarps; ++w) m = fmaxf(m, s_warp_max[w * R + r]);
    for (int w = 0; w < kWarps; ++w) {
      const float f = !kSoftmax ? 1.f : m == -kInf ? 0.f : exp2f(s_warp_max[w * R + r] - m);
      v += s_acc[(w * R + r) * kDim + d] * f;
      if (kSoftmax) l += s_warp_sum[w * R + r] * f;
    }
    const int64_t global = s_row_global[r];
    if (kCluster) {  // warp 0's slot: this thread alone read every warp's value of (r, d)
      s_acc[r * kDim + d] = v;
    } else if (active_splits == 1) {
      a.output[s_row_out[r] + d] = from_float<T>(!kSoftmax ? v : l > 0.f ? v / l : 0.f);
      if (kSoftmax && d == 0 && a.lse_out != nullptr) a.lse_out[global] = l > 0.f ? (m + log2f(l)) * kLn2 : kInf;
    } else {
      a.partial_out[(global * a.max_splits + split) * D + d] = v;
      if (kSoftmax && d == 0) {
        a.partial_stats[(global * a.max_splits + split) * 2] = m;
        a.partial_stats[(global * a.max_splits + split) * 2 + 1] = l;
      }
    }
    if (d == 0) {
      s_row[2 * r] = m;
      s_row[2 * r + 1] = l;
    }
  }

  // The split's P, from the scores: exp(s - m - log2(l)) with `stats` = each row's (m, l) of
  // the whole row (normalized), else exp(s - m) with the split's m.
  const auto emit_probs = [&](const float* stats, const bool normalized) {
    const int end = int(imin(k1, emit_end));
    const int chunks = int(ceil_div(imax(0, end - k0), 8));
    for (int x = tid; x < rows_here * chunks; x += kThreads) {
      const int r = x / chunks;
      const int64_t j = k0 + int64_t(x % chunks) * 8;
      const float m = stats[2 * r], l = stats[2 * r + 1];
      const float reference = normalized ? m + log2f(l) : m;  // rows without a visible key: all -inf
      // Two 16-byte shared-memory loads per chunk (8 scalar loads of consecutive threads, 8
      // floats apart, would hit 4 banks: 8-way conflicts). j - k0 is a multiple of 8 and the
      // score rows start 16-byte aligned.
      const float* scores = s_scores + r * K::kScoreKeys + (j - k0);
      float f[8];
      if (j + 8 <= k1) {
        const float4 lo = reinterpret_cast<const float4*>(scores)[0], hi = reinterpret_cast<const float4*>(scores)[1];
        f[0] = lo.x, f[1] = lo.y, f[2] = lo.z, f[3] = lo.w, f[4] = hi.x, f[5] = hi.y, f[6] = hi.z, f[7] = hi.w;
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) f[e] = j + e < k1 ? scores[e] : -kInf;
      }
#pragma unroll
      for (int e = 0; e < 8; ++e) f[e] = f[e] == -kInf ? 0.f : exp2f(f[e] - reference);
      store_probs(s_row_global[r], j, f, end);
    }
  };

  if constexpr (kCluster) {
    // Every block's (max, sum) and output are in its shared memory: each row's totals over the
    // cluster (a warp per row, a lane per block), then each block sums its share of the output
    // values over the cluster and writes its part of P, normalized.
    cluster_sync();
    for (int r = warp; r < rows_here; r += kWarps) {
      float m_peer = -kInf, l_peer = 0.f;
      if (kSoftmax && lane < a.splits) {
        const float* peer = cluster_peer(s_row, lane);
        m_peer = peer[2 * r];
        l_peer = peer[2 * r + 1];
      }
      const float m = warp_max(m_peer);
      const float f = m == -kInf ? 0.f : exp2f(m_peer - m);
      const float l = warp_sum(l_peer * f);
      if (lane < a.splits) s_factor[r * kMaxSplits + lane] = !kSoftmax ? 1.f : l > 0.f ? f / l : 0.f;
      if (lane == 0) {
        s_total[2 * r] = m;
        s_total[2 * r + 1] = l;
        if (kSoftmax && split == 0 && a.lse_out != nullptr)
          a.lse_out[s_row_global[r]] = l > 0.f ? (m + log2f(l)) * kLn2 : kInf;
      }
    }
    block_sync();
    for (int x = split + a.splits * tid; x < rows_here * D; x += a.splits * kThreads) {
      const int r = x / D, d = x % D;
      float v = 0.f;
      for (int c = 0; c < a.splits; ++c) v = fmaf(cluster_peer(s_acc, c)[r * kDim + d], s_factor[r * kMaxSplits + c], v);
      a.output[s_row_out[r] + d] = from_float<T>(v);
    }
    if (kEmit) emit_probs(s_total, true);
    cluster_sync();  // the peers may still be reading this block's shared memory
    return;
  }
  if (kEmit) {
    __syncthreads();
    emit_probs(s_row, active_splits == 1);
  }
  if (active_splits == 1) return;

  // Several splits: the last block of the row group to finish combines them.
  __threadfence();
  __syncthreads();
  if (tid == 0) *s_last = atomicAdd(a.arrivals + (b * a.kv_heads + hk) * a.row_tiles + row_tile, 1) == active_splits - 1;
  __syncthreads();
  if (!*s_last) return;
  __threadfence();

  // Each row's max and sum over all splits (a warp per row, lanes over the splits).
  for (int r = warp; r < rows_here; r += kWarps) {
    const int64_t row = s_row_global[r];
    const float* stats = a.partial_stats + row * a.max_splits * 2;
    float m = -kInf, l = 0.f;
    if (kSoftmax) {
      for (int s = first_split + lane; s < end_split; s += 32) m = fmaxf(m, __ldcg(stats + 2 * s));
      m = warp_max(m);
      if (m != -kInf)
        for (int s = first_split + lane; s < end_split; s += 32) l += __ldcg(stats + 2 * s + 1) * exp2f(__ldcg(stats + 2 * s) - m);
      l = warp_sum(l);
    }
    if (lane == 0) {
      s_row[2 * r] = m;
      s_row[2 * r + 1] = l;
      if (kSoftmax && a.lse_out != nullptr) a.lse_out[row] = l > 0.f ? (m + log2f(l)) * kLn2 : kInf;
    }
  }

  // The output: each (row, 4 columns) is summed over the splits by `parts` threads (16-byte
  // loads, many in flight: this runs on one block while the others are done) into shared
  // memory (the per-warp outputs are no longer needed), then the parts are added.
  const int quads = D / 4, pairs = rows_here * quads;
  const int parts = int(imax(1, kThreads / pairs));
  float4* s_part = reinterpret_cast<float4*>(s_acc);  // parts x pairs
  for (int x = tid; x < parts * pairs; x += kThreads) s_part[x] = make_float4(0.f, 0.f, 0.f, 0.f);
  // Splits in chunks of kMaxSplits, whose factors exp(m_split - lse) fit in shared memory.
  for (int chunk = first_split; chunk < end_split; chunk += kMaxSplits) {
    const int chunk_end = int(imin(end_split, chunk + kMaxSplits));
    __syncthreads();
    for (int r = warp; r < rows_here; r += kWarps) {
      const float* stats = a.partial_stats + s_row_global[r] * a.max_splits * 2;
      const float m = s_row[2 * r], l = s_row[2 * r + 1];
      for (int s = chunk + lane; s < chunk_end; s += 32)
        s_factor[r * kMaxSplits + s - chunk] = !kSoftmax ? 1.f : l > 0.f ? exp2f(__ldcg(stats + 2 * s) - m) / l : 0.f;
    }
    __syncthreads();

    for (int x = tid; x < parts * pairs; x += kThreads) {
      const int pair = x % pairs, part = x / pairs, r = pair / quads;
      const int64_t row = s_row_global[r];
      const float4* partial = reinterpret_cast<const float4*>(a.partial_out + row * a.max_splits * D) + pair % quads;
      float4 sum = s_part[x];
#pragma unroll 8
      for (int s = chunk + part; s < chunk_end; s += parts) {
        const float4 v = load_as<Load::kL2>(partial + int64_t(s) * quads);
        const float f = s_factor[r * kMaxSplits + s - chunk];
        sum = make_float4(fmaf(v.x, f, sum.x), fmaf(v.y, f, sum.y), fmaf(v.z, f, sum.z), fmaf(v.w, f, sum.w));
      }
      s_part[x] = sum;
    }

    // The chunk's P, from exp(s - m_split) to exp(s - lse): batches of 16-byte loads before
    // their stores (a store may alias the next load as far as the compiler knows); the few
    // chunks that cannot be vectors (a row's ragged end, unaligned rows) element by element in
    // a rolled loop. Code here runs once, on one block, fetched cold: kept small.
    if (kEmit) {
      constexpr int kBatch = 16 / int(sizeof(T));
      const int split_len = int(a.split_len);  // <= S < 2^31: 32-bit index arithmetic below
      const int first_key = chunk * split_len;
      const int keys = int(imax(0, imin(emit_end, int64_t(chunk_end) * split_len) - first_key));
      const int chunks = (keys + 7) / 8, total = rows_here * chunks;
      for (int first = tid; first < total; first += kThreads * kBatch) {
        Slice8<T> values[kBatch];
        T* where[kBatch];
        int key[kBatch];
        float factor[kBatch];
        bool vector[kBatch];
#pragma unroll
        for (int n = 0; n < kBatch; ++n) {
          const int x = first + n * kThreads, r = x / chunks, j = first_key + (x % chunks) * 8;
          where[n] = x < total ? a.probs_out + s_row_global[r] * S + j : nullptr;
          key[n] = j;
          factor[n] = x < total ? s_factor[r * kMaxSplits + j / split_len - chunk] : 0.f;
          vector[n] = x < total && a.vector_probs && j + 8 <= emit_end;
          values[n] = vector[n] ? load_slice<T, Load::kL2>(where[n]) : Slice8<T>{};
        }
#pragma unroll
        for (int n = 0; n < kBatch; ++n) {
          if (vector[n]) {
            float scaled[8];
            slice_to_floats(values[n], scaled);
#pragma unroll
            for (int k = 0; k < 8; ++k) scaled[k] *= factor[n];
            store_slice(where[n], floats_to_slice<T>(scaled));
          } else if (where[n] != nullptr) {
#pragma unroll 1
            for (int k = 0; k < 8 && key[n] + k < emit_end; ++k)
              where[n][k] = from_float<T>(to_float(__ldcg(where[n] + k)) * factor[n]);
          }
        }
      }
    }
  }
  __syncthreads();

  for (int pair = tid; pair < pairs; pair += kThreads) {
    const int64_t out_offset = s_row_out[pair / quads];
    float4 sum = s_part[pair];
    for (int part = 1; part < parts; ++part) {
      const float4 v = s_part[part * pairs + pair];
      sum = make_float4(sum.x + v.x, sum.y + v.y, sum.z + v.z, sum.w + v.w);
    }
    T* out = a.output + out_offset + (pair % quads) * 4;
    out[0] = from_float<T>(sum.x);
    out[1] = from_float<T>(sum.y);
    out[2] = from_float<T>(sum.z);
    out[3] = from_float<T>(sum.w);
  }
}

template <typename T, Weights W, bool kEmit, int kLanes>
__global__ void __launch_bounds__(kThreads, (min_blocks<W>())) split_kv_kernel(const SplitKvKernelArgs<T> a) {
  split_kv<T, W, kEmit, kLanes, false>(a);
}

template <typename T, Weights W, bool kEmit, int kLanes>
__global__ void __launch_bounds__(kThreads, (min_blocks<W>())) split_kv_cluster_kernel(const SplitKvKernelArgs<T> a) {
#if defined(UA_CUDA_EMULATE) || !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
  split_kv<T, W, kEmit, kLanes, true>(a);
#else
  __trap();  // launched only where the device has clusters (sm_90 and later)
#endif
}

// ---- host side -------------------------------------------------------------------------

// Blocks of `kernel` the current device runs at once (SMs x resident blocks per SM), asked
// once per device: the split count is chosen to fill them.
template <typename Kernel>
ua_status resident_blocks(Kernel kernel, size_t smem, std::atomic<int> (&cache)[64], int64_t& blocks) {
  int device = 0;
  if (cudaError_t e = cudaGetDevice(&device); e != cudaSuccess)
    return fail(UA_DEVICE_ERROR, "split_kv: no current CUDA device: %s", cudaGetErrorString(e));
  std::atomic<int>& slot = cache[device & 63];
  int known = slot.load();
  if (known == 0) {
    int sms = 0, per_sm = 0;
    if (cudaError_t e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device); e != cudaSuccess)
      return fail(UA_DEVICE_ERROR, "split_kv: cannot read the SM count: %s", cudaGetErrorString(e));
    if (cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem);
        e != cudaSuccess)
      return fail(UA_DEVICE_ERROR, "split_kv: cannot read the occupancy: %s", cudaGetErrorString(e));
    known = int(imax(1, int64_t(sms) * per_sm));
    slot.store(known);
  }
  blocks = known;
  return UA_OK;
}

// Splits for `groups` row groups on `resident` block slots: the fewest whose last wave of
// blocks is nearly as full as the best choice's (flash-decoding's rule).
int choose_splits(const SplitKvPlan& plan, int64_t groups, int64_t resident) {
  const auto efficiency = [&](int splits) {
    const double waves = double(groups * splits) / double(resident);
    return waves / ceil(waves);
  };
  double best = 0.;
  for (int s = plan.min_splits; s <= plan.max_splits; ++s) best = fmax(best, efficiency(s));
  for (int s = plan.min_splits; s <= plan.max_splits; ++s)
    if (efficiency(s) >= 0.95 * best) return s;
  return plan.min_splits;
}

// One kernel instance of a call (a tag: the dispatch below hands it to generic lambdas).
template <typename T, Weights W, bool kEmit, int kLanes>
struct Instance {};

// Calls f(Instance<...>{}) for the instance that serves (dtype, weights, emit, lanes).
template <typename T, Weights W, bool kEmit, typename F>
ua_status dispatch_lanes(int lanes, F&& f) {
  switch (lanes) {
    case 8: return f(Instance<T, W, kEmit, 8>{});
    case 16: return f(Instance<T, W, kEmit, 16>{});
    default: return f(Instance<T, W, kEmit, 32>{});
  }
}

template <typename T, typename F>
ua_status dispatch_weights(Weights weights, bool emit, int lanes, F&& f) {
  switch (weights) {
    case Weights::kSoftmax:
      return emit ? dispatch_lanes<T, Weights::kSoftmax, true>(lanes, f)
                  : dispatch_lanes<T, Weights::kSoftmax, false>(lanes, f);
    case Weights::kGivenProbs: return dispatch_lanes<T, Weights::kGivenProbs, false>(lanes, f);
    case Weights::kFromLse: return dispatch_lanes<T, Weights::kFromLse, false>(lanes, f);
  }
  return fail(UA_INVALID_ARGUMENT, "split_kv: unknown weights mode");
}

template <typename F>
ua_status dispatch(ua_dtype dtype, Weights weights, bool emit, int lanes, F&& f) {
  switch (dtype) {
    case UA_FLOAT32: return dispatch_weights<float>(weights, emit, lanes, f);
    case UA_FLOAT16: return dispatch_weights<__half>(weights, emit, lanes, f);
    case UA_BFLOAT16: return dispatch_weights<__nv_bfloat16>(weights, emit, lanes, f);
  }
  return fail(UA_INVALID_ARGUMENT, "unknown dtype code %d", int(dtype));
}

// Blocks per cluster for a static-layout call (0: the split plan): the largest cluster the
// device allows (asked once per device) such that every block's part of the slots fits its
// limits (scores in shared memory when P is emitted, kMaxClusterKeys) and, unless forced
// (UA_SPLIT_CLUSTERS 2), the clusters of all row groups run in one wave.
template <typename T, Weights W, bool kEmit, int kLanes>
ua_status choose_cluster(Instance<T, W, kEmit, kLanes>, const ua_attention_desc& d, const SplitKvPlan& plan,
                         int& cluster) {
  using K = Shape<T, W, kEmit, kLanes>;
  cluster = 0;
  // Builds without the path do not even instantiate its kernels (a shorter native build).
  if constexpr (UA_SPLIT_CLUSTERS == 0) {
    return UA_OK;
  } else {
    if (d.capacity == 0) return UA_OK;
    const auto kernel = split_kv_cluster_kernel<T, W, kEmit, kLanes>;
    static std::atomic<int> resident_cache[64];
    static std::atomic<int> most_cache[64];  // the device's largest cluster + 1 (0: not asked yet)
    int64_t resident = 0;
    if (ua_status s = resident_blocks(kernel, K::kSmemBytes, resident_cache, resident); s != UA_OK) return s;
    int device = 0;
    if (cudaError_t e = cudaGetDevice(&device); e != cudaSuccess)
      return fail(UA_DEVICE_ERROR, "split_kv: no current CUDA device: %s", cudaGetErrorString(e));
    std::atomic<int>& slot = most_cache[device & 63];
    if (slot.load() == 0) {
      int most = 0;
      if (cudaError_t e = max_cluster_blocks(kernel, dim3(kThreads), K::kSmemBytes, kClusterBlocks, most);
          e != cudaSuccess)
        return fail(UA_DEVICE_ERROR, "split_kv: cannot read the cluster limit: %s", cudaGetErrorString(e));
      slot.store(most + 1);
    }
    const int64_t groups = d.batch * d.kv_num_heads * plan.row_tiles;
    const int64_t align = split_align(sizeof(T), W, kLanes);
    const int64_t limit = kEmit ? imin(K::kScoreKeys, kMaxClusterKeys) : kMaxClusterKeys;
    for (int n = slot.load() - 1; n >= 2; --n) {
      const int64_t part = ceil_div(ceil_div(d.capacity, n), align) * align;
      if (part <= limit && (UA_SPLIT_CLUSTERS == 2 || groups * n <= resident)) {
        cluster = n;
        return UA_OK;
      }
    }
    return UA_OK;
  }
}

template <typename T, Weights W, bool kEmit, int kLanes>
ua_status launch_instance(Instance<T, W, kEmit, kLanes>, const ua_attention_desc& d, const SplitKvArgs& args,
                          const SplitKvPlan& plan, unsigned char* workspace, cudaStream_t stream) {
  using K = Shape<T, W, kEmit, kLanes>;
  const auto kernel = split_kv_kernel<T, W, kEmit, kLanes>;
  static std::atomic<int> resident_cache[64];
  int64_t resident = 0;
  if (ua_status s = resident_blocks(kernel, K::kSmemBytes, resident_cache, resident); s != UA_OK) return s;

  SplitKvKernelArgs<T> a;
  static_cast<Geometry&>(a) = geometry_of(d, args.positions);
  a.group = d.num_heads / d.kv_num_heads;
  a.row_tiles = plan.row_tiles;
  const int64_t groups = d.batch * d.kv_num_heads * plan.row_tiles;
  const int wanted = choose_splits(plan, groups, resident);
  a.split_len = ceil_div(ceil_div(a.key_len, wanted), plan.align) * plan.align;
  a.splits = int(ceil_div(a.key_len, a.split_len));
  a.max_splits = plan.max_splits;
  a.copy_past = args.copy_past;
  a.vector_probs = a.key_len % 8 == 0 &&
                   (reinterpret_cast<uintptr_t>(args.probs_in) | reinterpret_cast<uintptr_t>(args.probs_out)) % 16 == 0;
  a.query = static_cast<const T*>(args.query);
  a.keys = args.keys;
  a.values = args.values;
  a.present_key = static_cast<T*>(args.present_key);
  a.present_value = static_cast<T*>(args.present_value);
  a.write_key = static_cast<T*>(args.write_key);
  a.write_value = static_cast<T*>(args.write_value);
  a.mask = args.mask;
  a.probs_in = static_cast<const T*>(args.probs_in);
  a.lse_in = args.lse_in;
  a.probs_out = static_cast<T*>(args.probs_out);
  a.lse_out = args.lse_out;
  a.output = static_cast<T*>(args.output);
  a.partial_out = reinterpret_cast<float*>(workspace + plan.partial_out_offset);
  a.partial_stats = reinterpret_cast<float*>(workspace + plan.partial_stats_offset);
  a.arrivals = reinterpret_cast<int*>(workspace + plan.arrivals_offset);

  if constexpr (UA_SPLIT_CLUSTERS != 0) {
    if (args.cluster > 0) {
      a.splits = args.cluster;
      a.split_len = 0;
      const dim3 grid{unsigned(plan.row_tiles * args.cluster), unsigned(d.kv_num_heads), unsigned(d.batch)};
      if (cudaError_t e = launch_clusters(split_kv_cluster_kernel<T, W, kEmit, kLanes>, grid, dim3(kThreads),
                                          K::kSmemBytes, stream, args.cluster, a);
          e != cudaSuccess)
        return fail(UA_DEVICE_ERROR, "CUDA kernel split_kv (clusters of %d) could not run: %s", args.cluster,
                    cudaGetErrorString(e));
      return launch_status("split_kv (clusters)");
    }
  }
  if (a.splits > 1 && !args.counters_zeroed) {
    if (cudaError_t e = cudaMemsetAsync(a.arrivals, 0, size_t(groups) * sizeof(int), stream); e != cudaSuccess)
      return fail(UA_DEVICE_ERROR, "split_kv: cannot clear the workspace counters: %s", cudaGetErrorString(e));
  }
  const dim3 grid{unsigned(plan.row_tiles * a.splits), unsigned(d.kv_num_heads), unsigned(d.batch)};
  return launch_status("split_kv", launch_dependent(kernel, grid, dim3(kThreads), K::kSmemBytes, stream, a));
}

size_t reserve(size_t& offset, size_t bytes) {
  const size_t at = offset;
  offset += (bytes + 255) / 256 * 256;
  return at;
}

}  // namespace

SplitKvPlan plan_split_kv(const ua_attention_desc& d, Weights weights, bool emit_probs) {
  SplitKvPlan p{};
  const size_t element = dtype_size(d.dtype);
  const int64_t key_len = geometry_of(d, nullptr).key_len;  // the capacity in the static layout
  p.lanes_per_key = d.head_dim <= 64 ? 8 : d.head_dim <= 128 ? 16 : 32;
  p.row_tiles = int(ceil_div(d.num_heads / d.kv_num_heads * d.query_len, R));
  p.align = split_align(element, weights, p.lanes_per_key);
  p.min_split_len = ceil_div(kWarps * step_keys(element, weights, p.lanes_per_key), p.align) * p.align;
  p.min_splits = emit_probs ? int(ceil_div(key_len, score_keys(true, element, weights, p.lanes_per_key))) : 1;
  const int64_t groups = d.batch * d.kv_num_heads * p.row_tiles;
  const int64_t useful = imin(imin(ceil_div(key_len, p.min_split_len), kMaxSplits), ceil_div(kMaxBlocks, groups));
  p.max_splits = int(imax(p.min_splits, imax(1, useful)));

  size_t offset = 0;
  if (p.max_splits > 1) {
    const size_t rows = size_t(d.batch * d.num_heads * d.query_len) * size_t(p.max_splits);
    p.partial_out_offset = reserve(offset, rows * size_t(d.head_dim) * sizeof(float));
    if (weights == Weights::kSoftmax) p.partial_stats_offset = reserve(offset, rows * 2 * sizeof(float));
    p.arrivals_offset = reserve(offset, size_t(groups) * sizeof(int));
    p.arrival_counters = groups;
  }
  p.workspace_bytes = offset;
  return p;
}

ua_status launch_split_kv(const ua_attention_desc& d, const SplitKvArgs& args, const SplitKvPlan& plan,
                          void* workspace, cudaStream_t stream) {
  unsigned char* ws = static_cast<unsigned char*>(workspace);
  return dispatch(d.dtype, args.weights, args.probs_out != nullptr, plan.lanes_per_key,
                  [&](auto instance) { return launch_instance(instance, d, args, plan, ws, stream); });
}

ua_status split_kv_cluster(const ua_attention_desc& d, const SplitKvPlan& plan, Weights weights, bool emit_probs,
                           int& cluster) {
  return dispatch(d.dtype, weights, emit_probs, plan.lanes_per_key,
                  [&](auto instance) { return choose_cluster(instance, d, plan, cluster); });
}

}  // namespace cuda
}  // namespace uniattn
