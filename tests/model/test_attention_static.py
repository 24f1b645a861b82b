"""Version 2 of the shared-softmax ops (fixed-capacity caches, slot = position) against an
implementation written here slot by slot from docs/ops.md, independent of attention.py."""

from __future__ import annotations

import math

import pytest
import torch

from uniattn_export.model.attention import consumer_attention_static, producer_attention_static

CAPACITY = 12


def _naive(query, key, value, past_key, past_value, consumer_value, past_consumer_value, positions,
           num_heads, kv_num_heads, scale, window):  # fmt: skip
    """Loops over rows, heads and queries: (output, present_key, present_value, probs, lse,
    consumer output, consumer present_value), probs only at visible slots (0 elsewhere)."""
    batch, length, _ = query.shape
    head_dim = past_key.shape[3]
    group = num_heads // kv_num_heads
    present_key, present_value = past_key.clone(), past_value.clone()
    consumer_present = past_consumer_value.clone()
    for b in range(batch):
        for i in range(length):
            slot = int(positions[b, i])
            for h in range(kv_num_heads):
                cols = slice(h * head_dim, (h + 1) * head_dim)
                present_key[b, h, slot] = key[b, i, cols]
                present_value[b, h, slot] = value[b, i, cols]
                consumer_present[b, h, slot] = consumer_value[b, i, cols]
    output = torch.zeros(batch, length, num_heads * head_dim, dtype=torch.float64)
    consumer_output = torch.zeros_like(output)
    probs = torch.zeros(batch, num_heads, length, CAPACITY, dtype=torch.float64)
    lse = torch.zeros(batch, num_heads, length, dtype=torch.float64)
    for b in range(batch):
        for h in range(num_heads):
            kv = h // group
            for i in range(length):
                p = int(positions[b, i])
                slots = [j for j in range(CAPACITY) if j <= p and (window == 0 or p - j < window)]
                q = query[b, i, h * head_dim:(h + 1) * head_dim].double()
                s = [scale * float(q @ present_key[b, kv, j].double()) for j in slots]
                top = max(s)
                total = sum(math.exp(x - top) for x in s)
                lse[b, h, i] = top + math.log(total)
                for j, x in zip(slots, s):
                    pj = math.exp(x - top) / total
                    probs[b, h, i, j] = pj
                    output[b, i, h * head_dim:(h + 1) * head_dim] += pj * present_value[b, kv, j].double()
                    consumer_output[b, i, h * head_dim:(h + 1) * head_dim] += pj * consumer_present[b, kv, j].double()
    return output, present_key, present_value, probs, lse, consumer_output, consumer_present


@pytest.mark.parametrize("window", [0, 3])
@pytest.mark.parametrize(
    "starts, length, probs_max_query_len",
    [
        ([5, 0, 9], 1, 16),  # decode: rows at different positions, consumer reuses P
        ([0, 2, 4], 4, 16),  # short prefill/chunk: P emitted and reused
        ([0, 3, 1], 5, 2),  # long prefill: no P, consumer recomputes from Q, K and lse
    ],
)
def test_static_ops_match_slot_by_slot_reference(window, starts, length, probs_max_query_len):
    g = torch.Generator().manual_seed(7 + length + window)
    batch, num_heads, kv_num_heads, head_dim = len(starts), 4, 2, 8
    scale = head_dim**-0.5

    def rand(*shape):
        return torch.randn(*shape, generator=g)

    query, key, value = rand(batch, length, num_heads * head_dim), rand(batch, length, kv_num_heads * head_dim), rand(batch, length, kv_num_heads * head_dim)
    consumer_value = rand(batch, length, kv_num_heads * head_dim)
    # Caches full of values: whatever sits in a hidden slot must not matter.
    past_key, past_value = rand(batch, kv_num_heads, CAPACITY, head_dim), rand(batch, kv_num_heads, CAPACITY, head_dim)
    past_consumer_value = rand(batch, kv_num_heads, CAPACITY, head_dim)
    positions = torch.tensor(starts)[:, None] + torch.arange(length)[None, :]

    out, present_key, present_value, shared_probs, shared_lse = producer_attention_static(
        query, key, value, past_key, past_value, positions, num_heads=num_heads,
        kv_num_heads=kv_num_heads, scale=scale, sliding_window=window, probs_max_query_len=probs_max_query_len,
    )  # fmt: skip
    consumer_out, consumer_present = consumer_attention_static(
        consumer_value, past_consumer_value, positions, shared_probs, shared_lse, query, present_key,
        num_heads=num_heads, kv_num_heads=kv_num_heads, scale=scale, sliding_window=window,
    )  # fmt: skip
    expected = _naive(query, key, value, past_key, past_value, consumer_value, past_consumer_value,
                      positions, num_heads, kv_num_heads, scale, window)  # fmt: skip
    want_out, want_key, want_value, want_probs, want_lse, want_consumer_out, want_consumer_value = expected

    assert torch.equal(present_key, want_key) and torch.equal(present_value, want_value)
    assert torch.equal(consumer_present, want_consumer_value)
    assert not torch.equal(present_key, past_key)  # fresh tensors, the inputs untouched
    torch.testing.assert_close(out.double(), want_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared_lse.double(), want_lse, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(consumer_out.double(), want_consumer_out, atol=1e-5, rtol=1e-5)
    if length <= probs_max_query_len:
        assert shared_probs.shape == (batch, num_heads, length, CAPACITY)
        torch.testing.assert_close(shared_probs.double(), want_probs, atol=1e-6, rtol=1e-6)
    else:
        assert shared_probs.shape == (batch, num_heads, length, 0)


def test_consumer_ignores_shared_probs_beyond_the_visible_slots():
    """Entries of shared_probs past a row's position are unspecified: garbage there changes
    nothing."""
    g = torch.Generator().manual_seed(3)
    batch, heads, head_dim = 2, 2, 4
    value = torch.randn(batch, 1, heads * head_dim, generator=g)
    past_value = torch.randn(batch, heads, CAPACITY, head_dim, generator=g)
    positions = torch.tensor([[3], [8]])
    probs = torch.rand(batch, heads, 1, CAPACITY, generator=g)
    lse = torch.zeros(batch, heads, 1)
    unused = torch.zeros(batch, 1, heads * head_dim), torch.zeros(batch, heads, CAPACITY, head_dim)
    kwargs = dict(num_heads=heads, kv_num_heads=heads, scale=0.5)
    clean, _ = consumer_attention_static(value, past_value, positions, probs, lse, *unused, **kwargs)
    noisy_probs = probs.clone()
    noisy_probs[0, :, :, 4:] = 1e6
    noisy_probs[1, :, :, 9:] = -1e6
    noisy, _ = consumer_attention_static(value, past_value, positions, noisy_probs, lse, *unused, **kwargs)
    assert torch.equal(clean, noisy)
