"""TensorRT plugins for the two shared-softmax ops (docs/ops.md), as Python IPluginV3 classes.

Why Python: no TensorRT C++ headers (NvInfer.h) are obtainable here, while both TensorRT and
TensorRT-RTX ship Python bindings of the class-based plugin interfaces. The plugins carry the
build-time logic (output shapes through the expression builder, output types, format
combinations, serialized fields, workspace size); their enqueue launches the shared CUDA
kernels through the C ABI (uniattn_export.native) with the pointers and the stream TensorRT passes,
so no tensor data ever passes through Python.

Each op has an IPluginCreatorV3One per op contract version, registered under the ONNX op
name, the version ("1": growing caches, "2": fixed-capacity caches updated in place) and
namespace "uniattn" (the nodes' plugin_version / plugin_namespace attributes), which is how
the ONNX parser maps the custom nodes to them. A producer node's output count (3 for a layer
without consumers, 5 for a SuperBlock producer) is not visible to a plugin creator, so the
builder writes it into a `num_outputs` attribute before parsing (graph.prepare_for_parser).

Version 2 plugins declare their present caches aliased to their past caches
(IPluginV3OneBuildV2.get_aliased_input, TensorRT's preview feature ALIASED_PLUGIN_IO_10_03,
which the builder enables): TensorRT then hands enqueue the same address for both, and the
kernels write only the new slots. The aliases come from the op schema.

A Python plugin lives in the process, not in the engine: whoever deserializes an engine
built with these plugins must call `register_plugins` first (the runtime session does).
"""

from __future__ import annotations

import ctypes
from dataclasses import asdict, dataclass, fields
from functools import lru_cache

import numpy as np

from ... import native
from ...dtypes import trt_type_names
from ...errors import UniAttnError
from ...export.schema import CONSUMER_OP, PLUGIN_NAMESPACE, PRODUCER_OP, SCHEMA
from ...native import AttentionDesc, ConsumerIO, ProducerIO
from .compat import Flavour

CONTRACTS = {version: SCHEMA.versions[version] for version in sorted(SCHEMA.versions)}
# The version a node without plugin_version resolves to (ONNX's attribute default of v1).
PLUGIN_VERSION = SCHEMA.versions[1].plugin_version
# Plugin fields: the ops' attributes except the two that route the node to a plugin (the
# same names as export.ops.ROUTING_ATTRIBUTES, which imports torch; tests/export/test_schema.py
# holds them equal).
ROUTING_ATTRIBUTES = ("plugin_version", "plugin_namespace")
# Schema tensor types as the plugins name them: "T" is the activation type shared by all T
# slots, positions and masks are int64, the log-sum-exp float32.
_KINDS = {"T": "T", "int64": "int64", "float": "float32"}


@dataclass(frozen=True)
class OpLayout:
    """One op of one contract version as a plugin sees it, derived from the op schema."""

    op_type: str
    version: int
    input_kinds: tuple[str, ...]
    output_kinds: tuple[str, ...]
    field_names: tuple[str, ...]
    cache_input: int  # past_key / past_value: carries P or C (dim 2) and D (dim 3)
    aliases: dict[int, int]  # output index -> input index sharing its memory (version 2)

    @property
    def plugin_version(self) -> str:
        return str(self.version)

    @property
    def static(self) -> bool:
        return CONTRACTS[self.version].cache == "static"


def _layout(op_type: str, version: int) -> OpLayout:
    spec = getattr(CONTRACTS[version], "producer" if op_type == PRODUCER_OP else "consumer")
    fields_ = tuple(a.name for a in spec.attributes if a.name not in ROUTING_ATTRIBUTES)
    return OpLayout(
        op_type=op_type,
        version=version,
        input_kinds=tuple(_KINDS[t.type] for t in spec.inputs),
        output_kinds=tuple(_KINDS[t.type] for t in spec.outputs),
        field_names=fields_ + (("num_outputs",) if op_type == PRODUCER_OP else ()),
        cache_input=spec.input_index("past_key" if op_type == PRODUCER_OP else "past_value"),
        aliases={spec.output_index(o): spec.input_index(i) for o, i in spec.aliases.items()},
    )


LAYOUTS = {(op, version): _layout(op, version) for version in CONTRACTS for op in (PRODUCER_OP, CONSUMER_OP)}


def layout(op_type: str, plugin_version: str | int) -> OpLayout:
    key = (op_type, int(plugin_version))
    if key not in LAYOUTS:
        raise UniAttnError(
            f"no TensorRT plugin implements {op_type} version {plugin_version}",
            f"re-export the model (plugin versions: {', '.join(map(str, CONTRACTS))})",
        )
    return LAYOUTS[key]


@dataclass(frozen=True)
class AttentionFields:
    """The plugin fields: the nodes' attributes (plus num_outputs for producers). Version 2
    has no is_causal (always causal): its plugins leave it at 1."""

    num_heads: int
    kv_num_heads: int
    scale: float
    is_causal: int = 1
    sliding_window: int = 0
    probs_max_query_len: int = 16
    num_outputs: int = 5

    def validate(self, op_type: str) -> "AttentionFields":
        problems = []
        if self.num_heads < 1 or self.kv_num_heads < 1 or self.num_heads % self.kv_num_heads:
            problems.append(
                f"num_heads={self.num_heads} must be a positive multiple of "
                f"kv_num_heads={self.kv_num_heads}"
            )
        if not self.scale > 0:
            problems.append(f"scale={self.scale} must be positive")
        if self.sliding_window < 0 or self.probs_max_query_len < 0:
            problems.append("sliding_window and probs_max_query_len must be >= 0")
        if op_type == PRODUCER_OP and self.num_outputs not in (3, 4, 5):
            problems.append(f"a producer has 3 to 5 outputs, not {self.num_outputs}")
        if problems:
            raise UniAttnError(f"{op_type} attributes are invalid: {'; '.join(problems)}",
                               "re-export the model")  # fmt: skip
        return self


# Field name -> (numpy type, PluginFieldType name). Ints travel as int32: that is what the
# ONNX parser makes of an INT attribute.
_FIELD_TYPES = {
    f.name: ((np.float32, "FLOAT32") if f.type in (float, "float") else (np.int32, "INT32"))
    for f in fields(AttentionFields)
}


def fields_from_collection(op_type: str, collection) -> AttentionFields:
    """Plugin fields as TensorRT hands them over (from node attributes or an engine)."""
    values = {}
    for field in collection:
        if field.name in _FIELD_TYPES and field.data is not None and np.asarray(field.data).size:
            value = np.asarray(field.data).reshape(-1)[0]
            values[field.name] = float(value) if field.name == "scale" else int(value)
    missing = [name for name in ("num_heads", "kv_num_heads", "scale") if name not in values]
    if missing:
        raise UniAttnError(f"{op_type} node lacks attribute(s) {', '.join(missing)}",
                           "re-export the model")  # fmt: skip
    if op_type == CONSUMER_OP:
        values["num_outputs"] = len(LAYOUTS[(CONSUMER_OP, 1)].output_kinds)
    return AttentionFields(**values).validate(op_type)


@dataclass(frozen=True)
class PluginSet:
    """The plugin and creator classes of one contract version bound to one TensorRT module."""

    producer: type
    consumer: type
    creators: tuple[type, ...]


@lru_cache(maxsize=None)
def plugin_classes(trt, version: int = 1) -> PluginSet:
    """Define the plugin classes of contract `version` on top of `trt`'s binding classes
    (TensorRT or RTX). Version 2 builds on IPluginV3OneBuildV2 for its aliased caches."""
    dtype_names = trt_type_names(trt)
    aliased = any(LAYOUTS[(op, version)].aliases for op in (PRODUCER_OP, CONSUMER_OP))
    build_interface = trt.IPluginV3OneBuildV2 if aliased else trt.IPluginV3OneBuild

    class SharedSoftmaxPlugin(trt.IPluginV3, trt.IPluginV3OneCore, build_interface, trt.IPluginV3OneRuntime):
        layout: OpLayout

        def __init__(self, attributes: AttentionFields):
            trt.IPluginV3.__init__(self)
            trt.IPluginV3OneCore.__init__(self)
            build_interface.__init__(self)
            trt.IPluginV3OneRuntime.__init__(self)
            self.attributes = attributes
            self.op_type = self.layout.op_type
            self.plugin_name = self.layout.op_type
            self.plugin_version = self.layout.plugin_version
            self.plugin_namespace = PLUGIN_NAMESPACE
            self.num_outputs = attributes.num_outputs
            # Identical attributes time identically: let TensorRT reuse the measurement.
            values = asdict(attributes)
            self.timing_cache_id = f"v{version}:" + ",".join(f"{k}={values[k]}" for k in self.layout.field_names)
            self.metadata_string = self.timing_cache_id

        # --- core / lifetime ---------------------------------------------------------------

        def get_capability_interface(self, capability):
            return self

        def clone(self):
            return type(self)(self.attributes)

        def attach_to_context(self, resource_context):
            return self.clone()

        def get_fields_to_serialize(self):
            values = asdict(self.attributes)
            return trt.PluginFieldCollection(
                [
                    trt.PluginField(
                        name,
                        np.array([values[name]], dtype=_FIELD_TYPES[name][0]),
                        getattr(trt.PluginFieldType, _FIELD_TYPES[name][1]),
                    )
                    for name in self.layout.field_names
                ]
            )

        # --- build -------------------------------------------------------------------------

        def get_aliased_input(self, output_index):
            """Version 2: present_key / present_value share the memory of past_key /
            past_value (the caches are updated in place); -1: not aliased."""
            return self.layout.aliases.get(output_index, -1)

        def slot_kinds(self) -> tuple[str, ...]:
            return self.layout.input_kinds + self.layout.output_kinds[: self.num_outputs]

        def get_output_data_types(self, input_types):
            activation = input_types[0]
            return [
                activation if kind == "T" else trt.DataType.FLOAT
                for kind in self.layout.output_kinds[: self.num_outputs]
            ]

        def supports_format_combination(self, pos, in_out, num_inputs):
            desc = in_out[pos].desc
            if desc.format != trt.TensorFormat.LINEAR:
                return False
            kind = self.slot_kinds()[pos]
            if kind == "int64":
                return desc.type == trt.DataType.INT64
            if kind == "float32":
                return desc.type == trt.DataType.FLOAT
            # Every T tensor takes the type of input 0 (TensorRT asks in slot order).
            return desc.type in dtype_names and (pos == 0 or desc.type == in_out[0].desc.type)

        def configure_plugin(self, inputs, outputs):
            a = self.attributes
            width = inputs[0].desc.dims[2]
            expected = a.num_heads if self.op_type == PRODUCER_OP else a.kv_num_heads
            if width >= 0 and width % expected:
                raise ValueError(
                    f"{self.op_type}: input 0 has width {width}, not a multiple of {expected} heads"
                )

        def get_valid_tactics(self):
            return []

        def set_tactic(self, tactic):
            pass

        def on_shape_change(self, inputs, outputs):
            pass

        def get_workspace_size(self, inputs, outputs):
            low, high, cache = [d.min for d in inputs], [d.max for d in inputs], self.layout.cache_input
            # Static caches: dim 2 is the capacity, fixed by the graph (min == max).
            past = (0, 0) if self.layout.static else (low[cache][2], high[cache][2])
            return workspace_bound(
                self.op_type, self.attributes, dtype_names[inputs[0].desc.type],
                (low[0][0], high[0][0]), (low[0][1], high[0][1]), past, high[cache][3],
                high[cache][2] if self.layout.static else 0,
            )  # fmt: skip

        # --- runtime -----------------------------------------------------------------------

        def enqueue(self, input_desc, output_desc, inputs, outputs, workspace, stream):
            launch(
                self.op_type, self.attributes, [list(d.dims) for d in input_desc],
                [list(d.dims) for d in output_desc], dtype_names[input_desc[0].type],
                inputs, outputs, workspace, stream, version,
            )  # fmt: skip

    class ProducerPlugin(SharedSoftmaxPlugin):
        layout = LAYOUTS[(PRODUCER_OP, version)]

        def get_output_shapes(self, inputs, shape_inputs, expr):
            query, past_key = inputs[0], inputs[3]
            batch, query_len = query[0], query[1]
            if self.layout.static:  # fixed capacity C: present is past's shape
                key_len = past_key[2]
            else:
                key_len = expr.operation(trt.DimensionOperation.SUM, past_key[2], query_len)
            present = trt.DimsExprs([past_key[0], past_key[1], key_len, past_key[3]])
            shapes = [trt.DimsExprs([query[0], query[1], query[2]]), present, present]
            heads = expr.constant(self.attributes.num_heads)
            # shared_probs is (B, Hq, L, S or C) when L <= probs_max_query_len, else
            # (B, Hq, L, 0): width * (L < limit + 1), with LESS giving 1 or 0.
            limit = expr.constant(self.attributes.probs_max_query_len + 1)
            fits = expr.operation(trt.DimensionOperation.LESS, query_len, limit)
            width = expr.operation(trt.DimensionOperation.PROD, key_len, fits)
            shapes.append(trt.DimsExprs([batch, heads, query_len, width]))
            shapes.append(trt.DimsExprs([batch, heads, query_len]))
            return shapes[: self.num_outputs]

    class ConsumerPlugin(SharedSoftmaxPlugin):
        layout = LAYOUTS[(CONSUMER_OP, version)]

        def get_output_shapes(self, inputs, shape_inputs, expr):
            value, past_value, producer_query = inputs[0], inputs[1], inputs[5]
            if self.layout.static:
                key_len = past_value[2]
            else:
                key_len = expr.operation(trt.DimensionOperation.SUM, past_value[2], value[1])
            present = trt.DimsExprs([past_value[0], past_value[1], key_len, past_value[3]])
            output = trt.DimsExprs([producer_query[0], producer_query[1], producer_query[2]])
            return [output, present]

    def creator_for(plugin: type) -> type:
        class Creator(trt.IPluginCreatorV3One):
            def __init__(self):
                trt.IPluginCreatorV3One.__init__(self)
                self.name = plugin.layout.op_type
                self.plugin_version = plugin.layout.plugin_version
                self.plugin_namespace = PLUGIN_NAMESPACE
                self.field_names = trt.PluginFieldCollection(
                    [
                        trt.PluginField(
                            name,
                            np.array([], dtype=_FIELD_TYPES[name][0]),
                            getattr(trt.PluginFieldType, _FIELD_TYPES[name][1]),
                        )
                        for name in plugin.layout.field_names
                    ]
                )

            def create_plugin(self, name, field_collection, phase):
                return plugin(fields_from_collection(plugin.layout.op_type, field_collection))

        Creator.__name__ = Creator.__qualname__ = f"{plugin.__name__}V{version}Creator"
        return Creator

    return PluginSet(
        producer=ProducerPlugin,
        consumer=ConsumerPlugin,
        creators=(creator_for(ProducerPlugin), creator_for(ConsumerPlugin)),
    )


def _desc(attributes: AttentionFields, batch, query_len, past_len, head_dim, dtype, capacity=0) -> AttentionDesc:
    return AttentionDesc(
        batch=int(batch), query_len=int(query_len), past_len=int(past_len),
        num_heads=attributes.num_heads, kv_num_heads=attributes.kv_num_heads,
        head_dim=int(head_dim), scale=attributes.scale, is_causal=attributes.is_causal,
        sliding_window=attributes.sliding_window, dtype=native.DTYPE_CODES[dtype], capacity=int(capacity),
    )  # fmt: skip


def launch(op_type: str, attributes: AttentionFields, in_dims: list[list[int]], out_dims: list[list[int]],
           dtype: str, inputs: list[int], outputs: list[int], workspace: int, stream: int,
           version: int = 1) -> None:  # fmt: skip
    """What a plugin's enqueue does, on plain dims and device pointers (no TensorRT objects,
    so the GPU checks can drive it directly): launch the op's CUDA kernel on `stream`.

    Version 2 (static caches): the capacity is the caches' dim 2, visibility and slots come
    from position_ids on the device; when a present pointer equals its past pointer (TensorRT's
    aliased I/O) the kernels write only the new slots. Nothing here reads device memory,
    allocates or synchronizes, so a CUDA graph can capture it."""
    static = LAYOUTS[(op_type, version)].static
    cache = in_dims[LAYOUTS[(op_type, version)].cache_input]
    if static:
        desc = _desc(attributes, in_dims[0][0], in_dims[0][1], 0, cache[3], dtype, capacity=cache[2])
    else:
        desc = _desc(attributes, in_dims[0][0], in_dims[0][1], cache[2], cache[3], dtype)
    if op_type == PRODUCER_OP:
        count = attributes.num_outputs
        emits_probs = count >= 4 and out_dims[3][3] > 0  # (B, Hq, L, 0): nothing to write
        probs = outputs[3] if emits_probs else None
        lse = outputs[4] if count == 5 else None
        if static:  # inputs: q, k, v, past_key, past_value, position_ids
            io = ProducerIO(*inputs[:5], None, *outputs[:3], probs, lse, inputs[5])
        else:
            io = ProducerIO(*inputs[:6], *outputs[:3], probs, lse)
        function = "ua_producer_cuda"
    else:
        key_len = cache[2] if static else cache[2] + in_dims[0][1]
        # Decode hands over the probabilities; a (..., 0) tensor means recompute.
        probs = inputs[3] if in_dims[3][3] == key_len and key_len > 0 else None
        if static:  # inputs: value, past_value, position_ids, probs, lse, producer q, producer k
            io = ConsumerIO(inputs[0], inputs[1], None, probs, *inputs[4:7], *outputs[:2], inputs[2])
        else:
            io = ConsumerIO(inputs[0], inputs[1], inputs[2], probs, *inputs[4:7], *outputs[:2])
        function = "ua_consumer_cuda"
    kernels = native.kernels()
    status = getattr(kernels, function)(ctypes.byref(desc), ctypes.byref(io), workspace or None, stream or None)
    if status != native.UA_OK:  # raised from enqueue, TensorRT reports the enqueue as failed
        raise native.KernelError(function, status, kernels.ua_last_error().decode(errors="replace"))


def _sample(low: int, high: int, step: int, dense: int) -> list[int]:
    """Every `step`-th value from `low` for `dense` values, then doubling, and `high`."""
    values = set(range(low, min(high, low + step * dense) + 1, step))
    value = max(max(values), 1)
    while value < high:
        value *= 2
        values.add(min(value, high))
    return sorted(values | {high})


@lru_cache(maxsize=256)
def workspace_bound(op_type: str, attributes: AttentionFields, dtype: str, batch: tuple[int, int],
                    query_len: tuple[int, int], past_len: tuple[int, int], head_dim: int,
                    capacity: int = 0) -> int:  # fmt: skip
    """Workspace bytes that suffice for every call in the profile's (min, max) ranges.

    The kernels' own size is not monotone in the shape: split-KV planning trades batch and
    length for more splits, and the kernel choice changes with the query length, so a call
    smaller than the profile's maximum can need more. Hence the maximum over every batch and
    query length (the first 64, then doubling), every 32nd past length (the kernels plan in
    key tiles of 32 keys or more; the first 256 steps, then doubling), and both kernel paths.
    Static caches (`capacity` > 0, op version 2) have no past length: past_len is (0, 0) and
    the size depends on batch, query length and the fixed capacity.
    """
    kind = "producer" if op_type == PRODUCER_OP else "consumer"
    size = getattr(native.kernels(), f"ua_{kind}_cuda_workspace_size")
    desc = _desc(attributes, batch[1], query_len[1], past_len[1], head_dim, dtype, capacity)
    best = 0
    for b in _sample(*batch, step=1, dense=64):
        desc.batch = b
        for length in _sample(*query_len, step=1, dense=64):
            desc.query_len = length
            for past in _sample(*past_len, step=32, dense=256):
                desc.past_len = past
                best = max(best, size(ctypes.byref(desc), 0), size(ctypes.byref(desc), 1))
    return int(best)


# Creators handed to a registry must outlive it: TensorRT keeps raw pointers to them.
_REGISTERED: dict[tuple[str, str], object] = {}


def register_plugins(flavour: Flavour) -> list[str]:
    """Register the creators of every contract version with `flavour`'s plugin registry
    (idempotent); returns the registered "namespace::name/version" keys."""
    registry = flavour.plugin_registry()
    keys = []
    for version in CONTRACTS:
        for creator_class in plugin_classes(flavour.module, version).creators:
            creator = creator_class()
            key = (flavour.name, creator.name, version)
            if key not in _REGISTERED:
                if not registry.register_creator(creator, PLUGIN_NAMESPACE):
                    raise UniAttnError(
                        f"{flavour.describe()} refused to register the {creator.name} plugin "
                        f"version {version} (another creator with that name, version and namespace "
                        "is registered)",
                        "do not load a second UniAttn plugin library into this process",
                    )
                _REGISTERED[key] = creator
            keys.append(f"{PLUGIN_NAMESPACE}::{creator.name}/{version}")
    return keys
