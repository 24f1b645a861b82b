"""The shared-softmax ops as torch custom ops, and how each becomes one ONNX node.

`torch.ops.uniattn.producer` / `torch.ops.uniattn.consumer` run the reference functions of
model/attention.py, so a model using EXPORT_OPS computes exactly what the reference model
computes. torch.export sees them as opaque calls (no decomposition), and the translation
table turns each call into a single `uniattn::UniAttnProducer` / `UniAttnConsumer` node with
the attributes of docs/ops.md. The nodes' portable definitions (model-local ONNX functions)
are in functions.py.
"""

from __future__ import annotations

from typing import TypeVar, Union

import onnxscript
import torch
from onnxscript import BFLOAT16, FLOAT, FLOAT16, INT64

from ..model import attention
from ..model.modeling import AttentionOps

DOMAIN = "uniattn"
DOMAIN_VERSION = 1
PRODUCER_OP = "UniAttnProducer"
CONSUMER_OP = "UniAttnConsumer"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "uniattn"
# The default-domain opset of every exported graph and of the function bodies: onnx.checker
# full_check rejects a function whose default-domain import differs from the model's.
ONNX_OPSET = 23

uniattn_opset = onnxscript.values.Opset(DOMAIN, DOMAIN_VERSION)

# torch.export rejects custom-op outputs that alias inputs, hence no shortcuts in the real
# implementations below: they return what the reference functions return (fresh tensors).


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


@producer_op.register_fake
def _producer_fake(
    query, key, value, past_key, past_value, attention_mask,
    num_heads, kv_num_heads, scale, is_causal, sliding_window, probs_max_query_len,
):  # fmt: skip
    batch, query_len, _ = query.shape
    head_dim = past_key.shape[3]
    key_len = past_key.shape[2] + query_len
    # shared_probs is (B, Hq, L, S) in decode and (B, Hq, L, 0) in long prefill. Deciding it
    # here would make torch.export guard on L and specialize the graph to one of the two, so
    # its width is an unbacked size: known only when the op runs.
    probs_width = torch.library.get_ctx().new_dynamic_size()
    cache_shape = (batch, kv_num_heads, key_len, head_dim)
    return (
        query.new_empty(batch, query_len, num_heads * head_dim),
        past_key.new_empty(cache_shape),
        past_value.new_empty(cache_shape),
        query.new_empty(batch, num_heads, query_len, probs_width),
        query.new_empty(batch, num_heads, query_len, dtype=torch.float32),
    )


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


@consumer_op.register_fake
def _consumer_fake(
    value, past_value, attention_mask, shared_probs, shared_lse, producer_query, producer_key,
    num_heads, kv_num_heads, scale, is_causal, sliding_window,
):  # fmt: skip
    batch, query_len, _ = value.shape
    head_dim = past_value.shape[3]
    key_len = past_value.shape[2] + query_len
    return (
        value.new_empty(batch, query_len, num_heads * head_dim),
        past_value.new_empty(batch, kv_num_heads, key_len, head_dim),
    )


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


# What the exporter plugs into `model.attention_ops`: same signatures as the reference.
EXPORT_OPS = AttentionOps(producer=_export_producer, consumer=_export_consumer)


# --- translation to ONNX nodes ----------------------------------------------------------------
# The exporter inlines these onnxscript functions into the graph, leaving one custom node per
# call. Type annotations (inputs and return) are required by the exporter's dispatcher.

T = TypeVar("T", bound=Union[FLOAT, FLOAT16, BFLOAT16])


@onnxscript.script(opset=uniattn_opset)
def _producer_node(
    query: T, key: T, value: T, past_key: T, past_value: T, attention_mask: INT64,
    num_heads: int, kv_num_heads: int, scale: float, is_causal: bool, sliding_window: int,
    probs_max_query_len: int,
) -> tuple[T, T, T, T, FLOAT]:  # fmt: skip
    output, present_key, present_value, shared_probs, shared_lse = uniattn_opset.UniAttnProducer(
        query, key, value, past_key, past_value, attention_mask,
        num_heads=num_heads, kv_num_heads=kv_num_heads, scale=scale, is_causal=is_causal,
        sliding_window=sliding_window, probs_max_query_len=probs_max_query_len,
        plugin_version="1", plugin_namespace="uniattn",
    )  # fmt: skip
    return output, present_key, present_value, shared_probs, shared_lse


@onnxscript.script(opset=uniattn_opset)
def _consumer_node(
    value: T, past_value: T, attention_mask: INT64, shared_probs: T, shared_lse: FLOAT,
    producer_query: T, producer_key: T,
    num_heads: int, kv_num_heads: int, scale: float, is_causal: bool, sliding_window: int,
) -> tuple[T, T]:  # fmt: skip
    output, present_value = uniattn_opset.UniAttnConsumer(
        value, past_value, attention_mask, shared_probs, shared_lse, producer_query, producer_key,
        num_heads=num_heads, kv_num_heads=kv_num_heads, scale=scale, is_causal=is_causal,
        sliding_window=sliding_window, plugin_version="1", plugin_namespace="uniattn",
    )  # fmt: skip
    return output, present_value


TRANSLATION_TABLE = {
    torch.ops.uniattn.producer.default: _producer_node,
    torch.ops.uniattn.consumer.default: _consumer_node,
}
