"""bfloat16 numerics on the CPU: the PyTorch reference in bfloat16 against itself in float32
(same bf16-rounded weights, so only activation rounding differs), and the CPU kernels
(uniattn_export.native) running a whole bfloat16 model in place of the reference ops.

onnxruntime's CPU EP cannot run bfloat16 artifacts (no bfloat16 Mul); the ops themselves run
bf16 in ORT CPU in tests/plugins/test_ort_ops.py. Validation of bf16 artifacts derives its
tolerance from exactly the bf16-vs-fp32 reference noise measured here, so this pins it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from uniattn_export import native
from uniattn_export.model import load_model
from uniattn_export.model.modeling import AttentionOps
from uniattn_export.model.synthetic import random_base_model, released_checkpoint, tiny_config
from uniattn_export.validate.reference import TorchSession

pytestmark = pytest.mark.usefixtures("single_torch_thread")

LAYERS = 6
PROMPT_LENGTHS = [11, 7, 20]  # left padding; 20 > 16: the consumers' prefill recomputes P
DECODE_STEPS = 6  # decode steps share P itself (bfloat16 shared_probs)
UNIT_ROUNDOFF = 2.0**-8  # bfloat16: 8 significant bits
# Roundings to bfloat16 per decoder layer: 2 norms, q/k/v/o projections, attention output,
# Wc, 2 residual adds, gate/up/down, activation x up: 14; plus the final norm and lm_head.
ROUNDINGS = 14 * LAYERS + 2
# Independent roundings add like a random walk: sqrt(n) u relative to the logit scale, and 4x
# for unlucky rows (validation's safety factor). About 0.145 of the scale; measured 0.045-0.050.
BF16_RELATIVE_BOUND = 4 * math.sqrt(ROUNDINGS) * UNIT_ROUNDOFF


@pytest.fixture(scope="module", params=[("llama", {}), ("mistral", {"sliding_window": 6})], ids=["llama", "mistral-window"])
def checkpoint(request, tmp_path_factory):
    family, overrides = request.param
    folder = tmp_path_factory.mktemp(f"{family}-bf16")
    base = random_base_model(tiny_config(family, num_hidden_layers=LAYERS, **overrides), seed=1)
    released_checkpoint(base, folder, 3, 1, LAYERS, seed=2, compensation_scale=0.1)
    return folder


def _prompts(vocab_size):
    rng = np.random.default_rng(3)
    return [rng.integers(1, vocab_size, n).tolist() for n in PROMPT_LENGTHS]


def _run(model, prompts, forced=None):
    return TorchSession(model).generate(prompts, DECODE_STEPS, return_logits=True, forced_tokens=forced)


def _max_error(a, b) -> float:
    real = a.prompt_mask.astype(bool)
    errors = [np.abs(a.step_logits[0] - b.step_logits[0])[real].max()]
    errors += [np.abs(x[:, -1] - y[:, -1]).max() for x, y in zip(a.step_logits[1:], b.step_logits[1:])]
    return float(max(errors))


def _fp32_with_bf16_weights(folder):
    model = load_model(folder, dtype="float32")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(parameter.to(torch.bfloat16).float())
    return model


def test_bfloat16_reference_follows_float32(checkpoint):
    bf16 = load_model(checkpoint, dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16
    prompts = _prompts(bf16.config.vocab_size)
    exact = _run(_fp32_with_bf16_weights(checkpoint), prompts)
    rounded = _run(bf16, prompts, forced=exact.tokens)
    scale = max(float(np.abs(s).max()) for s in exact.step_logits)
    assert scale > 1.0  # logits far from uniform
    error = _max_error(rounded, exact)
    assert error < BF16_RELATIVE_BOUND * scale, (error, scale)
    # bf16 is not secretly computing in float32: activations really are rounded.
    assert error > UNIT_ROUNDOFF * scale / 8
    assert (rounded.tokens == exact.tokens).mean() >= 0.9


def test_cpu_kernels_run_a_bfloat16_model_like_the_reference(checkpoint):
    assert native.kernels_library() is not None, f"{native.KERNELS_LIBRARY} is not built: {native.BUILD_FIX}"
    reference = load_model(checkpoint, dtype="bfloat16")
    prompts = _prompts(reference.config.vocab_size)
    expected = _run(reference, prompts)
    calls = {"producer": 0, "consumer": 0}

    def counted(name, op):
        def run(*args, **kwargs):
            calls[name] += 1
            return op(*args, **kwargs)

        return run

    kernels = load_model(checkpoint, dtype="bfloat16")
    kernels.attention_ops = AttentionOps(
        producer=counted("producer", native.run_producer), consumer=counted("consumer", native.run_consumer)
    )
    actual = _run(kernels, prompts, forced=expected.tokens)
    consumers = len(reference.uniattn_config.consumers)  # every layer, at every step
    assert calls == {"producer": (LAYERS - consumers) * DECODE_STEPS, "consumer": consumers * DECODE_STEPS}
    # Both compute in float32 and round the same outputs to bfloat16; a float32 summation order
    # that flips one rounding moves later layers by an ulp or two. Bound: 4 bf16 ulps of the
    # logit scale (measured: identical for Llama, 2.3 ulps with Mistral's window).
    scale = max(float(np.abs(s).max()) for s in expected.step_logits)
    ulp = 2.0 ** (math.floor(math.log2(scale)) - 7)
    assert _max_error(actual, expected) <= 4 * ulp
    np.testing.assert_array_equal(actual.tokens, expected.tokens)
    # And the kernels in bfloat16 are as close to float32 as the bfloat16 reference is.
    exact = _run(_fp32_with_bf16_weights(checkpoint), prompts, forced=expected.tokens)
    assert _max_error(actual, exact) < BF16_RELATIVE_BOUND * scale
