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
