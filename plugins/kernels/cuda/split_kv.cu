// Split-KV attention on CUDA cores: decode (flash-decoding), emission of shared_probs and
// shared_lse, the consumer's P . V, and every call the tensor-core kernel does not take
// (float32, few query rows).
//
// A block owns R query rows of one KV head (the g query heads of that KV head times the L
// tokens, so every K/V row is read once for all heads sharing it) and one split of the key
// axis. The key axis is cut into enough splits to fill the GPU even at batch 1; a second
// small kernel combines the splits. Threads own 8-element slices of key rows
// (`lanes_per_key` lanes cover one row with 16-byte accesses), so loads are coalesced and
// each thread keeps kKeysPerThread keys of K and V in flight.
//
// The present-cache copy is fused: the blocks of row tile 0 write every K/V row they read to
// present_key/present_value, so the concat costs one write and no extra read.
//
// Emitting P without a second pass over K: each block writes exp(s - m_t) to shared_probs,
// m_t being its running max when tile t was processed, and records m_t per tile; the
// combine kernel, which knows the row's lse, rescales each tile by exp(m_t - lse).
#include <math.h>

#include "../src/common.h"
#include "device.cuh"
#include "launch.cuh"

namespace uniattn {
namespace cuda {
namespace {

constexpr int kThreads = 256;
// Keys of K and V each thread keeps in flight per tile (a tile is kKeysPerThread * 256 /
// lanes_per_key keys, a power of two).
#ifndef UA_KEYS_PER_THREAD
#define UA_KEYS_PER_THREAD 4
#endif
constexpr int kKeysPerThread = UA_KEYS_PER_THREAD;
static_assert((kKeysPerThread & (kKeysPerThread - 1)) == 0, "tiles must be a power of two keys");
constexpr int R = 4;  // query rows per block (8 would double the accumulators: 250 registers)
// Blocks to aim for: many waves of blocks keep the last, partial wave short.
#ifndef UA_SPLIT_TARGET_BLOCKS
#define UA_SPLIT_TARGET_BLOCKS 4096
#endif
constexpr int64_t kTargetBlocks = UA_SPLIT_TARGET_BLOCKS;
constexpr int64_t kProbsChunk = 4096;  // shared_probs elements rescaled per combine block

__host__ __device__ __forceinline__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
__host__ __device__ __forceinline__ int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename T>
struct SplitKvKernelArgs : Geometry {
  int64_t group;
  int row_tiles, lanes_per_key, tile_keys, tile_shift, splits;  // tile_keys = 1 << tile_shift
  int64_t split_len, n_tiles;
  bool finalize, copy_past;
  const T* query;
  RowSource keys, values;
  T* present_key;
  T* present_value;
  const int64_t* mask;
  const T* probs_in;
  const float* lse_in;
  T* probs_out;
  float* lse_out;
  T* output;
  float* partial_out;    // (rows, splits, D): unnormalized output of each split
  float* partial_stats;  // (rows, splits, 2): running max (log2) and sum of each split
  float* tile_max;       // (rows, n_tiles): the max each emitted tile of P was scaled by
};

// Query row r of a block: head h, token i, its index among the B*Hq*L rows, and the range
// of keys the causal and sliding-window conditions leave it (the mask is checked per key).
struct QueryRow {
  bool valid;
  int64_t h, i, global;
  int lo, hi;  // key positions (S < 2^31)
};

template <typename T>
__device__ __forceinline__ QueryRow query_row(const SplitKvKernelArgs<T>& a, int64_t b, int64_t hk, int row_tile,
                                              int r) {
  QueryRow q;
  const int64_t rows = a.group * a.query_len;
  const int64_t gr = int64_t(row_tile) * R + r;
  q.valid = gr < rows;
  const int64_t idx = q.valid ? gr : 0;
  q.h = hk * a.group + idx / a.query_len;
  q.i = idx % a.query_len;
  q.global = (b * a.num_heads + q.h) * a.query_len + q.i;
  const int64_t position = a.past_len + q.i;
  q.hi = int(a.is_causal ? imin(a.key_len - 1, position) : a.key_len - 1);
  q.lo = int(a.window > 0 ? imax(0, position - a.window + 1) : 0);
  return q;
}

// Resident blocks per SM (caps the registers): bytes in flight per SM = blocks x 256 threads x
// kKeysPerThread rows of 16 bytes, so fewer keys per thread call for more blocks. The decode
// kernels are the hot ones; the float32 and recompute variants run unconstrained.
template <typename T, Weights W>
constexpr int min_blocks() {
  const int more = kKeysPerThread <= 2 ? 1 : kKeysPerThread >= 8 ? -1 : 0;
  return sizeof(T) == 4 ? 1 : W == Weights::kGivenProbs ? 3 + more : W == Weights::kSoftmax ? 2 + more : 1;
}

template <typename T, Weights W>
__global__ void __launch_bounds__(kThreads, (min_blocks<T, W>())) split_kv_kernel(const SplitKvKernelArgs<T> a) {
  UA_DYNAMIC_SMEM(smem);
  const int D = int(a.head_dim);
  const int C = a.tile_keys;
  int64_t* s_row = reinterpret_cast<int64_t*>(smem);  // R: row among B*Hq*L, -1 past the last
  int* s_row_head = reinterpret_cast<int*>(s_row + R);  // R
  int* s_row_token = s_row_head + R;                    // R
  float* s_query = reinterpret_cast<float*>(s_row_token + R);  // R x D, pre-scaled by scale*log2(e)
  float* s_out = s_query + R * D;                   // R x D, the block's output before division
  float* s_weight = s_out + R * D;                  // R x C, weights of the current tile's keys
  float* s_alpha = s_weight + R * C;                // R: rescale of the running output
  float* s_max = s_alpha + R;                       // R: running max (log2 domain)
  float* s_sum = s_max + R;                         // R: running sum of exp2(s - max)
  float* s_lse = s_sum + R;                         // R: kFromLse, lse in the log2 domain

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int row_tile = int(blockIdx.x % a.row_tiles);
  const int split = int(blockIdx.x / a.row_tiles);
  const int64_t hk = blockIdx.y, b = blockIdx.z;
  const int lanes_per_key = a.lanes_per_key, keys_per_step = kThreads / lanes_per_key;
  const int slice = tid % lanes_per_key, key_lane = tid / lanes_per_key;
  const bool slice_active = slice * 8 < D;

  bool row_valid[R];
  int row_lo[R], row_hi[R];
  int64_t attend_lo = a.key_len, attend_hi = -1;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const QueryRow q = query_row<T>(a, b, hk, row_tile, r);
    row_valid[r] = q.valid;
    row_lo[r] = q.lo;
    row_hi[r] = q.hi;
    if (q.valid) {
      attend_lo = imin(attend_lo, q.lo);
      attend_hi = imax(attend_hi, q.hi);
    }
    if (tid == r) {
      s_row[r] = q.valid ? q.global : -1;
      s_row_head[r] = int(q.h);
      s_row_token[r] = int(q.i);
      s_max[r] = -INFINITY;
      s_sum[r] = 0.f;
      s_lse[r] = (W == Weights::kFromLse && q.valid) ? a.lse_in[q.global] * kLog2e : INFINITY;
    }
  }
  // Tiles no row can see are skipped, except where P must be written for every key.
  if (W == Weights::kGivenProbs || a.probs_out != nullptr) {
    attend_lo = 0;
    attend_hi = a.key_len - 1;
  }
  __syncthreads();

  for (int x = tid; x < R * D; x += kThreads) {
    const int r = x / D, d = x % D;
    float q_value = 0.f;
    if (W != Weights::kGivenProbs && s_row[r] >= 0)
      q_value = to_float(a.query[((b * a.query_len + s_row_token[r]) * a.num_heads + s_row_head[r]) * D + d]) *
                a.scale_log2;
    s_query[x] = q_value;
    s_out[x] = 0.f;
  }
  __syncthreads();

  float acc[R][8] = {};

  const bool copy_k = row_tile == 0 && W == Weights::kSoftmax && a.present_key != nullptr;
  const bool copy_v = row_tile == 0 && a.present_value != nullptr;
  const int64_t key_begin = int64_t(split) * a.split_len;
  const int64_t key_end = imin(a.key_len, key_begin + a.split_len);

  for (int64_t t0 = key_begin; t0 < key_end; t0 += C) {
    const int tile_n = int(imin(C, key_end - t0));
    const bool attend = t0 <= attend_hi && t0 + tile_n - 1 >= attend_lo;
    if (!attend && !(copy_k || copy_v)) continue;
    const bool load_k = W != Weights::kGivenProbs && (attend || copy_k);

    // Issue every load of the tile before using any (K and V both in flight).
    Slice8<T> k_rows[kKeysPerThread] = {};
    Slice8<T> v_rows[kKeysPerThread] = {};
#pragma unroll
    for (int n = 0; n < kKeysPerThread; ++n) {
      const int jj = key_lane + n * keys_per_step;
      if (slice_active && jj < tile_n) {
        const int64_t j = t0 + jj;
        if (load_k)
          k_rows[n] = load_slice(source_row<T>(a.keys, b, hk, j, a.query_len, a.kv_heads, D) + slice * 8);
        v_rows[n] = load_slice(source_row<T>(a.values, b, hk, j, a.query_len, a.kv_heads, D) + slice * 8);
      }
    }
    if (copy_k || copy_v) {
#pragma unroll
      for (int n = 0; n < kKeysPerThread; ++n) {
        const int jj = key_lane + n * keys_per_step;
        const int64_t j = t0 + jj;
        if (slice_active && jj < tile_n && (a.copy_past || j >= a.past_len)) {
          const int64_t at = ((b * a.kv_heads + hk) * a.key_len + j) * D + slice * 8;
          if (copy_k) store_slice(a.present_key + at, k_rows[n]);
          if (copy_v) store_slice(a.present_value + at, v_rows[n]);
        }
      }
    }
    if (!attend) continue;

    // Weights of the tile's keys for each row -> s_weight.
    if (W == Weights::kGivenProbs) {
      for (int x = tid; x < R * C; x += kThreads) {
        const int r = x >> a.tile_shift, jj = x & (C - 1);
        const int64_t row = s_row[r];
        s_weight[x] = (jj < tile_n && row >= 0) ? to_float(a.probs_in[row * a.key_len + t0 + jj]) : 0.f;
      }
    } else {
      float dot[kKeysPerThread][R] = {};
      if (slice_active) {
#pragma unroll
        for (int n = 0; n < kKeysPerThread; ++n) {
          float k[8];
          slice_to_floats(k_rows[n], k);
#pragma unroll
          for (int r = 0; r < R; ++r) {
            const float4 q0 = *reinterpret_cast<const float4*>(s_query + r * D + slice * 8);
            const float4 q1 = *reinterpret_cast<const float4*>(s_query + r * D + slice * 8 + 4);
            float s = q0.x * k[0];
            s = fmaf(q0.y, k[1], s);
            s = fmaf(q0.z, k[2], s);
            s = fmaf(q0.w, k[3], s);
            s = fmaf(q1.x, k[4], s);
            s = fmaf(q1.y, k[5], s);
            s = fmaf(q1.z, k[6], s);
            s = fmaf(q1.w, k[7], s);
            dot[n][r] = s;
          }
        }
      }
      // Sum the slices of each key row: its lanes are consecutive.
      for (int offset = lanes_per_key >> 1; offset > 0; offset >>= 1) {
#pragma unroll
        for (int n = 0; n < kKeysPerThread; ++n)
#pragma unroll
          for (int r = 0; r < R; ++r) dot[n][r] += __shfl_xor_sync(kFullMask, dot[n][r], offset);
      }
      if (slice == 0) {
#pragma unroll
        for (int n = 0; n < kKeysPerThread; ++n) {
          const int jj = key_lane + n * keys_per_step;
          if (jj < tile_n) {
            const int j = int(t0 + jj);
            const bool real_key = a.mask[b * a.key_len + j] != 0;
#pragma unroll
            for (int r = 0; r < R; ++r) {
              const bool visible = row_valid[r] && real_key && j >= row_lo[r] && j <= row_hi[r];
              float w;
              if (W == Weights::kSoftmax)
                w = visible ? dot[n][r] : -INFINITY;
              else
                w = visible ? exp2f(dot[n][r] - s_lse[r]) : 0.f;
              s_weight[r * C + jj] = w;
            }
          }
        }
      }
    }
    __syncthreads();

    if (W == Weights::kSoftmax) {
      // Online softmax, one warp per row.
      if (warp < R) {
        const int r = warp;
        float* w = s_weight + r * C;
        float tile_max = -INFINITY;
        for (int jj = lane; jj < tile_n; jj += 32) tile_max = fmaxf(tile_max, w[jj]);
        tile_max = warp_max(tile_max);
        const float old_max = s_max[r];
        const float new_max = fmaxf(old_max, tile_max);
        // A row that has seen no visible key yet keeps weights 0 (never exp2(-inf + inf)).
        const float base = new_max == -INFINITY ? 0.f : new_max;
        const int64_t row = s_row[r];
        T* probs = (a.probs_out != nullptr && row >= 0) ? a.probs_out + row * a.key_len + t0 : nullptr;
        float sum = 0.f;
        for (int jj = lane; jj < tile_n; jj += 32) {
          const float e = exp2f(w[jj] - base);
          w[jj] = e;
          sum += e;
          if (probs != nullptr) probs[jj] = from_float<T>(e);
        }
        sum = warp_sum(sum);
        if (lane == 0) {
          const float alpha = exp2f(old_max - base);
          s_alpha[r] = alpha;
          s_sum[r] = s_sum[r] * alpha + sum;
          s_max[r] = new_max;
          if (a.tile_max != nullptr && row >= 0) a.tile_max[row * a.n_tiles + (t0 >> a.tile_shift)] = base;
        }
      }
      __syncthreads();
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float alpha = s_alpha[r];
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[r][e] *= alpha;
      }
    }

    if (slice_active) {
#pragma unroll
      for (int n = 0; n < kKeysPerThread; ++n) {
        const int jj = key_lane + n * keys_per_step;
        if (jj < tile_n) {
          float v[8];
          slice_to_floats(v_rows[n], v);
#pragma unroll
          for (int r = 0; r < R; ++r) {
            const float w = s_weight[r * C + jj];
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[r][e] = fmaf(w, v[e], acc[r][e]);
          }
        }
      }
    }
    __syncthreads();  // s_weight is rewritten by the next tile
  }

  // Sum the key lanes of each warp (lanes with the same slice), then the warps.
  for (int offset = lanes_per_key; offset < 32; offset <<= 1) {
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[r][e] += __shfl_xor_sync(kFullMask, acc[r][e], offset);
  }
  if (lane < lanes_per_key && slice_active) {
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int e = 0; e < 8; ++e) atomicAdd(&s_out[r * D + slice * 8 + e], acc[r][e]);
  }
  __syncthreads();

  for (int x = tid; x < R * D; x += kThreads) {
    const int r = x / D, d = x % D;
    const int64_t row = s_row[r];
    if (row < 0) continue;
    if (a.finalize) {
      float v = s_out[x];
      if (W == Weights::kSoftmax) v = s_sum[r] > 0.f ? v / s_sum[r] : 0.f;
      a.output[((b * a.query_len + s_row_token[r]) * a.num_heads + s_row_head[r]) * D + d] = from_float<T>(v);
    } else {
      a.partial_out[(row * a.splits + split) * D + d] = s_out[x];
    }
  }
  if (W == Weights::kSoftmax && tid < R && s_row[tid] >= 0) {
    const int64_t row = s_row[tid];
    const float m = s_max[tid], l = s_sum[tid];
    if (!a.finalize) {
      a.partial_stats[(row * a.splits + split) * 2] = m;
      a.partial_stats[(row * a.splits + split) * 2 + 1] = l;
    } else if (a.lse_out != nullptr) {
      a.lse_out[row] = l > 0.f ? (m + log2f(l)) * kLn2 : INFINITY;
    }
  }
}

template <typename T>
struct CombineArgs {
  int64_t query_len, num_heads, key_len, head_dim, n_tiles;
  int splits, tile_shift;  // tile_keys = 1 << tile_shift
  const float* partial_out;
  const float* partial_stats;
  const float* tile_max;
  T* output;
  float* lse_out;
  T* probs;  // exp(s - m_t) from the split kernel, rescaled here to exp(s - lse)
};

// Block-wide max or sum of kThreads values; every thread gets the result.
template <bool kMax>
__device__ __forceinline__ float block_reduce(float x, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  x = kMax ? warp_max(x) : warp_sum(x);
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  float y = lane < kThreads / 32 ? scratch[lane] : (kMax ? -INFINITY : 0.f);
  y = kMax ? warp_max(y) : warp_sum(y);
  __syncthreads();
  return y;
}

// One block per query row (blockIdx.x) and chunk of its P row (blockIdx.y); chunk 0 also
// writes the output and lse. kNormalize: softmax splits (weighted by exp(m_k - max));
// otherwise the consumer's splits, which simply add up.
template <typename T, bool kNormalize>
__global__ void __launch_bounds__(kThreads) combine_kernel(const CombineArgs<T> a) {
  UA_DYNAMIC_SMEM(smem);
  float* scratch = reinterpret_cast<float*>(smem);
  const int64_t row = blockIdx.x;
  const int64_t chunk = blockIdx.y;
  const int tid = threadIdx.x;
  const int64_t D = a.head_dim;
  const float* stats = a.partial_stats + row * a.splits * 2;
  float row_max = -INFINITY, row_sum = 0.f, lse = INFINITY;  // log2 domain
  if (kNormalize) {
    float m = -INFINITY;
    for (int k = tid; k < a.splits; k += kThreads) m = fmaxf(m, stats[2 * k]);
    row_max = block_reduce<true>(m, scratch);
    float s = 0.f;
    if (row_max != -INFINITY)
      for (int k = tid; k < a.splits; k += kThreads) s += stats[2 * k + 1] * exp2f(stats[2 * k] - row_max);
    row_sum = block_reduce<false>(s, scratch);
    if (row_sum > 0.f) lse = row_max + log2f(row_sum);
  }
  if (chunk == 0) {
    const int64_t i = row % a.query_len, h = (row / a.query_len) % a.num_heads;
    const int64_t b = row / (a.query_len * a.num_heads);
    T* out = a.output + ((b * a.query_len + i) * a.num_heads + h) * D;
    const float* partial = a.partial_out + row * a.splits * D;
    for (int64_t d = tid; d < D; d += kThreads) {
      float v = 0.f;
      if (!kNormalize) {
        for (int k = 0; k < a.splits; ++k) v += partial[k * D + d];
      } else if (lse != INFINITY) {
        for (int k = 0; k < a.splits; ++k) v += partial[k * D + d] * exp2f(stats[2 * k] - row_max);
        v /= row_sum;
      }
      out[d] = from_float<T>(v);
    }
    if (kNormalize && tid == 0 && a.lse_out != nullptr) a.lse_out[row] = lse == INFINITY ? INFINITY : lse * kLn2;
  }
  if (kNormalize && a.probs != nullptr) {
    T* p = a.probs + row * a.key_len;
    const float* tile_max = a.tile_max + row * a.n_tiles;
    const int end = int(imin(a.key_len, (chunk + 1) * kProbsChunk));
    for (int j = int(chunk * kProbsChunk) + tid; j < end; j += kThreads)
      p[j] = from_float<T>(to_float(p[j]) * exp2f(tile_max[j >> a.tile_shift] - lse));
  }
}

template <typename T, Weights W>
ua_status launch_typed(const ua_attention_desc& d, const SplitKvArgs& args, const SplitKvPlan& plan,
                       unsigned char* workspace, cudaStream_t stream) {
  SplitKvKernelArgs<T> a;
  static_cast<Geometry&>(a) = geometry_of(d);
  a.group = d.num_heads / d.kv_num_heads;
  a.row_tiles = plan.row_tiles;
  a.lanes_per_key = plan.lanes_per_key;
  a.tile_keys = plan.tile_keys;
  a.tile_shift = 0;
  while ((1 << a.tile_shift) < a.tile_keys) ++a.tile_shift;
  a.splits = plan.splits;
  a.split_len = plan.split_len;
  a.n_tiles = plan.n_tiles;
  a.finalize = plan.finalize;
  a.copy_past = args.copy_past;
  a.query = static_cast<const T*>(args.query);
  a.keys = args.keys;
  a.values = args.values;
  a.present_key = static_cast<T*>(args.present_key);
  a.present_value = static_cast<T*>(args.present_value);
  a.mask = args.mask;
  a.probs_in = static_cast<const T*>(args.probs_in);
  a.lse_in = args.lse_in;
  a.probs_out = static_cast<T*>(args.probs_out);
  a.lse_out = args.lse_out;
  a.output = static_cast<T*>(args.output);
  a.partial_out = plan.finalize ? nullptr : reinterpret_cast<float*>(workspace + plan.partial_out_offset);
  a.partial_stats = (plan.finalize || W != Weights::kSoftmax)
                        ? nullptr
                        : reinterpret_cast<float*>(workspace + plan.partial_stats_offset);
  a.tile_max = args.probs_out != nullptr ? reinterpret_cast<float*>(workspace + plan.tile_max_offset) : nullptr;

  const size_t smem = R * (sizeof(int64_t) + 2 * sizeof(int)) +
                      size_t(2 * R * d.head_dim + R * plan.tile_keys + 4 * R) * sizeof(float);
  const dim3 grid{unsigned(plan.row_tiles * plan.splits), unsigned(d.kv_num_heads), unsigned(d.batch)};
  const auto kernel = split_kv_kernel<T, W>;
  UA_LAUNCH(kernel, grid, dim3(kThreads), smem, stream, a);
  if (ua_status s = launch_status("split_kv"); s != UA_OK) return s;
  if (plan.finalize) return UA_OK;

  CombineArgs<T> c;
  c.query_len = a.query_len;
  c.num_heads = a.num_heads;
  c.key_len = a.key_len;
  c.head_dim = a.head_dim;
  c.n_tiles = a.n_tiles;
  c.splits = a.splits;
  c.tile_shift = a.tile_shift;
  c.partial_out = a.partial_out;
  c.partial_stats = a.partial_stats;
  c.tile_max = a.tile_max;
  c.output = a.output;
  c.lse_out = a.lse_out;
  c.probs = a.probs_out;
  const int64_t rows = d.batch * d.num_heads * d.query_len;
  const int64_t chunks = a.probs_out != nullptr ? ceil_div(a.key_len, kProbsChunk) : 1;
  const dim3 combine_grid{unsigned(rows), unsigned(chunks)};
  const size_t combine_smem = (kThreads / 32) * sizeof(float);
  const auto combine = combine_kernel<T, W == Weights::kSoftmax>;
  UA_LAUNCH(combine, combine_grid, dim3(kThreads), combine_smem, stream, c);
  return launch_status("split_kv_combine");
}

template <typename T>
ua_status launch_dtype(const ua_attention_desc& d, const SplitKvArgs& args, const SplitKvPlan& plan,
                       unsigned char* workspace, cudaStream_t stream) {
  switch (args.weights) {
    case Weights::kSoftmax: return launch_typed<T, Weights::kSoftmax>(d, args, plan, workspace, stream);
    case Weights::kGivenProbs: return launch_typed<T, Weights::kGivenProbs>(d, args, plan, workspace, stream);
    case Weights::kFromLse: return launch_typed<T, Weights::kFromLse>(d, args, plan, workspace, stream);
  }
  return fail(UA_INVALID_ARGUMENT, "split_kv: unknown weights mode");
}

size_t reserve(size_t& offset, size_t bytes) {
  const size_t at = offset;
  offset += (bytes + 255) / 256 * 256;
  return at;
}

}  // namespace

SplitKvPlan plan_split_kv(const ua_attention_desc& d, Weights weights, bool emit_probs) {
  SplitKvPlan p{};
  const int64_t key_len = d.past_len + d.query_len;
  const int64_t rows = d.num_heads / d.kv_num_heads * d.query_len;
  p.row_tiles = int(ceil_div(rows, R));
  int lanes = 8;
  while (lanes * 8 < d.head_dim) lanes *= 2;
  p.lanes_per_key = lanes;
  p.tile_keys = kKeysPerThread * kThreads / lanes;
  p.n_tiles = ceil_div(key_len, p.tile_keys);
  const int64_t groups = d.batch * d.kv_num_heads * p.row_tiles;
  const int64_t wanted = imax(1, imin(p.n_tiles, ceil_div(kTargetBlocks, groups)));
  const int64_t tiles_per_split = ceil_div(p.n_tiles, wanted);
  p.splits = int(ceil_div(p.n_tiles, tiles_per_split));
  p.split_len = tiles_per_split * p.tile_keys;
  p.finalize = p.splits == 1 && !emit_probs;

  const size_t rows_total = size_t(d.batch * d.num_heads * d.query_len);
  size_t offset = 0;
  if (!p.finalize) {
    p.partial_out_offset = reserve(offset, rows_total * p.splits * d.head_dim * sizeof(float));
    if (weights == Weights::kSoftmax)
      p.partial_stats_offset = reserve(offset, rows_total * p.splits * 2 * sizeof(float));
  }
  if (emit_probs) p.tile_max_offset = reserve(offset, rows_total * p.n_tiles * sizeof(float));
  p.workspace_bytes = offset;
  return p;
}

ua_status launch_split_kv(const ua_attention_desc& d, const SplitKvArgs& args, const SplitKvPlan& plan,
                          void* workspace, cudaStream_t stream) {
  unsigned char* ws = static_cast<unsigned char*>(workspace);
  switch (d.dtype) {
    case UA_FLOAT32: return launch_dtype<float>(d, args, plan, ws, stream);
    case UA_FLOAT16: return launch_dtype<__half>(d, args, plan, ws, stream);
    case UA_BFLOAT16: return launch_dtype<__nv_bfloat16>(d, args, plan, ws, stream);
  }
  return fail(UA_INVALID_ARGUMENT, "unknown dtype code %d", int(d.dtype));
}

}  // namespace cuda
}  // namespace uniattn
