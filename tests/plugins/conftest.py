"""Shared inputs for the kernel and ONNX Runtime tests: random producer/consumer calls built
the way the model builds them, and the tolerances each dtype earns against
model/attention.py. Exposed as fixtures (`make_case`, `assert_close`): test modules cannot
import each other under --import-mode=importlib."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from uniattn_export import native

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Outputs are float32 sums rounded once to T; the kernels and torch sum in different orders,
# so a result may land one T-ulp away (|x| < 4 here): 2^-23, 2^-10, 2^-7 of relative step.
TOLERANCE = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


@dataclass
class Case:
    """One attention call: geometry, inputs and the producer's reference outputs."""

    batch: int
    query_len: int
    past_len: int
    num_heads: int
    kv_num_heads: int
    head_dim: int
    dtype: str  # "float32" | "float16" | "bfloat16"
    is_causal: bool = True
    sliding_window: int = 0
    probs_max_query_len: int = 16
    padded_rows: tuple[int, ...] = ()  # per batch row: how many leading keys are padding
    seed: int = 0

    def __post_init__(self):
        g = torch.Generator().manual_seed(self.seed)
        b, l, p, hq, hkv, d = (self.batch, self.query_len, self.past_len, self.num_heads,
                               self.kv_num_heads, self.head_dim)  # fmt: skip

        self.torch_dtype = DTYPES[self.dtype]

        def rand(*shape):
            return torch.randn(*shape, generator=g).to(self.torch_dtype)

        self.query, self.key, self.value = rand(b, l, hq * d), rand(b, l, hkv * d), rand(b, l, hkv * d)
        self.past_key, self.past_value = rand(b, hkv, p, d), rand(b, hkv, p, d)
        # The consumer's own values (a different layer than the producer's).
        self.consumer_value, self.consumer_past_value = rand(b, l, hkv * d), rand(b, hkv, p, d)
        self.attention_mask = torch.ones(b, p + l, dtype=torch.int64)
        for row, pad in enumerate(self.padded_rows[:b]):
            self.attention_mask[row, :pad] = 0

    @property
    def attributes(self) -> dict:
        return dict(num_heads=self.num_heads, kv_num_heads=self.kv_num_heads, scale=self.head_dim**-0.5,
                    is_causal=self.is_causal, sliding_window=self.sliding_window)  # fmt: skip

    @property
    def producer_args(self) -> tuple:
        return self.query, self.key, self.value, self.past_key, self.past_value, self.attention_mask

    def consumer_args(self, shared_probs, shared_lse, present_key) -> tuple:
        return (self.consumer_value, self.consumer_past_value, self.attention_mask, shared_probs, shared_lse,
                self.query, present_key)  # fmt: skip

    @property
    def tolerance(self) -> float:
        return TOLERANCE[self.torch_dtype]


def _assert_close(actual, expected, tol, what=""):
    """Elementwise |a - e| <= tol * max(1, |e|); NaN nowhere (rows without keys are 0 / +inf)."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.float(), expected.float()
    assert not a.isnan().any(), f"{what}: NaN in the kernel's result"
    both_inf = a.isinf() & e.isinf() & (a.sign() == e.sign())
    bound = tol * e.abs().clamp(min=1.0)
    bad = ~both_inf & ((a - e).abs() > bound)
    assert not bad.any(), f"{what}: {int(bad.sum())} elements differ, worst {(a - e)[~both_inf].abs().max():.3g}"


@pytest.fixture(scope="session")
def make_case():
    return Case


@pytest.fixture(scope="session")
def assert_close():
    return _assert_close


@pytest.fixture(scope="session")
def kernels():
    return native.kernels()


@pytest.fixture(scope="session")
def ort_library():
    path = native.ort_custom_op_library()
    assert path is not None, f"{native.ORT_LIBRARY} is not built: {native.BUILD_FIX}"
    return path


# ---- op version 2 (static layout) --------------------------------------------------------
# An independent reference of docs/ops.md "Version 2" in plain torch (float32 math), written
# here rather than taken from the package so that the kernels are checked against the
# contract's text: slots = position_ids, visibility j <= p and inside the window.


@dataclass
class StaticCase:
    """One version-2 call: caches of capacity C with different fill levels per batch row."""

    starts: tuple[int, ...]  # per batch row: position of its first new token (its current length)
    query_len: int
    capacity: int
    num_heads: int
    kv_num_heads: int
    head_dim: int
    dtype: str
    sliding_window: int = 0
    probs_max_query_len: int = 16
    seed: int = 0

    def __post_init__(self):
        g = torch.Generator().manual_seed(self.seed)
        b, l, c, hq, hkv, d = (len(self.starts), self.query_len, self.capacity, self.num_heads, self.kv_num_heads,
                               self.head_dim)  # fmt: skip
        assert max(self.starts) + l <= c
        self.batch, self.torch_dtype = b, DTYPES[self.dtype]

        def rand(*shape):
            return torch.randn(*shape, generator=g).to(self.torch_dtype)

        self.query, self.key, self.value = rand(b, l, hq * d), rand(b, l, hkv * d), rand(b, l, hkv * d)
        self.consumer_value = rand(b, l, hkv * d)
        self.position_ids = torch.stack([torch.arange(s, s + l) for s in self.starts]).to(torch.int64)
        # Slots past every row's last position hold NaN: a kernel that reads them fails.
        self.past_key, self.past_value, self.consumer_past_value = (rand(b, hkv, c, d) for _ in range(3))
        for cache in (self.past_key, self.past_value, self.consumer_past_value):
            for row, start in enumerate(self.starts):
                cache[row, :, start + l :] = float("nan")

    @property
    def attributes(self) -> dict:
        return dict(num_heads=self.num_heads, kv_num_heads=self.kv_num_heads, scale=self.head_dim**-0.5,
                    sliding_window=self.sliding_window)  # fmt: skip

    @property
    def producer_args(self) -> tuple:
        return self.query, self.key, self.value, self.past_key, self.past_value, self.position_ids

    @property
    def tolerance(self) -> float:
        return TOLERANCE[self.torch_dtype]

    def last_positions(self) -> list[int]:
        return [start + self.query_len - 1 for start in self.starts]


def _scatter(past, new, position_ids, kv_num_heads):
    """present = past with new token i of row b at slot position_ids[b, i]."""
    batch, length, width = new.shape
    present = past.clone()
    rows = new.view(batch, length, kv_num_heads, width // kv_num_heads)
    for b in range(batch):
        for i in range(length):
            present[b, :, int(position_ids[b, i])] = rows[b, i]
    return present


def _visible(position_ids, capacity, sliding_window):
    """(B, 1, L, C): slot j visible to query (b, i) with p = position_ids[b, i]."""
    j = torch.arange(capacity)
    p = position_ids[:, None, :, None]
    visible = j <= p
    if sliding_window:
        visible &= p - j < sliding_window
    return visible


def _heads(packed, heads):
    batch, length, width = packed.shape
    return packed.view(batch, length, heads, width // heads).transpose(1, 2).float()


def static_producer_reference(query, key, value, past_key, past_value, position_ids, *, num_heads, kv_num_heads,
                              scale, sliding_window=0, probs_max_query_len=16):  # fmt: skip
    present_key = _scatter(past_key, key, position_ids, kv_num_heads)
    present_value = _scatter(past_value, value, position_ids, kv_num_heads)
    group, capacity = num_heads // kv_num_heads, past_key.shape[2]
    keys = present_key.float().repeat_interleave(group, 1)
    values = present_value.float().repeat_interleave(group, 1).nan_to_num()  # hidden slots: p = 0
    visible = _visible(position_ids, capacity, sliding_window)
    scores = (scale * _heads(query, num_heads) @ keys.transpose(-1, -2)).masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(scores, -1)
    probs = torch.exp(scores - lse[..., None])
    output = (probs @ values).transpose(1, 2).reshape(query.shape).to(query.dtype)
    length = query.shape[1]
    shared_probs = probs.to(query.dtype)[..., : capacity if length <= probs_max_query_len else 0]
    return output, present_key, present_value, shared_probs, lse


def static_consumer_reference(value, past_value, position_ids, shared_probs, shared_lse, producer_query,
                              producer_key, *, num_heads, kv_num_heads, scale, sliding_window=0):  # fmt: skip
    present_value = _scatter(past_value, value, position_ids, kv_num_heads)
    group, capacity = num_heads // kv_num_heads, past_value.shape[2]
    values = present_value.float().repeat_interleave(group, 1).nan_to_num()
    visible = _visible(position_ids, capacity, sliding_window)
    if shared_probs.shape[-1] == capacity:  # decode: P as given, over the visible slots
        probs = shared_probs.float().masked_fill(~visible, 0.0)
    else:  # prefill: exp(s - lse)
        keys = producer_key.float().repeat_interleave(group, 1)
        scores = scale * _heads(producer_query, num_heads) @ keys.transpose(-1, -2)
        probs = torch.exp(scores.masked_fill(~visible, float("-inf")) - shared_lse[..., None])
    output = (probs @ values).transpose(1, 2).reshape(*value.shape[:2], -1).to(value.dtype)
    return output, present_value


@pytest.fixture(scope="session")
def make_static_case():
    return StaticCase


@pytest.fixture(scope="session")
def static_reference():
    return static_producer_reference, static_consumer_reference
