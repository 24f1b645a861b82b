"""Preflight, before any build: does every custom node of the graph resolve to a plugin in
the chosen TensorRT, and to a kernel in ONNX Runtime?

TensorRT: the creator is looked up in TensorRT's own plugin registry by the node's op type,
plugin_version and plugin_namespace (what the ONNX parser does), a plugin is created from
the node's attributes, and its output count must match the node's. The kernel library the
plugins launch must load and contain the CUDA kernels.
ONNX Runtime: a one-node model of each distinct node (same attributes and outputs, no
function body to fall back on) must open in an InferenceSession with the custom-op library
registered, on every execution provider this onnxruntime offers among CPU and CUDA.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import helper

from ... import native
from ...dtypes import onnx_type
from ...errors import UniAttnError
from ...export.schema import DOMAIN
from .compat import Flavour
from .graph import CustomNode, activation_dtype, custom_nodes
from .plugins import layout, register_plugins

ORT_PROVIDERS = ("CPUExecutionProvider", "CUDAExecutionProvider")


@dataclass(frozen=True)
class Resolution:
    """How one distinct custom node (op, attributes, outputs) resolves; None = it does."""

    op_type: str
    outputs: int
    nodes: tuple[str, ...]
    tensorrt: str | None
    onnxruntime: str | None


@dataclass(frozen=True)
class PreflightReport:
    tensorrt: str
    kernels_library: str | None
    ort_library: str | None
    ort_providers: tuple[str, ...]
    resolutions: tuple[Resolution, ...]

    @property
    def tensorrt_ok(self) -> bool:
        return all(r.tensorrt is None for r in self.resolutions)

    @property
    def onnxruntime_ok(self) -> bool:
        return all(r.onnxruntime is None for r in self.resolutions)

    def first_tensorrt_problem(self) -> str | None:
        return next((f"{r.nodes[0]}: {r.tensorrt}" for r in self.resolutions if r.tensorrt), None)

    def to_dict(self) -> dict:
        return {**asdict(self), "tensorrt_ok": self.tensorrt_ok, "onnxruntime_ok": self.onnxruntime_ok}


def preflight(model: onnx.ModelProto, flavour: Flavour) -> PreflightReport:
    nodes = custom_nodes(model)
    groups: dict[tuple, list[CustomNode]] = {}
    for node in nodes:
        groups.setdefault(node.signature(), []).append(node)
    dtype = activation_dtype(model)
    # The op contract version the graph imports (what onnxruntime goes by; TensorRT goes by
    # each node's plugin_version).
    contract = next((o.version for o in model.opset_import if o.domain == DOMAIN), 1)
    kernels_problem, kernels_path = _kernels_problem()
    register_plugins(flavour)
    ort_library = native.ort_custom_op_library()
    providers = _ort_providers()
    resolutions = tuple(
        Resolution(
            op_type=group[0].op_type,
            outputs=len(group[0].outputs),
            nodes=tuple(n.name for n in group),
            tensorrt=kernels_problem or _tensorrt_problem(group[0], flavour),
            onnxruntime=_onnxruntime_problem(group[0], contract, dtype, ort_library, providers),
        )
        for group in groups.values()
    )
    return PreflightReport(flavour.describe(), kernels_path, ort_library, providers, resolutions)


def _kernels_problem() -> tuple[str | None, str | None]:
    try:
        kernels = native.kernels()
    except UniAttnError as exc:
        return str(exc), None
    path = native.kernels_library()
    if not kernels.ua_has_cuda():
        return (f"{path} was built without its CUDA kernels, so the plugins could not run (build "
                "it where nvcc is available)", path)  # fmt: skip
    return None, path


def _plugin_fields(trt, node: CustomNode):
    """The node's attributes as the ONNX parser turns them into plugin fields."""
    fields = []
    for name, value in node.attributes.items():
        if name in ("plugin_version", "plugin_namespace"):
            continue
        if isinstance(value, float):
            fields.append(trt.PluginField(name, np.array([value], np.float32), trt.PluginFieldType.FLOAT32))
        elif isinstance(value, int):
            fields.append(trt.PluginField(name, np.array([value], np.int32), trt.PluginFieldType.INT32))
    fields.append(trt.PluginField("num_outputs", np.array([len(node.outputs)], np.int32), trt.PluginFieldType.INT32))
    return trt.PluginFieldCollection(fields)


def _tensorrt_problem(node: CustomNode, flavour: Flavour) -> str | None:
    trt = flavour.module
    if node.plugin_namespace is None:
        return ("the node has no plugin_namespace attribute, so the ONNX parser would inline its "
                "function body instead of a plugin")  # fmt: skip
    key = f"{node.plugin_namespace}::{node.op_type}/{node.plugin_version}"
    creator = flavour.plugin_registry().get_creator(node.op_type, node.plugin_version, node.plugin_namespace)
    if creator is None:
        return f"no plugin is registered in {flavour.describe()} as {key}"
    try:
        plugin = creator.create_plugin(node.name, _plugin_fields(trt, node), trt.TensorRTPhase.BUILD)
    except UniAttnError as exc:
        return f"plugin {key} rejects the node: {exc}"
    if plugin.num_outputs != len(node.outputs):
        return f"plugin {key} has {plugin.num_outputs} outputs, the node {len(node.outputs)}"
    return None


def _ort_providers() -> tuple[str, ...]:
    import onnxruntime

    available = onnxruntime.get_available_providers()
    return tuple(p for p in ORT_PROVIDERS if p in available)


def _single_node_model(node: CustomNode, contract: int, dtype: str) -> onnx.ModelProto:
    op = layout(node.op_type, contract)
    input_kinds, output_kinds = op.input_kinds, op.output_kinds[: len(node.outputs)]

    def values(prefix, kinds):
        return [helper.make_tensor_value_info(f"{prefix}{i}", onnx_type(dtype if k == "T" else k), None)
                for i, k in enumerate(kinds)]  # fmt: skip

    inputs, outputs = values("in", input_kinds), values("out", output_kinds)
    graph = helper.make_graph(
        [helper.make_node(node.op_type, [v.name for v in inputs], [v.name for v in outputs],
                          domain=node.domain, **node.attributes)],
        "preflight", inputs, outputs,
    )  # fmt: skip
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(node.domain, op.version)],
        ir_version=10,
    )


def _onnxruntime_problem(node: CustomNode, contract: int, dtype: str, library: str | None,
                         providers) -> str | None:  # fmt: skip
    if library is None:
        return ("the ONNX Runtime custom-op library (libuniattn_ort.so) is not built; onnxruntime "
                "would fall back to the function bodies")  # fmt: skip
    import onnxruntime

    model = _single_node_model(node, contract, dtype).SerializeToString()
    for provider in providers:
        options = onnxruntime.SessionOptions()
        options.register_custom_ops_library(library)
        try:
            onnxruntime.InferenceSession(model, options, providers=[provider])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            return f"{provider}: {str(exc).strip().splitlines()[0]}"
    return None
