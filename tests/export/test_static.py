"""Static-cache artifacts (op contract v2): fixed capacity, caches bound as past and present
and updated in place, right-padded prompts. Run here through the function bodies on the CPU
(tests/targets/ort run the custom-op library on static artifacts)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from uniattn_export.errors import UniAttnError
from uniattn_export.export import load_artifact
from uniattn_export.model import load_model
from uniattn_export.targets.ort import OrtSession
from uniattn_export.validate.reference import TorchSession
from uniattn_export.validate.run import validate_artifact

CAPACITY = 64
STEPS = 32
# Rows of different lengths: right padding puts their slots and last tokens in different places.
PROMPT_LENGTHS = (9, 3, 14, 1)
# Mistral with a window shorter than the sequences, so the window matters.
MODELS = {
    "llama": dict(family="llama"),
    "mistral_window": dict(family="mistral", sliding_window=8),
    "qwen2": dict(family="qwen2"),
    "llama_base": dict(family="llama", base=True),
    # The 8B preset's attention shape: head_dim 128, 4 query heads per KV head, llama3 rope scaling.
    "llama3_head_dim_128": dict(family="llama", num_attention_heads=4, num_key_value_heads=1, head_dim=128,
                                rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                                 "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                 "original_max_position_embeddings": 32}),
}


def _prompts(vocab_size: int) -> list[list[int]]:
    rng = np.random.default_rng(11)
    return [rng.integers(0, vocab_size, n).tolist() for n in PROMPT_LENGTHS]


def _static(exported, name):
    return exported(**MODELS[name], cache="static", max_length=CAPACITY)


@pytest.mark.parametrize("name", MODELS)
def test_static_artifact_validates_and_generates_the_reference_tokens(exported, checkpoint, name):
    artifact = _static(exported, name)
    config = dict(MODELS[name])
    source = checkpoint(config.pop("family"), config.pop("base", False), **config)
    prompts = _prompts(artifact.vocab_size)
    session = OrtSession(artifact, custom_ops=False)

    report = validate_artifact(artifact, session=session, prompts=prompts, max_new_tokens=STEPS)
    assert report["passed"], report["failures"]
    assert report["logits"]["max_abs"] <= report["tolerance"]["logits_abs"]
    assert len(report["logits"]["per_step"]) == STEPS

    # Free-running greedy decoding (no teacher forcing): the same tokens as the reference.
    reference = TorchSession(load_model(source)).generate(prompts, STEPS)
    ours = session.generate(prompts, STEPS)
    np.testing.assert_array_equal(ours.tokens, reference.tokens)
    assert ours.prompt_mask[1].tolist() == [1, 1, 1] + [0] * 11  # right-padded


def test_released_checkpoint_gives_the_same_tokens_through_static_and_dynamic(exported):
    """The fixtures' UniAttn checkpoints are in the authors' release layout."""
    static, dynamic = _static(exported, "llama"), exported("llama")
    prompts = _prompts(static.vocab_size)
    static_run = OrtSession(static, custom_ops=False).generate(prompts, STEPS)
    dynamic_run = OrtSession(dynamic, custom_ops=False).generate(prompts, STEPS)
    np.testing.assert_array_equal(static_run.tokens, dynamic_run.tokens)


def test_static_graph_has_fixed_capacity_caches_and_v2_nodes(exported):
    artifact = _static(exported, "llama")
    assert artifact.manifest["cache"] == {"mode": "static", "capacity": CAPACITY, "op_version": 2, "layout": "optimum"}
    assert artifact.manifest["custom_ops"]["plugin_version"] == "2"
    assert artifact.manifest["onnx"]["custom_opsets"] == {"uniattn": 2}
    assert artifact.manifest["logits"] == "last"
    specs = {s["name"]: s["shape"] for s in artifact.input_specs + artifact.output_specs}
    assert specs["past_key_values.0.key"] == ["batch_size", 2, CAPACITY, 16]
    assert specs["present.2.value"] == ["batch_size", 2, CAPACITY, 16]
    assert "present.2.key" not in specs  # consumer layer 2: no K cache
    assert specs["logits"] == ["batch_size", 1, artifact.vocab_size]
    model = onnx.load(artifact.onnx_path)
    nodes = [n for n in model.graph.node if n.domain == "uniattn"]
    assert [n.input[5] if n.op_type == "UniAttnProducer" else n.input[2] for n in nodes] == ["position_ids"] * 6
    # No shape computation in the main graph: ORT's CUDA EP would put it on the CPU (no CUDA graphs).
    assert not [n.name for n in model.graph.node if n.op_type in ("Shape", "Size")]
    onnx.checker.check_model(str(artifact.onnx_path), full_check=True)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_static_graph_reads_rotary_tables_of_its_capacity(exported, checkpoint, dtype):
    """Static graphs index (C, D/2) cos/sin constants with the clipped positions instead of
    computing them every step; the tables are HF's rotary values at positions 0..C-1."""
    import torch
    from onnx import numpy_helper

    artifact = exported("llama", dtype=dtype, cache="static", max_length=CAPACITY)
    assert artifact.manifest["graph"]["fused"]["rotary_tables"] == 1
    model = onnx.load(artifact.onnx_path)
    kinds = [n.op_type for n in model.graph.node]
    assert not {"Cos", "Sin", "Concat"} & set(kinds)
    clip = next(n for n in model.graph.node if n.op_type == "Clip" and n.input[0] == "position_ids")
    rotaries = [n for n in model.graph.node if n.op_type == "RotaryEmbedding"]
    assert len(rotaries) == 2 * 4  # q and k of the 4 layers with a K cache (2 consumers)
    assert {(n.input[1], n.input[2], n.input[3]) for n in rotaries} == {(*rotaries[0].input[1:3], clip.output[0])}
    tables = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name in rotaries[0].input}
    reference = load_model(checkpoint("llama"), dtype=dtype)
    positions = torch.arange(CAPACITY)[None]
    cos, sin = reference.model.rotary_emb(torch.zeros(1, dtype=getattr(torch, dtype)), positions)
    half = cos.shape[-1] // 2
    for name, want in zip(rotaries[0].input[1:3], (cos, sin)):
        assert tables[name].dtype == np.dtype(dtype) and tables[name].shape == (CAPACITY, half)
        tolerance = 1e-6 if dtype == "float32" else 1e-3  # the graph's cos vs torch's, one float16 ulp
        np.testing.assert_allclose(tables[name].astype(np.float64), want[0, :, :half].double().numpy(),
                                   rtol=0, atol=tolerance)  # fmt: skip


@pytest.mark.parametrize("name", ["llama", "qwen2", "llama3_head_dim_128"])
def test_ort_graph_splits_and_rotates_q_and_k_in_one_node(exported, checkpoint, name):
    """The ort/genai targets' static graph: each layer with a K cache has one SplitRotary in place
    of the q/k/v Split and two RotaryEmbedding, reading the tables and the clipped positions;
    its function bodies generate the reference's tokens (the library's kernels on this graph:
    tests/targets/ort/test_static_buffers.py)."""
    artifact = exported(**MODELS[name], cache="static", max_length=CAPACITY, ort_contrib_ops=True)
    model = onnx.load(artifact.onnx_path)
    nodes = [n for n in model.graph.node if n.op_type == "SplitRotary"]
    heads = {"llama3_head_dim_128": (4, 1)}.get(name, (4, 2))
    assert len(nodes) == 4 and artifact.manifest["graph"]["fused"]["split_rotary"] == 4  # 2 of 6 layers are consumers
    assert not [n for n in model.graph.node if n.op_type == "RotaryEmbedding"]
    clip = next(n for n in model.graph.node if n.op_type == "Clip" and n.input[0] == "position_ids")
    for node in nodes:
        attributes = {a.name: a.i for a in node.attribute}
        assert node.domain == "uniattn" and (attributes["num_heads"], attributes["kv_num_heads"]) == heads
        assert node.input[1:] == nodes[0].input[1:] and node.input[3] == clip.output[0]
    assert ("uniattn", "SplitRotary") in {(f.domain, f.name) for f in model.functions}
    config = dict(MODELS[name])
    source = checkpoint(config.pop("family"), config.pop("base", False), **config)
    prompts = _prompts(artifact.vocab_size)
    want = TorchSession(load_model(source)).generate(prompts, STEPS)
    np.testing.assert_array_equal(OrtSession(artifact, custom_ops=False).generate(prompts, STEPS).tokens, want.tokens)


def test_next_tokens_is_the_argmax_of_the_logits_and_greedy_uses_it(exported):
    """Static artifacts return next_tokens = argmax(logits) (first maximum), so greedy decoding
    copies B token ids instead of B x V logits; tokens are the same either way."""
    artifact = _static(exported, "llama")
    specs = {s["name"]: s for s in artifact.output_specs}
    assert [s["name"] for s in artifact.output_specs][:2] == ["logits", "next_tokens"]
    assert specs["next_tokens"]["dtype"] == "int64" and specs["next_tokens"]["shape"] == ["batch_size", 1]
    session = OrtSession(artifact, custom_ops=False)
    prompts = _prompts(artifact.vocab_size)
    on_host = session.generate(prompts, 12, return_logits=True)  # step(): logits come down
    on_device = session.generate(prompts, 12)  # step_greedy(): next_tokens come down
    np.testing.assert_array_equal(on_device.tokens, on_host.tokens)
    for step_logits, tokens in zip(on_host.step_logits, on_host.tokens.T):
        np.testing.assert_array_equal(step_logits[:, -1].argmax(axis=-1), tokens)


def test_generation_beyond_the_capacity_fails_before_anything_runs(exported):
    session = OrtSession(_static(exported, "llama"), custom_ops=False)
    with pytest.raises(UniAttnError) as error:
        session.generate(_prompts(session.artifact.vocab_size), CAPACITY - 13)
    assert str(error.value) == (
        f"the longest prompt (14 tokens) + max_new_tokens ({CAPACITY - 13}) = {CAPACITY + 1} tokens exceeds "
        f"the artifact's cache capacity ({CAPACITY}). Shorten the prompt or generate fewer tokens, or "
        "re-export with a larger --max-length."
    )
    assert session._cache == {}  # no cache was even allocated


def test_auto_custom_ops_skip_a_library_of_op_version_1(exported, monkeypatch):
    """A library whose kernels report ABI 1 serves op version 1 only: auto mode runs the
    function bodies of a static artifact and says why; requiring the library is an error."""
    from uniattn_export.targets.ort import session as ort_session

    library = "/opt/uniattn/lib/libuniattn_ort.so"  # never loaded: refused before registration
    monkeypatch.setattr(ort_session, "ort_custom_op_library", lambda: library)
    monkeypatch.setattr(ort_session, "kernel_abi_version", lambda: 1)
    session = OrtSession(_static(exported, "llama"))
    assert not session.uses_custom_ops
    assert session.description.endswith(
        "ONNX function bodies (no custom-op library) (the installed custom-op library implements "
        "op version 1 only; this artifact needs 2), float32"
    )
    with pytest.raises(UniAttnError) as error:
        OrtSession(_static(exported, "llama"), custom_ops=True)
    assert str(error.value) == (
        f"the custom-op library {library} implements op version 1 only (kernel ABI 1), but this "
        "static-cache artifact needs op version 2. Rebuild the native libraries from this checkout, "
        "or run with --custom-ops off."
    )


def _tampered(artifact, tmp_path, edit):
    folder = shutil.copytree(artifact.path, tmp_path / "tampered")
    manifest = json.loads((folder / "uniattn_manifest.json").read_text())
    edit(manifest["cache"])
    (folder / "uniattn_manifest.json").write_text(json.dumps(manifest))
    return folder


def test_a_tampered_cache_mode_or_capacity_is_refused(exported, tmp_path):
    artifact = _static(exported, "llama")
    to_dynamic = _tampered(artifact, tmp_path / "mode", lambda c: c.update(mode="dynamic", op_version=1, capacity=None))
    with pytest.raises(UniAttnError) as error:
        load_artifact(to_dynamic)
    assert str(error.value) == (
        "the graph imports opsets {'': 23, 'uniattn': 2}, but the manifest's dynamic caches need '': 23 and "
        "'uniattn': 1. Re-export the model with `uniattn-export model`; the graph does not match its manifest."
    )
    smaller = _tampered(artifact, tmp_path / "capacity", lambda c: c.update(capacity=32))
    with pytest.raises(UniAttnError) as error:
        load_artifact(smaller)
    assert str(error.value).startswith(
        "past_key_values.0.key has shape [None, 2, 64, 16], expected (batch, 2, 32, 16) for static caches."
    )
    mismatched = _tampered(artifact, tmp_path / "version", lambda c: c.update(op_version=1))
    with pytest.raises(UniAttnError, match="records op version 1 for static caches, which are version 2"):
        load_artifact(mismatched)


def test_each_step_writes_its_slots_into_the_one_bound_buffer(exported):
    """The cache OrtValue allocated at reset is the one the graph updates: after the prompt
    step slots 0..13 (the padded width) hold keys and the rest are still 0; one decode step
    writes each row's slot = its length (row 1: slot 3, over its first padding token's key)."""
    session = OrtSession(_static(exported, "llama"), custom_ops=False)
    prompts = _prompts(session.artifact.vocab_size)
    session.reset(len(prompts))
    buffer = session._cache["past_key_values.0.key"]
    ids, mask = np.zeros((4, 14), np.int64), np.zeros((4, 14), np.int64)
    for row, prompt in enumerate(prompts):
        ids[row, : len(prompt)], mask[row, : len(prompt)] = prompt, 1
    session.step(ids, mask, np.tile(np.arange(14), (4, 1)))
    after_prompt = buffer.numpy().copy()
    assert session._cache["past_key_values.0.key"] is buffer
    written = np.abs(after_prompt).sum(axis=(1, 3)) > 0  # (B, C): slot holds a key
    assert written[:, :14].all() and not written[:, 14:].any()

    lengths = np.array([len(p) for p in prompts])
    step_mask = np.concatenate([mask, np.ones((4, 1), np.int64)], axis=1)
    session.step(np.full((4, 1), 5, np.int64), step_mask, lengths[:, None])
    after_step = buffer.numpy()
    changed = np.abs(after_step - after_prompt).sum(axis=(1, 3)) > 0
    assert [np.flatnonzero(row).tolist() for row in changed] == [[9], [3], [14], [1]]


def test_static_export_settings_are_checked_before_tracing(checkpoint, tmp_path):
    from uniattn_export.export import export_model

    model = load_model(checkpoint("llama"))
    with pytest.raises(UniAttnError, match=r"needs a capacity \(max_length\) of at least 8, got None"):
        export_model(model, tmp_path / "a", cache="static")
    with pytest.raises(UniAttnError, match="unknown cache mode 'paged'"):
        export_model(model, tmp_path / "b", cache="paged")
    positions = model.config.max_position_embeddings
    with pytest.raises(UniAttnError, match=f"a cache capacity of {positions + 1} tokens exceeds the model's {positions} positions"):
        export_model(model, tmp_path / "c", cache="static", max_length=positions + 1)
    assert not any((tmp_path / name).exists() for name in "abc")
