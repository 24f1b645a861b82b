"""The IPluginV3 plugins: fields, output shapes and types, format combinations, workspace,
and the enqueue plumbing.

Output shapes are checked where TensorRT computes them: single-node graphs with static
shapes are parsed (with the plugins, and with the exporter's function bodies instead), and
the shapes TensorRT inferred must be the contract's, identical on both paths.

enqueue cannot launch its CUDA kernels here (no GPU). The CPU entry points of the same
library take the same descriptor and I/O struct, so with them swapped in and host buffers
the plugins' enqueue runs end to end and its results are checked against model/attention.py.
"""

from __future__ import annotations

import ctypes

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from uniattn_export import native
from uniattn_export.errors import UniAttnError
from uniattn_export.export.functions import function_protos
from uniattn_export.export.ops import ONNX_OPSET
from uniattn_export.model import attention as reference
from uniattn_export.targets.trt.build import parse_network
from uniattn_export.targets.trt.plugins import AttentionFields, plugin_classes, register_plugins

BATCH, HEADS, KV_HEADS, HEAD_DIM, PROBS_MAX = 2, 4, 2, 8, 4
ONNX_TYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}
TORCH_TYPES = {"float32": torch.float32, "float16": torch.float16}
PRODUCER_NAMES = ("output", "present_key", "present_value", "shared_probs", "shared_lse")


@pytest.fixture(scope="session")
def classes(flavour):
    return plugin_classes(flavour.module)


def _field_collection(trt, values: dict):
    """Fields the way the ONNX parser makes them from node attributes."""
    return trt.PluginFieldCollection(
        [
            trt.PluginField(name, np.array([v], np.float32), trt.PluginFieldType.FLOAT32)
            if isinstance(v, float)
            else trt.PluginField(name, np.array([v], np.int32), trt.PluginFieldType.INT32)
            for name, v in values.items()
        ]
    )


PRODUCER_VALUES = dict(num_heads=8, kv_num_heads=2, scale=0.125, is_causal=0, sliding_window=64,
                       probs_max_query_len=4, num_outputs=3)  # fmt: skip
CONSUMER_VALUES = dict(num_heads=8, kv_num_heads=2, scale=0.125, is_causal=1, sliding_window=0)


@pytest.mark.parametrize("index, values", [(0, PRODUCER_VALUES), (1, CONSUMER_VALUES)])
def test_fields_round_trip_through_serialized_bytes(flavour, classes, index, values):
    trt = flavour.module
    creator = classes.creators[index]()
    built = creator.create_plugin("node", _field_collection(trt, values), trt.TensorRTPhase.BUILD)
    # What TensorRT writes into the plan: name, type and the raw bytes of each field.
    stored = [(f.name, f.type, bytes(np.asarray(f.data))) for f in built.get_fields_to_serialize()]
    assert [name for name, _, _ in stored] == list(values)
    reread = trt.PluginFieldCollection(
        [
            trt.PluginField(name, np.frombuffer(raw, np.float32 if name == "scale" else np.int32), kind)
            for name, kind, raw in stored
        ]
    )
    restored = creator.create_plugin("node", reread, trt.TensorRTPhase.RUNTIME)
    assert restored.attributes == built.attributes
    expected = AttentionFields(**values) if index == 0 else AttentionFields(**values, num_outputs=2)
    assert restored.attributes == expected
    assert (restored.plugin_name, restored.plugin_namespace, restored.plugin_version) == (
        creator.name, "uniattn", "1"
    )
    assert restored.num_outputs == (3 if index == 0 else 2)
    clone = restored.clone()
    assert type(clone) is type(restored) and clone.attributes == restored.attributes and clone is not restored


def test_creators_are_registered_once_under_the_op_names(flavour):
    keys = ["uniattn::UniAttnProducer/1", "uniattn::UniAttnConsumer/1",
            "uniattn::UniAttnProducer/2", "uniattn::UniAttnConsumer/2"]  # fmt: skip
    assert register_plugins(flavour) == keys
    assert register_plugins(flavour) == keys
    registry = flavour.plugin_registry()
    ours = [c for c in registry.all_creators if c.name in ("UniAttnProducer", "UniAttnConsumer")]
    assert sorted((c.name, c.plugin_namespace, c.plugin_version) for c in ours) == [
        ("UniAttnConsumer", "uniattn", "1"), ("UniAttnConsumer", "uniattn", "2"),
        ("UniAttnProducer", "uniattn", "1"), ("UniAttnProducer", "uniattn", "2"),
    ]  # fmt: skip
    producer = registry.get_creator("UniAttnProducer", "1", "uniattn")
    assert [f.name for f in producer.field_names] == [
        "num_heads", "kv_num_heads", "scale", "is_causal", "sliding_window", "probs_max_query_len", "num_outputs",
    ]  # fmt: skip
    # Version 2 is always causal: no is_causal field.
    static_producer = registry.get_creator("UniAttnProducer", "2", "uniattn")
    assert [f.name for f in static_producer.field_names] == [
        "num_heads", "kv_num_heads", "scale", "sliding_window", "probs_max_query_len", "num_outputs",
    ]  # fmt: skip
    static_consumer = registry.get_creator("UniAttnConsumer", "2", "uniattn")
    assert [f.name for f in static_consumer.field_names] == ["num_heads", "kv_num_heads", "scale", "sliding_window"]
    assert registry.get_creator("UniAttnProducer", "3", "uniattn") is None


def test_static_plugins_alias_their_present_caches_to_their_past_caches(flavour):
    """Version 2: present_key / present_value (outputs 1, 2) share the memory of past_key /
    past_value (inputs 3, 4); the consumer's present_value (1) that of past_value (1). No
    other output aliases, and version 1 plugins have no aliasing interface at all."""
    trt = flavour.module
    v2 = plugin_classes(trt, 2)
    producer = v2.producer(AttentionFields(num_heads=4, kv_num_heads=2, scale=0.3, num_outputs=5))
    consumer = v2.consumer(AttentionFields(num_heads=4, kv_num_heads=2, scale=0.3, num_outputs=2))
    assert [producer.get_aliased_input(i) for i in range(5)] == [-1, 3, 4, -1, -1]
    assert [consumer.get_aliased_input(i) for i in range(2)] == [-1, 1]
    assert isinstance(producer, trt.IPluginV3OneBuildV2) and isinstance(consumer, trt.IPluginV3OneBuildV2)
    v1 = plugin_classes(trt, 1)
    assert not isinstance(v1.producer(AttentionFields(num_heads=4, kv_num_heads=2, scale=0.3)), trt.IPluginV3OneBuildV2)
    assert (producer.plugin_version, v1.producer.layout.plugin_version) == ("2", "1")


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(num_heads=4, kv_num_heads=2), "lacks attribute.s. scale"),
        (dict(num_heads=4, kv_num_heads=3, scale=0.5), "num_heads=4 must be a positive multiple of kv_num_heads=3"),
        (dict(num_heads=4, kv_num_heads=2, scale=0.5, num_outputs=6), "a producer has 3 to 5 outputs, not 6"),
        (dict(num_heads=4, kv_num_heads=2, scale=-1.0), "scale=-1.0 must be positive"),
    ],
)
def test_invalid_attributes_are_refused(flavour, classes, values, message):
    trt = flavour.module
    with pytest.raises(UniAttnError, match=message):
        classes.creators[0]().create_plugin("bad", _field_collection(trt, values), trt.TensorRTPhase.BUILD)


# --- output shapes and types, as TensorRT infers them ----------------------------------------


def _single_node_graph(path, op, dtype, query_len, past_len, outputs=5, probs_width=None):
    t = ONNX_TYPES[dtype]
    key_len = past_len + query_len
    attributes = dict(domain="uniattn", num_heads=HEADS, kv_num_heads=KV_HEADS, scale=HEAD_DIM**-0.5,
                      plugin_version="1", plugin_namespace="uniattn")  # fmt: skip

    def value(name, elem, shape):
        return helper.make_tensor_value_info(name, elem, shape)

    cache = [BATCH, KV_HEADS, past_len, HEAD_DIM]
    if op == "UniAttnProducer":
        inputs = [value("query", t, [BATCH, query_len, HEADS * HEAD_DIM]),
                  value("key", t, [BATCH, query_len, KV_HEADS * HEAD_DIM]),
                  value("value", t, [BATCH, query_len, KV_HEADS * HEAD_DIM]),
                  value("past_key", t, cache), value("past_value", t, cache),
                  value("attention_mask", TensorProto.INT64, [BATCH, key_len])]  # fmt: skip
        names = list(PRODUCER_NAMES[:outputs]) + [""] * (5 - outputs)
        elems = [t, t, t, t, TensorProto.FLOAT][:outputs]
        attributes["probs_max_query_len"] = PROBS_MAX
    else:
        inputs = [value("value", t, [BATCH, query_len, KV_HEADS * HEAD_DIM]), value("past_value", t, cache),
                  value("attention_mask", TensorProto.INT64, [BATCH, key_len]),
                  value("shared_probs", t, [BATCH, HEADS, query_len, probs_width]),
                  value("shared_lse", TensorProto.FLOAT, [BATCH, HEADS, query_len]),
                  value("producer_query", t, [BATCH, query_len, HEADS * HEAD_DIM]),
                  value("producer_key", t, [BATCH, KV_HEADS, key_len, HEAD_DIM])]  # fmt: skip
        names, elems = ["output", "present_value"], [t, t]
    node = helper.make_node(op, [i.name for i in inputs], names, name="node", **attributes)
    graph_outputs = [value(n, e, None) for n, e in zip(names, elems) if n]
    model = helper.make_model(
        helper.make_graph([node], "single", inputs, graph_outputs),
        opset_imports=[helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid("uniattn", 1)],
        functions=function_protos(), ir_version=10,
    )  # fmt: skip
    onnx.save(model, str(path))
    return path


def _inferred_outputs(path, with_plugins):
    network = parse_network(path, with_plugins)
    return {t["name"]: (t["dtype"], t["shape"]) for t in network["io"] if t["mode"] == "output"}


@pytest.mark.parametrize(
    "query_len, past_len, outputs, dtype",
    [(3, 5, 5, "float32"), (4, 5, 5, "float32"), (6, 5, 5, "float32"), (3, 5, 3, "float32"), (1, 7, 5, "float16")],
)
def test_producer_output_shapes_and_types(tmp_path, query_len, past_len, outputs, dtype):
    path = _single_node_graph(tmp_path / "p.onnx", "UniAttnProducer", dtype, query_len, past_len, outputs)
    key_len = past_len + query_len
    probs_width = key_len if query_len <= PROBS_MAX else 0
    cache = [BATCH, KV_HEADS, key_len, HEAD_DIM]
    expected = {
        "output": (dtype, [BATCH, query_len, HEADS * HEAD_DIM]),
        "present_key": (dtype, cache),
        "present_value": (dtype, cache),
        "shared_probs": (dtype, [BATCH, HEADS, query_len, probs_width]),
        "shared_lse": ("float32", [BATCH, HEADS, query_len]),
    }
    expected = {k: v for k, v in expected.items() if k in PRODUCER_NAMES[:outputs]}
    with_plugins = _inferred_outputs(path, True)
    assert with_plugins == expected
    assert _inferred_outputs(path, False) == expected  # the function bodies agree


@pytest.mark.parametrize("query_len, past_len, reuse_probs", [(2, 5, True), (6, 5, False)])
def test_consumer_output_shapes_and_types(tmp_path, query_len, past_len, reuse_probs):
    key_len = past_len + query_len
    path = _single_node_graph(tmp_path / "c.onnx", "UniAttnConsumer", "float32", query_len, past_len,
                              probs_width=key_len if reuse_probs else 0)  # fmt: skip
    expected = {
        "output": ("float32", [BATCH, query_len, HEADS * HEAD_DIM]),
        "present_value": ("float32", [BATCH, KV_HEADS, key_len, HEAD_DIM]),
    }
    assert _inferred_outputs(path, True) == expected
    assert _inferred_outputs(path, False) == expected


# --- format combinations and workspace ------------------------------------------------------


def _descs(trt, types, dims=None, fmt=None):
    descs = []
    for index, kind in enumerate(types):
        d = trt.DynamicPluginTensorDesc()
        d.desc.type = kind
        d.desc.format = fmt or trt.TensorFormat.LINEAR
        if dims is not None:
            d.desc.dims = trt.Dims(dims[index])
            d.max = trt.Dims(dims[index])
        descs.append(d)
    return descs


def test_supported_format_combinations(flavour, classes):
    trt = flavour.module
    D = trt.DataType
    producer = classes.producer(AttentionFields(num_heads=4, kv_num_heads=2, scale=0.35, num_outputs=5))
    consumer = classes.consumer(AttentionFields(num_heads=4, kv_num_heads=2, scale=0.35, num_outputs=2))

    def accepted(plugin, types, num_inputs, fmt=None):
        io = _descs(trt, types, fmt=fmt)
        return all(plugin.supports_format_combination(pos, io, num_inputs) for pos in range(len(types)))

    for t in (D.FLOAT, D.HALF, D.BF16):
        assert accepted(producer, [t] * 5 + [D.INT64] + [t] * 4 + [D.FLOAT], 6)
        assert accepted(consumer, [t, t, D.INT64, t, D.FLOAT, t, t, t, t], 7)
    half = [D.HALF] * 5 + [D.INT64] + [D.HALF] * 4 + [D.FLOAT]
    assert not accepted(producer, half[:5] + [D.INT32] + half[6:], 6)  # mask must be int64
    assert not accepted(producer, half[:10] + [D.HALF], 6)  # lse stays float32
    assert not accepted(producer, half[:2] + [D.FLOAT] + half[3:], 6)  # one T for all
    assert not accepted(producer, [D.INT8] * 5 + half[5:], 6)
    assert not accepted(producer, half, 6, fmt=trt.TensorFormat.HWC)
    assert not accepted(consumer, [D.HALF, D.HALF, D.INT64, D.HALF, D.HALF, D.HALF, D.HALF, D.HALF, D.HALF], 7)
    assert producer.get_output_data_types([D.HALF] * 5 + [D.INT64]) == [D.HALF] * 4 + [D.FLOAT]
    three = classes.producer(AttentionFields(num_heads=4, kv_num_heads=2, scale=0.35, num_outputs=3))
    assert three.get_output_data_types([D.BF16] * 5 + [D.INT64]) == [D.BF16] * 3


@pytest.mark.parametrize("kind", ["producer", "consumer"])
def test_workspace_covers_every_call_of_the_profile(flavour, classes, kind):
    """TensorRT reserves get_workspace_size once per profile; every call inside the profile
    must fit, whatever the kernels' planning does with batch and lengths (checked by brute
    force over a small profile against the library's own per-call size)."""
    trt = flavour.module
    D = trt.DataType
    heads, kv_heads, d = 8, 2, 64
    batch, length, past = (1, 3), (1, 20), (0, 200)
    outputs = 5 if kind == "producer" else 2
    fields = AttentionFields(num_heads=heads, kv_num_heads=kv_heads, scale=0.125, num_outputs=outputs)
    plugin = classes.producer(fields) if kind == "producer" else classes.consumer(fields)

    def dims(b, l, p):
        cache = [b, kv_heads, p, d]
        if kind == "producer":
            return [[b, l, heads * d], [b, l, kv_heads * d], [b, l, kv_heads * d], cache, cache, [b, p + l]]
        return [[b, l, kv_heads * d], cache, [b, p + l], [b, heads, l, p + l], [b, heads, l], [b, l, heads * d],
                [b, kv_heads, p + l, d]]

    low, high = dims(batch[0], length[0], past[0]), dims(batch[1], length[1], past[1])
    inputs = _descs(trt, [D.HALF] * len(low), high)
    for desc, shape in zip(inputs, low):
        desc.min = trt.Dims(shape)
    bound = plugin.get_workspace_size(inputs, [])

    size = getattr(native.kernels(), f"ua_{kind}_cuda_workspace_size")
    desc = native.AttentionDesc(1, 1, 0, heads, kv_heads, d, 0.125, 1, 0, native.DTYPE_CODES["float16"])
    needed = set()
    for desc.batch in range(batch[0], batch[1] + 1):
        for desc.query_len in range(length[0], length[1] + 1):
            for desc.past_len in range(past[0], past[1] + 1):
                needed |= {size(ctypes.byref(desc), 0), size(ctypes.byref(desc), 1)}
    assert bound == max(needed)  # enough for every call, and no more than some call needs


# --- enqueue, with the CPU kernels standing in for the CUDA ones ------------------------------


class HostKernels:
    """The kernel library with ua_*_cuda answered by ua_*_cpu (same descriptor and I/O
    struct; no workspace, no stream)."""

    def __init__(self, lib):
        self.lib = lib
        self.calls = []

    def __getattr__(self, name):
        return getattr(self.lib, name)

    def ua_producer_cuda(self, desc, io, workspace, stream):
        self.calls.append(("producer", io._obj.shared_probs, io._obj.shared_lse))
        return self.lib.ua_producer_cpu(desc, io, None)

    def ua_consumer_cuda(self, desc, io, workspace, stream):
        self.calls.append(("consumer", io._obj.shared_probs, None))
        return self.lib.ua_consumer_cpu(desc, io, None)


@pytest.fixture
def host_kernels(monkeypatch):
    kernels = HostKernels(native.kernels())
    monkeypatch.setattr(native, "kernels", lambda: kernels)
    return kernels


def _plugin_descs(trt, tensors):
    descs = []
    kinds = {torch.float32: trt.DataType.FLOAT, torch.float16: trt.DataType.HALF, torch.int64: trt.DataType.INT64}
    for tensor in tensors:
        d = trt.PluginTensorDesc()
        d.dims, d.type, d.format = trt.Dims(list(tensor.shape)), kinds[tensor.dtype], trt.TensorFormat.LINEAR
        descs.append(d)
    return descs


def _enqueue(trt, plugin, inputs, outputs):
    plugin.enqueue(_plugin_descs(trt, inputs), _plugin_descs(trt, outputs),
                   [t.data_ptr() for t in inputs], [t.data_ptr() for t in outputs], 0, 0)  # fmt: skip


@pytest.mark.parametrize(
    "query_len, past_len, outputs, dtype",
    [(2, 5, 5, "float32"), (6, 3, 5, "float32"), (3, 4, 3, "float32"), (1, 6, 5, "float16")],
)
def test_enqueue_matches_the_reference(flavour, classes, host_kernels, query_len, past_len, outputs, dtype):
    trt = flavour.module
    g = torch.Generator().manual_seed(query_len * 10 + past_len)
    t = TORCH_TYPES[dtype]
    rand = lambda *shape: torch.randn(*shape, generator=g).to(t)  # noqa: E731
    key_len = past_len + query_len
    query = rand(BATCH, query_len, HEADS * HEAD_DIM)
    key, value = rand(BATCH, query_len, KV_HEADS * HEAD_DIM), rand(BATCH, query_len, KV_HEADS * HEAD_DIM)
    past_key, past_value = rand(BATCH, KV_HEADS, past_len, HEAD_DIM), rand(BATCH, KV_HEADS, past_len, HEAD_DIM)
    mask = torch.ones(BATCH, key_len, dtype=torch.int64)
    mask[1, :2] = 0  # left padding in row 1
    attrs = dict(num_heads=HEADS, kv_num_heads=KV_HEADS, scale=HEAD_DIM**-0.5)
    expected = reference.producer_attention(query, key, value, past_key, past_value, mask, **attrs,
                                            probs_max_query_len=PROBS_MAX)  # fmt: skip
    producer = classes.producer(AttentionFields(**attrs, probs_max_query_len=PROBS_MAX, num_outputs=outputs))
    results = [torch.full_like(e, float("nan")) for e in expected[:outputs]]
    _enqueue(trt, producer, [query, key, value, past_key, past_value, mask], results)
    tolerance = 2e-5 if dtype == "float32" else 4e-3
    for name, actual, wanted in zip(PRODUCER_NAMES, results, expected):
        torch.testing.assert_close(actual.float(), wanted.float(), atol=tolerance, rtol=tolerance, msg=name)
    emits_probs = outputs == 5 and query_len <= PROBS_MAX
    assert (host_kernels.calls[-1][1] is not None) == emits_probs  # NULL: no P to write
    assert (host_kernels.calls[-1][2] is not None) == (outputs == 5)
    if outputs < 5:
        return

    consumer_value = rand(BATCH, query_len, KV_HEADS * HEAD_DIM)
    consumer_past = rand(BATCH, KV_HEADS, past_len, HEAD_DIM)
    shared = (expected[3], expected[4], query, expected[1])
    wanted = reference.consumer_attention(consumer_value, consumer_past, mask, *shared, **attrs)
    consumer = classes.consumer(AttentionFields(**attrs, num_outputs=2))
    results = [torch.full_like(w, float("nan")) for w in wanted]
    _enqueue(trt, consumer, [consumer_value, consumer_past, mask, *shared], results)
    for name, actual, want in zip(("output", "present_value"), results, wanted):
        torch.testing.assert_close(actual.float(), want.float(), atol=tolerance, rtol=tolerance, msg=name)
    # Decode reuses the producer's P; prefill (P emitted as (..., 0)) recomputes it.
    assert (host_kernels.calls[-1][1] is not None) == emits_probs


def test_enqueue_reports_a_refused_launch(flavour, classes, host_kernels):
    """A status other than UA_OK becomes an exception with the kernel's own message (the
    Python plugin's way to make TensorRT fail the enqueue)."""
    trt = flavour.module
    producer = classes.producer(AttentionFields(num_heads=4, kv_num_heads=2, scale=0.3, num_outputs=3))
    query, new_kv = torch.zeros(1, 2, 4 * 8), torch.zeros(1, 2, 2 * 8)
    past = torch.zeros(1, 2, 3, 8)
    mask = torch.ones(1, 5, dtype=torch.int64)
    outputs = [torch.zeros(1, 2, 32), torch.zeros(1, 2, 5, 8), torch.zeros(1, 2, 5, 8)]
    inputs = [query, new_kv, new_kv, past, past, mask]
    pointers = [t.data_ptr() for t in inputs]
    pointers[3] = pointers[4] = 0  # a 3-token past without its buffers
    message = "ua_producer_cuda returned status 1: producer: past_len=3 but past_key/past_value is NULL"
    with pytest.raises(native.KernelError, match=message):
        producer.enqueue(_plugin_descs(trt, inputs), _plugin_descs(trt, outputs), pointers,
                         [t.data_ptr() for t in outputs], 0, 0)  # fmt: skip


@pytest.mark.parametrize("in_place", [True, False])
def test_static_enqueue_matches_the_reference(flavour, host_kernels, in_place):
    """Version 2 enqueue (CPU kernels standing in): caches of capacity C, slots from
    position_ids, rows at different positions; in place (the buffers TensorRT aliases) or
    into other buffers (then past must stay as it was). Producer and both consumer paths."""
    trt = flavour.module
    classes = plugin_classes(trt, 2)
    capacity, g = 12, torch.Generator().manual_seed(7)
    rand = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    attrs = dict(num_heads=HEADS, kv_num_heads=KV_HEADS, scale=HEAD_DIM**-0.5)
    for query_len, starts in ((1, (6, 2)), (PROBS_MAX + 1, (0, 0)), (3, (4, 1))):
        positions = torch.tensor([[s + i for i in range(query_len)] for s in starts])
        query = rand(BATCH, query_len, HEADS * HEAD_DIM)
        key, value = rand(BATCH, query_len, KV_HEADS * HEAD_DIM), rand(BATCH, query_len, KV_HEADS * HEAD_DIM)
        past_key, past_value = rand(BATCH, KV_HEADS, capacity, HEAD_DIM), rand(BATCH, KV_HEADS, capacity, HEAD_DIM)
        expected = reference.producer_attention_static(query, key, value, past_key, past_value, positions, **attrs,
                                                       probs_max_query_len=PROBS_MAX)  # fmt: skip
        before = (past_key.clone(), past_value.clone())
        present = (past_key, past_value) if in_place else (torch.full_like(past_key, float("nan")),
                                                          torch.full_like(past_value, float("nan")))  # fmt: skip
        probs_width = capacity if query_len <= PROBS_MAX else 0
        output, probs = torch.full_like(expected[0], float("nan")), torch.zeros(BATCH, HEADS, query_len, probs_width)
        lse = torch.full_like(expected[4], float("nan"))
        producer = classes.producer(AttentionFields(**attrs, probs_max_query_len=PROBS_MAX, num_outputs=5))
        _enqueue(trt, producer, [query, key, value, past_key, past_value, positions], [output, *present, probs, lse])
        written = torch.arange(capacity) <= positions[:, None, -1:, None]  # entries beyond: unspecified
        torch.testing.assert_close(output, expected[0], atol=2e-5, rtol=2e-5)
        torch.testing.assert_close(present[0], expected[1], atol=0, rtol=0)
        torch.testing.assert_close(present[1], expected[2], atol=0, rtol=0)
        torch.testing.assert_close(lse, expected[4], atol=2e-5, rtol=2e-5)
        if probs_width:
            torch.testing.assert_close(torch.where(written, probs, 0.0), expected[3], atol=2e-5, rtol=2e-5)
        if not in_place:
            assert torch.equal(past_key, before[0]) and torch.equal(past_value, before[1])
        assert host_kernels.calls[-1][1] is not None if probs_width else host_kernels.calls[-1][1] is None

        consumer_value, consumer_past = rand(BATCH, query_len, KV_HEADS * HEAD_DIM), rand(BATCH, KV_HEADS, capacity, HEAD_DIM)
        wanted = reference.consumer_attention_static(consumer_value, consumer_past, positions, expected[3], expected[4],
                                                     query, expected[1], **attrs)  # fmt: skip
        consumer_present = consumer_past if in_place else torch.full_like(consumer_past, float("nan"))
        consumer_output = torch.full_like(wanted[0], float("nan"))
        consumer = classes.consumer(AttentionFields(**attrs, num_outputs=2))
        _enqueue(trt, consumer, [consumer_value, consumer_past, positions, probs, lse, query, present[0]],
                 [consumer_output, consumer_present])  # fmt: skip
        torch.testing.assert_close(consumer_output, wanted[0], atol=2e-5, rtol=2e-5)
        torch.testing.assert_close(consumer_present, wanted[1], atol=0, rtol=0)
        # Decode reuses P (no K reads); prefill recomputes from the producer's key cache and lse.
        assert (host_kernels.calls[-1][1] is not None) == bool(probs_width)
