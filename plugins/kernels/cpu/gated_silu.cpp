// CPU kernel of GatedSilu (docs/ops.md): output = silu(gate) * up over packed (rows, 2 * width)
// rows, the gate first. In float32, rounded once to the element type.
//
// Work: blocks of at most kBlock columns of one row, independent tasks on the caller's pool.
// 16 columns at a time with the attention kernels' branch-free e^x (vec16.h; the C library's
// expf does not vectorize, and would cost more than ONNX Runtime's Split + QuickGelu + Mul
// that this op replaces); float16 / bfloat16 convert through float buffers of 16.
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "common.h"
#include "element.h"
#include "threads.h"
#include "vec16.h"

namespace uniattn::cpu {
namespace {

constexpr int64_t kBlock = 2048;

// silu(g) * u = g / (1 + e^-g) * u. exp16 stops at e^88, so below g = -88 (where the true value
// is under 1e-36) the result is set to g * 0: -0 for finite gates, NaN for -inf as in
// g * sigmoid(g).
__attribute__((always_inline)) inline Vec16 gated16(Vec16 gate, Vec16 up) {
  const Vec16 silu = gate / (1.f + exp16(-gate));
  return (gate < -88.f ? gate * 0.f : silu) * up;
}

template <typename T>
__attribute__((always_inline)) inline void gated_chunk(const T* gate, const T* up, T* out, int64_t n) {
  float g[16] = {}, u[16] = {}, o[16];
  for (int64_t i = 0; i < n; ++i) g[i] = to_float(gate[i]), u[i] = to_float(up[i]);
  store16(o, gated16(load16(g), load16(u)));
  for (int64_t i = 0; i < n; ++i) out[i] = from_float<T>(o[i]);
}

UA_VECTOR_CLONES void gated_floats(const float* gate, const float* up, float* out, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) store16(out + i, gated16(load16(gate + i), load16(up + i)));
  if (i < n) gated_chunk(gate + i, up + i, out + i, n - i);
}

template <typename T>
ua_status run(int64_t rows, int64_t width, const void* gate_up, void* output, const ua_cpu_threads* threads) {
  const int64_t blocks_per_row = (width + kBlock - 1) / kBlock;
  const T* in = static_cast<const T*>(gate_up);
  T* out = static_cast<T*>(output);
  auto block = [&](int64_t task) {
    const int64_t row = task / blocks_per_row, begin = (task % blocks_per_row) * kBlock;
    const int64_t n = std::min(kBlock, width - begin);
    const T* gate = in + row * 2 * width + begin;
    if constexpr (std::is_same_v<T, float>) {
      gated_floats(gate, gate + width, out + row * width + begin, n);
    } else {
      for (int64_t i = 0; i < n; i += 16)
        gated_chunk(gate + i, gate + width + i, out + row * width + begin + i, std::min<int64_t>(16, n - i));
    }
  };
  for_each(threads, rows * blocks_per_row, block);
  return ok();
}

}  // namespace
}  // namespace uniattn::cpu

extern "C" ua_status ua_gated_silu_cpu(ua_dtype dtype, int64_t rows, int64_t width, const void* gate_up, void* output,
                                       const ua_cpu_threads* threads) {
  using namespace uniattn::cpu;
  if (ua_status s = uniattn::check_gated_silu(dtype, rows, width, gate_up, output); s != UA_OK) return s;
  switch (dtype) {
    case UA_FLOAT32: return run<float>(rows, width, gate_up, output, threads);
    case UA_FLOAT16: return run<Float16>(rows, width, gate_up, output, threads);
    default: return run<BFloat16>(rows, width, gate_up, output, threads);
  }
}
