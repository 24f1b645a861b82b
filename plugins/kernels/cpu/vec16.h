// 16-float vectors (GCC vector extensions) for the CPU kernels' inner loops: one AVX-512
// register, or two / four narrower ones in the AVX2 / default clones (UA_VECTOR_CLONES), and
// a branch-free e^x over them.
#pragma once

#include <cstdint>
#include <cstring>

namespace uniattn::cpu {

typedef float Vec16 __attribute__((vector_size(64)));
typedef int32_t Int16x __attribute__((vector_size(64)));

// The helpers below pass Vec16 by value but are always inlined into the clones, so the
// default target's ABI for 64-byte vectors (GCC's -Wpsabi note) never applies.
#pragma GCC diagnostic ignored "-Wpsabi"

__attribute__((always_inline)) inline Vec16 load16(const float* p) {
  Vec16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

__attribute__((always_inline)) inline void store16(float* p, Vec16 v) { std::memcpy(p, &v, sizeof(v)); }

__attribute__((always_inline)) inline Vec16 splat16(float x) { return Vec16{} + x; }

// e^x for 16 lanes without branches: range reduction to r in [-ln2/2, ln2/2] (n = x log2(e)
// rounded to nearest with the 1.5 * 2^23 trick, ln 2 in two parts), a degree-6 Taylor
// polynomial (relative error below 1e-7 there), and 2^n built in the exponent bits. Exactly 0
// below -87 (hidden keys: -inf scores); NaN stays NaN.
__attribute__((always_inline)) inline Vec16 exp16(Vec16 x) {
  const Vec16 low = splat16(-87.f), high = splat16(88.f), round = splat16(12582912.f);
  Vec16 clamped = x < low ? low : x;
  clamped = clamped > high ? high : clamped;
  const Vec16 shifted = clamped * 1.44269504f + round;
  const Vec16 n = shifted - round;
  const Vec16 r = clamped - n * 0.693145751953125f - n * 1.428606765330187e-06f;
  Vec16 p = splat16(1.f / 720);
  p = p * r + 1.f / 120;
  p = p * r + 1.f / 24;
  p = p * r + 1.f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  // `shifted` is 1.5 * 2^23 + n exactly, so its bits are 0x4B400000 + n: rebias to the exponent.
  Int16x bits;
  std::memcpy(&bits, &shifted, sizeof(bits));
  bits = (bits - 0x4B400000 + 127) << 23;
  Vec16 power;
  std::memcpy(&power, &bits, sizeof(power));
  return x < low ? splat16(0.f) : p * power;
}

}  // namespace uniattn::cpu
