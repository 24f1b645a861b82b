"""Random-weight artifacts: the preset layer map, prepared (weight-less) artifacts and the
refill of their weights on the machine that runs them."""

from __future__ import annotations

import functools
import json
import multiprocessing
import os

import numpy as np
import onnx
import pytest
import torch
import transformers
from onnx import numpy_helper

from uniattn_export.bench.build import (
    ARTIFACT_FOLDER, BASELINE_FOLDER, Target, build_genai_model, build_pair, export_workers, preset_layer_map,
    preset_targets, reuse_artifact, static_capacity,
)  # fmt: skip
from uniattn_export.errors import UniAttnError
from uniattn_export.model.config import UniAttnConfig
from uniattn_export.model.synthetic import preset_config
from uniattn_export.export.artifact import EXTERNAL_DATA_FILE, MANIFEST_FILE, MODEL_FILE, sha256_of


def test_llama_1b_preset_has_superblocks_of_4_over_the_top_half():
    layer_map = preset_layer_map(16)
    assert layer_map.producers == [8, 12]
    assert layer_map.consumers == [9, 10, 11, 13, 14, 15]
    assert layer_map.kv_cache_saving == 6 / 32
    assert [layer_map.role(i) for i in range(8)] == ["ordinary"] * 8


def test_llama_8b_preset_is_the_llama_3_1_8b_shape_with_superblocks_over_the_top_half():
    from transformers import AutoModelForCausalLM

    config = preset_config("llama-3.1-8b")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == 8_030_261_248  # Llama-3.1-8B's published count
    assert (config.head_dim, config.num_key_value_heads, config.rope_parameters["factor"]) == (128, 8, 8.0)
    layer_map = preset_layer_map(32)
    assert layer_map.producers == [16, 20, 24, 28]
    assert layer_map.consumers == [17, 18, 19, 21, 22, 23, 25, 26, 27, 29, 30, 31]
    assert layer_map.kv_cache_saving == 12 / 64


def test_tiny_preset_layer_map():
    layer_map = preset_layer_map(6)
    assert layer_map.layer_map == {3: (4, 5)}


def test_unknown_preset(tmp_path):
    with pytest.raises(UniAttnError, match="unknown preset 'llama-70b'. Use one of llama-3.2-1b, llama-3.1-8b, tiny"):
        preset_targets("llama-70b", tmp_path)


def test_prepared_artifacts_carry_graphs_only(prepared):
    report, folder = prepared
    for target, name in (("artifact", ARTIFACT_FOLDER), ("baseline", BASELINE_FOLDER)):
        manifest = json.loads((folder / name / MANIFEST_FILE).read_text())
        assert EXTERNAL_DATA_FILE in manifest["files"]  # the weights were external ...
        assert not (folder / name / EXTERNAL_DATA_FILE).exists()  # ... and are gone
        assert report["bytes_left"][target] < manifest["files"][EXTERNAL_DATA_FILE]["bytes"]
    assert report["steps"]["artifact"]["reused"] is False


def test_refilled_weights_are_finite_random_values_with_a_matching_hash(preset_run, artifacts):
    doc, _, work = preset_run
    assert doc["build"]["status"] == "ok"
    # the versions the graphs were traced with (those outside the supported range trace other graphs)
    assert (doc["build"]["torch"], doc["build"]["transformers"]) == (torch.__version__, transformers.__version__)
    assert doc["build"]["steps"]["artifact"]["reused"] is True  # found prepared, weights refilled
    for artifact in artifacts:
        entry = artifact.manifest["files"][EXTERNAL_DATA_FILE]
        data = artifact.path / EXTERNAL_DATA_FILE
        assert data.stat().st_size == entry["bytes"]
        assert sha256_of(data) == entry["sha256"]
        graph = onnx.load(artifact.path / MODEL_FILE, load_external_data=False).graph
        external = {t.name for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
        model = onnx.load(artifact.path / MODEL_FILE)  # reads the refilled file
        weights = [numpy_helper.to_array(t) for t in model.graph.initializer if t.name in external]
        assert weights and all(np.isfinite(w).all() for w in weights)
        largest = max(weights, key=np.size)
        assert 0.01 < largest.std() < 0.04  # the refill's scale (0.02), not zeros or garbage


def test_reuse_only_what_matches(artifacts):
    uniattn, base = artifacts
    geometry = uniattn.manifest["geometry"]
    same = Target(uniattn.path, uniattn.uniattn)
    assert reuse_artifact(uniattn.path, "float32", same, geometry) is not None
    assert reuse_artifact(uniattn.path, "float16", same, geometry) is None
    assert reuse_artifact(uniattn.path, "float32", Target(uniattn.path, base.uniattn), geometry) is None
    assert reuse_artifact(uniattn.path, "float32", same, {**geometry, "hidden_size": 128}) is None
    assert reuse_artifact(uniattn.path / "missing", "float32", same, geometry) is None
    # a dynamic export never serves a static target
    assert reuse_artifact(uniattn.path, "float32", Target(uniattn.path, uniattn.uniattn, "static", 64), geometry) is None


def test_static_targets_and_their_capacity(tmp_path):
    _, targets = preset_targets("tiny", tmp_path, capacity_needed=300)
    assert {name: (t.folder.name, t.cache, t.capacity) for name, t in targets.items()} == {
        "artifact": ("uniattn", "dynamic", None), "baseline": ("base", "dynamic", None),
        "artifact-static": ("uniattn_static", "static", 512), "baseline-static": ("base_static", "static", 512),
    }  # fmt: skip
    assert static_capacity(28, 512) == 256 and static_capacity(8200, 131072) == 8448 and static_capacity(500, 512) == 512
    with pytest.raises(UniAttnError, match="a cache of 513 tokens exceeds the model's 512 positions"):
        preset_targets("tiny", tmp_path, capacity_needed=513)


def test_genai_builds_float_models_for_the_cpu_in_fp32_only(tmp_path):
    with pytest.raises(UniAttnError, match="onnxruntime-genai's builder makes fp16 models for CUDA only, not the CPU"):
        build_genai_model(tmp_path / "checkpoint", tmp_path / "genai", "float16", "cpu", log=lambda _: None)
    assert not (tmp_path / "genai").exists()


def test_a_checkpoint_without_architectures_gets_a_linked_copy_for_the_genai_builder(tmp_path):
    from uniattn_export.bench.build import _builder_source

    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    source = _builder_source(checkpoint, tmp_path / "cache")
    assert source == tmp_path / "cache" / "source"
    assert json.loads((source / "config.json").read_text()) == {
        "model_type": "llama", "hidden_size": 64, "architectures": ["LlamaForCausalLM"],
    }  # fmt: skip
    assert (source / "model.safetensors").resolve() == (checkpoint / "model.safetensors").resolve()
    assert json.loads((checkpoint / "config.json").read_text()) == {"model_type": "llama", "hidden_size": 64}  # untouched
    (checkpoint / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    assert _builder_source(checkpoint, tmp_path / "cache2") == checkpoint  # nothing to add: the folder itself


def _files(folder):
    return json.loads((folder / MANIFEST_FILE).read_text())["files"]


def test_exports_in_two_processes_write_what_one_process_writes(tmp_path):
    """build_pair with workers=2: each process makes the random weights again from the seed,
    so the artifacts are those of the sequential build, file for file (the manifest's hashes),
    and each is loaded from its folder."""
    make_config, one = preset_targets("tiny", tmp_path / "one")
    _, two = preset_targets("tiny", tmp_path / "two")
    build_pair(make_config, one, "float32", logits="last", seed=3, log=lambda _: None)
    lines: list[str] = []
    built, steps = build_pair(make_config, two, "float32", logits="last", seed=3, log=lines.append, workers=2)
    assert set(built) == set(two) == {"artifact", "baseline"}
    for name in two:
        assert _files(two[name].folder) == _files(one[name].folder)
        assert built[name].path == two[name].folder
        assert steps[name]["reused"] is False and steps[name]["export_seconds"] > 0
    assert sum("(one of 2 export processes)" in line for line in lines) == 2


def test_a_failed_export_in_a_worker_process_is_recorded_or_raised(tmp_path):
    """The error of an export in another process comes back as the same UniAttnError: recorded
    for a target in may_fail (the other target still built), raised otherwise."""
    make_config = functools.partial(preset_config, "tiny")
    targets = {
        "artifact": Target(tmp_path / "a", preset_layer_map(6)),
        "artifact-genai": Target(tmp_path / "g", UniAttnConfig.none(6), "static", 4, "genai"),
    }
    built, steps = build_pair(make_config, targets, "float32", logits="last", seed=0, log=lambda _: None,
                              may_fail=["artifact-genai"], workers=2)  # fmt: skip
    assert set(built) == {"artifact"}
    assert steps["artifact-genai"]["status"] == (
        "failed: UniAttnError: a static-cache export needs a capacity (max_length) of at least 8, got 4. "
        "Pass --max-length 8 or more"
    ) or steps["artifact-genai"]["status"].startswith(
        "failed: UniAttnError: a static-cache export needs a capacity (max_length) of at least 8, got 4"
    )
    with pytest.raises(UniAttnError, match="needs a capacity"):
        build_pair(make_config, {"artifact-genai": targets["artifact-genai"], "baseline": Target(tmp_path / "b", UniAttnConfig.none(6))},
                   "float32", logits="last", seed=0, log=lambda _: None, workers=2)


def test_export_workers_follow_cores_and_memory(monkeypatch):
    config = preset_config("tiny")
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert export_workers(config, "float32", 6) == 1  # the 2-core CI machine exports one at a time
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert export_workers(config, "float32", 6) == 6  # the GPU machine: all six at once (tiny weights)
    assert export_workers(config, "float32", 3) == 3
    monkeypatch.setattr(os, "sysconf", lambda name: {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 1}[name])
    assert export_workers(config, "float32", 6) == 1  # memory for fewer than one export: still one


class _ConfigThatDiesInWorkers:
    """The tiny preset's config in this process; a worker process that asks for it ends at once
    (what the out-of-memory killer does to an export)."""

    def __call__(self):
        if multiprocessing.parent_process() is not None:
            os._exit(1)
        return preset_config("tiny")


def test_an_export_process_that_dies_is_one_clear_error(tmp_path):
    make_config, targets = preset_targets("tiny", tmp_path)
    with pytest.raises(UniAttnError, match=r"an export process of artifact ended abruptly \(out of memory\?\)\. "
                                           r"Pass --export-processes 1 to export one artifact at a time"):
        build_pair(_ConfigThatDiesInWorkers(), targets, "float32", logits="last", seed=0, log=lambda _: None, workers=2)
