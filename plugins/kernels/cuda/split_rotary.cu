// SplitRotary (docs/ops.md): the fused q/k/v projection split into its parts, q and k rotated
// by the token's position (rotate-half form), v copied. In a decode step ONNX Runtime's Split
// and the two RotaryEmbedding nodes it replaces are three kernels of a few microseconds each
// whatever their size; this is one pass: each element of the projection read once, written once.
#include "../src/common.h"
#include "device.cuh"
#include "launch.cuh"

namespace uniattn {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 8192;

// A unit is `per` consecutive elements: of the first half of a rotated head (with their partners
// in the second half), or of v. per = 8: 16-byte accesses, when the half head is a multiple of
// 8 elements and every tensor 16-byte aligned; otherwise 1. Units of q and k first, then of v.
__host__ __device__ __forceinline__ int64_t rotary_units(const ua_split_rotary_desc& d, int64_t per) {
  return (d.num_heads + d.kv_num_heads) * (d.head_dim / 2 / per);
}
__host__ __device__ __forceinline__ int64_t units_per_token(const ua_split_rotary_desc& d, int64_t per) {
  return rotary_units(d, per) + d.kv_num_heads * (d.head_dim / per);
}

template <typename T, int kPer>
__global__ void __launch_bounds__(kThreads)
    split_rotary_kernel(const ua_split_rotary_desc a, const ua_split_rotary_io io) {
  allow_dependents();  // a dependent launch (device.cuh): waits for the projection before reading it
  wait_for_upstream();
  const T* qkv = static_cast<const T*>(io.qkv);
  const T* cos_cache = static_cast<const T*>(io.cos_cache);
  const T* sin_cache = static_cast<const T*>(io.sin_cache);
  const int64_t D = a.head_dim, half = D / 2, rotated_heads = a.num_heads + a.kv_num_heads;
  const int64_t rotated_units = rotary_units(a, kPer), per_token = units_per_token(a, kPer);
  const int64_t units = a.tokens * per_token, width = (rotated_heads + a.kv_num_heads) * D;
  for (int64_t x = int64_t(blockIdx.x) * kThreads + threadIdx.x; x < units; x += int64_t(gridDim.x) * kThreads) {
    const int64_t t = x / per_token, u = x % per_token;
    const T* row = qkv + t * width;
    if (u >= rotated_units) {  // v: copied
      const int64_t offset = (u - rotated_units) * kPer;
      T* out = static_cast<T*>(io.value) + t * a.kv_num_heads * D + offset;
      if constexpr (kPer == 8)
        store_slice(out, load_slice(row + rotated_heads * D + offset));
      else
        *out = row[rotated_heads * D + offset];
      continue;
    }
    const int64_t h = u / (half / kPer), i = (u % (half / kPer)) * kPer;
    int64_t position = io.position_ids[t];
    position = position < 0 ? 0 : position >= a.table_rows ? a.table_rows - 1 : position;
    const T* x_first = row + h * D + i;
    T* out = h < a.num_heads ? static_cast<T*>(io.query) + (t * a.num_heads + h) * D + i
                             : static_cast<T*>(io.key) + (t * a.kv_num_heads + h - a.num_heads) * D + i;
    const T* cos_row = cos_cache + position * half + i;
    const T* sin_row = sin_cache + position * half + i;
    if constexpr (kPer == 8) {
      float first[8], second[8], c[8], s[8], out_first[8], out_second[8];
      slice_to_floats(load_slice(x_first), first);
      slice_to_floats(load_slice(x_first + half), second);
      slice_to_floats(load_slice(cos_row), c);
      slice_to_floats(load_slice(sin_row), s);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        out_first[e] = first[e] * c[e] - second[e] * s[e];
        out_second[e] = second[e] * c[e] + first[e] * s[e];
      }
      store_slice(out, floats_to_slice<T>(out_first));
      store_slice(out + half, floats_to_slice<T>(out_second));
    } else {
      const float first = to_float(x_first[0]), second = to_float(x_first[half]);
      const float c = to_float(cos_row[0]), s = to_float(sin_row[0]);
      out[0] = from_float<T>(first * c - second * s);
      out[half] = from_float<T>(second * c + first * s);
    }
  }
}

template <typename T>
ua_status launch_typed(const ua_split_rotary_desc& d, const ua_split_rotary_io& io, cudaStream_t stream) {
  uintptr_t addresses = 0;
  for (const void* p : {io.qkv, io.cos_cache, io.sin_cache, static_cast<const void*>(io.query),
                        static_cast<const void*>(io.key), static_cast<const void*>(io.value)})
    addresses |= reinterpret_cast<uintptr_t>(p);
  const bool wide = (d.head_dim / 2) % 8 == 0 && (addresses & 15) == 0;
  const int64_t units = d.tokens * units_per_token(d, wide ? 8 : 1);
  int64_t blocks = (units + kThreads - 1) / kThreads;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  if (blocks == 0) return ok();
  const auto kernel = wide ? split_rotary_kernel<T, 8> : split_rotary_kernel<T, 1>;
  return launch_status("split_rotary",
                       launch_dependent(kernel, dim3(unsigned(blocks)), dim3(kThreads), 0, stream, d, io));
}

}  // namespace
}  // namespace cuda
}  // namespace uniattn

extern "C" ua_status ua_split_rotary_cuda(const ua_split_rotary_desc* desc, const ua_split_rotary_io* io,
                                          void* stream) {
  using namespace uniattn;
  if (ua_status s = check_split_rotary(desc, io); s != UA_OK) return s;
  const auto cuda_stream = static_cast<cudaStream_t>(stream);
  switch (desc->dtype) {
    case UA_FLOAT32: return cuda::launch_typed<float>(*desc, *io, cuda_stream);
    case UA_FLOAT16: return cuda::launch_typed<__half>(*desc, *io, cuda_stream);
    case UA_BFLOAT16: return cuda::launch_typed<__nv_bfloat16>(*desc, *io, cuda_stream);
  }
  return fail(UA_INVALID_ARGUMENT, "unknown dtype code %d", int(desc->dtype));
}
