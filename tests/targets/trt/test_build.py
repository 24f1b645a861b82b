"""Engine builds on CPU with TensorRT-RTX from exported artifacts, with and without plugins,
and what the builds record: network layers, I/O tensors, profiles, targets, manifest.

Engines cannot be deserialized without a GPU, so "inspecting an engine" here means the
network TensorRT built it from (layers, plugin layers, I/O with inferred types) and the
serialized plan; executing one is not possible anywhere in this environment.
"""

from __future__ import annotations

import json

import onnx
import pytest

from uniattn_export import native
from uniattn_export.errors import UniAttnError
from uniattn_export.export.artifact import sha256_of
from uniattn_export.targets.trt import compat
from uniattn_export.targets.trt.build import BuildOptions, build_engine
from uniattn_export.targets.trt.graph import custom_nodes
from uniattn_export.targets.trt.manifest import MANIFEST_NAME, plugin_code_sha256
from uniattn_export.targets.trt.profiles import DimRange, ProfileSpec


def _graph_custom_nodes(artifact):
    return custom_nodes(onnx.load(str(artifact.onnx_path), load_external_data=False))


def test_plugin_engine_has_one_plugin_layer_per_custom_node(engines, tiny_artifact):
    nodes = _graph_custom_nodes(tiny_artifact)
    assert [n.op_type for n in nodes] == ["UniAttnProducer"] * 2 + ["UniAttnConsumer", "UniAttnProducer"]
    network = engines["uniattn"].manifest["network"]
    plugin_layers = {layer["name"]: layer for layer in network["plugin_layers"]}
    assert set(plugin_layers) == {n.name for n in nodes}
    for node in nodes:
        # 3 outputs for the producers without consumers, 5 for layer 1's, 2 for the consumer.
        assert plugin_layers[node.name]["outputs"] == list(node.outputs)
    assert [len(plugin_layers[n.name]["outputs"]) for n in nodes] == [3, 5, 2, 3]
    assert network["layer_types"]["PLUGIN_V3"] == 4


def test_engine_without_plugins_inlines_the_function_bodies(engines):
    network = engines["none"].manifest["network"]
    assert network["plugin_layers"] == [] and "PLUGIN_V3" not in network["layer_types"]
    # The bodies' softmax statistics are there instead: reductions and exponentials.
    assert network["layer_types"]["REDUCE"] > engines["uniattn"].manifest["network"]["layer_types"].get("REDUCE", 0)
    assert network["layers"] > engines["uniattn"].manifest["network"]["layers"]
    assert engines["none"].manifest["plugins"] == {
        "mode": "none", "kernels_sha256": None, "plugin_code_sha256": None,
        "ops": ["uniattn::UniAttnConsumer/1", "uniattn::UniAttnProducer/1"],
    }  # fmt: skip


@pytest.mark.parametrize("mode", ["uniattn", "none"])
def test_engine_io_is_the_artifacts_io(engines, tiny_artifact, mode):
    io = engines[mode].manifest["io"]
    expected_inputs = [(s["name"], s["dtype"]) for s in tiny_artifact.input_specs]
    expected_outputs = [(s["name"], s["dtype"]) for s in tiny_artifact.output_specs]
    assert [(t["name"], t["dtype"]) for t in io if t["mode"] == "input"] == expected_inputs
    assert [(t["name"], t["dtype"]) for t in io if t["mode"] == "output"] == expected_outputs
    # Consumer layer 2 keeps no key cache: the engine has no such tensor either.
    names = {t["name"] for t in io}
    assert "past_key_values.2.value" in names and "past_key_values.2.key" not in names
    assert "present.2.key" not in names
    # Dynamic batch and lengths, static heads and head dim.
    shapes = {t["name"]: t["shape"] for t in io}
    assert shapes["past_key_values.0.key"] == [-1, 2, -1, 16]
    assert shapes["logits"] == [-1, -1, 128]


def test_manifest_records_the_build(engines, tiny_artifact, flavour):
    manifest = engines["uniattn"].manifest
    folder = engines["uniattn"].engine_path.parent
    assert json.loads((folder / MANIFEST_NAME).read_text()) == manifest
    assert manifest["tensorrt"] == {"flavour": "tensorrt_rtx", "version": flavour.version}
    assert manifest["target"]["compute_capabilities"] == list(compat.RTX_COMPUTE_CAPABILITIES)
    assert manifest["engine"]["sha256"] == sha256_of(engines["uniattn"].engine_path)
    assert manifest["engine"]["bytes"] == engines["uniattn"].engine_path.stat().st_size > 0
    assert manifest["plugins"]["kernels_sha256"] == sha256_of(native.kernels_library())
    assert manifest["plugins"]["plugin_code_sha256"] == plugin_code_sha256()
    assert manifest["dtype"] == "float32"
    assert manifest["source"]["onnx_sha256"] == sha256_of(tiny_artifact.onnx_path)
    # The layer map the graph wires equals the one the artifact declares.
    declared = {p: sorted(c) for p, c in tiny_artifact.uniattn.to_dict()["layer_map"].items()}
    assert manifest["layer_map"] == declared == {"1": [2]}


def test_plan_carries_the_serialized_plugin_fields(engines):
    """TensorRT stores each plugin layer's fields in the plan (the runtime recreates the
    plugins from them); the engine built without plugins has none."""
    plugin_plan = engines["uniattn"].engine_path.read_bytes()
    plain_plan = engines["none"].engine_path.read_bytes()
    for field in (b"probs_max_query_len", b"kv_num_heads", b"num_outputs"):
        assert field in plugin_plan and field not in plain_plan


def test_profile_shapes_cover_every_input(tiny_artifact, tmp_path):
    profile = ProfileSpec(batch=DimRange(1, 2, 4), sequence=DimRange(1, 1, 16), past=DimRange(0, 8, 32))
    built = build_engine(tiny_artifact.onnx_path, tmp_path / "trt", BuildOptions(plugins="none", profile=profile))
    recorded = built.manifest["profiles"][0]
    assert recorded["dims"] == {"batch": [1, 2, 4], "sequence": [1, 1, 16], "past": [0, 8, 32]}
    shapes = recorded["inputs"]
    assert shapes["input_ids"] == [[1, 1], [2, 1], [4, 16]]
    assert shapes["attention_mask"] == [[1, 1], [2, 9], [4, 48]]
    assert shapes["past_key_values.1.key"] == [[1, 2, 0, 16], [2, 2, 8, 16], [4, 2, 32, 16]]
    assert set(shapes) == {s["name"] for s in tiny_artifact.input_specs}


def test_float16_artifact_builds_with_plugins(tiny_artifact_fp16, tmp_path):
    built = build_engine(tiny_artifact_fp16.onnx_path, tmp_path / "trt", BuildOptions(plugins="uniattn"))
    assert built.manifest["dtype"] == "float16"
    io = {t["name"]: t["dtype"] for t in built.manifest["io"]}
    assert io["past_key_values.0.key"] == io["present.3.value"] == "float16"
    assert io["logits"] == "float32" and io["attention_mask"] == "int64"
    assert len(built.manifest["network"]["plugin_layers"]) == 4


def test_precision_must_match_the_artifact(tiny_artifact_fp16, tmp_path):
    message = "the artifact is float16 but float32 was asked for.*Re-export with --dtype float32"
    with pytest.raises(UniAttnError, match=message):
        build_engine(tiny_artifact_fp16.onnx_path, tmp_path / "trt", BuildOptions(precision="float32"))
    assert not (tmp_path / "trt").exists()


def test_compute_capability_targets(tiny_artifact, tmp_path):
    options = BuildOptions(plugins="none", compute_capabilities=("8.6",))
    built = build_engine(tiny_artifact.onnx_path, tmp_path / "a", options)
    assert built.manifest["target"]["compute_capabilities"] == ["8.6"]
    message = r"^TensorRT-RTX [0-9.]+ cannot target compute capability 9\.0\. Choose among 8\.0, 8\.6"
    with pytest.raises(UniAttnError, match=message):
        build_engine(tiny_artifact.onnx_path, tmp_path / "b", BuildOptions(compute_capabilities=("9.0",)))
    assert not (tmp_path / "b").exists()


def test_timing_cache_is_written_and_reused(tiny_artifact, tmp_path):
    cache = tmp_path / "cache" / "timing.cache"
    options = BuildOptions(plugins="uniattn", timing_cache=cache)
    first = build_engine(tiny_artifact.onnx_path, tmp_path / "a", options)
    assert cache.is_file() and cache.stat().st_size > 0
    assert not (tmp_path / "a" / "timing.cache").exists()  # the cache lives where asked, not in the engine folder
    second = build_engine(tiny_artifact.onnx_path, tmp_path / "b", options)
    assert second.manifest["build"]["timing_cache"] == str(cache)
    assert second.manifest["network"] == first.manifest["network"]


def test_a_failed_build_leaves_the_previous_engine(tiny_artifact, edited_graph, tmp_path):
    out = tmp_path / "trt"
    build_engine(tiny_artifact.onnx_path, out, BuildOptions(plugins="none"))
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def break_heads(model):
        for node in model.graph.node:
            if node.op_type == "UniAttnProducer":
                for attribute in node.attribute:
                    if attribute.name == "kv_num_heads":
                        attribute.i = 3

    with pytest.raises(UniAttnError, match="num_heads=4 must be a positive multiple of kv_num_heads=3"):
        build_engine(edited_graph(break_heads), out, BuildOptions(plugins="uniattn"))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edited", "trt"]  # no staging left behind


@pytest.mark.parametrize(
    "options, message",
    [
        (BuildOptions(optimization_level=7), "optimization level 7 is outside 0-5"),
        (BuildOptions(precision="int8"), "unknown precision 'int8'"),
        (BuildOptions(plugins="cuda"), "unknown plugin mode 'cuda'"),
        (BuildOptions(flavour="tensorrt"), "no usable TensorRT .tensorrt: not installed"),
    ],
)
def test_bad_options_are_one_clear_error(tiny_artifact, tmp_path, options, message):
    with pytest.raises(UniAttnError, match=message):
        build_engine(tiny_artifact.onnx_path, tmp_path / "trt", options)
    assert not (tmp_path / "trt").exists()


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(UniAttnError, match="no ONNX model at .*Export the model first"):
        build_engine(tmp_path / "model.onnx", tmp_path / "trt", BuildOptions())
