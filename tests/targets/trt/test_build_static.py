"""Engines from static-cache artifacts (op contract v2), built on CPU with TensorRT-RTX, with
and without plugins: fixed-capacity caches that are network inputs and outputs, aliased in
place by the version 2 plugins, and two optimization profiles (prefill, decode).

As in test_build.py, engines cannot be deserialized without a GPU: what is inspected is the
network TensorRT built from (layers, plugin layers and the aliases their plugin objects
declare, I/O with inferred shapes), the manifest and the serialized plan.
"""

from __future__ import annotations

import onnx
import pytest

from uniattn_export.errors import UniAttnError
from uniattn_export.export import io_names
from uniattn_export.targets.trt.build import BuildOptions, build_engine
from uniattn_export.targets.trt.graph import cache_capacity, custom_nodes
from uniattn_export.targets.trt.profiles import DimRange, ProfileSpec

from .conftest import STATIC_CAPACITY

CACHES = ["0.key", "0.value", "1.key", "1.value", "2.value", "3.key", "3.value"]  # layer 2 consumes: no key


def test_plugin_engine_updates_every_cache_in_place(static_engines, tiny_static_artifact):
    manifest = static_engines["uniattn"].manifest
    assert manifest["cache"] == {"mode": "static", "capacity": STATIC_CAPACITY}
    # Every cache output is declared aliased to its own input by the plugin that writes it.
    assert manifest["aliased_caches"] == {f"present.{c}": f"past_key_values.{c}" for c in CACHES}
    layers = manifest["network"]["plugin_layers"]
    nodes = custom_nodes(onnx.load(str(tiny_static_artifact.onnx_path), load_external_data=False))
    assert [layer["name"] for layer in layers] == [n.name for n in nodes]
    assert [(layer["version"], len(layer["outputs"])) for layer in layers] == [("2", 3), ("2", 5), ("2", 2), ("2", 3)]
    consumer = layers[2]
    assert consumer["aliases"] == {"present.2.value": "past_key_values.2.value"}
    assert manifest["plugins"]["ops"] == ["uniattn::UniAttnConsumer/2", "uniattn::UniAttnProducer/2"]


@pytest.mark.parametrize("mode", ["uniattn", "none"])
def test_caches_have_the_capacity_in_and_out(static_engines, mode):
    shapes = {(t["mode"], t["name"]): t["shape"] for t in static_engines[mode].manifest["io"]}
    for cache in CACHES:
        assert shapes["input", f"past_key_values.{cache}"] == [-1, 2, STATIC_CAPACITY, 16]
        assert shapes["output", f"present.{cache}"] == [-1, 2, STATIC_CAPACITY, 16]
    assert shapes["output", "logits"] == [-1, 1, 128]  # each row's last real token only
    assert shapes["input", "position_ids"] == shapes["input", "input_ids"] == [-1, -1]


@pytest.mark.parametrize("mode", ["uniattn", "none"])
def test_two_profiles_prefill_and_decode(static_engines, tiny_static_artifact, mode):
    profiles = static_engines[mode].manifest["profiles"]
    assert [p["name"] for p in profiles] == ["prefill", "decode"]
    prefill, decode = (p["inputs"] for p in profiles)
    assert prefill["input_ids"] == prefill["position_ids"] == [[1, 1], [2, 8], [4, 32]]
    assert prefill["attention_mask"] == [[1, 1], [2, 8], [4, STATIC_CAPACITY]]
    # Decode: one token, and the mask bound zero-padded to the capacity: one shape per batch.
    assert decode["input_ids"] == decode["position_ids"] == [[1, 1], [2, 1], [4, 1]]
    assert decode["attention_mask"] == [[1, STATIC_CAPACITY], [2, STATIC_CAPACITY], [4, STATIC_CAPACITY]]
    for shapes in (prefill, decode):
        assert shapes["past_key_values.2.value"] == [[b, 2, STATIC_CAPACITY, 16] for b in (1, 2, 4)]
        assert set(shapes) == {s["name"] for s in tiny_static_artifact.input_specs}
    assert profiles[1]["dims"] == {"batch": [1, 2, 4], "sequence": [1, 1, 1], "capacity": STATIC_CAPACITY}


def test_function_body_engine_writes_caches_by_scatter_without_aliasing(static_engines):
    manifest = static_engines["none"].manifest
    network = manifest["network"]
    assert network["plugin_layers"] == [] and manifest["aliased_caches"] == {}
    # One scatter per cache: the bodies write the new slots into a copy of the past cache.
    assert network["layer_types"]["SCATTER"] == len(CACHES)
    assert network["layers"] > static_engines["uniattn"].manifest["network"]["layers"]
    # Rotary embeddings are TensorRT's own layer on both paths (RotaryEmbedding-23 maps to it).
    for mode in ("uniattn", "none"):
        assert static_engines[mode].manifest["network"]["layer_types"]["ROTARY_EMBEDDING"] == 6


def test_plan_carries_the_version_2_plugin_fields(static_engines):
    """Version 2 is always causal: its plugins serialize no is_causal field."""
    plan = static_engines["uniattn"].engine_path.read_bytes()
    assert b"probs_max_query_len" in plan and b"kv_num_heads" in plan and b"is_causal" not in plan


def test_graph_capacity_is_read_from_the_caches(tiny_static_artifact, tiny_artifact):
    static = onnx.load(str(tiny_static_artifact.onnx_path), load_external_data=False)
    dynamic = onnx.load(str(tiny_artifact.onnx_path), load_external_data=False)
    assert (cache_capacity(static), cache_capacity(dynamic)) == (STATIC_CAPACITY, None)
    assert io_names.cache_pairs(i.name for i in static.graph.input)[0].past == "past_key_values.0.key"


def test_prefill_beyond_the_capacity_is_refused(tiny_static_artifact, tmp_path):
    profile = ProfileSpec(sequence=DimRange(1, 1, STATIC_CAPACITY + 1))
    message = (r"the prefill range 1:1:65 reaches beyond the artifact's cache capacity \(64 tokens\)\. "
               r"Pass --trt-seq with a maximum of at most 64")
    with pytest.raises(UniAttnError, match=message):
        build_engine(tiny_static_artifact.onnx_path, tmp_path / "trt", BuildOptions(profile=profile))
    assert not (tmp_path / "trt").exists()


def test_the_aliasing_is_real_without_the_preview_feature_the_build_fails(tiny_static_artifact, flavour, tmp_path):
    """The version 2 plugins declare aliased outputs; TensorRT builds such a network only
    with ALIASED_PLUGIN_IO_10_03 on (which build_engine sets), so the aliases are not ignored."""
    from uniattn_export.targets.trt import build, graph

    model = graph.load_graph(tiny_static_artifact.onnx_path)
    profiles = ProfileSpec(batch=DimRange(1, 1, 2), sequence=DimRange(1, 1, 8)).static_profiles(
        graph.graph_inputs(model), STATIC_CAPACITY)  # fmt: skip
    (tmp_path / "out").mkdir()
    request = {"action": "build", "onnx": str(tiny_static_artifact.onnx_path), "engine": str(tmp_path / "out" / "e.plan"),
               "timing_cache_out": str(tmp_path / "t"), "flavour": flavour.name, "plugins": True,
               "profiles": [p["inputs"] for p in profiles], "aliased_plugin_io": False, "tf32": False,
               "optimization_level": 0, "workspace_mib": None, "timing_cache": None, "compute_capabilities": ["8.6"]}  # fmt: skip
    with pytest.raises(UniAttnError, match="could not build the model: the builder produced no engine"):
        build._run_child(request, tmp_path, flavour)
    assert not (tmp_path / "out" / "e.plan").exists()
