// CPU kernel of SplitRotary (docs/ops.md): the fused q/k/v projection split into its parts, q
// and k rotated by the token's position (rotate-half form), v copied. In float32, rounded once
// to the element type.
//
// Work: one task per token on the caller's pool (a decode step is a few tokens of a few
// thousand elements: the point of the op is one node instead of three, not the arithmetic).
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "common.h"
#include "element.h"
#include "threads.h"

namespace uniattn::cpu {
namespace {

template <typename T>
ua_status run(const ua_split_rotary_desc& d, const ua_split_rotary_io& io, const ua_cpu_threads* threads) {
  const int64_t D = d.head_dim, half = D / 2, rotated = d.num_heads + d.kv_num_heads;
  const int64_t width = (rotated + d.kv_num_heads) * D;
  const T* qkv = static_cast<const T*>(io.qkv);
  const T* cos_cache = static_cast<const T*>(io.cos_cache);
  const T* sin_cache = static_cast<const T*>(io.sin_cache);
  T* query = static_cast<T*>(io.query);
  T* key = static_cast<T*>(io.key);
  T* value = static_cast<T*>(io.value);
  auto token = [&](int64_t t) {
    const int64_t position = std::clamp<int64_t>(io.position_ids[t], 0, d.table_rows - 1);
    const T* cos_row = cos_cache + position * half;
    const T* sin_row = sin_cache + position * half;
    const T* row = qkv + t * width;
    for (int64_t h = 0; h < rotated; ++h) {
      const T* x = row + h * D;
      T* out = h < d.num_heads ? query + (t * d.num_heads + h) * D : key + (t * d.kv_num_heads + h - d.num_heads) * D;
      for (int64_t i = 0; i < half; ++i) {
        const float first = to_float(x[i]), second = to_float(x[i + half]);
        const float c = to_float(cos_row[i]), s = to_float(sin_row[i]);
        out[i] = from_float<T>(first * c - second * s);
        out[i + half] = from_float<T>(second * c + first * s);
      }
    }
    std::memcpy(value + t * d.kv_num_heads * D, row + rotated * D, size_t(d.kv_num_heads * D) * sizeof(T));
  };
  for_each(threads, d.tokens, token);
  return ok();
}

}  // namespace
}  // namespace uniattn::cpu

extern "C" ua_status ua_split_rotary_cpu(const ua_split_rotary_desc* desc, const ua_split_rotary_io* io,
                                         const ua_cpu_threads* threads) {
  using namespace uniattn::cpu;
  if (ua_status s = uniattn::check_split_rotary(desc, io); s != UA_OK) return s;
  switch (desc->dtype) {
    case UA_FLOAT32: return run<float>(*desc, *io, threads);
    case UA_FLOAT16: return run<Float16>(*desc, *io, threads);
    default: return run<BFloat16>(*desc, *io, threads);
  }
}
