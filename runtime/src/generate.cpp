#include "generate.h"

#include <algorithm>
#include <cmath>

#include "error.h"
#include "sampling.h"

namespace uniattn::runtime {

namespace {

[[noreturn]] void invalid(const std::string& message) { throw Error(UNIATTN_INVALID_ARGUMENT, message); }

void check_request(const uniattn_generate_request& r, int64_t vocab, int64_t max_positions) {
  if (r.batch_size < 1) invalid("batch_size must be >= 1, got " + std::to_string(r.batch_size));
  if (r.prompt_ids == nullptr || r.prompt_lengths == nullptr) invalid("prompt_ids and prompt_lengths are required");
  if (r.max_new_tokens < 1) invalid("max_new_tokens must be >= 1, got " + std::to_string(r.max_new_tokens));
  auto token_ok = [vocab](int64_t id) { return id >= 0 && id < vocab; };
  if (!token_ok(r.pad_token_id)) {
    invalid("pad_token_id " + std::to_string(r.pad_token_id) + " is outside the vocabulary [0, " +
            std::to_string(vocab) + ")");
  }
  if (r.eos_token_id != -1 && !token_ok(r.eos_token_id)) {
    invalid("eos_token_id " + std::to_string(r.eos_token_id) + " is outside the vocabulary (use -1 for none)");
  }
  const int64_t* ids = r.prompt_ids;
  for (int64_t b = 0; b < r.batch_size; ++b) {
    if (r.prompt_lengths[b] < 1) invalid("prompt " + std::to_string(b) + " is empty: every prompt needs a token");
    for (int64_t i = 0; i < r.prompt_lengths[b]; ++i, ++ids) {
      if (!token_ok(*ids)) {
        invalid("prompt " + std::to_string(b) + " has token id " + std::to_string(*ids) +
                " outside the vocabulary [0, " + std::to_string(vocab) + ")");
      }
    }
  }
  const int64_t longest = *std::max_element(r.prompt_lengths, r.prompt_lengths + r.batch_size);
  if (r.max_new_tokens > max_positions - longest) {  // no overflow: both sides are checked positive
    invalid("prompt tokens (" + std::to_string(longest) + ") + max_new_tokens (" + std::to_string(r.max_new_tokens) +
            ") exceed the model's " + std::to_string(max_positions) + " positions");
  }
  if (r.do_sample) {
    if (!(r.temperature > 0) || !std::isfinite(r.temperature)) {
      invalid("temperature must be > 0, got " + std::to_string(r.temperature));
    }
    if (r.top_k < 0) invalid("top_k must be >= 0 (0: off), got " + std::to_string(r.top_k));
    if (!(r.top_p > 0 && r.top_p <= 1)) invalid("top_p must be in (0, 1], got " + std::to_string(r.top_p));
  }
}

}  // namespace

Generated generate(const Session& session, int64_t vocab, int64_t max_positions, const uniattn_generate_request& r) {
  check_request(r, vocab, max_positions);
  const int64_t batch = r.batch_size;
  const int64_t width = *std::max_element(r.prompt_lengths, r.prompt_lengths + batch);

  // Left padding; positions count real tokens only (0 on padding).
  std::vector<int64_t> step_ids(batch * width, r.pad_token_id), mask(batch * width, 0), positions(batch * width, 0);
  const int64_t* ids = r.prompt_ids;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t pad = width - r.prompt_lengths[b];
    for (int64_t i = 0; i < r.prompt_lengths[b]; ++i) {
      step_ids[b * width + pad + i] = *ids++;
      mask[b * width + pad + i] = 1;
      positions[b * width + pad + i] = i;
    }
  }

  const SamplingParams params{r.temperature, r.top_k, r.top_p};
  NumpyRandom random(r.do_sample ? r.seed : 0);
  std::vector<Owned<OrtValue>> caches = session.empty_caches(batch);
  std::vector<int64_t> chosen(batch * r.max_new_tokens, r.pad_token_id);
  std::vector<bool> finished(batch, false);
  std::vector<std::vector<float>> step_logits;
  int64_t length = width, steps = 0;
  for (int64_t t = 0; t < r.max_new_tokens; ++t) {
    std::vector<float> logits = session.step(step_ids, mask, positions, batch, length, caches);
    for (int64_t b = 0; b < batch; ++b) {
      const float* row = &logits[b * vocab];
      int64_t token = r.do_sample ? sample_token(row, vocab, params, random.uniform()) : greedy_token(row, vocab);
      if (finished[b]) token = r.pad_token_id;
      chosen[b * r.max_new_tokens + t] = token;
      if (r.eos_token_id != -1 && token == r.eos_token_id) finished[b] = true;
    }
    if (r.return_logits) step_logits.push_back(std::move(logits));
    steps = t + 1;
    if (steps == r.max_new_tokens || std::all_of(finished.begin(), finished.end(), [](bool f) { return f; })) break;

    // The next step feeds each row's chosen token at the next position; the mask grows by one.
    const int64_t total = static_cast<int64_t>(mask.size()) / batch;
    std::vector<int64_t> grown(batch * (total + 1), 1);
    for (int64_t b = 0; b < batch; ++b) {
      std::copy(&mask[b * total], &mask[b * total] + total, &grown[b * (total + 1)]);
    }
    mask.swap(grown);
    std::vector<int64_t> next_ids(batch), next_positions(batch);
    for (int64_t b = 0; b < batch; ++b) {
      next_ids[b] = chosen[b * r.max_new_tokens + t];
      next_positions[b] = positions[b * length + length - 1] + 1;
    }
    step_ids.swap(next_ids);
    positions.swap(next_positions);
    length = 1;
  }

  Generated out;
  out.batch = batch;
  out.steps = steps;
  out.tokens.resize(batch * steps);
  out.lengths.assign(batch, steps);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t < steps; ++t) {
      out.tokens[b * steps + t] = chosen[b * r.max_new_tokens + t];
      if (r.eos_token_id != -1 && out.lengths[b] == steps && out.tokens[b * steps + t] == r.eos_token_id) {
        out.lengths[b] = t + 1;
      }
    }
  }
  if (r.return_logits) {
    out.logits.resize(batch * steps * vocab);
    for (int64_t t = 0; t < steps; ++t) {
      for (int64_t b = 0; b < batch; ++b) {
        std::copy(&step_logits[t][b * vocab], &step_logits[t][b * vocab] + vocab, &out.logits[(b * steps + t) * vocab]);
      }
    }
  }
  return out;
}

}  // namespace uniattn::runtime
