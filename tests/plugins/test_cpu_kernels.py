"""The CPU kernels (ua_producer_cpu / ua_consumer_cpu, called through ctypes) against the
PyTorch reference of docs/ops.md (model/attention.py), over randomized geometries."""

from __future__ import annotations

import ctypes

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uniattn_export import native
from uniattn_export.model import attention as reference

# The CPU kernels are cheap: 2.4x the profile's examples (60 in CI; tests/conftest.py).
SETTINGS = settings(
    max_examples=settings.default.max_examples * 12 // 5,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@st.composite
def geometries(draw):
    batch, query_len, past_len = draw(st.integers(1, 3)), draw(st.integers(1, 20)), draw(st.integers(0, 20))
    kv_num_heads = draw(st.integers(1, 3))
    key_len = past_len + query_len
    return dict(
        batch=batch,
        query_len=query_len,
        past_len=past_len,
        kv_num_heads=kv_num_heads,
        num_heads=kv_num_heads * draw(st.sampled_from([1, 2, 4])),
        head_dim=draw(st.sampled_from([1, 3, 8, 40, 64, 72, 80, 96])),
        dtype=draw(st.sampled_from(["float32", "float16", "bfloat16"])),
        is_causal=draw(st.booleans()),
        sliding_window=draw(st.sampled_from([0, 0, 1, 3, 8])),
        probs_max_query_len=draw(st.sampled_from([0, 4, 16])),
        # Left padding; a pad >= P + i + 1 leaves causal row i with no visible key at all.
        padded_rows=tuple(draw(st.integers(0, key_len)) for _ in range(batch)),
        seed=draw(st.integers(0, 2**16)),
    )


def check_producer(case, assert_close):
    expected = reference.producer_attention(
        *case.producer_args, **case.attributes, probs_max_query_len=case.probs_max_query_len
    )
    actual = native.run_producer(
        *case.producer_args, **case.attributes, probs_max_query_len=case.probs_max_query_len
    )
    names = ("output", "present_key", "present_value", "shared_probs", "shared_lse")
    for name, a, e in zip(names, actual, expected):
        if name.startswith("present"):
            assert torch.equal(a, e), f"{name} is not the exact concatenation of past and new"
        else:
            assert_close(a, e, case.tolerance if name != "shared_lse" else 2e-5, name)
    return expected


def check_consumer(case, assert_close, expected_producer, reuse_probs):
    _, present_key, _, _, shared_lse = expected_producer
    if reuse_probs:  # decode branch: P of every key, taken from a producer that emits it
        shared_probs = reference.producer_attention(
            *case.producer_args, **case.attributes, probs_max_query_len=case.query_len
        )[3]
    else:  # prefill branch: recompute from the producer's query, key cache and lse
        shared_probs = torch.empty(case.batch, case.num_heads, case.query_len, 0, dtype=case.torch_dtype)
    args = case.consumer_args(shared_probs, shared_lse, present_key)
    expected = reference.consumer_attention(*args, **case.attributes)
    actual = native.run_consumer(*args, **case.attributes)
    assert_close(actual[0], expected[0], case.tolerance, "consumer output")
    assert torch.equal(actual[1], expected[1]), "consumer present_value"


@SETTINGS
@given(geometry=geometries())
def test_producer_matches_reference(geometry, make_case, assert_close):
    check_producer(make_case(**geometry), assert_close)


@SETTINGS
@given(geometry=geometries(), reuse_probs=st.booleans())
def test_consumer_matches_reference(geometry, reuse_probs, make_case, assert_close):
    case = make_case(**geometry)
    expected = reference.producer_attention(*case.producer_args, **case.attributes)
    check_consumer(case, assert_close, expected, reuse_probs)


EDGE_CASES = {
    "S=1": dict(batch=1, query_len=1, past_len=0, num_heads=2, kv_num_heads=1, head_dim=8),
    "L=0: present = past": dict(batch=2, query_len=0, past_len=3, num_heads=4, kv_num_heads=2, head_dim=8),
    "P=0 prefill": dict(batch=2, query_len=19, past_len=0, num_heads=4, kv_num_heads=2, head_dim=40,
                        probs_max_query_len=4),
    "decode over a long past": dict(batch=2, query_len=1, past_len=300, num_heads=8, kv_num_heads=2, head_dim=64),
    "fully padded batch row": dict(batch=2, query_len=5, past_len=3, num_heads=4, kv_num_heads=2, head_dim=16,
                                   padded_rows=(8, 2)),
    "padded prefix rows without keys": dict(batch=1, query_len=6, past_len=0, num_heads=2, kv_num_heads=2,
                                            head_dim=72, padded_rows=(4,)),
    "non-causal": dict(batch=2, query_len=7, past_len=5, num_heads=6, kv_num_heads=3, head_dim=80,
                       is_causal=False, padded_rows=(0, 3)),
    "sliding window": dict(batch=1, query_len=12, past_len=9, num_heads=4, kv_num_heads=1, head_dim=96,
                           sliding_window=4),
    "non-causal sliding window": dict(batch=1, query_len=6, past_len=2, num_heads=2, kv_num_heads=1, head_dim=5,
                                      is_causal=False, sliding_window=3),
}


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("name", list(EDGE_CASES))
def test_edge_cases(name, dtype, make_case, assert_close):
    case = make_case(**EDGE_CASES[name], dtype=dtype)
    expected = check_producer(case, assert_close)
    for reuse_probs in (True, False):
        check_consumer(case, assert_close, expected, reuse_probs)


def test_rows_without_keys_are_zero_with_infinite_lse(make_case):
    case = make_case(batch=1, query_len=4, past_len=0, num_heads=2, kv_num_heads=1, head_dim=8,
                     dtype="float16", padded_rows=(2,))  # fmt: skip
    output, _, _, probs, lse = native.run_producer(*case.producer_args, **case.attributes)
    assert torch.all(output[0, :2] == 0) and torch.all(probs[0, :, :2] == 0)
    assert torch.all(lse[0, :, :2] == float("inf")) and torch.isfinite(lse[0, :, 2:]).all()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_conversions_round_trip_every_value(dtype):
    """One key: p = 1 and the output is value converted to float32 and back, bit for bit,
    for every 16-bit pattern (subnormals, infinities and NaNs included; -0 comes back as +0,
    the float32 sum starting at +0)."""
    torch_dtype = getattr(torch, dtype)
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    value = bits.view(torch_dtype).reshape(1, 1, -1)
    zeros = torch.zeros_like(value)
    empty = torch.empty(1, 1, 0, value.shape[-1], dtype=torch_dtype)
    output = native.run_producer(zeros, zeros, value, empty, empty, torch.ones(1, 1, dtype=torch.int64),
                                 num_heads=1, kv_num_heads=1, scale=1.0, emit_shared=False)[0]  # fmt: skip
    nan, zero = value.isnan(), value == 0
    assert torch.equal(output.isnan(), nan) and torch.all(output[zero] == 0)
    assert torch.equal(output[~nan & ~zero].view(torch.int16), value[~nan & ~zero].view(torch.int16))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_output_rounding_matches_torch_bit_for_bit(dtype):
    """Two keys with equal scores: p = 0.5 exactly and the float32 output 0.5*v1 + 0.5*v2 is
    computed identically by both sides, so only the rounding to T can differ: it must not."""
    torch_dtype = getattr(torch, dtype)
    g = torch.Generator().manual_seed(1)
    value = (torch.randn(1, 2, 4096, generator=g) * torch.logspace(-6, 4, 4096)).to(torch_dtype)
    zeros = torch.zeros_like(value)
    empty = torch.empty(1, 1, 0, 4096, dtype=torch_dtype)
    args = (zeros, zeros, value, empty, empty, torch.ones(1, 2, dtype=torch.int64))
    attributes = dict(num_heads=1, kv_num_heads=1, scale=1.0, is_causal=False)
    actual = native.run_producer(*args, **attributes)
    expected = reference.producer_attention(*args, **attributes)
    assert torch.equal(actual[0].view(torch.int16), expected[0].view(torch.int16))
    assert torch.equal(actual[3], expected[3])


def _desc(**overrides):
    fields = dict(batch=1, query_len=2, past_len=1, num_heads=4, kv_num_heads=2, head_dim=8, scale=0.35,
                  is_causal=1, sliding_window=0, dtype=0)  # fmt: skip
    fields.update(overrides)
    return native.AttentionDesc(**fields)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(num_heads=3), "num_heads=3 must be a positive multiple of kv_num_heads=2"),
        (dict(head_dim=0), "head_dim=0 must be positive"),
        (dict(query_len=-1), "negative size: batch=1 query_len=-1 past_len=1"),
        (dict(dtype=7), "unknown dtype code 7"),
        (dict(sliding_window=-2), "sliding_window=-2 must be >= 0"),
    ],
)
def test_invalid_geometry_is_refused_with_its_values(kernels, overrides, message):
    status = kernels.ua_producer_cpu(ctypes.byref(_desc(**overrides)), ctypes.byref(native.ProducerIO()), None)
    assert status == 1 and kernels.ua_last_error().decode() == message
    status = kernels.ua_consumer_cpu(ctypes.byref(_desc(**overrides)), ctypes.byref(native.ConsumerIO()), None)
    assert status == 1 and kernels.ua_last_error().decode() == message


def test_missing_tensors_are_refused(kernels):
    assert kernels.ua_producer_cpu(ctypes.byref(_desc()), ctypes.byref(native.ProducerIO()), None) == 1
    assert kernels.ua_last_error() == b"producer: a required tensor pointer is NULL"
    buffer = torch.zeros(4096)
    io = native.ConsumerIO(*([buffer.data_ptr()] * 9))
    io.shared_probs = io.shared_lse = None
    assert kernels.ua_consumer_cpu(ctypes.byref(_desc()), ctypes.byref(io), None) == 1
    assert kernels.ua_last_error() == b"consumer: without shared_probs it needs shared_lse, producer_query and producer_key"
    # A successful call clears the message.
    empty = _desc(batch=0)
    assert kernels.ua_producer_cpu(ctypes.byref(empty), ctypes.byref(native.ProducerIO()), None) == 0
    assert kernels.ua_last_error() == b""


def test_wrapper_raises_the_kernel_message(make_case):
    case = make_case(batch=1, query_len=2, past_len=0, num_heads=2, kv_num_heads=1, head_dim=4, dtype="float32")
    with pytest.raises(native.KernelError, match="num_heads=2 must be a positive multiple of kv_num_heads=3"):
        native.run_producer(*case.producer_args, num_heads=2, kv_num_heads=3, scale=0.5)


def _in_place_cache(past: torch.Tensor, query_len: int) -> torch.Tensor:
    """A present-layout buffer (B, Hkv, S, D) holding the past rows, the new rows NaN."""
    batch, heads, past_len, dim = past.shape
    buffer = torch.full((batch, heads, past_len + query_len, dim), float("nan"), dtype=past.dtype)
    buffer[:, :, :past_len] = past
    return buffer


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_in_place_append_matches_reference(dtype, kernels, make_case, assert_close):
    """present_* == past_* (kernels.h): the kernels read the past rows from the present buffer
    itself and write only the new rows, with the results of separate buffers."""
    case = make_case(batch=2, query_len=3, past_len=6, num_heads=4, kv_num_heads=2, head_dim=16, dtype=dtype,
                     padded_rows=(0, 2))  # fmt: skip
    b, l, p, hq, hkv, d = (case.batch, case.query_len, case.past_len, case.num_heads, case.kv_num_heads,
                           case.head_dim)  # fmt: skip
    desc = native.AttentionDesc(b, l, p, hq, hkv, d, d**-0.5, 1, 0, native.DTYPE_CODES[dtype])
    want_out, want_key, want_value, want_probs, want_lse = reference.producer_attention(
        *case.producer_args, **case.attributes)
    cache_key, cache_value = _in_place_cache(case.past_key, l), _in_place_cache(case.past_value, l)
    out, probs = torch.empty_like(want_out), torch.empty_like(want_probs)
    lse = torch.empty_like(want_lse)
    io = native.ProducerIO(*[t.data_ptr() for t in (
        case.query, case.key, case.value, cache_key, cache_value, case.attention_mask, out, cache_key, cache_value,
        probs, lse)])  # fmt: skip
    assert kernels.ua_producer_cpu(ctypes.byref(desc), ctypes.byref(io), None) == 0, kernels.ua_last_error()
    assert torch.equal(cache_key, want_key) and torch.equal(cache_value, want_value)
    for name, got, want in (("output", out, want_out), ("shared_probs", probs, want_probs)):
        assert_close(got, want, case.tolerance, name)
    assert_close(lse, want_lse, 2e-5, "shared_lse")

    for shared_probs in (want_probs, None):  # decode branch, then the recompute branch
        args = case.consumer_args(
            shared_probs if shared_probs is not None else want_probs[..., :0], want_lse, want_key)
        want_out2, want_value2 = reference.consumer_attention(*args, **case.attributes)
        cache_value2, out2 = _in_place_cache(case.consumer_past_value, l), torch.empty_like(want_out2)
        io2 = native.ConsumerIO(*[None if t is None else t.data_ptr() for t in (
            case.consumer_value, cache_value2, case.attention_mask, shared_probs, want_lse, case.query, want_key,
            out2, cache_value2)])  # fmt: skip
        assert kernels.ua_consumer_cpu(ctypes.byref(desc), ctypes.byref(io2), None) == 0, kernels.ua_last_error()
        assert torch.equal(cache_value2, want_value2)
        assert_close(out2, want_out2, case.tolerance, "consumer output")


def test_half_in_place_producer_is_refused(kernels):
    """Only one of the producer's caches aliasing its past has no meaning: refused, as on CUDA."""
    buffer = torch.zeros(4096)
    io = native.ProducerIO(*([buffer.data_ptr()] * 11))
    io.past_value = torch.zeros(4096).data_ptr()
    assert kernels.ua_producer_cpu(ctypes.byref(_desc()), ctypes.byref(io), None) == 1
    assert kernels.ua_last_error() == (
        b"producer: present_key and present_value must both alias their past (in-place append) or neither")


# ---- op version 2: fixed-capacity caches (static layout) ----------------------------------

STATIC_CASES = {
    # starts: per batch row, its current length (rows of different lengths)
    "decode, rows of different lengths": dict(starts=(5, 0, 130), query_len=1, capacity=160, num_heads=6,
                                              kv_num_heads=2, head_dim=64),
    "few-token decode over tiles": dict(starts=(70, 3), query_len=4, capacity=80, num_heads=4, kv_num_heads=1,
                                        head_dim=72),
    "prefill, right-padded batch": dict(starts=(0, 0), query_len=75, capacity=96, num_heads=4, kv_num_heads=2,
                                        head_dim=40, probs_max_query_len=4),
    "prefill after a past": dict(starts=(9, 30), query_len=40, capacity=72, num_heads=3, kv_num_heads=3,
                                 head_dim=8),
    "sliding window decode": dict(starts=(100, 7), query_len=1, capacity=128, num_heads=4, kv_num_heads=2,
                                  head_dim=64, sliding_window=16),
    "sliding window prefill": dict(starts=(3,), query_len=50, capacity=64, num_heads=2, kv_num_heads=1,
                                   head_dim=24, sliding_window=7, probs_max_query_len=64),
    "full capacity": dict(starts=(31,), query_len=1, capacity=32, num_heads=2, kv_num_heads=1, head_dim=5),
    # Short queries over long caches: the CPU kernels split the keys into parts and merge them
    # (parts that see no key of a row included).
    "decode over split keys": dict(starts=(600, 5, 290), query_len=1, capacity=640, num_heads=6, kv_num_heads=2,
                                   head_dim=64),
    "sliding window decode over split keys": dict(starts=(700,), query_len=1, capacity=720, num_heads=4,
                                                  kv_num_heads=1, head_dim=32, sliding_window=300),
    "few-token decode over split keys": dict(starts=(500, 20), query_len=5, capacity=520, num_heads=4,
                                             kv_num_heads=2, head_dim=16),
}


def check_static_producer(case, actual, assert_close, static_reference):
    expected = static_reference[0](*case.producer_args, **case.attributes,
                                   probs_max_query_len=case.probs_max_query_len)  # fmt: skip
    output, present_key, present_value, probs, lse = actual
    assert_close(output, expected[0], case.tolerance, "output")
    assert torch.equal(present_key.isnan(), expected[1].isnan()), "present_key: slots written elsewhere"
    assert torch.equal(present_key.nan_to_num(), expected[1].nan_to_num()), "present_key"
    assert torch.equal(present_value.nan_to_num(), expected[2].nan_to_num()), "present_value"
    assert_close(lse, expected[4], 2e-5, "shared_lse")
    assert probs.shape == expected[3].shape
    for b, last in enumerate(case.last_positions()):  # entries beyond a row's last position are unspecified
        assert_close(probs[b, ..., : last + 1], expected[3][b, ..., : last + 1], case.tolerance, "shared_probs")
    return expected


@pytest.mark.parametrize("in_place", [False, True], ids=["copy", "in place"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("name", list(STATIC_CASES))
def test_static_layout_matches_reference(name, dtype, in_place, make_static_case, assert_close, static_reference):
    case = make_static_case(**STATIC_CASES[name], dtype=dtype)
    past = [t.clone() for t in (case.past_key, case.past_value, case.consumer_past_value)]
    caches = [t.clone() for t in past] if in_place else past
    actual = native.run_producer_static(*case.producer_args[:3], caches[0], caches[1], case.position_ids,
                                        **case.attributes, probs_max_query_len=case.probs_max_query_len,
                                        in_place=in_place)  # fmt: skip
    if in_place:
        assert actual[1] is caches[0] and actual[2] is caches[1]
    else:  # the past is left as it was
        for before, after in zip((case.past_key, case.past_value), past[:2]):
            assert torch.equal(before.nan_to_num(), after.nan_to_num())
    expected = check_static_producer(case, actual, assert_close, static_reference)

    # Consumer: decode reuses P (NaN beyond each row's last position must not be read), prefill recomputes.
    emitted = expected[3].shape[-1] == case.capacity
    shared_probs = expected[3].clone()
    for b, last in enumerate(case.last_positions()):
        shared_probs[b, ..., last + 1 :] = float("nan")
    for probs in (shared_probs, shared_probs[..., :0]) if emitted else (shared_probs,):
        args = (case.consumer_value, caches[2], case.position_ids, probs, expected[4], case.query, expected[1])
        want = static_reference[1](case.consumer_value, case.consumer_past_value, *args[2:], **case.attributes)
        output, present_value = native.run_consumer_static(*args, **case.attributes, in_place=in_place)
        assert_close(output, want[0], case.tolerance, f"consumer output ({'reuse' if probs.shape[-1] else 'recompute'})")
        assert torch.equal(present_value.nan_to_num(), want[1].nan_to_num()), "consumer present_value"
        if in_place:
            assert present_value is caches[2]
            caches[2].copy_(case.consumer_past_value)  # the next branch starts from the same past
        else:
            assert torch.equal(past[2].nan_to_num(), case.consumer_past_value.nan_to_num())


def test_static_decode_steps_in_place_match_one_prefill(make_static_case, assert_close, static_reference):
    """Decoding token by token into one in-place cache gives the prefill's outputs row by row."""
    case = make_static_case(starts=(0,), query_len=12, capacity=16, num_heads=4, kv_num_heads=2, head_dim=16,
                            dtype="float32", probs_max_query_len=0)  # fmt: skip
    prefill = static_reference[0](*case.producer_args, **case.attributes, probs_max_query_len=0)
    key_cache, value_cache = case.past_key.clone(), case.past_value.clone()
    for i in range(case.query_len):
        step = (case.query[:, i : i + 1], case.key[:, i : i + 1], case.value[:, i : i + 1], key_cache, value_cache,
                case.position_ids[:, i : i + 1])  # fmt: skip
        output = native.run_producer_static(*step, **case.attributes, in_place=True)[0]
        assert_close(output[:, 0], prefill[0][:, i], case.tolerance, f"step {i}")
    assert torch.equal(key_cache[:, :, :12], prefill[1][:, :, :12])
    assert key_cache[:, :, 12:].isnan().all(), "slots beyond the last position were written"


def _static_desc(**overrides):
    fields = dict(batch=1, query_len=2, past_len=0, num_heads=2, kv_num_heads=1, head_dim=8, scale=0.35,
                  is_causal=1, sliding_window=0, dtype=0, capacity=4)  # fmt: skip
    return native.AttentionDesc(**fields | overrides)


def test_static_layout_refusals(kernels):
    buffer = torch.zeros(4096)
    io = native.ProducerIO(*([buffer.data_ptr()] * 12))
    io.position_ids = None
    assert kernels.ua_producer_cpu(ctypes.byref(_static_desc()), ctypes.byref(io), None) == 1
    assert kernels.ua_last_error() == b"producer (static layout): a required tensor pointer is NULL"
    consumer = native.ConsumerIO(*([buffer.data_ptr()] * 10))
    consumer.past_value = None
    assert kernels.ua_consumer_cpu(ctypes.byref(_static_desc()), ctypes.byref(consumer), None) == 1
    assert kernels.ua_last_error() == b"consumer (static layout): past_value/present_value must not be NULL"
    io.position_ids = buffer.data_ptr()
    assert kernels.ua_producer_cpu(ctypes.byref(_static_desc(query_len=5)), ctypes.byref(io), None) == 1
    assert kernels.ua_last_error() == b"static layout: query_len=5 exceeds capacity=4"
    assert kernels.ua_producer_cpu(ctypes.byref(_static_desc(capacity=-1)), ctypes.byref(io), None) == 1
    assert kernels.ua_last_error() == b"capacity=-1 must be >= 0"


def test_static_position_outside_the_caches_is_refused_before_any_write(make_static_case):
    """Row 0 at a valid position, row 1 at the capacity: the call fails and neither row's slot
    is written into the in-place caches (docs/ops.md, version 2)."""
    case = make_static_case(starts=(3, 5), query_len=1, capacity=8, num_heads=2, kv_num_heads=1, head_dim=8,
                            dtype="float32")  # fmt: skip
    key_cache, value_cache = case.past_key.clone(), case.past_value.clone()
    with pytest.raises(native.KernelError) as error:
        native.run_producer_static(case.query, case.key, case.value, key_cache, value_cache,
                                   torch.tensor([[3], [8]]), **case.attributes, in_place=True)  # fmt: skip
    assert str(error.value) == (
        "ua_producer returned status 1: producer (static layout): position_ids[1, 0] = 8 is outside the cache "
        "slots 0..7 (capacity 8): the sequence does not fit the caches"
    )
    assert torch.equal(key_cache.nan_to_num(), case.past_key.nan_to_num())
    assert torch.equal(value_cache.nan_to_num(), case.past_value.nan_to_num())


@st.composite
def static_geometries(draw):
    batch, query_len = draw(st.integers(1, 3)), draw(st.integers(1, 40))
    capacity = query_len + draw(st.integers(0, 70))
    kv_num_heads = draw(st.integers(1, 3))
    return dict(
        starts=tuple(draw(st.integers(0, capacity - query_len)) for _ in range(batch)),
        query_len=query_len, capacity=capacity, kv_num_heads=kv_num_heads,
        num_heads=kv_num_heads * draw(st.sampled_from([1, 2, 3, 4])),
        head_dim=draw(st.sampled_from([1, 8, 16, 40, 64, 72, 128])),
        dtype=draw(st.sampled_from(["float32", "float16", "bfloat16"])),
        sliding_window=draw(st.sampled_from([0, 0, 1, 4, 33])),
        probs_max_query_len=draw(st.sampled_from([0, 8, 64])),
        seed=draw(st.integers(0, 2**16)),
    )  # fmt: skip


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(geometry=static_geometries(), in_place=st.booleans())
def test_static_layout_randomized(geometry, in_place, make_static_case, assert_close, static_reference):
    case = make_static_case(**geometry)
    caches = (case.past_key.clone(), case.past_value.clone())
    actual = native.run_producer_static(*case.producer_args[:3], *caches, case.position_ids, **case.attributes,
                                        probs_max_query_len=case.probs_max_query_len, in_place=in_place)  # fmt: skip
    expected = check_static_producer(case, actual, assert_close, static_reference)
    recompute = (case.consumer_value, case.consumer_past_value.clone(), case.position_ids, expected[3][..., :0],
                 expected[4], case.query, expected[1])  # fmt: skip
    want = static_reference[1](*recompute, **case.attributes)
    output, present_value = native.run_consumer_static(*recompute, **case.attributes, in_place=in_place)
    assert_close(output, want[0], case.tolerance, "consumer output (recompute)")
    assert torch.equal(present_value.nan_to_num(), want[1].nan_to_num())
