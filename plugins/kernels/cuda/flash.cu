// Tensor-core prefill for fp16/bf16 (mma.sync m16n8k16, fp32 accumulators), in the
// flash-attention-2 arrangement: a block of 4 warps owns 64 or 128 query rows of one head
// (16 or 32 per warp); the block walks the visible key tiles, staging K and V in shared memory with
// cp.async (V of tile t loads while QK^T of tile t runs, K of tile t+1 while P.V runs).
// Scores and probabilities stay in registers; nothing of size L x S is ever stored.
//
// Static layout (capacity > 0): a block's key range comes from its queries' positions (read on
// the device); nothing past the last one is staged.
//
// Producer: online softmax (running max and sum in fp32, log2 domain), output and lse.
// Consumer: the same walk with the producer's query and keys, weights exp(s - lse) from the
// producer's lse: no running statistics, no rescaling, no division.
//
// Head dims are padded to 64, 128 or 256 columns in shared memory (zero-filled), so any
// multiple of 8 up to 256 works. Rows of shared memory are padded by 16 bytes so that the
// eight row addresses of an ldmatrix fall in different banks.
#include <math.h>

#include <atomic>

#include "../src/common.h"
#include "device.cuh"
#include "launch.cuh"

namespace uniattn {
namespace cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
// m-tiles per warp at head dims up to 64 (1 or 2; see flash_kernel). One measured 25% faster
// on the H100 (run 1: L = S = 2048 0.170 vs 0.227 ms, 8192 1.82 vs 2.29 ms): half the
// registers, twice the resident blocks.
#ifndef UA_FLASH_TILES_D64
#define UA_FLASH_TILES_D64 1
#endif

template <typename T>
struct FlashKernelArgs : Geometry {
  const T* query;
  const T* keys;
  const T* values;
  const int64_t* mask;
  const float* lse_in;
  float* lse_out;
  T* output;
};

// Elements per shared-memory row: 16 bytes of padding put the 8 rows of an ldmatrix in
// different banks.
template <int kPadDim>
__host__ __device__ constexpr int smem_stride() {
  return kPadDim + 8;
}

template <int kPadDim, int kKeys, int kTiles>
struct FlashShape {
  static constexpr int kStride = smem_stride<kPadDim>();
  static constexpr int kQueryRows = kWarps * 16 * kTiles;
  template <typename T>
  static constexpr size_t smem_bytes() {
    return size_t(kQueryRows + 2 * kKeys) * kStride * sizeof(T) + kKeys;
  }
};

// rows x kPadDim tile of a (.., D)-strided source into shared memory; rows or columns
// outside the tensor read as zeros (so padding never injects NaN into a dot product).
template <typename T, int kPadDim, int kRows>
__device__ __forceinline__ void load_tile(T* dst, const T* src, int64_t row_stride, int64_t rows_left,
                                          int64_t head_dim) {
  constexpr int kChunks = kPadDim / 8;  // 16-byte chunks per row
  constexpr int kStride = smem_stride<kPadDim>();
  for (int x = threadIdx.x; x < kRows * kChunks; x += kThreads) {
    const int r = x / kChunks, col = (x % kChunks) * 8;
    const bool inside = r < rows_left && col < head_dim;
    cp_async_16(dst + r * kStride + col, inside ? src + r * row_stride + col : src, inside);
  }
}

// kTiles: 16-row m-tiles per warp. Two let each K/V fragment loaded from shared memory feed
// two mma instead of one (what FA2 does at head dim 64), at twice the accumulators.
template <typename T, int kPadDim, int kKeys, int kTiles, bool kConsumer>
__global__ void __launch_bounds__(kThreads) flash_kernel(const FlashKernelArgs<T> a) {
  using Shape = FlashShape<kPadDim, kKeys, kTiles>;
  constexpr int kStride = Shape::kStride;
  constexpr int kQueryRows = Shape::kQueryRows;
  constexpr int kKeyBlocks = kKeys / 8;    // n-blocks of QK^T
  constexpr int kDimBlocks = kPadDim / 8;  // n-blocks of P.V
  UA_DYNAMIC_SMEM(smem);
  T* s_q = reinterpret_cast<T*>(smem);
  T* s_k = s_q + kQueryRows * kStride;
  T* s_v = s_k + kKeys * kStride;
  unsigned char* s_real = reinterpret_cast<unsigned char*>(s_v + kKeys * kStride);  // mask of the K tile

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int group = lane >> 2, quad = lane & 3;  // mma fragment coordinates
  // Causal blocks late in the sequence have the most keys: start them first.
  const int64_t q_tile = gridDim.x - 1 - blockIdx.x;
  const int64_t h = blockIdx.y, b = blockIdx.z;
  const int64_t hk = h / (a.num_heads / a.kv_heads);
  const int64_t i0 = q_tile * kQueryRows;
  const int64_t i_last = (i0 + kQueryRows < a.query_len ? i0 + kQueryRows : a.query_len) - 1;
  const int64_t S = a.key_len;
  // Positions of the block's first and last query (static layout: read on the device).
  const int64_t pos_first = query_position(a, b, i0), pos_last = query_position(a, b, i_last);

  int64_t kv_begin = 0, kv_end = S;
  if (a.is_causal && pos_last + 1 < kv_end) kv_end = pos_last + 1;
  if (a.window > 0 && pos_first - a.window + 1 > 0) kv_begin = pos_first - a.window + 1;
  const int64_t t_begin = kv_begin / kKeys, t_end = (kv_end + kKeys - 1) / kKeys;
  // Rows staged from the caches: all S (dynamic layout), or only the slots up to the last
  // position (static layout: later slots may hold anything, even NaN, and 0 * NaN would
  // reach P.V), zeros beyond.
  const int64_t rows_end = a.positions != nullptr ? kv_end : S;

  const T* q_src = a.query + ((b * a.query_len + i0) * a.num_heads + h) * a.head_dim;
  const T* k_src = a.keys + (b * a.kv_heads + hk) * S * a.head_dim;
  const T* v_src = a.values + (b * a.kv_heads + hk) * S * a.head_dim;
  const int64_t* mask_row = a.mask != nullptr ? a.mask + b * S : nullptr;  // NULL: static layout

  // Rows of this thread in m-tile m: r = 0 -> group, r = 1 -> group + 8 (of the tile's 16).
  const int warp_row = warp * 16 * kTiles;
  int64_t row_pos[kTiles][2];
  float row_lse[kTiles][2];
#pragma unroll
  for (int m = 0; m < kTiles; ++m)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int64_t i = i0 + warp_row + m * 16 + group + r * 8;
      row_pos[m][r] = i < a.query_len ? query_position(a, b, i) : pos_last;
      row_lse[m][r] = (kConsumer && i < a.query_len) ? a.lse_in[(b * a.num_heads + h) * a.query_len + i] * kLog2e
                                                     : INFINITY;
    }

  float out[kTiles][kDimBlocks][4] = {};
  float row_max[kTiles][2], row_sum[kTiles][2] = {};
#pragma unroll
  for (int m = 0; m < kTiles; ++m) row_max[m][0] = row_max[m][1] = -INFINITY;

  bool padded_key = false;  // did this thread see a masked key in the tile it staged?
  auto stage_keys = [&](int64_t t) {
    const int64_t j0 = t * kKeys;
    load_tile<T, kPadDim, kKeys>(s_k, k_src + j0 * a.head_dim, a.head_dim, rows_end - j0, a.head_dim);
    padded_key = false;
    if (tid < kKeys) {
      const int64_t j = j0 + tid;
      const bool real = j < rows_end && (mask_row == nullptr || mask_row[j] != 0);
      s_real[tid] = real;
      padded_key = !real;
    }
  };

  if (t_begin < t_end) {
    load_tile<T, kPadDim, kQueryRows>(s_q, q_src, a.num_heads * a.head_dim, a.query_len - i0, a.head_dim);
    stage_keys(t_begin);
    cp_async_commit();
  }

  for (int64_t t = t_begin; t < t_end; ++t) {
    const int64_t j0 = t * kKeys;
    cp_async_wait_all();
    const bool tile_has_padding = __syncthreads_or(padded_key);
    load_tile<T, kPadDim, kKeys>(s_v, v_src + j0 * a.head_dim, a.head_dim, rows_end - j0, a.head_dim);
    cp_async_commit();

    // scores = Q K^T for this warp's rows and the tile's keys.
    float score[kTiles][kKeyBlocks][4] = {};
#pragma unroll
    for (int kc = 0; kc < kPadDim / 16; ++kc) {
      uint32_t q_frag[kTiles][4];
#pragma unroll
      for (int m = 0; m < kTiles; ++m)
        ldmatrix_x4(q_frag[m], s_q + (warp_row + m * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * kStride + kc * 16 +
                                   (lane >> 4) * 8);
#pragma unroll
      for (int n2 = 0; n2 < kKeyBlocks / 2; ++n2) {
        uint32_t k_frag[4];
        ldmatrix_x4(k_frag, s_k + (n2 * 16 + (lane >> 4) * 8 + (lane & 7)) * kStride + kc * 16 + ((lane >> 3) & 1) * 8);
#pragma unroll
        for (int m = 0; m < kTiles; ++m) {
          mma_16x8x16<T>(score[m][2 * n2], q_frag[m], k_frag[0], k_frag[1]);
          mma_16x8x16<T>(score[m][2 * n2 + 1], q_frag[m], k_frag[2], k_frag[3]);
        }
      }
    }

    // Scale into the log2 domain; mask only tiles that hold an invisible (row, key) pair.
    const bool need_mask = tile_has_padding || j0 + kKeys > S || (a.is_causal && j0 + kKeys - 1 > pos_first) ||
                           (a.window > 0 && j0 <= pos_last - a.window);
#pragma unroll
    for (int m = 0; m < kTiles; ++m)
#pragma unroll
      for (int n = 0; n < kKeyBlocks; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float x = score[m][n][e] * a.scale_log2;
          if (need_mask) {
            const int col = n * 8 + quad * 2 + (e & 1);
            const int64_t j = j0 + col, pos = row_pos[m][e >> 1];
            const bool visible = s_real[col] && (!a.is_causal || j <= pos) && (a.window <= 0 || pos - j < a.window);
            x = visible ? x : -INFINITY;
          }
          score[m][n][e] = x;
        }

    if (kConsumer) {
#pragma unroll
      for (int m = 0; m < kTiles; ++m)
#pragma unroll
        for (int n = 0; n < kKeyBlocks; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) score[m][n][e] = exp2f(score[m][n][e] - row_lse[m][e >> 1]);
    } else {
#pragma unroll
      for (int m = 0; m < kTiles; ++m)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          float tile_max = -INFINITY;
#pragma unroll
          for (int n = 0; n < kKeyBlocks; ++n)
            tile_max = fmaxf(tile_max, fmaxf(score[m][n][2 * r], score[m][n][2 * r + 1]));
          tile_max = fmaxf(tile_max, __shfl_xor_sync(kFullMask, tile_max, 1));
          tile_max = fmaxf(tile_max, __shfl_xor_sync(kFullMask, tile_max, 2));
          const float new_max = fmaxf(row_max[m][r], tile_max);
          const float base = new_max == -INFINITY ? 0.f : new_max;  // no visible key yet: weights 0
          const float alpha = exp2f(row_max[m][r] - base);
          row_max[m][r] = new_max;
          row_sum[m][r] *= alpha;
#pragma unroll
          for (int n = 0; n < kDimBlocks; ++n) {
            out[m][n][2 * r] *= alpha;
            out[m][n][2 * r + 1] *= alpha;
          }
#pragma unroll
          for (int n = 0; n < kKeyBlocks; ++n) {
            score[m][n][2 * r] = exp2f(score[m][n][2 * r] - base);
            score[m][n][2 * r + 1] = exp2f(score[m][n][2 * r + 1] - base);
            row_sum[m][r] += score[m][n][2 * r] + score[m][n][2 * r + 1];
          }
        }
    }

    cp_async_wait_all();
    __syncthreads();  // V of tile t is in; every warp is done with K of tile t
    if (t + 1 < t_end) {
      stage_keys(t + 1);
      cp_async_commit();
    }

    // out += P V: the score accumulators of two key blocks form one A fragment.
#pragma unroll
    for (int kc = 0; kc < kKeys / 16; ++kc) {
      uint32_t p_frag[kTiles][4];
#pragma unroll
      for (int m = 0; m < kTiles; ++m) {
        p_frag[m][0] = pack2<T>(score[m][2 * kc][0], score[m][2 * kc][1]);
        p_frag[m][1] = pack2<T>(score[m][2 * kc][2], score[m][2 * kc][3]);
        p_frag[m][2] = pack2<T>(score[m][2 * kc + 1][0], score[m][2 * kc + 1][1]);
        p_frag[m][3] = pack2<T>(score[m][2 * kc + 1][2], score[m][2 * kc + 1][3]);
      }
#pragma unroll
      for (int n2 = 0; n2 < kDimBlocks / 2; ++n2) {
        uint32_t v_frag[4];
        ldmatrix_x4_trans(v_frag, s_v + (kc * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * kStride + n2 * 16 + (lane >> 4) * 8);
#pragma unroll
        for (int m = 0; m < kTiles; ++m) {
          mma_16x8x16<T>(out[m][2 * n2], p_frag[m], v_frag[0], v_frag[1]);
          mma_16x8x16<T>(out[m][2 * n2 + 1], p_frag[m], v_frag[2], v_frag[3]);
        }
      }
    }
  }

#pragma unroll
  for (int m = 0; m < kTiles; ++m)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int64_t i = i0 + warp_row + m * 16 + group + r * 8;
      float scale = 1.f;
      if (!kConsumer) {
        float l = row_sum[m][r];
        l += __shfl_xor_sync(kFullMask, l, 1);
        l += __shfl_xor_sync(kFullMask, l, 2);
        scale = l > 0.f ? 1.f / l : 0.f;
        if (a.lse_out != nullptr && quad == 0 && i < a.query_len)
          a.lse_out[(b * a.num_heads + h) * a.query_len + i] = l > 0.f ? (row_max[m][r] + log2f(l)) * kLn2 : INFINITY;
      }
      if (i >= a.query_len) continue;
      T* dst = a.output + ((b * a.query_len + i) * a.num_heads + h) * a.head_dim;
#pragma unroll
      for (int n = 0; n < kDimBlocks; ++n) {
        const int col = n * 8 + quad * 2;
        if (col < a.head_dim)
          *reinterpret_cast<uint32_t*>(dst + col) = pack2<T>(out[m][n][2 * r] * scale, out[m][n][2 * r + 1] * scale);
      }
    }
}

// Above 48 KB a kernel must opt in to its dynamic shared memory: once per kernel and device
// (not on every launch, which also keeps the call out of CUDA graph captures).
template <typename T, int kPadDim, int kKeys, int kTiles, bool kConsumer>
ua_status opt_in_smem(size_t smem) {
#ifndef UA_CUDA_EMULATE
  static std::atomic<uint64_t> opted_in{0};
  int device = 0;
  if (cudaError_t e = cudaGetDevice(&device); e != cudaSuccess)
    return fail(UA_DEVICE_ERROR, "flash attention: no current CUDA device: %s", cudaGetErrorString(e));
  const uint64_t bit = uint64_t(1) << (device & 63);
  if ((opted_in.load() & bit) != 0) return UA_OK;
  const auto kernel = flash_kernel<T, kPadDim, kKeys, kTiles, kConsumer>;
  if (cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
      e != cudaSuccess)
    return fail(UA_DEVICE_ERROR, "flash attention needs %zu bytes of shared memory: %s", smem, cudaGetErrorString(e));
  opted_in.fetch_or(bit);
#else
  (void)smem;
#endif
  return UA_OK;
}

template <typename T, int kPadDim, int kKeys, int kTiles>
ua_status launch_shape(const ua_attention_desc& d, const FlashArgs& args, cudaStream_t stream) {
  FlashKernelArgs<T> a;
  static_cast<Geometry&>(a) = geometry_of(d, args.positions);
  a.query = static_cast<const T*>(args.query);
  a.keys = static_cast<const T*>(args.keys);
  a.values = static_cast<const T*>(args.values);
  a.mask = args.mask;
  a.lse_in = args.lse_in;
  a.lse_out = args.lse_out;
  a.output = static_cast<T*>(args.output);

  using Shape = FlashShape<kPadDim, kKeys, kTiles>;
  const size_t smem = Shape::template smem_bytes<T>();
  const dim3 grid{unsigned((d.query_len + Shape::kQueryRows - 1) / Shape::kQueryRows), unsigned(d.num_heads),
                  unsigned(d.batch)};
  const auto kernel = args.consumer ? flash_kernel<T, kPadDim, kKeys, kTiles, true>
                                    : flash_kernel<T, kPadDim, kKeys, kTiles, false>;
  if (ua_status s = args.consumer ? opt_in_smem<T, kPadDim, kKeys, kTiles, true>(smem)
                                  : opt_in_smem<T, kPadDim, kKeys, kTiles, false>(smem);
      s != UA_OK)
    return s;
  UA_LAUNCH(kernel, grid, dim3(kThreads), smem, stream, a);
  return launch_status("flash");
}

template <typename T>
ua_status launch_dtype(const ua_attention_desc& d, const FlashArgs& args, cudaStream_t stream) {
  if (d.head_dim <= 64) return launch_shape<T, 64, 64, UA_FLASH_TILES_D64>(d, args, stream);
  if (d.head_dim <= 128) return launch_shape<T, 128, 64, 1>(d, args, stream);
  return launch_shape<T, 256, 32, 1>(d, args, stream);
}

}  // namespace

bool flash_supports(const ua_attention_desc& d) {
  return (d.dtype == UA_FLOAT16 || d.dtype == UA_BFLOAT16) && d.head_dim <= 256;
}

ua_status launch_flash(const ua_attention_desc& d, const FlashArgs& args, cudaStream_t stream) {
  if (d.dtype == UA_FLOAT16) return launch_dtype<__half>(d, args, stream);
  if (d.dtype == UA_BFLOAT16) return launch_dtype<__nv_bfloat16>(d, args, stream);
  return fail(UA_UNSUPPORTED, "flash attention takes float16 or bfloat16, not dtype code %d", int(d.dtype));
}

}  // namespace cuda
}  // namespace uniattn
