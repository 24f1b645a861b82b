"""The model-local function bodies (the portable definition of the two ops) against the
PyTorch reference of docs/ops.md, run by plain onnxruntime and by onnx.reference."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from uniattn_export.export.functions import function_protos
from uniattn_export.export.ops import ONNX_OPSET
from uniattn_export.export.schema import CONSUMER_OP, DOMAIN, PRODUCER_OP
from uniattn_export.model import attention

ONNX_TYPE = {torch.float32: TensorProto.FLOAT, torch.float16: TensorProto.FLOAT16}
PRODUCER_OUT = ("output", "present_key", "present_value", "shared_probs", "shared_lse")


def _graph(dtype, attrs: dict, probs_max_query_len: int) -> onnx.ModelProto:
    """producer -> consumer, the consumer applying the producer's state to its own values."""
    t = ONNX_TYPE[dtype]
    rank = {"attention_mask": 2, "shared_lse": 3, **dict.fromkeys(("query", "key", "value", "c_value", "output", "c_output"), 3)}

    def info(name, elem_type=t):
        return helper.make_tensor_value_info(name, elem_type, [None] * rank.get(name, 4))

    inputs = [info(n) for n in ("query", "key", "value", "past_key", "past_value", "c_value", "c_past_value")]
    inputs.append(info("attention_mask", TensorProto.INT64))
    producer = helper.make_node(
        PRODUCER_OP, ["query", "key", "value", "past_key", "past_value", "attention_mask"],
        list(PRODUCER_OUT), domain=DOMAIN, probs_max_query_len=probs_max_query_len,
        plugin_version="1", plugin_namespace="uniattn", **attrs,
    )  # fmt: skip
    consumer = helper.make_node(
        CONSUMER_OP,
        ["c_value", "c_past_value", "attention_mask", "shared_probs", "shared_lse", "query", "present_key"],
        ["c_output", "c_present_value"], domain=DOMAIN, **attrs,
    )  # fmt: skip
    outputs = [info(n, TensorProto.FLOAT if n == "shared_lse" else t) for n in (*PRODUCER_OUT, "c_output", "c_present_value")]
    model = helper.make_model(
        helper.make_graph([producer, consumer], "ops", inputs, outputs),
        opset_imports=[helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid(DOMAIN, 1)],
        functions=function_protos(),
        ir_version=10,  # what the exporter writes; onnxruntime 1.31 reads up to 13
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def _case(batch, query_len, past_len, hq, hkv, head_dim, dtype, padding, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return (torch.randn(*shape, generator=g) * 2).to(dtype)

    tensors = {
        "query": rand(batch, query_len, hq * head_dim), "key": rand(batch, query_len, hkv * head_dim),
        "value": rand(batch, query_len, hkv * head_dim),
        "past_key": rand(batch, hkv, past_len, head_dim), "past_value": rand(batch, hkv, past_len, head_dim),
        "c_value": rand(batch, query_len, hkv * head_dim), "c_past_value": rand(batch, hkv, past_len, head_dim),
    }  # fmt: skip
    mask = torch.ones(batch, past_len + query_len, dtype=torch.int64)
    for row, pad in enumerate(padding):
        mask[row, :pad] = 0
    tensors["attention_mask"] = mask
    return tensors


def _expected(t, attrs, probs_max_query_len):
    produced = attention.producer_attention(
        t["query"], t["key"], t["value"], t["past_key"], t["past_value"], t["attention_mask"],
        probs_max_query_len=probs_max_query_len, **attrs,
    )  # fmt: skip
    consumed = attention.consumer_attention(
        t["c_value"], t["c_past_value"], t["attention_mask"], produced[3], produced[4], t["query"], produced[1], **attrs
    )
    return dict(zip((*PRODUCER_OUT, "c_output", "c_present_value"), (*produced, *consumed)))


CASES = {
    # name: (batch, L, P, Hq, Hkv, D, padding per row, is_causal, sliding_window, probs_max_query_len)
    "prefill_left_padding_gqa": (3, 6, 0, 4, 2, 8, (0, 2, 5), 1, 0, 16),
    "long_prefill_no_probs": (2, 6, 0, 4, 2, 8, (0, 3), 1, 0, 4),
    "decode_reuses_probs": (2, 1, 7, 4, 1, 16, (0, 4), 1, 0, 16),
    "chunk_over_cache": (2, 3, 5, 2, 2, 8, (1, 0), 1, 0, 16),
    "sliding_window": (2, 5, 4, 4, 2, 8, (0, 2), 1, 3, 16),
    "not_causal": (2, 4, 2, 2, 1, 8, (0, 1), 0, 0, 16),
    "fully_padded_row": (2, 4, 0, 2, 2, 8, (0, 4), 1, 0, 16),
}


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
def test_function_bodies_match_the_reference(name, dtype):
    batch, length, past, hq, hkv, d, padding, causal, window, probs_max = CASES[name]
    attrs = dict(num_heads=hq, kv_num_heads=hkv, scale=d**-0.5, is_causal=causal, sliding_window=window)
    model = _graph(dtype, attrs, probs_max)
    tensors = _case(batch, length, past, hq, hkv, d, dtype, padding)
    expected = _expected(tensors, attrs, probs_max)
    feeds = {k: v.numpy() for k, v in tensors.items()}
    names = list(expected)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    for runtime, got in (("onnxruntime", session.run(names, feeds)), ("onnx.reference", ReferenceEvaluator(model).run(names, feeds))):
        for name_, value in zip(names, got):
            want = expected[name_].float().numpy()
            assert value.shape == want.shape, f"{runtime} {name_}: shape {value.shape} != {want.shape}"
            assert not np.isnan(value.astype(np.float32)).any(), f"{runtime} {name_} has NaN"
            finite = np.isfinite(want)
            assert (np.isfinite(value) == finite).all(), f"{runtime} {name_}: +inf rows differ"
            err = np.abs(value.astype(np.float32)[finite] - want[finite]).max(initial=0.0)
            assert err <= tol * max(1.0, np.abs(want[finite]).max(initial=0.0)), f"{runtime} {name_}: error {err}"


def test_shared_probs_width_follows_probs_max_query_len():
    attrs = dict(num_heads=2, kv_num_heads=1, scale=0.25, is_causal=1, sliding_window=0)
    session = ort.InferenceSession(_graph(torch.float32, attrs, 3).SerializeToString(), providers=["CPUExecutionProvider"])
    for length, width in ((3, 5), (4, 0)):
        feeds = {k: v.numpy() for k, v in _case(1, length, 2, 2, 1, 16, torch.float32, ()).items()}
        probs, lse = session.run(["shared_probs", "shared_lse"], feeds)
        assert probs.shape == (1, 2, length, width)
        assert lse.shape == (1, 2, length) and lse.dtype == np.float32


def test_fully_padded_row_is_zero_with_infinite_lse():
    attrs = dict(num_heads=2, kv_num_heads=2, scale=0.3, is_causal=1, sliding_window=0)
    feeds = {k: v.numpy() for k, v in _case(2, 3, 0, 2, 2, 8, torch.float32, (0, 3)).items()}
    session = ort.InferenceSession(_graph(torch.float32, attrs, 16).SerializeToString(), providers=["CPUExecutionProvider"])
    output, probs, lse, consumer_output = session.run(["output", "shared_probs", "shared_lse", "c_output"], feeds)
    assert (output[1] == 0).all() and (probs[1] == 0).all() and (consumer_output[1] == 0).all()
    assert np.isposinf(lse[1]).all() and np.isfinite(lse[0]).all()


def test_functions_declare_every_node_attribute_and_only_standard_ops():
    for proto in function_protos():
        declared = set(proto.attribute) | {a.name for a in proto.attribute_proto}
        assert {"num_heads", "kv_num_heads", "scale", "is_causal", "sliding_window",
                "plugin_version", "plugin_namespace"} <= declared  # fmt: skip
        assert {n.domain for n in proto.node} == {""}
        assert [(o.domain, o.version) for o in proto.opset_import] == [("", ONNX_OPSET)]
