"""OrtSession against the PyTorch reference driven by transformers' own generate (an
independent loop): logits on real positions incl. left padding, greedy tokens over 12
decode steps, one graph for short and long prefills, with and without the custom-op library."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from uniattn_export import native
from uniattn_export.errors import UniAttnError
from uniattn_export.model import load_model
from uniattn_export.targets.ort import OrtSession
from uniattn_export.targets.ort import session as session_module
from uniattn_export.targets.session import Sampling

# Lengths 20 (> probs_max_query_len 16: the prefill runs the no-probs branch), 7 and 3:
# the shorter rows are left-padded.
PROMPT_LENGTHS = (20, 7, 3)
DECODE_STEPS = 12


def _prompts(vocab_size, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab_size, n).tolist() for n in PROMPT_LENGTHS]


def _transformers_generate(checkpoint, generation):
    """Prefill logits (all positions) and transformers.generate's greedy tokens and logits."""
    model = load_model(checkpoint)
    ids, mask = torch.from_numpy(generation.prompt_ids), torch.from_numpy(generation.prompt_mask)
    with torch.no_grad():
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        prefill = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.numpy()
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=DECODE_STEPS, do_sample=False,
            pad_token_id=0, output_logits=True, return_dict_in_generate=True,
        )  # fmt: skip
    tokens = out.sequences[:, ids.shape[1]:].numpy()
    return prefill, tokens, [step.numpy() for step in out.logits]


def _assert_matches_reference(session, checkpoint, vocab_size):
    generation = session.generate(_prompts(vocab_size), DECODE_STEPS, return_logits=True)
    prefill, tokens, step_logits = _transformers_generate(checkpoint, generation)
    real = generation.prompt_mask.astype(bool)
    assert (~real).any(), "the batch must be left-padded"
    assert np.abs(generation.step_logits[0] - prefill)[real].max() < 1e-4
    np.testing.assert_array_equal(generation.tokens, tokens)
    for t in range(DECODE_STEPS):
        assert np.abs(generation.step_logits[t][:, -1] - step_logits[t]).max() < 1e-4, f"step {t}"
    return generation


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_function_bodies_reproduce_the_reference(tiny, family):
    checkpoint, artifact = tiny(family)
    session = OrtSession(artifact, custom_ops=False)
    assert session.description.endswith("ONNX function bodies (no custom-op library), float32")
    assert not session.uses_custom_ops
    _assert_matches_reference(session, checkpoint, artifact.vocab_size)


def test_custom_op_library_reproduces_the_reference(tiny):
    library = native.ort_custom_op_library()
    assert library is not None, f"{native.ORT_LIBRARY} is not built: {native.BUILD_FIX}"
    checkpoint, artifact = tiny("llama")
    session = OrtSession(artifact)  # picks the library up by itself
    assert session.uses_custom_ops and f"custom-op library {library}" in session.description
    with_library = _assert_matches_reference(session, checkpoint, artifact.vocab_size)
    plain = OrtSession(artifact, custom_ops=False).generate(_prompts(artifact.vocab_size), DECODE_STEPS)
    np.testing.assert_array_equal(with_library.tokens, plain.tokens)


def test_float16_artifact_follows_the_float16_reference(tiny):
    checkpoint, artifact = tiny("llama", "float16")
    generation = OrtSession(artifact, custom_ops=False).generate(_prompts(artifact.vocab_size), 4, return_logits=True)
    model = load_model(checkpoint, dtype="float16")
    ids, mask = torch.from_numpy(generation.prompt_ids), torch.from_numpy(generation.prompt_mask)
    with torch.no_grad():
        prefill = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    real = generation.prompt_mask.astype(bool)
    # float16 activations: a few units in the last place of logits of magnitude ~5.
    assert np.abs(generation.step_logits[0] - prefill.float().numpy())[real].max() < 0.1


def test_sampling_is_seeded_and_respects_top_k(tiny):
    _, artifact = tiny("llama")
    session = OrtSession(artifact, custom_ops=False)
    prompts = _prompts(artifact.vocab_size)
    draw = lambda seed, **kw: session.generate(prompts, 8, sampling=Sampling(temperature=1.5, seed=seed, **kw))  # noqa: E731
    np.testing.assert_array_equal(draw(1).tokens, draw(1).tokens)
    assert (draw(1).tokens != draw(2).tokens).any()
    greedy = session.generate(prompts, 8).tokens
    np.testing.assert_array_equal(draw(3, top_k=1).tokens, greedy)
    np.testing.assert_array_equal(draw(4, top_p=1e-6).tokens, greedy)


def test_eos_finishes_a_row_and_pads_it(tiny):
    _, artifact = tiny("llama")
    session = OrtSession(artifact, custom_ops=False)
    prompts = _prompts(artifact.vocab_size)
    greedy = session.generate(prompts, 6).tokens
    eos = int(greedy[0, 2])
    assert eos not in greedy[0, :2]
    out = session.generate(prompts, 6, eos_token_id=eos, pad_token_id=0)
    first = [list(row).index(eos) if eos in row else None for row in greedy]
    for row, stop in enumerate(first):
        if stop is None:
            np.testing.assert_array_equal(out.tokens[row], greedy[row, : out.tokens.shape[1]])
        else:
            assert out.tokens[row, stop] == eos and (out.tokens[row, stop + 1:] == 0).all()
    assert out.finished[0]


def test_all_rows_finished_stops_early(tiny):
    _, artifact = tiny("llama")
    session = OrtSession(artifact, custom_ops=False)
    prompt = _prompts(artifact.vocab_size)[:1]
    first = int(session.generate(prompt, 1).tokens[0, 0])
    out = session.generate(prompt, 10, eos_token_id=first)
    assert out.tokens.shape == (1, 1) and out.finished.all()


def test_io_binding_path_keeps_ortvalue_caches_and_matches_the_reference(tiny):
    """The CUDA path's code (IOBinding, caches as OrtValues fed back step to step), run on
    the CPU device here; the GPU script runs it on CUDA."""
    checkpoint, artifact = tiny("llama")
    session = OrtSession(artifact, custom_ops=False, io_binding=True)
    _assert_matches_reference(session, checkpoint, artifact.vocab_size)
    assert session.cache_on_device()
    lengths = {v.shape()[2] for v in session._cache.values()}
    assert lengths == {max(PROMPT_LENGTHS) + DECODE_STEPS - 1}
    plain = OrtSession(artifact, custom_ops=False)
    plain.generate([[1, 2, 3]], 3)
    assert not plain.cache_on_device() and {v.shape[2] for v in plain._cache.values()} == {5}


def test_runtime_errors_are_one_line(tiny, monkeypatch):
    _, artifact = tiny("llama")
    session = OrtSession(artifact, custom_ops=False)
    with pytest.raises(UniAttnError, match=r"step\(\) called before reset\(\)"):
        session.step(np.zeros((1, 1), np.int64), np.ones((1, 1), np.int64), np.zeros((1, 1), np.int64))
    with pytest.raises(UniAttnError, match="every prompt needs at least one token"):
        session.generate([[1], []], 2)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(UniAttnError, match="has no CUDA execution provider"):
        OrtSession(artifact, device="cuda")
    monkeypatch.setattr(session_module, "ort_custom_op_library", lambda: None)
    with pytest.raises(UniAttnError, match=r"the custom-op library \(libuniattn_ort.so\) is not built"):
        OrtSession(artifact, custom_ops=True)


def test_a_node_failing_inside_onnx_runtime_is_raised_not_printed(tiny, tmp_path, capfd, failing_at_run_time):
    _, artifact = tiny("llama")
    broken = OrtSession(failing_at_run_time(artifact.path, tmp_path / "artifact"), custom_ops=False)
    capfd.readouterr()
    with pytest.raises(Exception, match="running Reshape node.*requested shape"):
        broken.generate([[1, 2, 3]], 2)
    assert capfd.readouterr().err == ""  # ORT logs the failure itself unless told not to


def test_bfloat16_on_the_cpu_is_refused_clearly(tiny):
    _, artifact = tiny("llama", "bfloat16")
    with pytest.raises(UniAttnError, match="CPU execution provider cannot run this bfloat16 artifact"):
        OrtSession(artifact, custom_ops=False)


def test_a_broken_custom_op_library_is_reported(tiny, tmp_path, monkeypatch):
    _, artifact = tiny("llama")
    fake = tmp_path / "libuniattn_ort.so"
    fake.write_bytes(b"not a shared library")
    monkeypatch.setattr(session_module, "ort_custom_op_library", lambda: str(fake))
    with pytest.raises(UniAttnError, match=f"cannot load the custom-op library {fake}"):
        OrtSession(artifact)
