"""Shared-softmax attention in plain PyTorch: the executable form of docs/ops.md.

These two functions define what the producer and consumer ops compute. The reference model
calls them, the ONNX exporter wraps them as custom ops, and every kernel (CPU, CUDA, the
TensorRT plugin) is tested against them. They favour clarity over speed: scores and
probabilities are materialized in float32.

Layouts (B batch, L new tokens, P past tokens, S = P + L, Hq/Hkv heads, D head_dim):
  query              (B, L, Hq*D)   post-RoPE, as it leaves q_proj
  key, value         (B, L, Hkv*D)  key post-RoPE
  past_*, present_*  (B, Hkv, P|S, D)
  attention_mask     (B, S) int64, 1 = real token, 0 = padding
  output             (B, L, Hq*D)   ready for o_proj
  shared_probs       (B, Hq, L, S) when L <= probs_max_query_len, else (B, Hq, L, 0)
  shared_lse         (B, Hq, L) float32, +inf for rows that see no key
"""

from __future__ import annotations

import torch

DEFAULT_PROBS_MAX_QUERY_LEN = 16


def visible_keys(
    attention_mask: torch.Tensor, query_len: int, is_causal: bool, sliding_window: int
) -> torch.Tensor:
    """(B, 1, L, S) bool: may query row i (absolute position S - L + i) attend to key j?"""
    key_len = attention_mask.shape[-1]
    past_len = key_len - query_len
    query_pos = torch.arange(query_len, device=attention_mask.device)[:, None] + past_len
    key_pos = torch.arange(key_len, device=attention_mask.device)[None, :]
    visible = attention_mask[:, None, None, :].bool()
    if is_causal:
        visible = visible & (key_pos <= query_pos)
    if sliding_window > 0:
        visible = visible & (query_pos - key_pos < sliding_window)
    return visible


def _heads_first(packed: torch.Tensor, num_heads: int) -> torch.Tensor:
    batch, length, width = packed.shape
    return packed.view(batch, length, num_heads, width // num_heads).transpose(1, 2)


def _heads_packed(per_head: torch.Tensor) -> torch.Tensor:
    batch, heads, length, dim = per_head.shape
    return per_head.transpose(1, 2).reshape(batch, length, heads * dim)


def _scores(query, present_key, num_heads, kv_num_heads, scale) -> torch.Tensor:
    """float32 (B, Hq, L, S); query head h reads KV head h // (Hq / Hkv)."""
    q = _heads_first(query, num_heads).float()
    k = present_key.float().repeat_interleave(num_heads // kv_num_heads, dim=1)
    return (q @ k.transpose(-1, -2)) * scale


def _apply_probs(probs, present_value, num_heads, kv_num_heads, dtype) -> torch.Tensor:
    v = present_value.float().repeat_interleave(num_heads // kv_num_heads, dim=1)
    return _heads_packed(probs.float() @ v).to(dtype)


def _append(past: torch.Tensor, new_packed: torch.Tensor, kv_num_heads: int) -> torch.Tensor:
    return torch.cat([past, _heads_first(new_packed, kv_num_heads).to(past.dtype)], dim=2)


def _emitted_probs(probs: torch.Tensor, query: torch.Tensor, probs_max_query_len: int) -> torch.Tensor:
    """shared_probs as the producer hands them on: all of them in the query's dtype for calls of
    at most probs_max_query_len new tokens, an empty (B, Hq, L, 0) tensor for longer ones."""
    if query.shape[1] <= probs_max_query_len:
        return probs.to(query.dtype)
    return probs.new_empty((*probs.shape[:3], 0), dtype=query.dtype)


def producer_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    past_key: torch.Tensor,
    past_value: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    num_heads: int,
    kv_num_heads: int,
    scale: float,
    is_causal: bool = True,
    sliding_window: int = 0,
    probs_max_query_len: int = DEFAULT_PROBS_MAX_QUERY_LEN,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attention that also emits the state its consumers share.

    Returns (output, present_key, present_value, shared_probs, shared_lse).
    """
    query_len = query.shape[1]
    present_key = _append(past_key, key, kv_num_heads)
    present_value = _append(past_value, value, kv_num_heads)
    scores = _scores(query, present_key, num_heads, kv_num_heads, scale)
    visible = visible_keys(attention_mask, query_len, is_causal, sliding_window)
    scores = scores.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    row_sees_a_key = torch.isfinite(lse)
    # torch.softmax (not exp(s - lse)) so that a model without consumers reproduces
    # transformers' eager attention bit for bit.
    probs = torch.where(row_sees_a_key[..., None], torch.softmax(scores, dim=-1), 0.0)
    lse = torch.where(row_sees_a_key, lse, float("inf"))
    output = _apply_probs(probs, present_value, num_heads, kv_num_heads, query.dtype)
    return output, present_key, present_value, _emitted_probs(probs, query, probs_max_query_len), lse


def consumer_attention(
    value: torch.Tensor,
    past_value: torch.Tensor,
    attention_mask: torch.Tensor,
    shared_probs: torch.Tensor,
    shared_lse: torch.Tensor,
    producer_query: torch.Tensor,
    producer_key: torch.Tensor,
    *,
    num_heads: int,
    kv_num_heads: int,
    scale: float,
    is_causal: bool = True,
    sliding_window: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the producer's probabilities to this layer's own values.

    With shared_probs present (decode) they are used as they are; otherwise (prefill) they
    are recomputed exactly from the producer's post-RoPE queries, its key cache and its
    log-sum-exp. Returns (output, present_value).
    """
    present_value = _append(past_value, value, kv_num_heads)
    key_len = present_value.shape[2]
    if shared_probs.shape[-1] == key_len:
        probs = shared_probs
    else:
        scores = _scores(producer_query, producer_key, num_heads, kv_num_heads, scale)
        visible = visible_keys(attention_mask, value.shape[1], is_causal, sliding_window)
        probs = torch.where(visible, torch.exp(scores - shared_lse[..., None]), 0.0)
    output = _apply_probs(probs, present_value, num_heads, kv_num_heads, value.dtype)
    return output, present_value


# --- version 2: fixed-capacity caches written in place (docs/ops.md, last section) ---------
# Caches are (B, Hkv, C, D); new token i of row b goes to slot position_ids[b, i]; slot j is
# visible to it iff j <= p (and p - j < sliding_window). These return fresh present tensors:
# torch.export rejects custom-op outputs that alias inputs, and the runtime's aliasing (one
# buffer bound as past and present) is invisible to the result.


def visible_slots(position_ids: torch.Tensor, capacity: int, sliding_window: int) -> torch.Tensor:
    """(B, 1, L, C) bool: may query (b, i) at position p = position_ids[b, i] read slot j?"""
    query_pos = position_ids[:, None, :, None]
    slot = torch.arange(capacity, device=position_ids.device)
    visible = slot <= query_pos
    if sliding_window > 0:
        visible = visible & (query_pos - slot < sliding_window)
    return visible


def _write_slots(cache: torch.Tensor, new_packed: torch.Tensor, position_ids: torch.Tensor, kv_num_heads: int):
    """A copy of `cache` (B, Hkv, C, D) with new_packed (B, L, Hkv*D) written at the slots."""
    new = _heads_first(new_packed, kv_num_heads).to(cache.dtype)  # (B, Hkv, L, D)
    index = position_ids[:, None, :, None].expand(-1, new.shape[1], -1, new.shape[3])
    return cache.scatter(2, index, new)


def producer_attention_static(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    past_key: torch.Tensor,
    past_value: torch.Tensor,
    position_ids: torch.Tensor,
    *,
    num_heads: int,
    kv_num_heads: int,
    scale: float,
    sliding_window: int = 0,
    probs_max_query_len: int = DEFAULT_PROBS_MAX_QUERY_LEN,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Version 2 of the producer: (output, present_key, present_value, shared_probs, shared_lse)
    with caches of capacity C; shared_probs is (B, Hq, L, C) or (B, Hq, L, 0)."""
    present_key = _write_slots(past_key, key, position_ids, kv_num_heads)
    present_value = _write_slots(past_value, value, position_ids, kv_num_heads)
    scores = _scores(query, present_key, num_heads, kv_num_heads, scale)
    visible = visible_slots(position_ids, present_key.shape[2], sliding_window)
    # Slot p itself is always visible, so every row sees a key: no empty-row handling.
    scores = scores.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.softmax(scores, dim=-1)
    output = _apply_probs(probs, present_value, num_heads, kv_num_heads, query.dtype)
    return output, present_key, present_value, _emitted_probs(probs, query, probs_max_query_len), lse


def consumer_attention_static(
    value: torch.Tensor,
    past_value: torch.Tensor,
    position_ids: torch.Tensor,
    shared_probs: torch.Tensor,
    shared_lse: torch.Tensor,
    producer_query: torch.Tensor,
    producer_key: torch.Tensor,
    *,
    num_heads: int,
    kv_num_heads: int,
    scale: float,
    sliding_window: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Version 2 of the consumer: (output, present_value). Decode reads the producer's
    probabilities of the visible slots only (the others are unspecified); prefill recomputes
    them from its queries, key cache and lse."""
    present_value = _write_slots(past_value, value, position_ids, kv_num_heads)
    capacity = present_value.shape[2]
    visible = visible_slots(position_ids, capacity, sliding_window)
    if shared_probs.shape[-1] == capacity:
        probs = torch.where(visible, shared_probs.float(), 0.0)
    else:
        scores = _scores(producer_query, producer_key, num_heads, kv_num_heads, scale)
        probs = torch.where(visible, torch.exp(scores - shared_lse[..., None]), 0.0)
    output = _apply_probs(probs, present_value, num_heads, kv_num_heads, value.dtype)
    return output, present_value
