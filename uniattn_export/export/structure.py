"""Structural check of an exported graph against its manifest (docs/ops.md, graph conventions).

Runs at export and on every load. It finds each layer's attention node through the layer's
value-cache input and checks: the node type matches the layer's role; every consumer reads
its shared state (probabilities, lse, query, key cache) from the node of the producer the
layer map names, and that node comes earlier; producer and consumer agree on heads, scale,
causality and window; no consumer has a key cache; cache shapes agree with the head counts;
the function bodies and domain imports are there; the cache mode, op version and capacity
the manifest records are the graph's (op contract v1 for dynamic caches, v2 with caches of
the recorded capacity for static ones).
"""

from __future__ import annotations

import onnx

from ..errors import UniAttnError
from ..model.config import UniAttnConfig
from . import io_names
from .schema import CACHE_MODES, CONSUMER_OP, DOMAIN, PRODUCER_OP, SCHEMA

_SHARED_ATTRIBUTES = ("num_heads", "kv_num_heads", "scale", "is_causal", "sliding_window", "plugin_version")
_FIX = "re-export the model with `uniattn-export model`; the graph does not match its manifest"


def _fail(problem: str) -> None:
    raise UniAttnError(problem, _FIX)


def _attributes(node: onnx.NodeProto) -> dict:
    values = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


def _static_dims(value: onnx.ValueInfoProto) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]


def _cache_contract(manifest: dict):
    """The op contract version the manifest's cache mode stands for, checked for consistency."""
    cache = manifest["cache"]
    mode = cache.get("mode")
    if mode not in CACHE_MODES:
        _fail(f"the manifest records cache mode {mode!r}, not one of {CACHE_MODES}")
    contract = SCHEMA.for_cache(mode)
    if cache.get("op_version") != contract.version:
        _fail(f"the manifest records op version {cache.get('op_version')} for {mode} caches, which are version {contract.version}")
    capacity = cache.get("capacity")
    if mode == "static" and not (isinstance(capacity, int) and capacity > 0):
        _fail(f"the manifest records static caches of capacity {capacity!r}")
    if mode == "dynamic" and capacity is not None:
        _fail(f"the manifest records a capacity ({capacity}) for dynamic caches")
    return contract, capacity


def check_structure(model: onnx.ModelProto, manifest: dict, uniattn: UniAttnConfig) -> None:
    graph = model.graph
    contract, capacity = _cache_contract(manifest)
    mode = contract.cache
    imports = {o.domain: o.version for o in model.opset_import}
    if imports.get("") != contract.onnx_opset or imports.get(DOMAIN) != contract.version:
        _fail(
            f"the graph imports opsets {imports}, but the manifest's {mode} caches need '': "
            f"{contract.onnx_opset} and {DOMAIN!r}: {contract.version}"
        )
    functions = {(f.domain, f.name) for f in model.functions}
    for op_type in (PRODUCER_OP, CONSUMER_OP):
        if (DOMAIN, op_type) not in functions:
            _fail(f"the graph has no function body for {DOMAIN}::{op_type} (plain runtimes could not run it)")

    inputs = {v.name: v for v in graph.input}
    outputs = {v.name for v in graph.output}
    layout = manifest["cache"].get("layout")
    if layout not in io_names.LAYOUTS:
        _fail(f"the manifest records cache layout {layout!r}, not one of {io_names.LAYOUTS}")
    tensors = io_names.cache_tensors((uniattn.has_key_cache(i) for i in range(uniattn.num_layers)), layout)
    cache_name = {t.source: t.name for t in tensors if t.source is not None}
    for kind, specs, names in (("inputs", manifest["inputs"], [v.name for v in graph.input]),
                               ("outputs", manifest["outputs"], [v.name for v in graph.output])):  # fmt: skip
        if [s["name"] for s in specs] != names:
            _fail(f"the graph's {kind} differ from the manifest's")
    if manifest["cache"]["mode"] == "static" and io_names.NEXT_TOKENS not in outputs:
        raise UniAttnError(
            f"this static-cache artifact has no {io_names.NEXT_TOKENS} output (an earlier uniattn-export wrote it)",
            "re-export the model with `uniattn-export model`",
        )

    node_of_layer: dict[int, tuple[int, onnx.NodeProto]] = {}
    positions = set()  # what the static-cache nodes read as position_ids
    by_past_value = {}
    for index, node in enumerate(graph.node):
        if node.domain == DOMAIN and node.op_type in (PRODUCER_OP, CONSUMER_OP):  # not the graph ops
            value_input = node.input[4] if node.op_type == PRODUCER_OP else node.input[1]
            by_past_value[value_input] = (index, node)

    for spec in manifest["layers"]:
        layer = spec["index"]
        role = uniattn.role(layer)
        if spec["role"] != role:
            _fail(f"the manifest calls layer {layer} a {spec['role']} but the layer map makes it a {role}")
        value_cache = cache_name[io_names.CacheName(layer, "value")]
        value_name = value_cache.past
        key_name = io_names.past_name(layer, "key")  # a consumer's in either layout
        if value_name not in inputs:
            _fail(f"layer {layer} has no {value_name} input")
        if role == "consumer" and (key_name in inputs or io_names.present_name(layer, "key") in outputs):
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
        if attrs.get("plugin_version") != contract.plugin_version:
            _fail(
                f"layer {layer}'s node has plugin_version {attrs.get('plugin_version')!r}, but the "
                f"manifest's {mode} caches are op version {contract.version}"
            )
        if attrs.get("num_heads") != spec["num_heads"] or attrs.get("kv_num_heads") != spec["kv_num_heads"]:
            _fail(
                f"layer {layer}'s node has {attrs.get('num_heads')}/{attrs.get('kv_num_heads')} query/KV "
                f"heads, the manifest {spec['num_heads']}/{spec['kv_num_heads']}"
            )
        graph_outputs = {v.name: v for v in graph.output}
        for cache in ((cache_name[io_names.CacheName(layer, "key")], value_cache) if role != "consumer" else (value_cache,)):
            name, present = cache.past, cache.present
            for tensor, dims in ((name, _static_dims(inputs[name])), (present, _static_dims(graph_outputs[present]))):
                # Static caches hold exactly `capacity` slots; dynamic ones grow (no fixed dim).
                if len(dims) != 4 or dims[1] != spec["kv_num_heads"] or dims[3] != spec["head_dim"] or dims[2] != capacity:
                    length = capacity if mode == "static" else "past"
                    _fail(f"{tensor} has shape {dims}, expected (batch, {spec['kv_num_heads']}, {length}, {spec['head_dim']}) for {mode} caches")
        present_value = node.output[2] if role != "consumer" else node.output[1]
        if present_value != value_cache.present:
            _fail(f"{value_cache.present} does not come from layer {layer}'s attention node")
        op = contract.consumer if role == "consumer" else contract.producer
        if mode == "static":
            positions.add(node.input[op.input_index("position_ids")])
        node_of_layer[layer] = (index, node)

    # Static caches take their slots from the positions: the graph's input, or for the genai
    # layout one tensor derived from it (exporter.py: contiguous positions).
    if mode == "static" and (len(positions) != 1 or (layout == "optimum" and positions != {io_names.POSITION_IDS})):
        _fail(f"the attention nodes read {sorted(positions)} as positions, expected the graph's {io_names.POSITION_IDS} "
              "(static caches take their slots from them)")  # fmt: skip

    for dummy in (t.name for t in tensors if t.source is None):  # the genai layout's (io_names.py)
        paired = cache_name[next(t.source for t in tensors if t.name == io_names.CacheName(dummy.layer, "value"))]
        for tensor, like in ((dummy.past, paired.past), (dummy.present, paired.present)):
            value = inputs.get(tensor) or next((v for v in graph.output if v.name == tensor), None)
            reference = inputs.get(like) or next(v for v in graph.output if v.name == like)
            if value is None or _static_dims(value) != _static_dims(reference):
                _fail(f"the genai layout's dummy cache {tensor} is missing or not shaped like {like}")

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
