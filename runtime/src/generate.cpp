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

// The token each row takes at step t (pad after its eos) and whether every row finished.
struct Chooser {
  Chooser(const uniattn_generate_request& request, int64_t batch_size, int64_t vocab_size)
      : r(request), batch(batch_size), vocab(vocab_size) {}
  const uniattn_generate_request& r;
  int64_t batch, vocab;
  SamplingParams params{r.temperature, r.top_k, r.top_p};
  NumpyRandom random{r.do_sample ? r.seed : 0};
  std::vector<int64_t> chosen = std::vector<int64_t>(batch * r.max_new_tokens, r.pad_token_id);
  std::vector<bool> finished = std::vector<bool>(batch, false);
  std::vector<std::vector<float>> step_logits;

  // Needs the logits (sampling, or the caller keeps them); otherwise the argmax suffices.
  bool wants_logits() const { return r.do_sample || r.return_logits; }

  // Records step t from `logits` (B, V) or, when wants_logits() is false, from `argmax` (B);
  // returns the tokens to feed next.
  std::vector<int64_t> choose(int64_t t, std::vector<float>& logits, const std::vector<int64_t>& argmax) {
    std::vector<int64_t> fed(batch);
    for (int64_t b = 0; b < batch; ++b) {
      int64_t token = argmax.empty() ? (r.do_sample ? sample_token(&logits[b * vocab], vocab, params, random.uniform())
                                                    : greedy_token(&logits[b * vocab], vocab))
                                     : argmax[b];
      if (finished[b]) token = r.pad_token_id;
      chosen[b * r.max_new_tokens + t] = fed[b] = token;
      if (r.eos_token_id != -1 && token == r.eos_token_id) finished[b] = true;
    }
    if (r.return_logits) step_logits.push_back(std::move(logits));
    return fed;
  }

  bool all_finished() const { return std::all_of(finished.begin(), finished.end(), [](bool f) { return f; }); }

  Generated result(int64_t steps) const {
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
};

// Dynamic caches: left padding, positions count real tokens only (0 on padding), the mask
// grows by one column per step.
Generated generate_dynamic(const Session& session, Chooser& chooser, int64_t width) {
  const uniattn_generate_request& r = chooser.r;
  const int64_t batch = chooser.batch;
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
  std::vector<Owned<OrtValue>> caches = session.empty_caches(batch);
  int64_t length = width;
  for (int64_t t = 0;; ++t) {
    std::vector<float> logits = session.step(step_ids, mask, positions, batch, length, caches);
    std::vector<int64_t> fed = chooser.choose(t, logits, {});
    if (t + 1 == r.max_new_tokens || chooser.all_finished()) return chooser.result(t + 1);

    // The next step feeds each row's chosen token at the next position; the mask grows by one.
    const int64_t total = static_cast<int64_t>(mask.size()) / batch;
    std::vector<int64_t> grown(batch * (total + 1), 1);
    for (int64_t b = 0; b < batch; ++b) {
      std::copy(&mask[b * total], &mask[b * total] + total, &grown[b * (total + 1)]);
    }
    mask.swap(grown);
    std::vector<int64_t> next_positions(batch);
    for (int64_t b = 0; b < batch; ++b) next_positions[b] = positions[b * length + length - 1] + 1;
    step_ids.swap(fed);
    positions.swap(next_positions);
    length = 1;
  }
}

// Static caches (slot = position): right padding, positions 0..width-1 in every row, then
// each row's next token at position = its number of real tokens so far (overwriting the slot
// its first padding token wrote). Greedy decoding reads the graph's next_tokens (B int64),
// sampling and return_logits the logits.
Generated generate_static(const Session& session, StaticBatch& state, Chooser& chooser, int64_t width) {
  const uniattn_generate_request& r = chooser.r;
  const int64_t batch = chooser.batch;
  std::vector<int64_t> step_ids(batch * width, r.pad_token_id), mask(batch * width, 0), positions(batch * width);
  const int64_t* ids = r.prompt_ids;
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t i = 0; i < width; ++i) positions[b * width + i] = i;
    for (int64_t i = 0; i < r.prompt_lengths[b]; ++i) {
      step_ids[b * width + i] = *ids++;
      mask[b * width + i] = 1;
    }
  }
  std::vector<int64_t> next_positions(r.prompt_lengths, r.prompt_lengths + batch);
  std::vector<float> logits;
  std::vector<int64_t> argmax;
  for (int64_t t = 0;; ++t) {
    if (t == 0) {
      session.static_prefill(state, step_ids, mask, positions, width);
    } else {
      session.static_decode(state, step_ids, next_positions);
      for (int64_t& position : next_positions) ++position;
    }
    if (chooser.wants_logits()) {
      session.read_logits(state, logits);
    } else {
      session.read_next_tokens(state, argmax);
    }
    step_ids = chooser.choose(t, logits, argmax);
    if (t + 1 == r.max_new_tokens || chooser.all_finished()) return chooser.result(t + 1);
  }
}

}  // namespace

Generated generate(Session& session, int64_t vocab, int64_t max_positions, const uniattn_generate_request& r) {
  check_request(r, vocab, max_positions);
  const int64_t batch = r.batch_size;
  const int64_t width = *std::max_element(r.prompt_lengths, r.prompt_lengths + batch);
  Chooser chooser(r, batch, vocab);
  const Manifest& manifest = session.manifest();
  if (!manifest.static_cache) return generate_dynamic(session, chooser, width);

  // Before anything is allocated or run.
  if (width + r.max_new_tokens > manifest.capacity) {
    invalid("the longest prompt (" + std::to_string(width) + " tokens) + max_new_tokens (" +
            std::to_string(r.max_new_tokens) + ") = " + std::to_string(width + r.max_new_tokens) +
            " tokens exceeds the artifact's cache capacity (" + std::to_string(manifest.capacity) +
            "). Shorten the prompt or generate fewer tokens, or re-export with a larger --max-length.");
  }
  if (session.cuda_graphs()) {
    // The captured graphs hold these buffers' addresses: one generation at a time uses them.
    std::lock_guard<std::mutex> lock(session.graph_mutex());
    return generate_static(session, session.graph_batch(batch), chooser, width);
  }
  std::unique_ptr<StaticBatch> state = session.static_batch(batch);
  return generate_static(session, *state, chooser, width);
}

}  // namespace uniattn::runtime
