"""Preflight: every custom node must resolve to a plugin in TensorRT(-RTX) and to a kernel
in onnxruntime (the project's custom-op library, registered in a real InferenceSession)."""

from __future__ import annotations

import onnx
import pytest

from uniattn_export import native
from uniattn_export.errors import UniAttnError
from uniattn_export.targets.trt import preflight as preflight_module
from uniattn_export.targets.trt.build import BuildOptions, build_engine
from uniattn_export.targets.trt.preflight import preflight


def _set_attribute(op_type, name, value):
    def edit(model):
        for node in model.graph.node:
            if node.op_type == op_type:
                for attribute in node.attribute:
                    if attribute.name == name:
                        attribute.CopyFrom(onnx.helper.make_attribute(name, value))

    return edit


def test_every_node_of_the_exported_model_resolves(tiny_artifact, flavour):
    report = preflight(onnx.load(str(tiny_artifact.onnx_path)), flavour)
    assert report.tensorrt_ok and report.onnxruntime_ok
    assert report.tensorrt == flavour.describe()
    assert report.kernels_library == native.kernels_library()
    assert report.ort_library == native.ort_custom_op_library()
    assert "CPUExecutionProvider" in report.ort_providers
    # One entry per distinct node: producers without consumers (3 outputs), the SuperBlock
    # producer (5) and the consumer (2).
    summary = sorted((r.op_type, r.outputs, r.nodes) for r in report.resolutions)
    assert summary == [
        ("UniAttnConsumer", 2, ("/model/layers.2/self_attn/UniAttnConsumer",)),
        ("UniAttnProducer", 3, ("/model/layers.0/self_attn/UniAttnProducer",
                                "/model/layers.3/self_attn/UniAttnProducer")),
        ("UniAttnProducer", 5, ("/model/layers.1/self_attn/UniAttnProducer",)),
    ]  # fmt: skip
    assert report.to_dict()["tensorrt_ok"] is True


def test_unknown_plugin_version_fails_in_both_runtimes(edited_graph, flavour, tmp_path):
    path = edited_graph(_set_attribute("UniAttnProducer", "plugin_version", "3"))
    report = preflight(onnx.load(str(path)), flavour)
    assert not report.tensorrt_ok and not report.onnxruntime_ok
    ort_problems = [r.onnxruntime for r in report.resolutions if r.op_type == "UniAttnProducer"]
    assert all('plugin_version="3" is not a version of the op (1 or 2)' in p for p in ort_problems)
    problems = {r.outputs: r.tensorrt for r in report.resolutions if r.op_type == "UniAttnProducer"}
    assert problems[5] == f"no plugin is registered in {flavour.describe()} as uniattn::UniAttnProducer/3"
    assert [r.tensorrt for r in report.resolutions if r.op_type == "UniAttnConsumer"] == [None]
    message = "preflight: .*UniAttnProducer: no plugin is registered .* as uniattn::UniAttnProducer/3"
    with pytest.raises(UniAttnError, match=message):
        build_engine(path, tmp_path / "trt", BuildOptions(plugins="uniattn"))
    # The self-contained engine needs no plugin: the parser inlines the function bodies.
    built = build_engine(path, tmp_path / "trt", BuildOptions(plugins="none"))
    assert built.manifest["network"]["plugin_layers"] == []


def test_nodes_without_plugin_namespace_would_not_reach_the_plugins(edited_graph, flavour, tmp_path):
    """Measured with TensorRT-RTX 1.7: without the attribute the parser inlines the function
    body even though the plugin is registered (ENABLE_PLUGIN_OVERRIDE or not)."""

    def drop_namespace(model):
        for node in model.graph.node:
            if node.domain == "uniattn":
                kept = [a for a in node.attribute if a.name != "plugin_namespace"]
                del node.attribute[:]
                node.attribute.extend(kept)

    path = edited_graph(drop_namespace)
    report = preflight(onnx.load(str(path)), flavour)
    assert {r.tensorrt for r in report.resolutions} == {
        "the node has no plugin_namespace attribute, so the ONNX parser would inline its function body "
        "instead of a plugin"
    }
    assert report.onnxruntime_ok
    with pytest.raises(UniAttnError, match="preflight: .* has no plugin_namespace attribute"):
        build_engine(path, tmp_path / "trt", BuildOptions(plugins="uniattn"))
    assert build_engine(path, tmp_path / "trt", BuildOptions(plugins="none")).manifest["network"]["plugin_layers"] == []


def test_invalid_attributes_fail_both_runtimes(edited_graph, flavour):
    path = edited_graph(_set_attribute("UniAttnConsumer", "kv_num_heads", 3))
    report = preflight(onnx.load(str(path)), flavour)
    consumer = next(r for r in report.resolutions if r.op_type == "UniAttnConsumer")
    assert consumer.tensorrt.startswith("plugin uniattn::UniAttnConsumer/1 rejects the node: ")
    assert "num_heads=4 must be a positive multiple of kv_num_heads=3" in consumer.tensorrt
    assert consumer.onnxruntime is not None and consumer.onnxruntime.startswith("CPUExecutionProvider: ")
    assert all(r.tensorrt is None and r.onnxruntime is None for r in report.resolutions if r is not consumer)


def test_missing_onnxruntime_library_is_reported(tiny_artifact, flavour, monkeypatch):
    monkeypatch.setattr(native, "ort_custom_op_library", lambda: None)
    report = preflight(onnx.load(str(tiny_artifact.onnx_path)), flavour)
    assert report.tensorrt_ok and not report.onnxruntime_ok
    assert {r.onnxruntime for r in report.resolutions} == {
        "the ONNX Runtime custom-op library (libuniattn_ort.so) is not built; onnxruntime would fall back "
        "to the function bodies"
    }


def test_single_node_models_need_the_library(tiny_artifact):
    """The ORT check is real: without the library the one-node model has no implementation
    (and no function body to fall back on)."""
    import onnxruntime

    node = next(n for n in preflight_module.custom_nodes(onnx.load(str(tiny_artifact.onnx_path))))
    model = preflight_module._single_node_model(node, 1, "float32").SerializeToString()
    with pytest.raises(Exception, match="UniAttnProducer"):
        onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    library = native.ort_custom_op_library()
    assert preflight_module._onnxruntime_problem(node, 1, "float32", library, ("CPUExecutionProvider",)) is None
