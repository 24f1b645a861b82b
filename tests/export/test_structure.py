"""The structural check on load: tampered or inconsistent artifact folders fail with one
clear sentence. Graph edits re-hash the manifest, so the structure check itself (not the
hash check) has to catch them."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest
from onnx import helper

from uniattn_export.errors import UniAttnError
from uniattn_export.export import load_artifact
from uniattn_export.export.artifact import io_spec, write_manifest

from artifact_edits import rehash


@pytest.fixture
def folder(exported, tmp_path):
    return shutil.copytree(exported("llama").path, tmp_path / "artifact")


def _edit_graph(folder, edit):
    """Edit the graph and restamp the manifest (hashes and the I/O it records), so that what
    catches the edit is the structural check, not the hash or the manifest's I/O comparison."""
    model = onnx.load(str(folder / "model.onnx"))
    edit(model)
    onnx.save(model, str(folder / "model.onnx"))
    manifest = json.loads((folder / "uniattn_manifest.json").read_text())
    manifest["inputs"], manifest["outputs"] = io_spec(model.graph.input), io_spec(model.graph.output)
    write_manifest(folder, manifest)
    rehash(folder)


def _node(model, layer):
    return next(n for n in model.graph.node if n.name.startswith(f"/model/layers.{layer}/"))


def _expect(folder, message):
    with pytest.raises(UniAttnError, match=message) as info:
        load_artifact(folder)
    text = str(info.value)
    assert "\n" not in text and text.endswith(".")


def test_untouched_artifact_loads(folder):
    artifact = load_artifact(folder)
    assert artifact.uniattn.layer_map == {1: (2,), 3: (4,)}


def test_modified_weights_are_detected_by_hash(folder):
    model = onnx.load(str(folder / "model.onnx"))
    weight = next(t for t in model.graph.initializer if t.dims and len(t.dims) == 2)
    array = onnx.numpy_helper.to_array(weight).copy()
    array.flat[0] += 1.0
    weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    onnx.save(model, str(folder / "model.onnx"))
    _expect(folder, r"model\.onnx was modified after export")


def test_consumer_wired_to_another_producer(folder):
    def rewire(model):
        consumer, other = _node(model, 4), _node(model, 1)
        consumer.input[3:7] = [other.output[3], other.output[4], other.input[0], other.output[1]]

    _edit_graph(folder, rewire)
    _expect(folder, r"consumer layer 4 does not read its shared state from producer layer 3")


def test_consumer_with_a_key_cache(folder):
    def add_key(model):
        value = next(i for i in model.graph.input if i.name == "past_key_values.2.value")
        key = onnx.ValueInfoProto()
        key.CopyFrom(value)
        key.name = "past_key_values.2.key"
        model.graph.input.append(key)

    _edit_graph(folder, add_key)
    _expect(folder, r"consumer layer 2 has a key cache \(past_key_values\.2\.key\)")


def test_producer_placed_after_its_consumer(folder):
    def reorder(model):
        nodes = list(model.graph.node)
        producer = _node(model, 3)
        nodes.remove(producer)
        nodes.append(producer)
        del model.graph.node[:]
        model.graph.node.extend(nodes)

    _edit_graph(folder, reorder)
    _expect(folder, r"consumer layer 4's producer 3 comes after it")


def test_head_counts_disagree(folder):
    def change_heads(model):
        for attr in _node(model, 4).attribute:
            if attr.name == "num_heads":
                attr.i = 8

    _edit_graph(folder, change_heads)
    _expect(folder, r"layer 4's node has 8/2 query/KV heads, the manifest 4/2")


def test_cache_shape_disagrees_with_heads(folder):
    def change_shape(model):
        value = next(i for i in model.graph.input if i.name == "past_key_values.0.key")
        value.type.tensor_type.shape.dim[1].dim_value = 3

    _edit_graph(folder, change_shape)
    _expect(folder, r"past_key_values\.0\.key has shape \[None, 3, None, 16\]")


def test_missing_function_body(folder):
    def drop(model):
        kept = [f for f in model.functions if f.name != "UniAttnConsumer"]
        del model.functions[:]
        model.functions.extend(kept)

    _edit_graph(folder, drop)
    _expect(folder, r"no function body for uniattn::UniAttnConsumer")


def test_wrong_node_type_for_the_role(folder):
    def swap(model):
        _node(model, 0).op_type = "UniAttnConsumer"

    _edit_graph(folder, swap)
    _expect(folder, r"no uniattn node reads past_key_values\.0\.value \(layer 0\)")


def test_layer_map_copies_must_agree(folder):
    (folder / "uniattn_layer_map.json").write_text(json.dumps(
        {"format_version": 1, "num_layers": 6, "layer_map": {"1": [2, 4]}}))  # fmt: skip
    rehash(folder)
    _expect(folder, r"the layer map in .*uniattn_layer_map\.json differs from the manifest's")


def test_missing_and_foreign_folders(folder, tmp_path):
    _expect(tmp_path / "nowhere", r"artifact folder .* does not exist")
    (folder / "model.onnx").unlink()
    _expect(folder, r"model\.onnx is missing")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "uniattn_manifest.json").write_text(json.dumps({"format": "something"}))
    _expect(tmp_path / "other", r"is not a uniattn-export manifest")


def test_custom_domain_import_required(folder):
    def drop_import(model):
        kept = [o for o in model.opset_import if o.domain != "uniattn"]
        del model.opset_import[:]
        model.opset_import.extend(kept)
        model.opset_import.append(helper.make_opsetid("uniattn", 2))

    _edit_graph(folder, drop_import)
    _expect(folder, r"the graph imports opsets .*, but the manifest's dynamic caches need '': 23 and 'uniattn': 1")


def test_malformed_manifest(folder):
    manifest = json.loads((folder / "uniattn_manifest.json").read_text())
    del manifest["layers"]
    write_manifest(folder, manifest)
    _expect(folder, r"uniattn_manifest\.json: field layers is None, expected a list of layers")


def test_static_artifact_without_next_tokens_is_refused(exported, tmp_path):
    """Static artifacts of earlier releases lack next_tokens (greedy decoding reads it)."""
    static = shutil.copytree(exported("llama", cache="static", max_length=64).path, tmp_path / "static")

    def drop_next_tokens(model):
        kept = [o for o in model.graph.output if o.name != "next_tokens"]
        del model.graph.output[:]
        model.graph.output.extend(kept)

    _edit_graph(static, drop_next_tokens)
    _expect(static, r"^this static-cache artifact has no next_tokens output \(an earlier uniattn-export wrote it\)\. "
                    r"Re-export the model with `uniattn-export model`\.$")  # fmt: skip
