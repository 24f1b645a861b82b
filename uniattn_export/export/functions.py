"""Portable definitions of the custom ops: model-local ONNX functions (docs/ops.md).

Attached to every exported model under the custom nodes' own domain and name, so any ONNX
runtime without our kernels (plain onnxruntime, onnx.reference, TensorRT without plugins)
inlines them. A registered kernel or plugin wins over them where present. Bodies use only
opset-23 standard ops; statistics are float32 as the contract requires. Rows that see no key
give probabilities 0, output 0 and lse +inf without producing a NaN on the way.

Version 1 bodies grow the caches with Concat; version 2 bodies copy the fixed-capacity cache
and write the new rows at slot = position with ScatterElements (TensorScatter-24 would do it
in place but needs default opset 24, and the schema pins the graph at 23), then attend over
the full capacity with the slots a query cannot see masked out. That is correct on any
runtime; it is not length-aware (the kernels are).

Two ops that are not ours get bodies too, ONNX Runtime's com.microsoft ops that export/fuse.py
puts in ONNX Runtime and onnxruntime-genai artifacts: SkipSimplifiedLayerNormalization (in
place of a residual Add and the RMSNormalization reading it) and QuickGelu (x * sigmoid(alpha
x); alpha = 1 is the SiLU of a gated MLP, in place of Sigmoid + Mul). ONNX Runtime runs its
own kernels (a registered schema wins over a model-local function there; CUDA: float32,
float16, bfloat16; CPU: float32, float16); TensorRT's parser imports the skip norm itself; a
runtime that knows neither (onnx.reference, onnx.inliner) uses the bodies.

Our graph op GatedSilu (op_schema.json's graph_ops: silu(gate) * up over the fused gate/up
projection, one node in place of Split, QuickGelu and Mul) has a body in the same way: the
custom-op library's kernel where it is registered, Split + Sigmoid + Mul elsewhere. Linear
(a projection whose weight is stored (N, K)) is registered for CUDA only: ONNX Runtime on the
CPU, like every runtime without the library, runs its body, a MatMul by the transposed weight
(a constant there, which ONNX Runtime folds once at session creation).
"""

from __future__ import annotations

import onnx
import onnx.inliner
import onnxscript
from onnxscript import opset23 as op

from .ops import ONNX_OPSET, uniattn_opsets
from .schema import CONSUMER_OP, DOMAIN, GATED_SILU_OP, LINEAR_OP, PRODUCER_OP, SPLIT_ROTARY_OP

assert op.version == ONNX_OPSET  # noqa: S101 - the bodies are written against this opset


@onnxscript.script(default_opset=op)
def _append(past, packed, kv_heads):
    """present = concat(past (B, Hkv, P, D), packed (B, L, Hkv*D) as (B, Hkv, L, D))."""
    batch_len = op.Shape(packed, start=0, end=2)
    head_dim = op.Shape(past, start=3, end=4)
    heads = op.Reshape(packed, op.Concat(batch_len, kv_heads, head_dim, axis=0))
    return op.Concat(past, op.Transpose(heads, perm=[0, 2, 1, 3]), axis=2)


@onnxscript.script(default_opset=op)
def _write_slots(past, packed, position_ids, kv_heads):
    """present = past (B, Hkv, C, D) with packed (B, L, Hkv*D) as (B, Hkv, L, D) written at
    slots position_ids (B, L) along the capacity axis."""
    batch_len = op.Shape(packed, start=0, end=2)
    head_dim = op.Shape(past, start=3, end=4)
    heads = op.Transpose(op.Reshape(packed, op.Concat(batch_len, kv_heads, head_dim, axis=0)), perm=[0, 2, 1, 3])
    slots = op.Expand(op.Unsqueeze(position_ids, [1, 3]), op.Shape(heads))
    return op.ScatterElements(past, slots, heads, axis=2)


@onnxscript.script(default_opset=op)
def _grouped_scores(query, key_cache, q_heads, kv_heads, scale):
    """float32 scale * Q K^T (B, Hkv, g, L, S) for packed queries (B, L, Hq*D) over a key
    cache (B, Hkv, S, D): query head h = kv*g + r reads KV head kv. q_heads / kv_heads are
    1-element int64 tensors."""
    batch = op.Shape(query, start=0, end=1)
    query_len = op.Shape(query, start=1, end=2)
    head_dim = op.Shape(key_cache, start=3, end=4)
    q = op.Reshape(op.Cast(query, to=1), op.Concat(batch, query_len, q_heads, head_dim, axis=0))
    q = op.Reshape(op.Transpose(q, perm=[0, 2, 1, 3]), op.Concat(batch, kv_heads, q_heads / kv_heads, query_len, head_dim, axis=0))
    k = op.Unsqueeze(op.Cast(key_cache, to=1), [2])  # (B, Hkv, 1, S, D)
    return op.MatMul(q, op.Transpose(k, perm=[0, 1, 2, 4, 3])) * scale


@onnxscript.script(default_opset=op)
def _slot_scores(query, key_cache, position_ids, q_heads, kv_heads, scale, sliding_window):
    """float32 scores (B, Hkv, g, L, C) of version 2, slots a query cannot see at -inf:
    slot j is visible to the query at position p iff j <= p (and p - j < sliding_window)."""
    capacity = op.Shape(key_cache, start=2, end=3)
    scores = _grouped_scores(query, key_cache, q_heads, kv_heads, scale)

    zero = op.Constant(value_int=0)
    one = op.Constant(value_int=1)
    query_pos = op.Unsqueeze(position_ids, [1, 2, 4])  # (B, 1, 1, L, 1)
    slot = op.Range(zero, op.Squeeze(capacity), one)  # (C,)
    causal_ok = op.LessOrEqual(slot, query_pos)
    window_ok = op.Or(op.Equal(sliding_window, zero), op.Less(query_pos - slot, sliding_window))
    return op.Where(op.And(causal_ok, window_ok), scores, op.Constant(value_float=float("-inf")))


@onnxscript.script(default_opset=op)
def _softmax_lse(masked):
    """(probs, lse) over the last axis of float32 scores with hidden keys at -inf; a row that
    sees no key gets probabilities 0 and lse +inf."""
    # Whether a row sees a key is counted from the mask, not read off ReduceMax: ReduceMax of
    # an all -inf row is -inf on the CPU provider, but a body that relied on it gave NaN logits
    # on the CUDA provider (H100), and a wrong answer here turns the row into 0/0.
    visible_keys = op.ReduceSum(op.Cast(op.Not(op.IsInf(masked, detect_positive=0)), to=1), [-1], keepdims=1)
    row_sees_a_key = op.Greater(visible_keys, op.Constant(value_float=0.0))
    row_max = op.ReduceMax(masked, [-1], keepdims=1)
    safe_max = op.Where(row_sees_a_key, row_max, op.Constant(value_float=0.0))
    exps = op.Exp(masked - safe_max)  # exp(-inf) = 0 for hidden keys
    sums = op.ReduceSum(exps, [-1], keepdims=1)
    denominators = op.Where(row_sees_a_key, sums, op.Constant(value_float=1.0))
    probs = exps / denominators
    lse = op.Where(row_sees_a_key, safe_max + op.Log(denominators), op.Constant(value_float=float("inf")))
    return probs, lse


@onnxscript.script(default_opset=op)
def _shared_state(probs, lse, query, q_heads, probs_max_query_len):
    """shared_probs (B, Hq, L, S|C) in the query's type, or (B, Hq, L, 0) above
    probs_max_query_len new tokens, and shared_lse (B, Hq, L), from (B, Hkv, g, L, S|C)."""
    batch = op.Shape(query, start=0, end=1)
    query_len = op.Shape(query, start=1, end=2)
    key_len = op.Shape(probs, start=4, end=5)
    all_probs = op.CastLike(op.Reshape(probs, op.Concat(batch, q_heads, query_len, key_len, axis=0)), query)
    shared_lse = op.Reshape(lse, op.Concat(batch, q_heads, query_len, axis=0))
    # Decode-sized calls hand their probabilities on; longer ones an empty (..., 0) tensor.
    width = op.Where(op.LessOrEqual(query_len, probs_max_query_len), key_len, op.Constant(value_ints=[0]))
    shared_probs = op.Slice(all_probs, op.Constant(value_ints=[0]), width, op.Constant(value_ints=[3]))
    return shared_probs, shared_lse


@onnxscript.script(default_opset=op)
def _masked_scores(query, key_cache, attention_mask, q_heads, kv_heads, scale, is_causal, sliding_window):
    """float32 scores (B, Hkv, g, L, S), keys hidden by docs/ops.md's visibility rule at -inf;
    the flags are int64 scalars."""
    query_len = op.Shape(query, start=1, end=2)
    key_len = op.Shape(key_cache, start=2, end=3)
    scores = _grouped_scores(query, key_cache, q_heads, kv_heads, scale)

    zero = op.Constant(value_int=0)
    one = op.Constant(value_int=1)
    last = op.Squeeze(key_len)
    query_pos = op.Unsqueeze(op.Range(last - op.Squeeze(query_len), last, one), [1])  # (L, 1)
    key_pos = op.Unsqueeze(op.Range(zero, last, one), [0])  # (1, S)
    causal_ok = op.Or(op.Equal(is_causal, zero), op.LessOrEqual(key_pos, query_pos))
    window_ok = op.Or(op.Equal(sliding_window, zero), op.Less(query_pos - key_pos, sliding_window))
    padding_ok = op.Unsqueeze(op.Not(op.Equal(attention_mask, zero)), [1, 2, 3])  # (B, 1, 1, 1, S)
    visible = op.And(padding_ok, op.And(causal_ok, window_ok))
    return op.Where(visible, scores, op.Constant(value_float=float("-inf")))


@onnxscript.script(default_opset=op)
def _apply_probs(probs, value_cache, like):
    """probs (B, Hkv, g, L, S) float32 x V (B, Hkv, S, D), accumulated in float32, returned
    packed (B, L, Hq*D) in the type of `like`."""
    out = op.MatMul(probs, op.Unsqueeze(op.Cast(value_cache, to=1), [2]))  # (B, Hkv, g, L, D)
    batch_heads = op.Shape(probs, start=0, end=1)
    query_len = op.Shape(probs, start=3, end=4)
    head_dim = op.Shape(value_cache, start=3, end=4)
    minus_one = op.Constant(value_ints=[-1])
    out = op.Reshape(out, op.Concat(batch_heads, minus_one, query_len, head_dim, axis=0))
    packed = op.Reshape(op.Transpose(out, perm=[0, 2, 1, 3]), op.Concat(batch_heads, query_len, minus_one, axis=0))
    return op.CastLike(packed, like)


@onnxscript.script(opset=uniattn_opsets[1], default_opset=op)
def UniAttnProducer(
    query, key, value, past_key, past_value, attention_mask,
    num_heads: int, kv_num_heads: int, scale: float, is_causal: int = 1,
    sliding_window: int = 0, probs_max_query_len: int = 16,
    plugin_version: str = "1", plugin_namespace: str = "uniattn",
):  # fmt: skip
    q_heads = op.Unsqueeze(op.Constant(value_int=num_heads), [0])
    kv_heads = op.Unsqueeze(op.Constant(value_int=kv_num_heads), [0])
    present_key = _append(past_key, key, kv_heads)
    present_value = _append(past_value, value, kv_heads)
    masked = _masked_scores(
        query, present_key, attention_mask, q_heads, kv_heads, op.Constant(value_float=scale),
        op.Constant(value_int=is_causal), op.Constant(value_int=sliding_window),
    )  # fmt: skip
    probs, lse = _softmax_lse(masked)
    output = _apply_probs(probs, present_value, query)
    limit = op.Unsqueeze(op.Constant(value_int=probs_max_query_len), [0])
    shared_probs, shared_lse = _shared_state(probs, lse, query, q_heads, limit)
    return output, present_key, present_value, shared_probs, shared_lse


@onnxscript.script(opset=uniattn_opsets[1], default_opset=op)
def UniAttnConsumer(
    value, past_value, attention_mask, shared_probs, shared_lse, producer_query, producer_key,
    num_heads: int, kv_num_heads: int, scale: float, is_causal: int = 1, sliding_window: int = 0,
    plugin_version: str = "1", plugin_namespace: str = "uniattn",
):  # fmt: skip
    # Always the exact recompute branch: exp(s - lse) is the producer's softmax, so it is
    # right whether or not shared_probs was emitted, and needs no data-dependent control flow.
    q_heads = op.Unsqueeze(op.Constant(value_int=num_heads), [0])
    kv_heads = op.Unsqueeze(op.Constant(value_int=kv_num_heads), [0])
    present_value = _append(past_value, value, kv_heads)
    masked = _masked_scores(
        producer_query, producer_key, attention_mask, q_heads, kv_heads, op.Constant(value_float=scale),
        op.Constant(value_int=is_causal), op.Constant(value_int=sliding_window),
    )  # fmt: skip
    lse_shape = op.Concat(op.Shape(masked, start=0, end=4), op.Constant(value_ints=[1]), axis=0)
    probs = op.Exp(masked - op.Reshape(shared_lse, lse_shape))  # hidden keys: exp(-inf) = 0
    output = _apply_probs(probs, present_value, value)
    return output, present_value


@onnxscript.script(opset=uniattn_opsets[2], default_opset=op)
def UniAttnProducerV2(
    query, key, value, past_key, past_value, position_ids,
    num_heads: int, kv_num_heads: int, scale: float, sliding_window: int = 0,
    probs_max_query_len: int = 16, plugin_version: str = "2", plugin_namespace: str = "uniattn",
):  # fmt: skip
    q_heads = op.Unsqueeze(op.Constant(value_int=num_heads), [0])
    kv_heads = op.Unsqueeze(op.Constant(value_int=kv_num_heads), [0])
    present_key = _write_slots(past_key, key, position_ids, kv_heads)
    present_value = _write_slots(past_value, value, position_ids, kv_heads)
    masked = _slot_scores(
        query, present_key, position_ids, q_heads, kv_heads, op.Constant(value_float=scale),
        op.Constant(value_int=sliding_window),
    )  # fmt: skip
    probs, lse = _softmax_lse(masked)
    output = _apply_probs(probs, present_value, query)
    limit = op.Unsqueeze(op.Constant(value_int=probs_max_query_len), [0])
    shared_probs, shared_lse = _shared_state(probs, lse, query, q_heads, limit)
    return output, present_key, present_value, shared_probs, shared_lse


@onnxscript.script(opset=uniattn_opsets[2], default_opset=op)
def UniAttnConsumerV2(
    value, past_value, position_ids, shared_probs, shared_lse, producer_query, producer_key,
    num_heads: int, kv_num_heads: int, scale: float, sliding_window: int = 0,
    plugin_version: str = "2", plugin_namespace: str = "uniattn",
):  # fmt: skip
    # Always the exact recompute branch, as in version 1.
    q_heads = op.Unsqueeze(op.Constant(value_int=num_heads), [0])
    kv_heads = op.Unsqueeze(op.Constant(value_int=kv_num_heads), [0])
    present_value = _write_slots(past_value, value, position_ids, kv_heads)
    masked = _slot_scores(
        producer_query, producer_key, position_ids, q_heads, kv_heads, op.Constant(value_float=scale),
        op.Constant(value_int=sliding_window),
    )  # fmt: skip
    lse_shape = op.Concat(op.Shape(masked, start=0, end=4), op.Constant(value_ints=[1]), axis=0)
    probs = op.Exp(masked - op.Reshape(shared_lse, lse_shape))  # hidden slots: exp(-inf) = 0
    output = _apply_probs(probs, present_value, value)
    return output, present_value


CONTRIB_DOMAIN = "com.microsoft"
SKIP_NORM_OP, SILU_OP = "SkipSimplifiedLayerNormalization", "QuickGelu"
_ort_contrib = onnxscript.values.Opset(CONTRIB_DOMAIN, 1)


@onnxscript.script(opset=_ort_contrib, default_opset=op)
def SkipSimplifiedLayerNormalization(input, skip, gamma, epsilon: float = 1e-5):
    """sum = input + skip, output = RMSNormalization(sum) * gamma (the statistics in float32),
    as ONNX Runtime defines it without the optional bias. The contrib op's outputs 1 and 2 (mean
    and 1/rms, float32, trailing axis 1) are produced because a function must define every
    output it declares; callers leave them unnamed and runtimes that inline drop them."""
    input_skip_bias_sum = op.Add(input, skip)
    output = op.RMSNormalization(input_skip_bias_sum, gamma, axis=-1, epsilon=epsilon, stash_type=1)
    wide = op.Cast(input_skip_bias_sum, to=1)
    mean_square = op.ReduceMean(wide * wide, op.Constant(value_ints=[-1]), keepdims=1)
    inv_std_var = op.Reciprocal(op.Sqrt(mean_square + op.Constant(value_float=epsilon)))
    mean = mean_square - mean_square
    return output, mean, inv_std_var, input_skip_bias_sum


@onnxscript.script(opset=_ort_contrib, default_opset=op)
def QuickGelu(X, alpha: float = 1.702):
    """Y = X * Sigmoid(alpha * X), as ONNX Runtime defines it (its default alpha included)."""
    return X * op.Sigmoid(X * op.CastLike(op.Constant(value_float=alpha), X))


_GRAPH_OPS = onnxscript.values.Opset(DOMAIN, 1)


@onnxscript.script(opset=_GRAPH_OPS, default_opset=op)
def GatedSilu(gate_up):
    """output = silu(gate) * up for gate_up = [gate | up] along the last axis: our graph op
    (op_schema.json graph_ops, docs/ops.md) in place of the MLP's Split, SiLU and Mul."""
    gate, up = op.Split(gate_up, axis=-1, num_outputs=2)
    output = gate * op.Sigmoid(gate) * up
    return output


@onnxscript.script(opset=_GRAPH_OPS, default_opset=op)
def SplitRotary(qkv, cos_cache, sin_cache, position_ids, num_heads: int, kv_num_heads: int):
    """query, key, value = the packed projection [q | k | v] split along the last axis, q and k
    rotated (RotaryEmbedding-23, non-interleaved, whole head, tables indexed by position_ids):
    our graph op (op_schema.json graph_ops, docs/ops.md) in place of that Split and the two
    RotaryEmbedding nodes."""
    head_dim = op.Shape(cos_cache, start=1, end=2) * op.Constant(value_ints=[2])
    q_width = op.Unsqueeze(op.Constant(value_int=num_heads), [0]) * head_dim
    kv_width = op.Unsqueeze(op.Constant(value_int=kv_num_heads), [0]) * head_dim
    q, k, value = op.Split(qkv, op.Concat(q_width, kv_width, kv_width, axis=0), axis=-1)
    query = op.RotaryEmbedding(q, cos_cache, sin_cache, position_ids, num_heads=num_heads)
    key = op.RotaryEmbedding(k, cos_cache, sin_cache, position_ids, num_heads=kv_num_heads)
    return query, key, value


@onnxscript.script(opset=_GRAPH_OPS, default_opset=op)
def Linear(input, weight):
    """output = input x weight^T with weight (N, K): our graph op (op_schema.json graph_ops,
    docs/ops.md) in place of a MatMul by a constant (K, N) weight."""
    output = op.MatMul(input, op.Transpose(weight, perm=[1, 0]))
    return output


_LOCAL_BODIES = {
    (CONTRIB_DOMAIN, SKIP_NORM_OP): SkipSimplifiedLayerNormalization,
    (CONTRIB_DOMAIN, SILU_OP): QuickGelu,
    (DOMAIN, GATED_SILU_OP): GatedSilu,
    (DOMAIN, SPLIT_ROTARY_OP): SplitRotary,
    (DOMAIN, LINEAR_OP): Linear,
}
LOCAL_FUNCTION_OPS = tuple(_LOCAL_BODIES)  # (domain, op type) of every graph op local_function() serves


def local_function(domain: str, name: str) -> onnx.FunctionProto:
    """The model-local body of a graph op that export/fuse.py puts in: ONNX Runtime's
    com.microsoft ops and our graph ops (module doc)."""
    proto = _LOCAL_BODIES[(domain, name)].to_function_proto()
    assert (proto.domain, proto.name) == (domain, name)  # noqa: S101
    return proto


# contract version -> (producer, consumer) bodies; the V2 names are onnxscript's, the protos
# carry the op names (function_protos renames them).
_BODIES = {1: (UniAttnProducer, UniAttnConsumer), 2: (UniAttnProducerV2, UniAttnConsumerV2)}
_HELPERS = (_append, _write_slots, _grouped_scores, _masked_scores, _slot_scores, _softmax_lse, _shared_state, _apply_probs)


def function_protos(version: int = 1) -> list[onnx.FunctionProto]:
    """The two op functions of contract `version`, helpers inlined (bodies of standard ops
    only), ready for `model.functions`."""
    helper_domain = _append.to_function_proto().domain
    bodies = []
    for function, name in zip(_BODIES[version], (PRODUCER_OP, CONSUMER_OP)):
        proto = function.to_function_proto()
        proto.name = name
        bodies.append(proto)
    holder = onnx.helper.make_model(
        onnx.helper.make_graph([], "holder", [], []),
        functions=[*bodies, *(f.to_function_proto() for f in _HELPERS)],
        opset_imports=[onnx.helper.make_opsetid("", ONNX_OPSET)],
    )
    inlined = onnx.inliner.inline_selected_functions(
        holder, [(helper_domain, f.name) for f in _HELPERS]
    )
    protos = list(inlined.functions)
    for proto in protos:
        assert proto.domain == DOMAIN  # noqa: S101 - every helper call was inlined
        kept = [imp for imp in proto.opset_import if imp.domain != helper_domain]
        del proto.opset_import[:]
        proto.opset_import.extend(kept)
    return protos
