"""The shared-softmax ops as torch custom ops, and how each becomes one ONNX node.

Two contract versions (docs/ops.md, op_schema.json): v1 (`torch.ops.uniattn.producer` /
`consumer`, growing caches, visibility from attention_mask) and v2 (`producer_static` /
`consumer_static`, fixed-capacity caches, slot = position). They run the reference functions
of model/attention.py, so a model using these ops computes exactly what the reference model
computes. torch.export sees them as opaque calls (no decomposition), and the translation
tables turn each call into a single `uniattn::UniAttnProducer` / `UniAttnConsumer` node with
the attributes of its version. Names, versions, argument order and defaults come from the
schema (schema.py); tests/export/test_schema.py holds everything here equal to it. The nodes'
portable definitions (model-local ONNX functions) are in functions.py.
"""

from __future__ import annotations

from typing import TypeVar, Union

import onnxscript
import torch
from onnxscript import BFLOAT16, FLOAT, FLOAT16, INT64

from ..model import attention
from ..model.modeling import AttentionOps
from .schema import DOMAIN, SCHEMA

V1 = SCHEMA.versions[1]
V2 = SCHEMA.versions[2]
CONTRACTS = {v.cache: v for v in (V1, V2)}  # cache mode -> contract version
# The default-domain opset of every exported graph and of the function bodies: onnx.checker
# full_check rejects a function whose default-domain import differs from the model's.
ONNX_OPSET = V1.onnx_opset
assert V2.onnx_opset == ONNX_OPSET  # noqa: S101 - one set of helper bodies serves both versions
# Attributes that only route the node (TensorRT plugin lookup): no torch argument carries them.
ROUTING_ATTRIBUTES = ("plugin_version", "plugin_namespace")

uniattn_opsets = {v.version: onnxscript.values.Opset(DOMAIN, v.version) for v in (V1, V2)}
_v1 = uniattn_opsets[1]
_v2 = uniattn_opsets[2]

# torch.export rejects custom-op outputs that alias inputs, hence no shortcuts in the real
# implementations below: they return what the reference functions return (fresh tensors).


# --- version 1: growing caches ----------------------------------------------------------------


@torch.library.custom_op("uniattn::producer", mutates_args=())
def producer_op(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    past_key: torch.Tensor,
    past_value: torch.Tensor,
    attention_mask: torch.Tensor,
    num_heads: int,
    kv_num_heads: int,
    scale: float,
    is_causal: bool,
    sliding_window: int,
    probs_max_query_len: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return attention.producer_attention(
        query, key, value, past_key, past_value, attention_mask,
        num_heads=num_heads, kv_num_heads=kv_num_heads, scale=scale, is_causal=is_causal,
        sliding_window=sliding_window, probs_max_query_len=probs_max_query_len,
    )  # fmt: skip


def _producer_outputs(query, past_key, num_heads, kv_num_heads, cache_len):
    batch, query_len, _ = query.shape
    head_dim = past_key.shape[3]
    # shared_probs is (B, Hq, L, S|C) in decode and (B, Hq, L, 0) in long prefill. Deciding it
    # here would make torch.export guard on L and specialize the graph to one of the two, so
    # its width is an unbacked size: known only when the op runs.
    probs_width = torch.library.get_ctx().new_dynamic_size()
    cache_shape = (batch, kv_num_heads, cache_len, head_dim)
    return (
        query.new_empty(batch, query_len, num_heads * head_dim),
        past_key.new_empty(cache_shape),
        past_key.new_empty(cache_shape),
        query.new_empty(batch, num_heads, query_len, probs_width),
        query.new_empty(batch, num_heads, query_len, dtype=torch.float32),
    )


@producer_op.register_fake
def _producer_fake(
    query, key, value, past_key, past_value, attention_mask,
    num_heads, kv_num_heads, scale, is_causal, sliding_window, probs_max_query_len,
):  # fmt: skip
    return _producer_outputs(query, past_key, num_heads, kv_num_heads, past_key.shape[2] + query.shape[1])


@torch.library.custom_op("uniattn::consumer", mutates_args=())
def consumer_op(
    value: torch.Tensor,
    past_value: torch.Tensor,
    attention_mask: torch.Tensor,
    shared_probs: torch.Tensor,
    shared_lse: torch.Tensor,
    producer_query: torch.Tensor,
    producer_key: torch.Tensor,
    num_heads: int,
    kv_num_heads: int,
    scale: float,
    is_causal: bool,
    sliding_window: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    return attention.consumer_attention(
        value, past_value, attention_mask, shared_probs, shared_lse, producer_query, producer_key,
        num_heads=num_heads, kv_num_heads=kv_num_heads, scale=scale, is_causal=is_causal,
        sliding_window=sliding_window,
    )  # fmt: skip


def _consumer_outputs(value, past_value, num_heads, kv_num_heads, cache_len):
    batch, query_len, _ = value.shape
    head_dim = past_value.shape[3]
    return (
        value.new_empty(batch, query_len, num_heads * head_dim),
        past_value.new_empty(batch, kv_num_heads, cache_len, head_dim),
    )


@consumer_op.register_fake
def _consumer_fake(
    value, past_value, attention_mask, shared_probs, shared_lse, producer_query, producer_key,
    num_heads, kv_num_heads, scale, is_causal, sliding_window,
):  # fmt: skip
    return _consumer_outputs(value, past_value, num_heads, kv_num_heads, past_value.shape[2] + value.shape[1])


# --- version 2: fixed-capacity caches, slot = position ----------------------------------------


@torch.library.custom_op("uniattn::producer_static", mutates_args=())
def producer_static_op(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    past_key: torch.Tensor,
    past_value: torch.Tensor,
    position_ids: torch.Tensor,
    num_heads: int,
    kv_num_heads: int,
    scale: float,
    sliding_window: int,
    probs_max_query_len: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return attention.producer_attention_static(
        query, key, value, past_key, past_value, position_ids,
        num_heads=num_heads, kv_num_heads=kv_num_heads, scale=scale,
        sliding_window=sliding_window, probs_max_query_len=probs_max_query_len,
    )  # fmt: skip


@producer_static_op.register_fake
def _producer_static_fake(
    query, key, value, past_key, past_value, position_ids,
    num_heads, kv_num_heads, scale, sliding_window, probs_max_query_len,
):  # fmt: skip
    return _producer_outputs(query, past_key, num_heads, kv_num_heads, past_key.shape[2])


@torch.library.custom_op("uniattn::consumer_static", mutates_args=())
def consumer_static_op(
    value: torch.Tensor,
    past_value: torch.Tensor,
    position_ids: torch.Tensor,
    shared_probs: torch.Tensor,
    shared_lse: torch.Tensor,
    producer_query: torch.Tensor,
    producer_key: torch.Tensor,
    num_heads: int,
    kv_num_heads: int,
    scale: float,
    sliding_window: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    return attention.consumer_attention_static(
        value, past_value, position_ids, shared_probs, shared_lse, producer_query, producer_key,
        num_heads=num_heads, kv_num_heads=kv_num_heads, scale=scale, sliding_window=sliding_window,
    )  # fmt: skip


@consumer_static_op.register_fake
def _consumer_static_fake(
    value, past_value, position_ids, shared_probs, shared_lse, producer_query, producer_key,
    num_heads, kv_num_heads, scale, sliding_window,
):  # fmt: skip
    return _consumer_outputs(value, past_value, num_heads, kv_num_heads, past_value.shape[2])


# --- what the exporter plugs into `model.attention_ops`: the reference signatures -------------


def _export_producer(
    query, key, value, past_key, past_value, attention_mask, *,
    num_heads, kv_num_heads, scale, is_causal=True, sliding_window=0,
    probs_max_query_len=attention.DEFAULT_PROBS_MAX_QUERY_LEN,
):  # fmt: skip
    return producer_op(
        query, key, value, past_key, past_value, attention_mask,
        num_heads, kv_num_heads, float(scale), bool(is_causal), int(sliding_window),
        int(probs_max_query_len),
    )  # fmt: skip


def _export_consumer(
    value, past_value, attention_mask, shared_probs, shared_lse, producer_query, producer_key, *,
    num_heads, kv_num_heads, scale, is_causal=True, sliding_window=0,
):  # fmt: skip
    return consumer_op(
        value, past_value, attention_mask, shared_probs, shared_lse, producer_query, producer_key,
        num_heads, kv_num_heads, float(scale), bool(is_causal), int(sliding_window),
    )  # fmt: skip


def _export_producer_static(
    query, key, value, past_key, past_value, position_ids, *,
    num_heads, kv_num_heads, scale, sliding_window=0,
    probs_max_query_len=attention.DEFAULT_PROBS_MAX_QUERY_LEN,
):  # fmt: skip
    return producer_static_op(
        query, key, value, past_key, past_value, position_ids,
        num_heads, kv_num_heads, float(scale), int(sliding_window), int(probs_max_query_len),
    )  # fmt: skip


def _export_consumer_static(
    value, past_value, position_ids, shared_probs, shared_lse, producer_query, producer_key, *,
    num_heads, kv_num_heads, scale, sliding_window=0,
):  # fmt: skip
    return consumer_static_op(
        value, past_value, position_ids, shared_probs, shared_lse, producer_query, producer_key,
        num_heads, kv_num_heads, float(scale), int(sliding_window),
    )  # fmt: skip


EXPORT_OPS = {
    "dynamic": AttentionOps(producer=_export_producer, consumer=_export_consumer),
    "static": AttentionOps(producer=_export_producer_static, consumer=_export_consumer_static, cache="static"),
}
TORCH_OPS = {  # contract version -> (producer, consumer) torch custom ops
    1: (torch.ops.uniattn.producer.default, torch.ops.uniattn.consumer.default),
    2: (torch.ops.uniattn.producer_static.default, torch.ops.uniattn.consumer_static.default),
}


# --- translation to ONNX nodes ----------------------------------------------------------------
# The exporter inlines these onnxscript functions into the graph, leaving one custom node per
# call. Type annotations (inputs and return) are required by the exporter's dispatcher.
# onnxscript needs attribute values as literals, hence the routing attributes spelled out;
# the schema test checks them against op_schema.json.

T = TypeVar("T", bound=Union[FLOAT, FLOAT16, BFLOAT16])


@onnxscript.script(opset=_v1)
def _producer_node(
    query: T, key: T, value: T, past_key: T, past_value: T, attention_mask: INT64,
    num_heads: int, kv_num_heads: int, scale: float, is_causal: bool, sliding_window: int,
    probs_max_query_len: int,
) -> tuple[T, T, T, T, FLOAT]:  # fmt: skip
    output, present_key, present_value, shared_probs, shared_lse = _v1.UniAttnProducer(
        query, key, value, past_key, past_value, attention_mask,
        num_heads=num_heads, kv_num_heads=kv_num_heads, scale=scale, is_causal=is_causal,
        sliding_window=sliding_window, probs_max_query_len=probs_max_query_len,
        plugin_version="1", plugin_namespace="uniattn",
    )  # fmt: skip
    return output, present_key, present_value, shared_probs, shared_lse


@onnxscript.script(opset=_v1)
def _consumer_node(
    value: T, past_value: T, attention_mask: INT64, shared_probs: T, shared_lse: FLOAT,
    producer_query: T, producer_key: T,
    num_heads: int, kv_num_heads: int, scale: float, is_causal: bool, sliding_window: int,
) -> tuple[T, T]:  # fmt: skip
    output, present_value = _v1.UniAttnConsumer(
        value, past_value, attention_mask, shared_probs, shared_lse, producer_query, producer_key,
        num_heads=num_heads, kv_num_heads=kv_num_heads, scale=scale, is_causal=is_causal,
        sliding_window=sliding_window, plugin_version="1", plugin_namespace="uniattn",
    )  # fmt: skip
    return output, present_value


@onnxscript.script(opset=_v2)
def _producer_static_node(
    query: T, key: T, value: T, past_key: T, past_value: T, position_ids: INT64,
    num_heads: int, kv_num_heads: int, scale: float, sliding_window: int, probs_max_query_len: int,
) -> tuple[T, T, T, T, FLOAT]:  # fmt: skip
    output, present_key, present_value, shared_probs, shared_lse = _v2.UniAttnProducer(
        query, key, value, past_key, past_value, position_ids,
        num_heads=num_heads, kv_num_heads=kv_num_heads, scale=scale,
        sliding_window=sliding_window, probs_max_query_len=probs_max_query_len,
        plugin_version="2", plugin_namespace="uniattn",
    )  # fmt: skip
    return output, present_key, present_value, shared_probs, shared_lse


@onnxscript.script(opset=_v2)
def _consumer_static_node(
    value: T, past_value: T, position_ids: INT64, shared_probs: T, shared_lse: FLOAT,
    producer_query: T, producer_key: T,
    num_heads: int, kv_num_heads: int, scale: float, sliding_window: int,
) -> tuple[T, T]:  # fmt: skip
    output, present_value = _v2.UniAttnConsumer(
        value, past_value, position_ids, shared_probs, shared_lse, producer_query, producer_key,
        num_heads=num_heads, kv_num_heads=kv_num_heads, scale=scale,
        sliding_window=sliding_window, plugin_version="2", plugin_namespace="uniattn",
    )  # fmt: skip
    return output, present_value


NODE_FUNCTIONS = {  # contract version -> (producer, consumer) translations
    1: (_producer_node, _consumer_node),
    2: (_producer_static_node, _consumer_static_node),
}
TRANSLATION_TABLES = {
    version: dict(zip(TORCH_OPS[version], NODE_FUNCTIONS[version])) for version in NODE_FUNCTIONS
}
