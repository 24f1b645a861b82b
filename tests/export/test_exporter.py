"""The exporter: graph structure, I/O naming, dtypes, the artifact folder, atomic writes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx.reference import ReferenceEvaluator

from uniattn_export.errors import UniAttnError
from uniattn_export.export import artifact as artifact_module
from uniattn_export.export import export_model, load_artifact
from uniattn_export.export.artifact import sha256_of
from uniattn_export.export.ops import consumer_op, producer_op
from uniattn_export.export.schema import CONSUMER_OP, DOMAIN, PRODUCER_OP
from uniattn_export.model import load_model


def _attention_nodes(artifact):
    graph = onnx.load(str(artifact.onnx_path), load_external_data=False).graph
    return [n for n in graph.node if n.domain == DOMAIN]


def _feeds(artifact, batch=2, length=5, padding=(0, 2), dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, length), np.int64)
    for row, pad in enumerate(padding):
        mask[row, :pad] = 0
    feeds = {
        "input_ids": rng.integers(0, artifact.vocab_size, (batch, length)).astype(np.int64),
        "attention_mask": mask,
        "position_ids": np.maximum(mask.cumsum(1) - 1, 0),
    }
    for spec in artifact.input_specs[3:]:
        feeds[spec["name"]] = np.zeros((batch, spec["shape"][1], 0, spec["shape"][3]), dtype)
    return feeds


def _reference_logits(checkpoint, feeds, dtype="float32"):
    model = load_model(checkpoint, dtype=dtype)
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask", "position_ids")})
    return out.logits.float().numpy()


@pytest.mark.parametrize("query_len,probs_max", [(3, 16), (5, 2)], ids=["decode_sized", "long"])
def test_custom_ops_are_consistent_with_their_fake_kernels(query_len, probs_max):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, query_len, w, generator=g) for w in (32, 16, 16))
    past_k, past_v = torch.randn(2, 2, 4, 8, generator=g), torch.randn(2, 2, 4, 8, generator=g)
    mask = torch.ones(2, 4 + query_len, dtype=torch.int64)
    args = (q, k, v, past_k, past_v, mask, 4, 2, 0.35, True, 0, probs_max)
    torch.library.opcheck(producer_op, args)
    out = producer_op(*args)
    assert out[3].shape[-1] == (4 + query_len if query_len <= probs_max else 0)
    torch.library.opcheck(consumer_op, (v, past_v, mask, out[3], out[4], q, out[1], 4, 2, 0.35, True, 0))


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_graph_has_one_uniattn_node_per_layer_wired_by_the_layer_map(exported, family):
    artifact = exported(family)
    onnx.checker.check_model(str(artifact.onnx_path), full_check=True)
    nodes = _attention_nodes(artifact)
    uniattn = artifact.uniattn
    assert uniattn.consumers, "the fixture must have consumers"
    assert len(nodes) == uniattn.num_layers
    by_layer = {int(n.name.split("layers.")[1].split("/")[0]): n for n in nodes}
    for layer, node in by_layer.items():
        role = uniattn.role(layer)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["plugin_version"] == b"1" and attrs["plugin_namespace"] == b"uniattn"
        if role == "consumer":
            assert node.op_type == CONSUMER_OP
            producer = by_layer[uniattn.producer_of(layer)]
            assert list(node.input[3:]) == [producer.output[3], producer.output[4], producer.input[0], producer.output[1]]
        else:
            assert node.op_type == PRODUCER_OP and len(node.output) == 5
            emits = role == "producer"
            assert all(bool(name) == emits for name in node.output[3:]), f"layer {layer} ({role})"
    names = [s["name"] for s in artifact.input_specs]
    assert names[:3] == ["input_ids", "attention_mask", "position_ids"]
    for layer in range(uniattn.num_layers):
        assert (f"past_key_values.{layer}.key" in names) == (uniattn.role(layer) != "consumer")
        assert f"past_key_values.{layer}.value" in names
    assert artifact.output_specs[0] == {"name": "logits", "dtype": "float32",
                                        "shape": ["batch_size", "sequence_length", artifact.vocab_size]}  # fmt: skip
    past = artifact.input_specs[3]["shape"]
    assert past[0] == "batch_size" and past[2] == "past_sequence_length"


def test_base_model_exports_with_plain_producers_only(exported, checkpoint):
    artifact = exported("llama", base=True)
    assert artifact.uniattn.layer_map == {}
    nodes = _attention_nodes(artifact)
    assert {n.op_type for n in nodes} == {PRODUCER_OP}
    assert all(list(n.output[3:]) == ["", ""] for n in nodes)
    feeds = _feeds(artifact)
    session = ort.InferenceSession(str(artifact.onnx_path), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], feeds)[0]
    expected = _reference_logits(checkpoint("llama", base=True), feeds)
    real = feeds["attention_mask"].astype(bool)
    assert np.abs(logits - expected)[real].max() < 1e-4


def test_manifest_records_versions_io_layers_and_hashes(exported, checkpoint):
    artifact = exported("llama")
    m = artifact.manifest
    assert m["format"] == "uniattn-export/artifact" and m["dtype"] == "float32" and m["logits"] == "all"
    assert {"uniattn_export", "torch", "transformers", "onnx", "onnxscript"} <= set(m["created_with"])
    assert m["onnx"]["opset"] == 23 and m["onnx"]["custom_opsets"] == {"uniattn": 1}
    assert m["source_checkpoint"] == str(checkpoint("llama").resolve())
    assert m["layer_map"]["layer_map"] == {"1": [2], "3": [4]}
    assert [layer["role"] for layer in m["layers"]] == ["ordinary", "producer", "consumer", "producer", "consumer", "ordinary"]
    # 4 layers with K and V, 2 with V only; 2 KV heads of 16 floats each.
    assert m["kv_cache_bytes_per_token"] == (4 * 2 + 2) * 2 * 16 * 4
    for name, entry in m["files"].items():
        assert sha256_of(artifact.path / name) == entry["sha256"]
    assert {"model.onnx", "config.json", "uniattn_layer_map.json", "generation_config.json"} <= set(m["files"])
    config = json.loads((artifact.path / "config.json").read_text())
    assert config["uniattn"]["layer_map"] == {"1": [2], "3": [4]}
    assert not {"grouping_idx", "grouping_begin_idx", "grouping_end_idx"} & set(config)


def test_float16_graph_keeps_float32_logits(exported, checkpoint):
    artifact = exported("llama", "float16")
    assert {s["dtype"] for s in artifact.input_specs[3:]} == {"float16"}
    assert artifact.output_specs[0]["dtype"] == "float32"
    feeds = _feeds(artifact, dtype=np.float16)
    logits = ort.InferenceSession(str(artifact.onnx_path), providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0]
    expected = _reference_logits(checkpoint("llama"), feeds, "float16")
    assert logits.dtype == np.float32
    assert np.abs(logits - expected)[feeds["attention_mask"].astype(bool)].max() < 0.1


def test_bfloat16_exports_and_passes_the_checker(exported):
    artifact = exported("llama", "bfloat16")
    onnx.checker.check_model(str(artifact.onnx_path), full_check=True)
    assert {s["dtype"] for s in artifact.input_specs[3:]} == {"bfloat16"}


def test_onnx_reference_runs_the_exported_model(exported, checkpoint):
    artifact = exported("llama")
    feeds = _feeds(artifact, batch=2, length=4, padding=(0, 1))
    logits = ReferenceEvaluator(str(artifact.onnx_path)).run(["logits"], feeds)[0]
    expected = _reference_logits(checkpoint("llama"), feeds)
    assert np.abs(logits - expected)[feeds["attention_mask"].astype(bool)].max() < 1e-4


def test_external_data_and_last_logits_only(checkpoint, exported, tmp_path):
    source = checkpoint("llama")
    out = export_model(load_model(source), tmp_path / "art", source_dir=source, external_data=True, logits="last")
    artifact = load_artifact(out)
    assert (out / "model.onnx_data").is_file() and "model.onnx_data" in artifact.manifest["files"]
    assert artifact.manifest["logits"] == "last" and artifact.output_specs[0]["shape"][1] == 1
    feeds = _feeds(artifact)
    last = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0]
    full = ort.InferenceSession(str(exported("llama").onnx_path), providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0]
    assert last.shape == (2, 1, artifact.vocab_size)
    np.testing.assert_allclose(last[:, 0], full[:, -1], atol=1e-5)


def test_a_failed_export_leaves_the_previous_artifact_untouched(exported, checkpoint, tmp_path, monkeypatch):
    out = shutil.copytree(exported("llama").path, tmp_path / "art")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def broken_manifest(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(artifact_module, "build_manifest", broken_manifest)
    with pytest.raises(OSError, match="disk full"):
        export_model(load_model(checkpoint("llama", base=True)), out)
    assert [p.name for p in tmp_path.iterdir()] == ["art"]  # no temporary folder left behind
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_export_never_replaces_a_folder_that_is_not_an_artifact(checkpoint, tmp_path):
    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(UniAttnError, match=r"notes exists and is not an artifact folder\. Pass a new folder name"):
        export_model(load_model(checkpoint("llama")), precious)
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_export_rejects_what_it_cannot_export(checkpoint, tmp_path):
    model = load_model(checkpoint("llama"))
    with pytest.raises(UniAttnError, match="cannot export a Linear"):
        export_model(model.lm_head, tmp_path / "a")
    with pytest.raises(UniAttnError, match="unknown logits mode 'middle'"):
        export_model(model, tmp_path / "b", logits="middle")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
