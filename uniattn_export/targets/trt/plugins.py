"""TensorRT plugins for the two shared-softmax ops (docs/ops.md), as Python IPluginV3 classes.

Why Python: no TensorRT C++ headers (NvInfer.h) are obtainable here, while both TensorRT and
TensorRT-RTX ship Python bindings of the class-based plugin interfaces. The plugins carry the
build-time logic (output shapes through the expression builder, output types, format
combinations, serialized fields, workspace size); their enqueue launches the shared CUDA
kernels through the C ABI (uniattn_export.native) with the pointers and the stream TensorRT passes,
so no tensor data ever passes through Python.

Each op has an IPluginCreatorV3One registered under the ONNX op name, version "1" and
namespace "uniattn" (the nodes' plugin_version / plugin_namespace attributes), which is how
the ONNX parser maps the custom nodes to them. A producer node's output count (3 for a layer
without consumers, 5 for a SuperBlock producer) is not visible to a plugin creator, so the
builder writes it into a `num_outputs` attribute before parsing (graph.prepare_for_parser).

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

# These plugins implement op contract version 1 (growing caches); the version 2 plugins
# (fixed-capacity caches in place) are not written yet, so static artifacts cannot be built.
CONTRACT = SCHEMA.versions[1]
PLUGIN_VERSION = CONTRACT.plugin_version

# Tensor kinds of every I/O slot, inputs first: "T" is the activation type shared by all of
# them, the mask is int64 and the log-sum-exp float32 (docs/ops.md).
PRODUCER_INPUTS = ("T", "T", "T", "T", "T", "int64")
PRODUCER_OUTPUTS = ("T", "T", "T", "T", "float32")
CONSUMER_INPUTS = ("T", "T", "int64", "T", "float32", "T", "T")
CONSUMER_OUTPUTS = ("T", "T")
# The input that carries P (dim 2) and D (dim 3): past_key / past_value. B and L are input 0's.
CACHE_INPUT = {PRODUCER_OP: 3, CONSUMER_OP: 1}


@dataclass(frozen=True)
class AttentionFields:
    """The plugin fields: the nodes' attributes (plus num_outputs for producers)."""

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

    def describe(self) -> str:
        return ",".join(f"{k}={v}" for k, v in asdict(self).items())


# Field name -> (numpy type, PluginFieldType name). Ints travel as int32: that is what the
# ONNX parser makes of an INT attribute.
_FIELD_TYPES = {
    f.name: ((np.float32, "FLOAT32") if f.type in (float, "float") else (np.int32, "INT32"))
    for f in fields(AttentionFields)
}
PRODUCER_FIELDS = tuple(_FIELD_TYPES)
CONSUMER_FIELDS = ("num_heads", "kv_num_heads", "scale", "is_causal", "sliding_window")


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
        values["num_outputs"] = len(CONSUMER_OUTPUTS)
    return AttentionFields(**values).validate(op_type)


@dataclass(frozen=True)
class PluginSet:
    """The plugin and creator classes bound to one TensorRT module."""

    producer: type
    consumer: type
    creators: tuple[type, ...]


@lru_cache(maxsize=None)
def plugin_classes(trt) -> PluginSet:
    """Define the plugin classes on top of `trt`'s binding classes (TensorRT or RTX)."""
    dtype_names = trt_type_names(trt)

    class SharedSoftmaxPlugin(
        trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild, trt.IPluginV3OneRuntime
    ):
        op_type: str
        input_kinds: tuple[str, ...]
        output_kinds: tuple[str, ...]
        field_names: tuple[str, ...]

        def __init__(self, attributes: AttentionFields):
            trt.IPluginV3.__init__(self)
            trt.IPluginV3OneCore.__init__(self)
            trt.IPluginV3OneBuild.__init__(self)
            trt.IPluginV3OneRuntime.__init__(self)
            self.attributes = attributes
            self.plugin_name = self.op_type
            self.plugin_version = PLUGIN_VERSION
            self.plugin_namespace = PLUGIN_NAMESPACE
            self.num_outputs = attributes.num_outputs
            # Identical attributes time identically: let TensorRT reuse the measurement.
            self.timing_cache_id = attributes.describe()
            self.metadata_string = attributes.describe()

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
                    for name in self.field_names
                ]
            )

        # --- build -------------------------------------------------------------------------

        def slot_kinds(self) -> tuple[str, ...]:
            return self.input_kinds + self.output_kinds[: self.num_outputs]

        def get_output_data_types(self, input_types):
            activation = input_types[0]
            return [
                activation if kind == "T" else trt.DataType.FLOAT
                for kind in self.output_kinds[: self.num_outputs]
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
            low, high, cache = [d.min for d in inputs], [d.max for d in inputs], CACHE_INPUT[self.op_type]
            return workspace_bound(
                self.op_type, self.attributes, dtype_names[inputs[0].desc.type],
                (low[0][0], high[0][0]), (low[0][1], high[0][1]), (low[cache][2], high[cache][2]),
                high[cache][3],
            )  # fmt: skip

        # --- runtime -----------------------------------------------------------------------

        def enqueue(self, input_desc, output_desc, inputs, outputs, workspace, stream):
            launch(
                self.op_type, self.attributes, [list(d.dims) for d in input_desc],
                [list(d.dims) for d in output_desc], dtype_names[input_desc[0].type],
                inputs, outputs, workspace, stream,
            )  # fmt: skip

    class ProducerPlugin(SharedSoftmaxPlugin):
        op_type = PRODUCER_OP
        input_kinds, output_kinds, field_names = PRODUCER_INPUTS, PRODUCER_OUTPUTS, PRODUCER_FIELDS

        def get_output_shapes(self, inputs, shape_inputs, expr):
            query, past_key = inputs[0], inputs[3]
            batch, query_len = query[0], query[1]
            key_len = expr.operation(trt.DimensionOperation.SUM, past_key[2], query_len)
            present = trt.DimsExprs([past_key[0], past_key[1], key_len, past_key[3]])
            shapes = [trt.DimsExprs([query[0], query[1], query[2]]), present, present]
            heads = expr.constant(self.attributes.num_heads)
            # shared_probs is (B, Hq, L, S) when L <= probs_max_query_len, else (B, Hq, L, 0):
            # S * (L < limit + 1), with LESS giving 1 or 0.
            limit = expr.constant(self.attributes.probs_max_query_len + 1)
            fits = expr.operation(trt.DimensionOperation.LESS, query_len, limit)
            width = expr.operation(trt.DimensionOperation.PROD, key_len, fits)
            shapes.append(trt.DimsExprs([batch, heads, query_len, width]))
            shapes.append(trt.DimsExprs([batch, heads, query_len]))
            return shapes[: self.num_outputs]

    class ConsumerPlugin(SharedSoftmaxPlugin):
        op_type = CONSUMER_OP
        input_kinds, output_kinds, field_names = CONSUMER_INPUTS, CONSUMER_OUTPUTS, CONSUMER_FIELDS

        def get_output_shapes(self, inputs, shape_inputs, expr):
            value, past_value, producer_query = inputs[0], inputs[1], inputs[5]
            key_len = expr.operation(trt.DimensionOperation.SUM, past_value[2], value[1])
            present = trt.DimsExprs([past_value[0], past_value[1], key_len, past_value[3]])
            output = trt.DimsExprs([producer_query[0], producer_query[1], producer_query[2]])
            return [output, present]

    def creator_for(plugin: type) -> type:
        class Creator(trt.IPluginCreatorV3One):
            def __init__(self):
                trt.IPluginCreatorV3One.__init__(self)
                self.name = plugin.op_type
                self.plugin_version = PLUGIN_VERSION
                self.plugin_namespace = PLUGIN_NAMESPACE
                self.field_names = trt.PluginFieldCollection(
                    [
                        trt.PluginField(
                            name,
                            np.array([], dtype=_FIELD_TYPES[name][0]),
                            getattr(trt.PluginFieldType, _FIELD_TYPES[name][1]),
                        )
                        for name in plugin.field_names
                    ]
                )

            def create_plugin(self, name, field_collection, phase):
                return plugin(fields_from_collection(plugin.op_type, field_collection))

        Creator.__name__ = Creator.__qualname__ = f"{plugin.__name__}Creator"
        return Creator

    return PluginSet(
        producer=ProducerPlugin,
        consumer=ConsumerPlugin,
        creators=(creator_for(ProducerPlugin), creator_for(ConsumerPlugin)),
    )


def _desc(attributes: AttentionFields, batch, query_len, past_len, head_dim, dtype) -> AttentionDesc:
    return AttentionDesc(
        batch=int(batch), query_len=int(query_len), past_len=int(past_len),
        num_heads=attributes.num_heads, kv_num_heads=attributes.kv_num_heads,
        head_dim=int(head_dim), scale=attributes.scale, is_causal=attributes.is_causal,
        sliding_window=attributes.sliding_window, dtype=native.DTYPE_CODES[dtype],
    )  # fmt: skip


def launch(op_type: str, attributes: AttentionFields, in_dims: list[list[int]], out_dims: list[list[int]],
           dtype: str, inputs: list[int], outputs: list[int], workspace: int, stream: int) -> None:  # fmt: skip
    """What a plugin's enqueue does, on plain dims and device pointers (no TensorRT objects,
    so the GPU check can drive it directly): launch the op's CUDA kernel on `stream`."""
    cache = in_dims[CACHE_INPUT[op_type]]
    desc = _desc(attributes, in_dims[0][0], in_dims[0][1], cache[2], cache[3], dtype)
    if op_type == PRODUCER_OP:
        count = attributes.num_outputs
        emits_probs = count >= 4 and out_dims[3][3] > 0  # (B, Hq, L, 0): nothing to write
        io = ProducerIO(
            *inputs[:6], *outputs[:3],
            outputs[3] if emits_probs else None, outputs[4] if count == 5 else None,
        )  # fmt: skip
        function = "ua_producer_cuda"
    else:
        key_len = cache[2] + in_dims[0][1]
        # Decode hands over the probabilities; a (..., 0) tensor means recompute.
        uses_probs = in_dims[3][3] == key_len and key_len > 0
        io = ConsumerIO(inputs[0], inputs[1], inputs[2], inputs[3] if uses_probs else None, *inputs[4:7], *outputs[:2])
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
                    query_len: tuple[int, int], past_len: tuple[int, int], head_dim: int) -> int:  # fmt: skip
    """Workspace bytes that suffice for every call in the profile's (min, max) ranges.

    The kernels' own size is not monotone in the shape: split-KV planning trades batch and
    length for more splits, and the kernel choice changes with the query length, so a call
    smaller than the profile's maximum can need more. Hence the maximum over every batch and
    query length (the first 64, then doubling), every 32nd past length (the kernels plan in
    key tiles of 32 keys or more; the first 256 steps, then doubling), and both kernel paths.
    """
    kind = "producer" if op_type == PRODUCER_OP else "consumer"
    size = getattr(native.kernels(), f"ua_{kind}_cuda_workspace_size")
    desc = _desc(attributes, batch[1], query_len[1], past_len[1], head_dim, dtype)
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
    """Register both creators with `flavour`'s plugin registry (idempotent); returns the
    registered "namespace::name/version" keys."""
    registry = flavour.plugin_registry()
    keys = []
    for creator_class in plugin_classes(flavour.module).creators:
        creator = creator_class()
        key = (flavour.name, creator.name)
        if key not in _REGISTERED:
            if not registry.register_creator(creator, PLUGIN_NAMESPACE):
                raise UniAttnError(
                    f"{flavour.describe()} refused to register the {creator.name} plugin "
                    "(another creator with that name, version and namespace is registered)",
                    "do not load a second UniAttn plugin library into this process",
                )
            _REGISTERED[key] = creator
        keys.append(f"{PLUGIN_NAMESPACE}::{creator.name}/{PLUGIN_VERSION}")
    return keys
