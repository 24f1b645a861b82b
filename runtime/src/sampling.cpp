#include "sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

namespace uniattn::runtime {

namespace {

// SeedSequence constants (numpy/random/bit_generator.pyx).
constexpr uint32_t kInitA = 0x43b0d7e5, kMultA = 0x931e8875, kInitB = 0x8b51f9dd, kMultB = 0x58f38ded;
constexpr uint32_t kMixMultL = 0xca01f9dd, kMixMultR = 0x4973f715;
constexpr int kPoolSize = 4, kXShift = 16;

// SeedSequence(seed).generate_state(4, uint64): the four 64-bit words PCG64 is seeded with.
void seed_sequence_state(uint64_t seed, uint64_t words[4]) {
  // The entropy as little-endian 32-bit words (one word for seeds below 2^32, zero included).
  std::vector<uint32_t> entropy = {static_cast<uint32_t>(seed)};
  if (seed >> 32) entropy.push_back(static_cast<uint32_t>(seed >> 32));
  uint32_t hash_const = kInitA;
  auto hashmix = [&hash_const](uint32_t value) {
    value ^= hash_const;
    hash_const *= kMultA;
    value *= hash_const;
    return value ^ (value >> kXShift);
  };
  auto mix = [](uint32_t x, uint32_t y) {
    uint32_t result = kMixMultL * x - kMixMultR * y;
    return result ^ (result >> kXShift);
  };
  uint32_t pool[kPoolSize];
  for (int i = 0; i < kPoolSize; ++i) pool[i] = hashmix(i < static_cast<int>(entropy.size()) ? entropy[i] : 0);
  for (int src = 0; src < kPoolSize; ++src) {
    for (int dst = 0; dst < kPoolSize; ++dst) {
      if (src != dst) pool[dst] = mix(pool[dst], hashmix(pool[src]));
    }
  }
  uint32_t state[2 * kPoolSize];
  uint32_t hash_b = kInitB;
  for (int i = 0; i < 2 * kPoolSize; ++i) {
    uint32_t value = pool[i % kPoolSize] ^ hash_b;
    hash_b *= kMultB;
    value *= hash_b;
    state[i] = value ^ (value >> kXShift);
  }
  for (int i = 0; i < kPoolSize; ++i) words[i] = state[2 * i] | (static_cast<uint64_t>(state[2 * i + 1]) << 32);
}

constexpr unsigned __int128 kPcgMultiplier =
    (static_cast<unsigned __int128>(2549297995355413924ULL) << 64) | 4865540595714422341ULL;

// numpy's pairwise summation (the order np.sum adds a contiguous float64 row in), so the
// normalizations below round exactly as the Python runtime's.
double pairwise_sum(const double* values, size_t n) {
  if (n < 8) {
    double sum = -0.0;
    for (size_t i = 0; i < n; ++i) sum += values[i];
    return sum;
  }
  if (n <= 128) {
    double r[8];
    std::copy(values, values + 8, r);
    size_t i = 8;
    for (; i < n - n % 8; i += 8) {
      for (int j = 0; j < 8; ++j) r[j] += values[i + j];
    }
    double sum = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) sum += values[i];
    return sum;
  }
  size_t half = n / 2;
  half -= half % 8;
  return pairwise_sum(values, half) + pairwise_sum(values + half, n - half);
}

void normalize_exp(std::vector<double>& values, double shift) {
  for (double& v : values) v = std::exp(v - shift);
  const double total = pairwise_sum(values.data(), values.size());
  for (double& v : values) v /= total;
}

}  // namespace

NumpyRandom::NumpyRandom(uint64_t seed) {
  uint64_t words[4];
  seed_sequence_state(seed, words);
  const unsigned __int128 initial_state = (static_cast<unsigned __int128>(words[0]) << 64) | words[1];
  const unsigned __int128 sequence = (static_cast<unsigned __int128>(words[2]) << 64) | words[3];
  // pcg_setseq_128_srandom_r
  state_ = 0;
  increment_ = (sequence << 1) | 1;
  state_ = state_ * kPcgMultiplier + increment_;
  state_ += initial_state;
  state_ = state_ * kPcgMultiplier + increment_;
}

uint64_t NumpyRandom::next64() {
  state_ = state_ * kPcgMultiplier + increment_;
  const uint64_t folded = static_cast<uint64_t>(state_ >> 64) ^ static_cast<uint64_t>(state_);
  const unsigned rotation = static_cast<unsigned>(state_ >> 122);
  return (folded >> rotation) | (folded << ((64 - rotation) & 63));
}

double NumpyRandom::uniform() { return static_cast<double>(next64() >> 11) * (1.0 / 9007199254740992.0); }

int64_t greedy_token(const float* logits, int64_t vocab) {
  int64_t best = 0;
  for (int64_t v = 0; v < vocab; ++v) {
    if (std::isnan(logits[v])) return v;
    if (logits[v] > logits[best]) best = v;
  }
  return best;
}

int64_t sample_token(const float* logits, int64_t vocab, const SamplingParams& params, double draw) {
  constexpr double kNegInf = -std::numeric_limits<double>::infinity();
  std::vector<double> scores(logits, logits + vocab);
  for (double& s : scores) s /= params.temperature;
  if (params.top_k > 0 && params.top_k < vocab) {
    std::vector<double> sorted = scores;
    std::nth_element(sorted.begin(), sorted.begin() + (params.top_k - 1), sorted.end(), std::greater<double>());
    const double kth = sorted[params.top_k - 1];
    for (double& s : scores) s = s < kth ? kNegInf : s;
  }
  if (params.top_p < 1) {
    std::vector<int64_t> order(vocab);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return scores[a] > scores[b]; });
    std::vector<double> probs(vocab);
    for (int64_t i = 0; i < vocab; ++i) probs[i] = scores[order[i]];
    normalize_exp(probs, probs[0]);
    double cumulative = 0;
    std::vector<double> kept(vocab);
    for (int64_t i = 0; i < vocab; ++i) {
      cumulative += probs[i];
      const double mass_before = cumulative - probs[i];
      kept[order[i]] = mass_before < params.top_p ? scores[order[i]] : kNegInf;
    }
    scores.swap(kept);
  }
  normalize_exp(scores, *std::max_element(scores.begin(), scores.end()));
  int64_t below = 0;
  double cumulative = 0;
  for (double p : scores) {
    cumulative += p;
    below += cumulative < draw;
  }
  return std::min(below, vocab - 1);
}

}  // namespace uniattn::runtime
