"""Structural check of an exported graph against its manifest (docs/ops.md, graph conventions).

Runs at export and on every load. It finds each layer's attention node through the layer's
value-cache input and checks: the node type matches the layer's role; every consumer reads
its shared state (probabilities, lse, query, key cache) from the node of the producer the
layer map names, and that node comes earlier; producer and consumer agree on heads, scale,
causality and window; no consumer has a key cache; cache shapes agree with the head counts;
the function bodies and domain imports are there.
"""

from __future__ import annotations

import onnx

from ..errors import UniAttnError
from ..model.config import UniAttnConfig
from .ops import CONSUMER_OP, DOMAIN, DOMAIN_VERSION, ONNX_OPSET, PRODUCER_OP

_SHARED_ATTRIBUTES = ("num_heads", "kv_num_heads", "scale", "is_causal", "sliding_window")
_FIX = "re-export the model with `uniattn-export model`; the graph does not match its manifest"


def _fail(problem: str) -> None:
    raise UniAttnError(problem, _FIX)


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _static_dims(value: onnx.ValueInfoProto) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]


def check_structure(model: onnx.ModelProto, manifest: dict, uniattn: UniAttnConfig) -> None:
    graph = model.graph
    imports = {o.domain: o.version for o in model.opset_import}
    if imports.get("") != ONNX_OPSET or imports.get(DOMAIN) != DOMAIN_VERSION:
        _fail(f"the graph imports opsets {imports}, expected '': {ONNX_OPSET} and {DOMAIN!r}: {DOMAIN_VERSION}")
    functions = {(f.domain, f.name) for f in model.functions}
    for op_type in (PRODUCER_OP, CONSUMER_OP):
        if (DOMAIN, op_type) not in functions:
            _fail(f"the graph has no function body for {DOMAIN}::{op_type} (plain runtimes could not run it)")

    inputs = {v.name: v for v in graph.input}
    outputs = {v.name for v in graph.output}
    for kind, specs, names in (("inputs", manifest["inputs"], [v.name for v in graph.input]),
                               ("outputs", manifest["outputs"], [v.name for v in graph.output])):  # fmt: skip
        if [s["name"] for s in specs] != names:
            _fail(f"the graph's {kind} differ from the manifest's")

    node_of_layer: dict[int, tuple[int, onnx.NodeProto]] = {}
    by_past_value = {}
    for index, node in enumerate(graph.node):
        if node.domain == DOMAIN:
            value_input = node.input[4] if node.op_type == PRODUCER_OP else node.input[1]
            by_past_value[value_input] = (index, node)

    for spec in manifest["layers"]:
        layer = spec["index"]
        role = uniattn.role(layer)
        if spec["role"] != role:
            _fail(f"the manifest calls layer {layer} a {spec['role']} but the layer map makes it a {role}")
        value_name = f"past_key_values.{layer}.value"
        key_name = f"past_key_values.{layer}.key"
        if value_name not in inputs:
            _fail(f"layer {layer} has no {value_name} input")
        if role == "consumer" and (key_name in inputs or f"present.{layer}.key" in outputs):
            _fail(f"consumer layer {layer} has a key cache ({key_name}); consumers reuse their producer's softmax and keep no K")
        if role != "consumer" and key_name not in inputs:
            _fail(f"layer {layer} ({role}) has no {key_name} input")
        if value_name not in by_past_value:
            _fail(f"no uniattn node reads {value_name} (layer {layer})")
        index, node = by_past_value[value_name]
        expected = CONSUMER_OP if role == "consumer" else PRODUCER_OP
        if node.op_type != expected:
            _fail(f"layer {layer} is a {role} but its attention node is {node.op_type}, expected {expected}")
        attrs = _attributes(node)
        if attrs.get("num_heads") != spec["num_heads"] or attrs.get("kv_num_heads") != spec["kv_num_heads"]:
            _fail(
                f"layer {layer}'s node has {attrs.get('num_heads')}/{attrs.get('kv_num_heads')} query/KV "
                f"heads, the manifest {spec['num_heads']}/{spec['kv_num_heads']}"
            )
        for name in ((key_name, value_name) if role != "consumer" else (value_name,)):
            dims = _static_dims(inputs[name])
            if len(dims) != 4 or dims[1] != spec["kv_num_heads"] or dims[3] != spec["head_dim"]:
                _fail(f"{name} has shape {dims}, expected (batch, {spec['kv_num_heads']}, past, {spec['head_dim']})")
        present_value = node.output[2] if role != "consumer" else node.output[1]
        if present_value != f"present.{layer}.value":
            _fail(f"present.{layer}.value does not come from layer {layer}'s attention node")
        node_of_layer[layer] = (index, node)

    for consumer in uniattn.consumers:
        producer = uniattn.producer_of(consumer)
        c_index, c_node = node_of_layer[consumer]
        p_index, p_node = node_of_layer[producer]
        if p_index >= c_index:
            _fail(f"consumer layer {consumer}'s producer {producer} comes after it in the graph")
        if len(p_node.output) < 5:
            _fail(f"producer layer {producer} emits no shared state but layer {consumer} consumes it")
        wanted = [p_node.output[3], p_node.output[4], p_node.input[0], p_node.output[1]]
        if list(c_node.input[3:7]) != wanted:
            _fail(
                f"consumer layer {consumer} does not read its shared state from producer layer "
                f"{producer} (the layer map's producer)"
            )
        p_attrs, c_attrs = _attributes(p_node), _attributes(c_node)
        for name in _SHARED_ATTRIBUTES:
            if p_attrs.get(name) != c_attrs.get(name):
                _fail(
                    f"consumer layer {consumer} has {name}={c_attrs.get(name)} but its producer "
                    f"{producer} has {p_attrs.get(name)}"
                )
        if manifest["layers"][consumer]["head_dim"] != manifest["layers"][producer]["head_dim"]:
            _fail(f"consumer layer {consumer} and its producer {producer} have different head dims")
