// Element types of the CPU kernels and their software conversions to and from float32.
//
// Statistics and accumulations run in float32; float16 / bfloat16 tensors are converted
// row by row into float buffers (the inner loops then run on contiguous floats) and
// rounded back with round-to-nearest-even, the rounding torch's `.to(dtype)` uses.
#pragma once

#include <cstdint>
#include <cstring>

// The vector loops (matrix, softmax, activation kernels) are compiled for AVX-512 and AVX2 as
// well and picked at load time.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define UA_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define UA_VECTOR_CLONES
#endif

namespace uniattn::cpu {

struct Float16 {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

inline float float_from_bits(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

inline uint32_t bits_of(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

inline float to_float(float x) { return x; }

inline float to_float(BFloat16 x) { return float_from_bits(uint32_t(x.bits) << 16); }

inline float to_float(Float16 x) {
  const uint32_t sign = uint32_t(x.bits & 0x8000u) << 16;
  const uint32_t exponent = (x.bits >> 10) & 0x1fu;
  const uint32_t mantissa = x.bits & 0x3ffu;
  if (exponent == 0x1f) return float_from_bits(sign | 0x7f800000u | (mantissa << 13));  // inf, nan
  if (exponent != 0) return float_from_bits(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  // Zero or subnormal: mantissa * 2^-24 is exact in float32.
  return float_from_bits(sign | bits_of(float(mantissa) * 0x1p-24f));
}

template <typename T>
T from_float(float x);

template <>
inline float from_float<float>(float x) {
  return x;
}

template <>
inline BFloat16 from_float<BFloat16>(float x) {
  uint32_t bits = bits_of(x);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return {uint16_t((bits >> 16) | 0x40u)};  // quiet nan
  bits += 0x7fffu + ((bits >> 16) & 1u);  // round to nearest, ties to even
  return {uint16_t(bits >> 16)};
}

template <>
inline Float16 from_float<Float16>(float x) {
  const uint32_t bits = bits_of(x);
  const uint16_t sign = uint16_t((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return {uint16_t(sign | 0x7e00u | ((magnitude >> 13) & 0x1ffu))};  // nan
  if (magnitude >= 0x477ff000u) return {uint16_t(sign | 0x7c00u)};  // >= 65520 rounds to inf
  if (magnitude < 0x38800000u) {
    // Below 2^-14: a subnormal half. Adding 0.5f (whose ulp is 2^-24, the subnormal
    // half's unit) lets the float adder round |x| / 2^-24 to nearest-even for us.
    const uint32_t units = bits_of(float_from_bits(magnitude) + 0.5f) - 0x3f000000u;
    return {uint16_t(sign | units)};
  }
  // Normal: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits to
  // nearest-even; a carry out of the mantissa correctly bumps the exponent.
  const uint32_t odd = (magnitude >> 13) & 1u;
  return {uint16_t(sign | ((magnitude + 0xc8000fffu + odd) >> 13))};
}

}  // namespace uniattn::cpu
