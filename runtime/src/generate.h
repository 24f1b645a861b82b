// The generation loop of the Python runtime (uniattn_export/targets/session.py,
// GenerationSession.generate), step for step, over a Session.
#pragma once

#include <cstdint>
#include <vector>

#include "session.h"
#include "uniattn/runtime.h"

namespace uniattn::runtime {

struct Generated {
  int64_t batch = 0;
  int64_t steps = 0;
  std::vector<int64_t> tokens;   // (batch, steps)
  std::vector<int64_t> lengths;  // (batch): up to and including eos
  std::vector<float> logits;     // (batch, steps, vocab) when requested
};

// Throws Error(UNIATTN_INVALID_ARGUMENT, ...) for a request that cannot run (ids outside the
// vocabulary, the longest prompt plus max_new_tokens beyond the model's positions or, for
// static caches, beyond the capacity, ...).
Generated generate(Session& session, int64_t vocab_size, int64_t max_positions,
                   const uniattn_generate_request& request);

}  // namespace uniattn::runtime
