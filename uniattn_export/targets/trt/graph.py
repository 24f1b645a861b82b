"""What the TensorRT stage reads from an exported ONNX graph, and the one change it makes.

Read: the custom nodes (op, attributes, output count, layer), the layer map they implement,
the activation dtype and the graph inputs. Changed, in the copy handed to the TensorRT
parser only: the output count of producer nodes without consumers (outputs 3-4 absent) made
explicit for the plugins, or the absent outputs named for the function bodies
(`prepare_for_parser`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import helper

from ...dtypes import onnx_type_name
from ...errors import UniAttnError
from ...export import io_names
from .plugins import CONSUMER_OP, PLUGIN_VERSION, PRODUCER_OP

CUSTOM_OPS = (PRODUCER_OP, CONSUMER_OP)


@dataclass(frozen=True)
class CustomNode:
    name: str
    op_type: str
    domain: str
    attributes: dict
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]  # up to the last present one
    layer: int | None  # from the optimum name of its present cache output

    @property
    def plugin_version(self) -> str:
        return str(self.attributes.get("plugin_version", PLUGIN_VERSION))

    @property
    def plugin_namespace(self) -> str | None:
        """None when the node has no such attribute: TensorRT's parser then inlines the
        node's function body even with a matching plugin registered (TensorRT-RTX 1.7,
        with or without ENABLE_PLUGIN_OVERRIDE)."""
        value = self.attributes.get("plugin_namespace")
        return None if value is None else str(value)

    def signature(self) -> tuple:
        """Nodes with equal signatures resolve the same way in every runtime."""
        return (self.op_type, self.domain, len(self.outputs),
                tuple(sorted((k, str(v)) for k, v in self.attributes.items())))  # fmt: skip


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    dims: tuple[int | str, ...]  # ints are static, strings name a dynamic axis


def load_graph(onnx_path: Path) -> onnx.ModelProto:
    """The graph without its weights (external data stays on disk)."""
    if not Path(onnx_path).is_file():
        raise UniAttnError(f"no ONNX model at {onnx_path}", "export the model first (uniattn-export model)")
    try:
        return onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # protobuf raises its own DecodeError types
        raise UniAttnError(f"{onnx_path} is not a readable ONNX model ({exc})",
                           "re-export the model")  # fmt: skip


def custom_nodes(model: onnx.ModelProto) -> list[CustomNode]:
    nodes = []
    for node in model.graph.node:
        if node.op_type not in CUSTOM_OPS:
            continue
        outputs = tuple(node.output)
        while outputs and not outputs[-1]:
            outputs = outputs[:-1]  # trailing "" = optional outputs absent
        if "" in outputs:
            raise UniAttnError(
                f"{node.op_type} node {node.name!r} leaves an output empty before a used one "
                f"({list(node.output)})",
                "re-export the model: only trailing optional outputs may be absent",
            )
        present = [c for c in map(io_names.parse_cache_name, outputs) if c is not None]
        nodes.append(
            CustomNode(
                name=node.name,
                op_type=node.op_type,
                domain=node.domain,
                attributes={a.name: _attribute_value(a) for a in node.attribute},
                inputs=tuple(node.input),
                outputs=outputs,
                layer=present[0].layer if present else None,
            )
        )
    return nodes


def _attribute_value(attribute: onnx.AttributeProto):
    value = helper.get_attribute_value(attribute)
    return value.decode() if isinstance(value, bytes) else value


def layer_map(nodes: list[CustomNode]) -> dict[str, list[int]]:
    """producer layer -> consumer layers, as wired in the graph (input 3 of a consumer is its
    producer's shared_probs)."""
    producer_by_output = {n.outputs[3]: n for n in nodes if n.op_type == PRODUCER_OP and len(n.outputs) > 3}
    wiring: dict[str, list[int]] = {}
    for node in nodes:
        if node.op_type != CONSUMER_OP:
            continue
        producer = producer_by_output.get(node.inputs[3])
        if producer is None or producer.layer is None or node.layer is None:
            raise UniAttnError(
                f"consumer node {node.name!r} is not wired to a producer's shared_probs output",
                "re-export the model: its structure does not match docs/ops.md",
            )
        wiring.setdefault(str(producer.layer), []).append(node.layer)
    return {p: sorted(c) for p, c in sorted(wiring.items(), key=lambda item: int(item[0]))}


def graph_inputs(model: onnx.ModelProto) -> list[TensorInfo]:
    initializers = {i.name for i in model.graph.initializer}
    return [_info(v) for v in model.graph.input if v.name not in initializers]


def graph_outputs(model: onnx.ModelProto) -> list[TensorInfo]:
    return [_info(v) for v in model.graph.output]


def _info(value: onnx.ValueInfoProto) -> TensorInfo:
    tensor = value.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim)
    return TensorInfo(value.name, onnx_type_name(tensor.elem_type), dims)


def cache_capacity(model: onnx.ModelProto) -> int | None:
    """The fixed capacity C of a static-cache graph (op contract v2: past_key_values.* are
    (B, Hkv, C, D) with C a number), or None for growing caches (a named axis)."""
    capacities = {info.dims[2] for info in graph_inputs(model) if io_names.is_past(info.name) and len(info.dims) == 4}
    if len(capacities) == 1 and isinstance(next(iter(capacities)), int):
        return next(iter(capacities))
    if any(isinstance(c, int) for c in capacities):
        raise UniAttnError(
            f"the graph's caches disagree on their length axis ({sorted(map(str, capacities))})",
            "re-export the model: every cache of a static artifact has the same capacity",
        )
    return None


def activation_dtype(model: onnx.ModelProto) -> str:
    """The type T of the cache tensors (the dtype the model was exported in)."""
    for info in graph_inputs(model):
        if io_names.is_past(info.name):
            return info.dtype
    raise UniAttnError(
        "the graph has no past_key_values.* inputs",
        "export with uniattn-export (optimum-style inputs with a KV cache)",
    )


def prepare_for_parser(model: onnx.ModelProto, with_plugins: bool) -> onnx.ModelProto:
    """A copy to hand to the TensorRT parser.

    With plugins, every custom node gets `num_outputs` (its outputs up to the last present
    one). Without, absent optional outputs ("") get names: the parser refuses to inline a
    local function into a node with fewer outputs than the function, and the builder drops
    the computations nobody reads anyway.
    """
    prepared = onnx.ModelProto()
    prepared.CopyFrom(model)
    for node in prepared.graph.node:
        if node.op_type not in CUSTOM_OPS:
            continue
        if with_plugins:
            present = len(node.output)
            while present and not node.output[present - 1]:
                present -= 1
            kept = [a for a in node.attribute if a.name != "num_outputs"]
            del node.attribute[:]
            node.attribute.extend(kept)
            node.attribute.append(helper.make_attribute("num_outputs", present))
        else:
            for index, name in enumerate(node.output):
                if not name:
                    node.output[index] = f"{node.name or node.op_type}.unused_output_{index}"
    return prepared
