// Token choice, bit-compatible with the Python runtime (uniattn_export/targets/session.py,
// choose_tokens) and its random numbers (numpy.random.default_rng(seed).random()).
#pragma once

#include <cstdint>

namespace uniattn::runtime {

// NumPy's default generator: PCG64 (128-bit LCG, XSL-RR output) seeded through NumPy's
// SeedSequence, uniform doubles as (next64 >> 11) * 2^-53. Reimplementing it (rather than
// picking another RNG) makes a seed mean the same draws in C, C++ and Python.
class NumpyRandom {
 public:
  explicit NumpyRandom(uint64_t seed);
  double uniform();

 private:
  uint64_t next64();
  unsigned __int128 state_;
  unsigned __int128 increment_;
};

struct SamplingParams {
  double temperature;
  int64_t top_k;  // 0: off
  double top_p;   // >= 1: off
};

// Index of the largest logit (the first one on ties, a NaN if there is one): numpy's argmax.
int64_t greedy_token(const float* logits, int64_t vocab);

// Temperature, top-k (ties with the k-th score kept), top-p (the smallest prefix, in
// descending score order, whose mass reaches top_p), then the inverse CDF at `draw`.
int64_t sample_token(const float* logits, int64_t vocab, const SamplingParams& params, double draw);

}  // namespace uniattn::runtime
