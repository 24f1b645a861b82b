"""Checks and benchmarks of the CUDA kernels (plugins/kernels/cuda) in one GPU run.

On the GPU machine, from the repository root:

    python3 tests/plugins/gpu_kernels.py --lib path/to/libuniattn_kernels.so

(without --lib: uniattn_export/lib or UNIATTN_EXPORT_LIB_DIR, else it builds the kernels
with nvcc for the local GPU; `--build-only DIR --arch 90` prebuilds that library on a machine
without a GPU). It

  1. checks every kernel path against uniattn_export/model/attention.py over edge cases and
     randomized shapes, outputs poisoned with NaN first (one failing case never hides the
     others: each runs on its own and is recorded);
     The static layout (op version 2, capacity > 0) has its own cases against an independent
     reference written here (static_reference), and a CUDA-graph check: one decode step
     (producer + consumer through the C entry points) captured once and replayed with new
     position_ids written in place between replays, each replay compared to the reference;
  2. times decode (bf16, Hq=32, Hkv=8, D=64, B in {1, 8, 32}, S in {512, 2048, 8192}) against
     torch SDPA, a torch producer that emits P and torch P @ V, with achieved bandwidth
     against a device-to-device copy measured in the same run, and prefill against SDPA;
     the static decode step (capacity 8192, STATIC_DECODE_SHAPES) against SDPA and P @ V over
     the same slots and SDPA over the whole capacity with a mask;
  3. writes everything to $OUT/gpu_kernels.json and prints a short table last, then
     "ALL VERIFIED" or "NOT VERIFIED (n): ..." listing every failed case, failed or crashed
     check, benchmark error and sanitizer run that reported errors or did not complete; the
     exit status is 1 unless everything was verified.

The same case runner drives tests/plugins/test_cuda_emulated.py, which runs the kernels on
the CPU through the emulator (tests/plugins/cuda_emu.h) with device="cpu".
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import itertools
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def _load_reference():
    """model/attention.py by path: it needs only torch, not the rest of the package."""
    spec = importlib.util.spec_from_file_location("uniattn_reference", REPO / "uniattn_export/model/attention.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference = _load_reference()

# ---------------------------------------------------------------------------------------
# The C ABI (plugins/kernels/include/uniattn/kernels.h; ctypes structures from native.py)

sys.path.insert(0, str(REPO))
from uniattn_export.native import ABI_VERSION, AttentionDesc as Desc, ConsumerIO, DTYPE_CODES, ProducerIO  # noqa: E402


class SplitRotaryDesc(ctypes.Structure):
    """ua_split_rotary_desc (kernels.h)."""

    _fields_ = [(name, ctypes.c_int64) for name in ("tokens", "num_heads", "kv_num_heads", "head_dim", "table_rows")]
    _fields_ += [("dtype", ctypes.c_int)]


class SplitRotaryIO(ctypes.Structure):
    """ua_split_rotary_io (kernels.h)."""

    _fields_ = [(name, ctypes.c_void_p)
                for name in ("qkv", "cos_cache", "sin_cache", "position_ids", "query", "key", "value")]  # fmt: skip


class LinearDesc(ctypes.Structure):
    """ua_linear_desc (kernels.h)."""

    _fields_ = [(name, ctypes.c_int64) for name in ("rows", "in_features", "out_features")] + [("dtype", ctypes.c_int)]


class Kernels:
    """ua_producer_cuda / ua_consumer_cuda of a built library: device pointers on the current
    CUDA stream, or host pointers for the emulated build (device="cpu")."""

    def __init__(self, path: str, device: str = "cuda"):
        self.path, self.device = path, device
        lib = ctypes.CDLL(path)
        for name, io in (("producer", ProducerIO), ("consumer", ConsumerIO)):
            run = getattr(lib, f"ua_{name}_cuda")
            run.argtypes = [ctypes.POINTER(Desc), ctypes.POINTER(io), ctypes.c_void_p, ctypes.c_void_p]
            run.restype = ctypes.c_int
            size = getattr(lib, f"ua_{name}_cuda_workspace_size")
            size.argtypes = [ctypes.POINTER(Desc), ctypes.c_int]
            size.restype = ctypes.c_size_t
        lib.ua_gated_silu_cuda.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                                           ctypes.c_void_p, ctypes.c_void_p]
        lib.ua_gated_silu_cuda.restype = ctypes.c_int
        if hasattr(lib, "ua_split_rotary_cuda"):  # (libraries built before 2026-12-07 lack it: its check fails)
            lib.ua_split_rotary_cuda.argtypes = [ctypes.POINTER(SplitRotaryDesc), ctypes.POINTER(SplitRotaryIO),
                                                 ctypes.c_void_p]
            lib.ua_split_rotary_cuda.restype = ctypes.c_int
        if hasattr(lib, "ua_linear_cuda"):  # (libraries built before 2026-12-07 s19 lack it: its check fails)
            lib.ua_linear_cuda.argtypes = [ctypes.POINTER(LinearDesc)] + [ctypes.c_void_p] * 5
            lib.ua_linear_cuda.restype = ctypes.c_int
        lib.ua_last_error.restype = ctypes.c_char_p
        lib.ua_has_cuda.restype = ctypes.c_int
        self.lib = lib

    def linear(self, input: torch.Tensor, weight: torch.Tensor, output: torch.Tensor) -> tuple[int, str]:
        """ua_linear_cuda: input (rows, K), weight (N, K) -> output (rows, N); on CUDA with torch's
        cuBLAS handle (the emulated build gets none); (status, message)."""
        on_cuda = self.device.startswith("cuda")
        stream = torch.cuda.current_stream().cuda_stream if on_cuda else None
        handle = torch.cuda.current_blas_handle() if on_cuda else None
        if not hasattr(self.lib, "ua_linear_cuda"):
            return -1, f"{self.path} has no ua_linear_cuda"
        desc = LinearDesc(input.shape[0], input.shape[1], weight.shape[0],
                          DTYPE_CODES[str(input.dtype).removeprefix("torch.")])  # fmt: skip
        status = self.lib.ua_linear_cuda(ctypes.byref(desc), input.data_ptr(), weight.data_ptr(), output.data_ptr(),
                                         handle, stream)  # fmt: skip
        return status, self.lib.ua_last_error().decode()

    def gated_silu(self, gate_up: torch.Tensor, output: torch.Tensor) -> tuple[int, str]:
        """ua_gated_silu_cuda over (rows, 2 * width) -> (rows, width); (status, message)."""
        stream = torch.cuda.current_stream().cuda_stream if self.device.startswith("cuda") else None
        rows, width = output.shape
        status = self.lib.ua_gated_silu_cuda(DTYPE_CODES[str(gate_up.dtype).removeprefix("torch.")], rows, width,
                                             gate_up.data_ptr(), output.data_ptr(), stream)
        return status, self.lib.ua_last_error().decode()

    def split_rotary(self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                     outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], num_heads: int,
                     kv_num_heads: int) -> tuple[int, str]:
        """ua_split_rotary_cuda over qkv (tokens, (Hq + 2*Hkv)*D) -> (query, key, value); (status, message)."""
        stream = torch.cuda.current_stream().cuda_stream if self.device.startswith("cuda") else None
        desc = SplitRotaryDesc(qkv.shape[0], num_heads, kv_num_heads, 2 * cos.shape[1], cos.shape[0],
                               DTYPE_CODES[str(qkv.dtype).removeprefix("torch.")])  # fmt: skip
        io = SplitRotaryIO(*(t.data_ptr() for t in (qkv, cos, sin, positions, *outputs)))
        if not hasattr(self.lib, "ua_split_rotary_cuda"):
            return -1, f"{self.path} has no ua_split_rotary_cuda"
        status = self.lib.ua_split_rotary_cuda(ctypes.byref(desc), ctypes.byref(io), stream)
        return status, self.lib.ua_last_error().decode()

    def has_cuda(self) -> bool:
        return self.lib.ua_has_cuda() == 1

    def workspace(self, op: str, desc: Desc, flag: bool) -> torch.Tensor | None:
        size = getattr(self.lib, f"ua_{op}_cuda_workspace_size")(ctypes.byref(desc), int(flag))
        # Workspace contents are unspecified (kernels.h): a pattern, not the zeros a fresh
        # allocation often holds, so a kernel that forgets to clear what it counts on fails.
        return torch.full((size,), 0xA5, dtype=torch.uint8, device=self.device) if size else None

    def status(self, op: str, desc: Desc, io, workspace: torch.Tensor | None) -> tuple[int, str]:
        stream = torch.cuda.current_stream().cuda_stream if self.device.startswith("cuda") else None
        status = getattr(self.lib, f"ua_{op}_cuda")(ctypes.byref(desc), ctypes.byref(io), _ptr(workspace), stream)
        return status, self.lib.ua_last_error().decode()

    def call(self, op: str, desc: Desc, io, workspace: torch.Tensor | None) -> None:
        status, message = self.status(op, desc, io, workspace)
        if status != 0:
            raise RuntimeError(f"ua_{op}_cuda returned {status}: {message}")


def _ptr(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


def make_desc(batch, query_len, past_len, num_heads, kv_num_heads, head_dim, dtype, scale, is_causal, window,
              capacity: int = 0) -> Desc:
    return Desc(batch, query_len, past_len, num_heads, kv_num_heads, head_dim, scale, int(is_causal), window,
                DTYPE_CODES[str(dtype).removeprefix("torch.")], capacity)


def producer_io(**tensors: torch.Tensor | None) -> ProducerIO:
    return ProducerIO(**{k: _ptr(v) for k, v in tensors.items()})


def consumer_io(**tensors: torch.Tensor | None) -> ConsumerIO:
    return ConsumerIO(**{k: _ptr(v) for k, v in tensors.items()})


# ---------------------------------------------------------------------------------------
# Correctness

# Outputs are convex combinations of V rows: the kernel and the reference each round once
# to T (and flash kernels round P to T before P.V), so they may differ by about two units
# in the last place of T, relative to the largest |V|. P lies in [0, 1]: the same bound with
# scale 1. lse is float32 from the same T inputs: only the summation order differs.
REL_TOL = {torch.float32: 2e-5, torch.float16: 2 * 2.0**-10, torch.bfloat16: 2 * 2.0**-7}
LSE_TOL = 1e-4


@dataclass(frozen=True)
class Case:
    batch: int
    query_len: int
    past_len: int
    num_heads: int
    kv_num_heads: int
    head_dim: int
    dtype: str  # "float32" | "float16" | "bfloat16"
    is_causal: bool = True
    sliding_window: int = 0
    padding: str = "none"  # none | left | holes | empty_row
    emit_probs: bool = True  # producer emits shared_probs (and the consumer reuses them)
    emit_lse: bool = True
    in_place: bool = False  # present caches alias the past ones (attention without the copy)
    query_scale: float = 1.0
    rising_keys: bool = False  # key norms grow along the sequence: a row's running max keeps rising
    seed: int = 0

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def key_len(self) -> int:
        return self.past_len + self.query_len

    def name(self) -> str:
        flags = [self.dtype, f"B{self.batch}", f"L{self.query_len}", f"P{self.past_len}",
                 f"H{self.num_heads}/{self.kv_num_heads}", f"D{self.head_dim}"]
        if not self.is_causal:
            flags.append("noncausal")
        if self.sliding_window:
            flags.append(f"win{self.sliding_window}")
        if self.padding != "none":
            flags.append(self.padding)
        flags.append("P" if self.emit_probs else "noP")
        if not self.emit_lse:
            flags.append("nolse")
        if self.in_place:
            flags.append("inplace")
        if self.rising_keys:
            flags.append("rising")
        return "-".join(flags)


def _mask(case: Case, gen: torch.Generator) -> torch.Tensor:
    mask = torch.ones(case.batch, case.key_len, dtype=torch.int64)
    if case.padding == "left":
        for b in range(case.batch):
            pad = int(torch.randint(0, case.key_len + 1, (1,), generator=gen))
            mask[b, :pad] = 0
        mask[0, : min(case.key_len, case.past_len + 1)] = 0  # row 0 of batch 0 sees no key
    elif case.padding == "holes":
        mask = (torch.rand(case.batch, case.key_len, generator=gen) > 0.25).to(torch.int64)
    elif case.padding == "empty_row":
        mask[case.batch - 1] = 0
    return mask


def _poison(shape, dtype, device) -> torch.Tensor:
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def _max_error(name: str, got: torch.Tensor, want: torch.Tensor, tol: float) -> dict:
    got32, want32 = got.float(), want.float()
    if torch.isnan(got32).any():
        return {"output": name, "ok": False, "why": f"{int(torch.isnan(got32).sum())} NaN (unwritten or NaN)"}
    finite = torch.isfinite(want32)
    if not torch.equal(finite, torch.isfinite(got32)) or not torch.equal(got32[~finite], want32[~finite]):
        return {"output": name, "ok": False, "why": "infinite entries differ"}
    err = float((got32[finite] - want32[finite]).abs().max()) if finite.any() else 0.0
    return {"output": name, "ok": err <= tol, "max_err": err, "tol": tol}


def _exact(name: str, got: torch.Tensor, want: torch.Tensor) -> dict:
    same = torch.equal(got.view(torch.uint8) if got.dtype != torch.float32 else got.view(torch.int32),
                       want.view(torch.uint8) if want.dtype != torch.float32 else want.view(torch.int32))
    return {"output": name, "ok": same, "why": None if same else "not a bit-exact copy"}


def _caches(case: Case, past: torch.Tensor, new_packed: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(past argument, present buffer) for the producer/consumer call: separate tensors, or
    for in-place calls one (B, Hkv, S, D) buffer holding the past rows, passed as both."""
    b, hkv, s, d = case.batch, case.kv_num_heads, case.key_len, case.head_dim
    present = _poison((b, hkv, s, d), case.torch_dtype, device)
    if not case.in_place or case.past_len == 0:
        return past, present
    present[:, :, : case.past_len] = past
    return present, present


def run_case(kernels: Kernels, case: Case, device: str = "cuda") -> dict:
    """Producer, then consumer with shared_probs and consumer recomputing from lse, each
    against the reference. Returns {"case", "ok", "checks": [...]} (never raises)."""
    result = {"case": case.name(), "params": asdict(case), "ok": False, "checks": []}
    try:
        _run_case(kernels, case, device, result["checks"])
        result["ok"] = all(c["ok"] for c in result["checks"])
    except Exception as exc:  # recorded, so that the other cases still run
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc(limit=4)
    return result


def _run_case(kernels: Kernels, case: Case, device: str, checks: list) -> None:
    gen = torch.Generator().manual_seed(case.seed)
    dt = case.torch_dtype
    B, L, P, S = case.batch, case.query_len, case.past_len, case.key_len
    Hq, Hkv, D = case.num_heads, case.kv_num_heads, case.head_dim

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(dt).to(device)

    growth = torch.linspace(0.25, 3.0, S) if case.rising_keys else torch.ones(S)
    query = randn(B, L, Hq * D, scale=case.query_scale)
    key = randn(B, L, Hkv, D, scale=growth[P:].view(1, L, 1, 1)).view(B, L, Hkv * D)
    value = randn(B, L, Hkv * D)
    past_key, past_value = randn(B, Hkv, P, D, scale=growth[:P].view(1, 1, P, 1)), randn(B, Hkv, P, D)
    mask = _mask(case, gen).to(device)
    scale = D**-0.5
    attrs = dict(num_heads=Hq, kv_num_heads=Hkv, scale=scale, is_causal=case.is_causal,
                 sliding_window=case.sliding_window)
    ref_out, ref_pk, ref_pv, ref_probs, ref_lse = reference.producer_attention(
        query, key, value, past_key, past_value, mask, probs_max_query_len=L if case.emit_probs else L - 1, **attrs)
    desc = make_desc(B, L, P, Hq, Hkv, D, dt, scale, case.is_causal, case.sliding_window)

    # Producer
    pk_arg, present_key = _caches(case, past_key, key, device)
    pv_arg, present_value = _caches(case, past_value, value, device)
    out = _poison((B, L, Hq * D), dt, device)
    probs = _poison((B, Hq, L, S), dt, device) if case.emit_probs else None
    lse = _poison((B, Hq, L), torch.float32, device) if case.emit_lse else None
    ws = kernels.workspace("producer", desc, case.emit_probs)
    kernels.call("producer", desc, producer_io(
        query=query, key=key, value=value, past_key=pk_arg, past_value=pv_arg, attention_mask=mask, output=out,
        present_key=present_key, present_value=present_value, shared_probs=probs, shared_lse=lse), ws)
    _sync(device)
    v_scale = max(float(ref_pv.float().abs().max()), 1e-3)
    checks.append(_max_error("producer.output", out, ref_out, REL_TOL[dt] * v_scale))
    checks.append(_exact("producer.present_key", present_key, ref_pk))
    checks.append(_exact("producer.present_value", present_value, ref_pv))
    if probs is not None:
        checks.append(_max_error("producer.shared_probs", probs, ref_probs, REL_TOL[dt]))
    if lse is not None:
        lse_tol = LSE_TOL * max(1.0, float(ref_lse[torch.isfinite(ref_lse)].abs().max()) if torch.isfinite(ref_lse).any() else 1.0)
        checks.append(_max_error("producer.shared_lse", lse, ref_lse, lse_tol))

    # Consumers: this layer's own V, the producer's P (or lse, query and keys).
    value2, past_value2 = randn(B, L, Hkv * D), randn(B, Hkv, P, D)
    producer_key = ref_pk
    variants = [("recompute", None)] + ([("probs", ref_probs)] if case.emit_probs else [])
    for label, shared_probs in variants:
        empty = ref_probs.new_empty((B, Hq, L, 0))
        want_out, want_pv = reference.consumer_attention(
            value2, past_value2, mask, shared_probs if shared_probs is not None else empty, ref_lse, query,
            producer_key, **attrs)
        pv_arg2, present_value2 = _caches(case, past_value2, value2, device)
        out2 = _poison((B, L, Hq * D), dt, device)
        ws2 = kernels.workspace("consumer", desc, shared_probs is not None)
        kernels.call("consumer", desc, consumer_io(
            value=value2, past_value=pv_arg2, attention_mask=mask, shared_probs=shared_probs, shared_lse=ref_lse,
            producer_query=query, producer_key=producer_key, output=out2, present_value=present_value2), ws2)
        _sync(device)
        v2_scale = max(float(want_pv.float().abs().max()), 1e-3)
        checks.append(_max_error(f"consumer[{label}].output", out2, want_out, REL_TOL[dt] * v2_scale))
        checks.append(_exact(f"consumer[{label}].present_value", present_value2, want_pv))


# ---------------------------------------------------------------------------------------
# Static layout (op version 2, capacity > 0): fixed-capacity caches, slot = position

@dataclass(frozen=True)
class StaticCase:
    """Row b's new tokens sit at slots starts[b] .. starts[b] + L - 1 of a cache of `capacity`
    slots; slots below hold its past, slots after the last position hold NaN (never read,
    never written)."""
    starts: tuple[int, ...]  # one per batch row
    query_len: int
    capacity: int
    num_heads: int
    kv_num_heads: int
    head_dim: int
    dtype: str
    sliding_window: int = 0
    emit_probs: bool = True
    emit_lse: bool = True
    in_place: bool = True  # present is past (the runtime binds one buffer), else a distinct buffer
    query_scale: float = 1.0
    seed: int = 0

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def name(self) -> str:
        flags = ["static", self.dtype, "pos" + ",".join(map(str, self.starts)), f"L{self.query_len}",
                 f"C{self.capacity}", f"H{self.num_heads}/{self.kv_num_heads}", f"D{self.head_dim}"]
        if self.sliding_window:
            flags.append(f"win{self.sliding_window}")
        flags.append("P" if self.emit_probs else "noP")
        if not self.emit_lse:
            flags.append("nolse")
        flags.append("inplace" if self.in_place else "copy")
        return "-".join(flags)


def static_reference(query, key, value, past_key, past_value, positions, *, num_heads, kv_num_heads, scale,
                     sliding_window):
    """docs/ops.md version 2 written out row by row in float32, independently of the kernels
    and of model/attention.py: new token i of row b goes to slot positions[b, i]; query (b, i)
    at position p sees slots j <= p with p - j < window. Returns (output, present_key,
    present_value, probs (B, Hq, L, C) with NaN beyond each row's last position, lse)."""
    B, L, _ = query.shape
    C, D = past_key.shape[2], past_key.shape[3]
    g = num_heads // kv_num_heads
    present_key, present_value = past_key.clone(), past_value.clone()
    for b in range(B):
        for i in range(L):
            present_key[b, :, int(positions[b, i])] = key[b, i].view(kv_num_heads, D)
            present_value[b, :, int(positions[b, i])] = value[b, i].view(kv_num_heads, D)
    output = torch.zeros(B, L, num_heads, D)
    probs = torch.full((B, num_heads, L, C), float("nan"))
    lse = torch.zeros(B, num_heads, L)
    for b in range(B):
        last = int(positions[b, L - 1])
        seen = last + 1  # slots past the last position are never read: they may hold NaN
        slot = torch.arange(seen)
        pos = positions[b].view(L, 1).cpu()
        visible = slot.view(1, seen) <= pos
        if sliding_window:
            visible &= pos - slot.view(1, seen) < sliding_window
        for h in range(num_heads):
            k = present_key[b, h // g, :seen].float().cpu()
            v = present_value[b, h // g, :seen].float().cpu()
            q = query[b, :, h * D:(h + 1) * D].float().cpu()
            scores = (q @ k.T * scale).masked_fill(~visible, float("-inf"))
            row_lse = torch.logsumexp(scores, dim=-1)
            p = torch.exp(scores - row_lse.view(L, 1))
            probs[b, h, :, :seen] = p
            lse[b, h] = row_lse
            output[b, :, h] = p @ v
    return output.view(B, L, num_heads * D), present_key, present_value, probs, lse


def run_static_case(kernels: Kernels, case: StaticCase, device: str = "cuda") -> dict:
    """Producer, consumer reusing P (decode shapes) and consumer recomputing from lse, static
    layout, against static_reference. Returns {"case", "ok", "checks"} (never raises)."""
    result = {"case": case.name(), "params": asdict(case), "ok": False, "checks": []}
    try:
        _run_static_case(kernels, case, device, result["checks"])
        result["ok"] = all(c["ok"] for c in result["checks"])
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc(limit=4)
    return result


def _static_caches(case: StaticCase, gen: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(past, present) for one cache: past holds random rows below each row's start and NaN
    from it on; present is past itself (in place) or a distinct buffer of other values."""
    B, Hkv, C, D = len(case.starts), case.kv_num_heads, case.capacity, case.head_dim
    past = torch.randn(B, Hkv, C, D, generator=gen).to(case.torch_dtype)
    for b, start in enumerate(case.starts):
        past[b, :, start:] = float("nan")
    past = past.to(device)
    if case.in_place:
        return past, past
    return past, torch.full_like(past, 3.0)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32) if t.dtype == torch.float32 else t.view(torch.int16)


def _run_static_case(kernels: Kernels, case: StaticCase, device: str, checks: list) -> None:
    gen = torch.Generator().manual_seed(case.seed)
    dt = case.torch_dtype
    B, L, C = len(case.starts), case.query_len, case.capacity
    Hq, Hkv, D = case.num_heads, case.kv_num_heads, case.head_dim

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(dt).to(device)

    query = randn(B, L, Hq * D, scale=case.query_scale)
    key, value = randn(B, L, Hkv * D), randn(B, L, Hkv * D)
    positions = (torch.tensor(case.starts).view(B, 1) + torch.arange(L).view(1, L)).to(device)
    past_key, present_key = _static_caches(case, gen, device)
    past_value, present_value = _static_caches(case, gen, device)
    scale = D**-0.5
    attrs = dict(num_heads=Hq, kv_num_heads=Hkv, scale=scale, sliding_window=case.sliding_window)
    ref_out, ref_pk, ref_pv, ref_probs, ref_lse = static_reference(
        query, key, value, past_key.clone(), past_value.clone(), positions, **attrs)
    desc = make_desc(B, L, 0, Hq, Hkv, D, dt, scale, True, case.sliding_window, capacity=C)

    past_before = (past_key.clone(), past_value.clone())
    out = _poison((B, L, Hq * D), dt, device)
    probs = _poison((B, Hq, L, C), dt, device) if case.emit_probs else None
    lse = _poison((B, Hq, L), torch.float32, device) if case.emit_lse else None
    kernels.call("producer", desc, producer_io(
        query=query, key=key, value=value, past_key=past_key, past_value=past_value, output=out,
        present_key=present_key, present_value=present_value, shared_probs=probs, shared_lse=lse,
        position_ids=positions), kernels.workspace("producer", desc, case.emit_probs))
    _sync(device)
    v_scale = max(float(value.float().abs().max()), float(ref_pv.float().nan_to_num(0).abs().max()), 1e-3)
    checks.append(_max_error("producer.output", out.cpu(), ref_out.to(dt), REL_TOL[dt] * v_scale))
    # every slot bit for bit: the new rows at their positions, all others as past had them
    checks.append(_exact("producer.present_key", _bits(present_key.cpu()), _bits(ref_pk.cpu())))
    checks.append(_exact("producer.present_value", _bits(present_value.cpu()), _bits(ref_pv.cpu())))
    if not case.in_place:
        for name, before, after in zip(("key", "value"), past_before, (past_key, past_value)):
            checks.append(_exact(f"producer.past_{name} untouched", _bits(after.cpu()), _bits(before.cpu())))
    last = positions[:, -1].cpu()
    seen = torch.arange(C).view(1, 1, 1, C) <= last.view(B, 1, 1, 1)
    if probs is not None:
        got = probs.cpu()
        checks.append(_max_error("producer.shared_probs", torch.where(seen, got, 0), ref_probs.nan_to_num(0).to(dt),
                                 REL_TOL[dt]))
        # entries past a row's last position are not written: still the poison
        beyond = got[~seen.expand_as(got)]
        checks.append({"output": "producer.shared_probs beyond the last position", "ok": bool(beyond.isnan().all()),
                       "why": "written (the contract leaves these entries alone)"})
    if lse is not None:
        checks.append(_max_error("producer.shared_lse", lse.cpu(), ref_lse, LSE_TOL * max(1.0, float(ref_lse.abs().max()))))

    # Consumers: their own V; the producer's P as the contract leaves it (NaN past the last
    # position: a consumer reading there fails), or its lse, query and keys.
    value2 = randn(B, L, Hkv * D)
    past_value2, _ = _static_caches(case, gen, device)
    want_out, _, want_pv, _, _ = static_reference(query, key, value2, past_key.clone(), past_value2.clone(),
                                                  positions, **attrs)
    shared = ref_probs.to(dt).to(device)
    producer_key = ref_pk.to(device)  # NaN past each row's last position, like the producer's cache
    lse_in = ref_lse.to(device)
    variants = [("recompute", None)] + ([("probs", shared)] if L <= 16 else [])
    for label, shared_probs in variants:  # each from the same past
        pv_arg = past_value2.clone()
        pv_out = pv_arg if case.in_place else torch.full_like(pv_arg, 3.0)
        out2 = _poison((B, L, Hq * D), dt, device)
        kernels.call("consumer", desc, consumer_io(
            value=value2, past_value=pv_arg, shared_probs=shared_probs, shared_lse=lse_in, producer_query=query,
            producer_key=producer_key, output=out2, present_value=pv_out, position_ids=positions),
            kernels.workspace("consumer", desc, shared_probs is not None))
        _sync(device)
        v2_scale = max(float(value2.float().abs().max()), float(want_pv.float().nan_to_num(0).abs().max()), 1e-3)
        checks.append(_max_error(f"consumer[{label}].output", out2.cpu(), want_out.to(dt), REL_TOL[dt] * v2_scale))
        checks.append(_exact(f"consumer[{label}].present_value", _bits(pv_out.cpu()), _bits(want_pv.cpu())))
        if not case.in_place:
            checks.append(_exact(f"consumer[{label}].past_value untouched", _bits(pv_arg.cpu()),
                                 _bits(past_value2.cpu())))


def static_cases(large: bool) -> list[StaticCase]:
    """Static-layout cases: rows at different positions (right-padded batches), in place and
    copied, windows, GQA, decode (split-KV, P reused) and prefill (flash, recompute), every dtype."""
    cases = []
    for dt in DTYPE_NAMES:
        cases += [
            StaticCase((0, 5, 37), 1, 64, 4, 2, 64, dt),                          # decode, a row at slot 0
            StaticCase((0, 5, 37), 1, 64, 4, 2, 64, dt, in_place=False),          # runtime without aliasing
            StaticCase((3, 40, 90), 1, 96, 8, 2, 64, dt, sliding_window=16),      # window inside the cache
            StaticCase((100, 301), 1, 512, 8, 1, 64, dt, query_scale=4.0),        # g = 8, splits past the rows exit
            StaticCase((450, 20), 1, 512, 4, 2, 64, dt, sliding_window=64),       # hidden splits write P zeros
            StaticCase((10, 60), 3, 75, 4, 2, 40, dt),                            # L 3, C % 8 != 0: scalar P rows
            StaticCase((12, 0), 5, 48, 8, 2, 64, dt, in_place=False),            # g*L = 20: row tiles without the last token
            StaticCase((0, 7), 40, 64, 4, 2, 64, dt, emit_probs=False),           # prefill from slot 0 and chunked
            StaticCase((0, 30), 70, 128, 4, 1, 64, dt, emit_probs=False, sliding_window=20),
            StaticCase((50,), 33, 96, 4, 2, 80, dt, emit_probs=False, emit_lse=False, in_place=False),
            StaticCase((1, 62), 2, 64, 2, 1, 128, dt, emit_lse=False),            # D 128, the last slot
            StaticCase((4, 9), 17, 32, 2, 2, 8, dt, emit_probs=False),            # D 8
        ]
        if large:
            cases += [
                StaticCase((100, 2047, 8191, 5000), 1, 8192, 32, 8, 64, dt),      # decode in the benchmark's cache
                StaticCase((0, 4000), 1, 8192, 32, 8, 64, dt, sliding_window=1024, in_place=False),
                StaticCase((0, 700), 300, 2048, 32, 8, 128, dt, emit_probs=False),
                StaticCase((3000,), 9, 4096, 16, 4, 256, dt),
            ]
    return [StaticCase(**{**asdict(c), "seed": i}) for i, c in enumerate(cases)]


def random_static_cases(count: int, seed: int) -> list[StaticCase]:
    rng = random.Random(seed)
    cases = []
    for n in range(count):
        kv, group = rng.randint(1, 8), rng.choice((1, 2, 4, 8))
        capacity = rng.choice((rng.randint(8, 300), rng.randint(300, 4096)))
        query_len = rng.choice((1, 1, 2, rng.randint(1, 16), rng.randint(1, min(capacity, 300))))
        starts = tuple(rng.randint(0, capacity - query_len) for _ in range(rng.randint(1, 5)))
        cases.append(StaticCase(
            starts=starts, query_len=query_len, capacity=capacity, num_heads=kv * group, kv_num_heads=kv,
            head_dim=rng.choice((8, 16, 40, 64, 64, 80, 96, 128, 256)), dtype=rng.choice(DTYPE_NAMES),
            sliding_window=rng.choice((0, 0, rng.randint(1, 256))), emit_probs=query_len <= 16 and rng.random() < 0.8,
            emit_lse=rng.random() < 0.8, in_place=rng.random() < 0.7, query_scale=rng.choice((1.0, 3.0)),
            seed=seed * 1000 + n))
    return cases


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


DTYPE_NAMES = ("float32", "float16", "bfloat16")


def edge_cases(large: bool) -> list[Case]:
    """The cases named in the contract: S = 1, P = 0, padded rows, windows, non-causal, odd
    head dims, every dtype, decode and prefill, batch 1 and a large batch."""
    cases = []
    for dt in DTYPE_NAMES:
        cases += [
            Case(1, 1, 0, 4, 2, 64, dt),                                   # S = 1
            Case(2, 1, 37, 8, 2, 64, dt, padding="left"),                  # decode, padded rows
            Case(2, 3, 50, 4, 4, 40, dt, padding="holes"),                 # MHA, L > 1 decode
            Case(1, 70, 0, 4, 1, 64, dt, emit_probs=False),                # prefill P = 0 (g = 4)
            Case(2, 33, 20, 4, 2, 80, dt, emit_probs=False, padding="left"),  # chunked prefill, D 80
            Case(1, 40, 9, 2, 2, 96, dt, emit_probs=False, is_causal=False),  # non-causal, D 96
            Case(2, 1, 60, 4, 2, 64, dt, sliding_window=16),               # decode with a window
            Case(1, 50, 30, 4, 2, 64, dt, emit_probs=False, sliding_window=20),
            Case(1, 20, 5, 8, 2, 128, dt, emit_probs=False, padding="empty_row"),
            Case(1, 17, 3, 2, 1, 8, dt, emit_probs=False),                 # smallest head dim
            Case(1, 2, 40, 4, 2, 64, dt, in_place=True),                   # attention without the copy
            Case(1, 24, 10, 4, 2, 64, dt, emit_probs=False, in_place=True),
            Case(1, 16, 30, 8, 4, 32, dt, emit_lse=False),                 # L = probs_max_query_len
            Case(2, 128, 64, 2, 1, 64, dt, emit_probs=False, padding="left"),  # key tiles masked by padding only
            Case(1, 1, 700, 4, 2, 64, dt, query_scale=4.0),                # splits of several key tiles
            Case(1, 5, 520, 2, 1, 128, dt, query_scale=4.0, padding="holes"),
            Case(1, 1, 511, 4, 1, 64, dt, query_scale=4.0, rising_keys=True),  # S % 8 == 0: 16-byte P rows
            Case(2, 2, 254, 8, 2, 256, dt, padding="holes"),               # D 256 decode, two row groups
            Case(1, 3, 381, 6, 2, 128, dt, rising_keys=True, in_place=True),  # g = 3, L = 3: rows 9 of 12
            Case(1, 1, 20, 2, 1, 8, dt, in_place=True),                    # D 8: lanes past the head dim load nothing
        ]
        if large:
            cases += [
                Case(1, 1, 4095, 32, 8, 64, dt),                           # many splits at batch 1
                Case(64, 1, 700, 32, 8, 64, dt, padding="left"),           # large batch
                Case(1, 300, 0, 8, 2, 256, dt, emit_probs=False),          # D = 256 prefill
                Case(2, 1, 2000, 16, 4, 256, dt, sliding_window=512),
                Case(1, 600, 1000, 32, 8, 128, dt, emit_probs=False, padding="left"),
                Case(4, 1, 8191, 32, 8, 64, dt, emit_lse=False),           # benchmark shape, smaller batch
            ]
    return [Case(**{**asdict(c), "seed": i}) for i, c in enumerate(cases)]


def random_cases(count: int, seed: int, *, max_batch: int, max_query: int, max_past: int,
                 head_dims: tuple[int, ...], max_kv_heads: int = 4) -> list[Case]:
    rng = random.Random(seed)
    cases = []
    for n in range(count):
        kv = rng.randint(1, max_kv_heads)
        group = rng.choice((1, 2, 4, 8))
        query_len = rng.choice((1, 1, 2, rng.randint(1, 16), rng.randint(1, max_query)))
        emit = query_len <= 16 and rng.random() < 0.7
        cases.append(Case(
            batch=rng.randint(1, max_batch), query_len=query_len, past_len=rng.choice((0, rng.randint(0, max_past))),
            num_heads=kv * group, kv_num_heads=kv, head_dim=rng.choice(head_dims), dtype=rng.choice(DTYPE_NAMES),
            is_causal=rng.random() < 0.8, sliding_window=rng.choice((0, 0, 0, rng.randint(1, 64))),
            padding=rng.choice(("none", "none", "left", "holes", "empty_row")), emit_probs=emit,
            emit_lse=rng.random() < 0.8, in_place=rng.random() < 0.15, query_scale=rng.choice((1.0, 3.0)),
            seed=seed * 1000 + n))
    return cases


# ---------------------------------------------------------------------------------------
# Benchmarks (GPU)

HEADS = (32, 8, 64)  # Hq, Hkv, D of the decode and prefill shapes


def _bench(fn, device: str = "cuda") -> tuple[float, str]:
    """Median milliseconds per call and how they were taken: replays of a CUDA graph of many
    calls (launch overhead excluded, as in a graph-captured decode step), else CUDA events
    around single calls (triton.testing); on the CPU (the emulated dry run) host timing."""
    if not device.startswith("cuda"):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return sorted(times)[1], "host"
    try:
        return _graph_ms(fn), "graph"
    except Exception:
        torch.cuda.synchronize()
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=200, return_mode="median")), "events"


def _graph_ms(fn, budget_ms: float = 20.0) -> float:
    """Median over 10 replays of a graph holding as many calls as fit in ~budget_ms."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        calls = max(1, min(2000, int(budget_ms / max(start.elapsed_time(end), 1e-3))))
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            for _ in range(calls):
                fn()
        graph.replay()
        times = []
        for _ in range(10):
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / calls)
    torch.cuda.current_stream().wait_stream(stream)
    return sorted(times)[len(times) // 2]


def device_bandwidth(gib: int = 1) -> dict[str, float]:
    """HBM ceilings in bytes per second, over buffers of `gib` GiB (20x the H100's 50 MB L2;
    two buffer pairs used in turn): a copy with read and write both counted, through
    cudaMemcpy (`copy_`) and through an elementwise kernel (`torch.mul`), and a read-only
    reduction (`sum`). Decode kernels mostly read, so `read` is the stricter ceiling."""
    n = gib << 28  # float32 elements
    pairs = [(torch.empty(n, device="cuda").normal_(), torch.empty(n, device="cuda")) for _ in range(2)]
    turn = itertools.cycle(pairs)

    def memcpy():
        src, dst = next(turn)
        dst.copy_(src)

    def elementwise():
        src, dst = next(turn)
        torch.mul(src, 1.0, out=dst)

    def read():
        src, _ = next(turn)
        src.sum()

    moved = {"memcpy": 2 * n * 4, "elementwise": 2 * n * 4, "read": n * 4}
    result = {name: moved[name] / (_bench(fn)[0] * 1e-3) for name, fn in
              (("memcpy", memcpy), ("elementwise", elementwise), ("read", read))}
    del pairs, turn
    torch.cuda.empty_cache()
    return result


class Rotation:
    """Enough independent sets of inputs and outputs that one pass over them does not fit in
    L2 (50 MB), so that every shape, small ones included, is timed from HBM: consecutive calls
    of a timed op (captured in one graph) use consecutive sets."""

    def __init__(self, make, bytes_per_set: int, budget: int = 1 << 30):
        self.sets = [make(i) for i in range(max(1, min(64, math.ceil(budget / max(bytes_per_set, 1)))))]
        self.index = 0

    def next(self):
        s = self.sets[self.index]
        self.index = (self.index + 1) % len(self.sets)
        return s


def bench_decode(kernels: Kernels, batch: int, seq: int, copy_bw: float, only: tuple[str, ...] = (),
                 heads: tuple[int, int, int] = HEADS) -> dict:
    """One decode step (L = 1, P = seq - 1) of every op, ms per call. `_attn`: the caches are
    already in the present layout (in-place append, kernels.h): attention alone; otherwise the
    op also writes the present caches (the concat). Bytes are the least each must move."""
    dt, dev = torch.bfloat16, kernels.device
    B, S, P = batch, seq, seq - 1
    Hq, Hkv, D = heads
    g, scale = Hq // Hkv, D**-0.5
    kv_bytes = B * Hkv * S * D * 2
    p_bytes = B * Hq * S * 2

    def make(i):
        gen = torch.Generator(device=dev).manual_seed(i)
        r = lambda *shape: torch.randn(*shape, generator=gen, device=dev).to(dt)  # noqa: E731
        empty = lambda *shape: torch.empty(*shape, dtype=dt, device=dev)  # noqa: E731
        s = dict(q=r(B, 1, Hq * D), k_new=r(B, 1, Hkv * D), v_new=r(B, 1, Hkv * D), past_k=r(B, Hkv, P, D),
                 past_v=r(B, Hkv, P, D), mask=torch.ones(B, S, dtype=torch.int64, device=dev),
                 out=empty(B, 1, Hq * D), present_k=empty(B, Hkv, S, D), present_v=empty(B, Hkv, S, D),
                 probs_out=empty(B, Hq, 1, S), lse_out=torch.empty(B, Hq, 1, device=dev))
        # caches already in the present layout, for the in-place (attention only) calls
        s["cache_k"] = torch.cat([s["past_k"], s["k_new"].view(B, 1, Hkv, D).transpose(1, 2)], 2).contiguous()
        s["cache_v"] = torch.cat([s["past_v"], s["v_new"].view(B, 1, Hkv, D).transpose(1, 2)], 2).contiguous()
        scores = (s["q"].view(B, Hkv, g, D) @ s["cache_k"].transpose(-1, -2)).float() * scale
        s["probs"] = torch.softmax(scores, -1).to(dt).view(B, Hq, 1, S)
        s["lse"] = torch.logsumexp(scores, -1).view(B, Hq, 1)
        return s

    rot = Rotation(make, 6 * kv_bytes + 2 * p_bytes)
    desc = make_desc(B, 1, P, Hq, Hkv, D, dt, scale, True, 0)
    ws_p = kernels.workspace("producer", desc, True)
    ws_base = kernels.workspace("producer", desc, False)
    ws_c = kernels.workspace("consumer", desc, True)
    ws_rc = kernels.workspace("consumer", desc, False)

    def producer(emit: bool, in_place: bool):
        def run():
            s = rot.next()
            pk, pv = (s["cache_k"], s["cache_v"]) if in_place else (s["past_k"], s["past_v"])
            dk, dv = (s["cache_k"], s["cache_v"]) if in_place else (s["present_k"], s["present_v"])
            kernels.call("producer", desc, producer_io(
                query=s["q"], key=s["k_new"], value=s["v_new"], past_key=pk, past_value=pv, attention_mask=s["mask"],
                output=s["out"], present_key=dk, present_value=dv, shared_probs=s["probs_out"] if emit else None,
                shared_lse=s["lse_out"] if emit else None), ws_p if emit else ws_base)
        return run

    def consumer(in_place: bool, reuse_probs: bool = True):
        def run():
            s = rot.next()
            pv = s["cache_v"] if in_place else s["past_v"]
            dv = s["cache_v"] if in_place else s["present_v"]
            kernels.call("consumer", desc, consumer_io(
                value=s["v_new"], past_value=pv, attention_mask=s["mask"],
                shared_probs=s["probs"] if reuse_probs else None, shared_lse=s["lse"], producer_query=s["q"],
                producer_key=s["cache_k"], output=s["out"], present_value=dv), ws_c if reuse_probs else ws_rc)
        return run

    def sdpa():
        s = rot.next()
        q = s["q"].view(B, 1, Hq, D).transpose(1, 2)
        torch.nn.functional.scaled_dot_product_attention(q, s["cache_k"], s["cache_v"], enable_gqa=True)

    def torch_producer():
        s = rot.next()
        q = s["q"].view(B, Hkv, g, D)
        p = torch.softmax((q @ s["cache_k"].transpose(-1, -2)).float() * scale, -1).to(dt)
        return p @ s["cache_v"]

    def torch_pv():
        s = rot.next()
        return s["probs"].view(B, Hkv, g, S) @ s["cache_v"]

    def torch_concat():
        s = rot.next()
        s["present_k"][:, :, :P].copy_(s["past_k"])
        s["present_v"][:, :, :P].copy_(s["past_v"])

    ms, method = {}, {}
    for name, fn in [("sdpa", sdpa), ("torch_producer_P", torch_producer), ("torch_PV", torch_pv),
                     ("ours_producer_attn", producer(True, True)), ("ours_producer", producer(True, False)),
                     ("ours_base_attn", producer(False, True)), ("ours_base", producer(False, False)),
                     ("ours_consumer_attn", consumer(True)), ("ours_consumer", consumer(False)),
                     ("ours_consumer_recompute_attn", consumer(True, reuse_probs=False)),
                     ("torch_concat_kv", torch_concat)]:
        if only and name not in only:
            continue
        try:
            ms[name], method[name] = _bench(fn, device=dev)
        except Exception as exc:
            ms[name] = None
            ms[name + "_error"] = f"{type(exc).__name__}: {exc}"
    # Fewest bytes each must move (attention: read caches once, write outputs once).
    moved = {
        "sdpa": 2 * kv_bytes, "torch_producer_P": 2 * kv_bytes + p_bytes, "torch_PV": kv_bytes + p_bytes,
        "ours_producer_attn": 2 * kv_bytes + p_bytes, "ours_producer": 4 * kv_bytes + p_bytes,
        "ours_base_attn": 2 * kv_bytes, "ours_base": 4 * kv_bytes,
        "ours_consumer_attn": kv_bytes + p_bytes, "ours_consumer": 2 * kv_bytes + p_bytes,
        "ours_consumer_recompute_attn": 2 * kv_bytes, "torch_concat_kv": 4 * kv_bytes,
    }
    bandwidth = {k: (moved[k] / (v * 1e-3) if isinstance(v, float) else None) for k, v in ms.items() if k in moved}
    return {
        "batch": B, "seq": S, "ms": ms, "timing": method, "bytes": moved, "input_sets": len(rot.sets),
        "TBps": {k: (v / 1e12 if v else None) for k, v in bandwidth.items()},
        "fraction_of_copy": {k: (v / copy_bw if v else None) for k, v in bandwidth.items()},
    }


STATIC_CAPACITY = 8192
STATIC_DECODE_SHAPES = ((32, 2048), (32, 8192), (8, 2048), (1, 128), (1, 2048), (1, 8192))  # (batch, slots read)


def bench_static_decode(kernels: Kernels, batch: int, length: int, capacity: int = STATIC_CAPACITY,
                        heads: tuple[int, int, int] = HEADS) -> dict:
    """One static-layout decode step (op version 2): every row at position length - 1 of a
    cache of `capacity` slots, caches bound in place (the new slot written, `length` slots
    read), ms per call, against torch on the same `length` slots (SDPA, P @ V) and SDPA over
    the whole capacity with a mask (what a static cache without length-aware attention pays)."""
    dt, dev = torch.bfloat16, kernels.device
    B, C, n = batch, capacity, length
    Hq, Hkv, D = heads
    g, scale = Hq // Hkv, D**-0.5
    kv_bytes = B * Hkv * n * D * 2  # one cache, the slots read
    p_bytes = B * Hq * n * 2

    def make(i):
        gen = torch.Generator(device=dev).manual_seed(i)
        r = lambda *shape: torch.randn(*shape, generator=gen, device=dev).to(dt)  # noqa: E731
        empty = lambda *shape: torch.empty(*shape, dtype=dt, device=dev)  # noqa: E731
        s = dict(q=r(B, 1, Hq * D), k_new=r(B, 1, Hkv * D), v_new=r(B, 1, Hkv * D), cache_k=r(B, Hkv, C, D),
                 cache_v=r(B, Hkv, C, D), positions=torch.full((B, 1), n - 1, dtype=torch.int64, device=dev),
                 out=empty(B, 1, Hq * D), probs_out=empty(B, Hq, 1, C), lse_out=torch.empty(B, Hq, 1, device=dev),
                 mask=(torch.arange(C, device=dev) < n).view(1, 1, 1, C).expand(B, 1, 1, C))
        scores = (s["q"].view(B, Hkv, g, D) @ s["cache_k"][:, :, :n].transpose(-1, -2)).float() * scale
        s["probs"] = torch.zeros(B, Hq, 1, C, dtype=dt, device=dev)
        s["probs"][..., :n] = torch.softmax(scores, -1).to(dt).view(B, Hq, 1, n)
        s["lse"] = torch.logsumexp(scores, -1).view(B, Hq, 1)
        return s

    rot = Rotation(make, 2 * kv_bytes + 2 * p_bytes)
    desc = make_desc(B, 1, 0, Hq, Hkv, D, dt, scale, True, 0, capacity=C)
    ws = {(op, flag): kernels.workspace(op, desc, flag) for op in ("producer", "consumer") for flag in (True, False)}

    def producer(emit: bool):
        def run():
            s = rot.next()
            kernels.call("producer", desc, producer_io(
                query=s["q"], key=s["k_new"], value=s["v_new"], past_key=s["cache_k"], past_value=s["cache_v"],
                output=s["out"], present_key=s["cache_k"], present_value=s["cache_v"],
                shared_probs=s["probs_out"] if emit else None, shared_lse=s["lse_out"] if emit else None,
                position_ids=s["positions"]), ws["producer", emit])
        return run

    def consumer(reuse_probs: bool):
        def run():
            s = rot.next()
            kernels.call("consumer", desc, consumer_io(
                value=s["v_new"], past_value=s["cache_v"], shared_probs=s["probs"] if reuse_probs else None,
                shared_lse=s["lse"], producer_query=s["q"], producer_key=s["cache_k"], output=s["out"],
                present_value=s["cache_v"], position_ids=s["positions"]), ws["consumer", reuse_probs])
        return run

    def sdpa():
        s = rot.next()
        q = s["q"].view(B, 1, Hq, D).transpose(1, 2)
        torch.nn.functional.scaled_dot_product_attention(q, s["cache_k"][:, :, :n], s["cache_v"][:, :, :n],
                                                         enable_gqa=True)

    def sdpa_capacity():
        s = rot.next()
        q = s["q"].view(B, 1, Hq, D).transpose(1, 2)
        torch.nn.functional.scaled_dot_product_attention(q, s["cache_k"], s["cache_v"], attn_mask=s["mask"],
                                                         enable_gqa=True)

    def torch_pv():
        s = rot.next()
        return s["probs"][..., :n].view(B, Hkv, g, n) @ s["cache_v"][:, :, :n]

    ms, method = {}, {}
    for name, fn in [("sdpa", sdpa), ("sdpa_capacity_masked", sdpa_capacity), ("torch_PV", torch_pv),
                     ("ours_producer", producer(True)), ("ours_base", producer(False)),
                     ("ours_consumer", consumer(True)), ("ours_consumer_recompute", consumer(False))]:
        try:
            ms[name], method[name] = _bench(fn, device=dev)
        except Exception as exc:
            ms[name] = None
            ms[name + "_error"] = f"{type(exc).__name__}: {exc}"
    moved = {"sdpa": 2 * kv_bytes, "sdpa_capacity_masked": 2 * kv_bytes * C // n, "torch_PV": kv_bytes + p_bytes,
             "ours_producer": 2 * kv_bytes + p_bytes, "ours_base": 2 * kv_bytes, "ours_consumer": kv_bytes + p_bytes,
             "ours_consumer_recompute": 2 * kv_bytes}
    return {"batch": B, "length": n, "capacity": C, "ms": ms, "timing": method, "bytes": moved,
            "input_sets": len(rot.sets),
            "TBps": {k: (moved[k] / (v * 1e-3) / 1e12 if isinstance(v, float) else None)
                     for k, v in ms.items() if k in moved}}


# GatedSilu shapes (rows, width): one element, odd widths (one element per thread), multiples of
# 8 (16-byte slices), several grid-stride rounds; each also with both tensors 2-4 bytes off
# 16-byte alignment (the element path).
GATED_SILU_SHAPES = ((1, 1), (1, 7), (3, 8), (2, 24), (1, 2049), (5, 4104), (64, 8192))
# Relative error allowed against float64: a few float32 ulp (exp by polynomial, one division),
# then one rounding to T (the CUDA kernel's expf and the CPU kernel's polynomial both fit).
GATED_SILU_TOLERANCE = {torch.float32: 1e-6, torch.float16: 2**-10, torch.bfloat16: 2**-7}


def gated_silu_values(shape, seed: int) -> torch.Tensor:
    """float32 (..., 2*I) inputs: random times 4, the first row's first gates -200, -30, 30, 200
    (as many as fit: exp's clamps)."""
    values = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 4
    first_gates = values.view(-1, shape[-1])[0, : shape[-1] // 2]
    extremes = torch.tensor([-200.0, -30.0, 30.0, 200.0])[: first_gates.numel()]
    first_gates[: extremes.numel()] = extremes
    return values


def gated_silu_error(gate_up: torch.Tensor, output: torch.Tensor) -> float:
    """The largest error of `output` against silu(gate) * up in float64, relative to the value,
    to compare with GATED_SILU_TOLERANCE. Values below T's resolution near zero count as zero
    (a gate of -30 gives ~1e-11, 0 in float16; -200 gives ~1e-85): an absolute floor of float16's
    smallest subnormal, 1e-30 for the wider types. NaN when the output holds one."""
    gate, up = gate_up.double().cpu().chunk(2, dim=-1)
    want = gate * torch.sigmoid(gate) * up
    floor = 2.0**-24 if gate_up.dtype == torch.float16 else 1e-30
    bound = want.abs() + floor / GATED_SILU_TOLERANCE[gate_up.dtype]
    return ((output.double().cpu() - want).abs() / bound).max().item()


def gated_silu_check(kernels: Kernels, shapes=GATED_SILU_SHAPES) -> list[dict]:
    """ua_gated_silu_cuda against silu(gate) * up in float64, every dtype and shape, gates
    including +-30 and +-200 (exp's clamps), and the memory around the output untouched."""
    results = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for rows, width in shapes:
            for offset in (0, 1):
                values = gated_silu_values((rows, 2 * width), seed=rows * 100003 + width)
                # offset: the tensors start `offset` elements into their buffers (misaligned)
                buffer = torch.zeros(rows * 2 * width + offset, dtype=dtype, device=kernels.device)
                gate_up = buffer[offset:].view(rows, 2 * width)
                gate_up.copy_(values.to(dtype))
                out_buffer = torch.full((rows * width + offset + 8,), 7.0, dtype=dtype, device=kernels.device)
                output = out_buffer[offset:offset + rows * width].view(rows, width)
                status, message = kernels.gated_silu(gate_up, output)
                error = gated_silu_error(gate_up, output)
                tail = out_buffer[offset + rows * width:].cpu()
                ok = (status == 0 and not output.isnan().any().item() and error <= GATED_SILU_TOLERANCE[dtype]
                      and bool((tail == 7.0).all()) and bool((out_buffer[:offset].cpu() == 7.0).all()))
                results.append({"case": f"gated_silu-{str(dtype).removeprefix('torch.')}-{rows}x{width}-offset{offset}",
                                "ok": ok, "max_relative_error": error, "status": status, "message": message})
    return results


# Linear shapes (rows, K, N): one row (the GEMV: K below, at and above one warp's 256 elements,
# not a multiple of 256, Llama-3.2-1B's down projection; N below and above a block's 4 rows),
# then rows > 1 and, at one row, inputs off 16-byte alignment or K not a multiple of 8 (cuBLAS:
# GPU only, the emulated build has no cuBLAS handle).
LINEAR_GEMV_SHAPES = ((1, 8, 1), (1, 64, 5), (1, 264, 37), (1, 512, 130), (1, 8192, 9))
LINEAR_GEMM_SHAPES = ((2, 64, 5), (7, 264, 37), (64, 2048, 3072), (1, 20, 6))
# Relative to sum_k |w x|: float32 accumulation over K terms, then one rounding to T.
LINEAR_TOLERANCE = {torch.float32: 1e-5, torch.float16: 2**-10, torch.bfloat16: 2**-7}


def linear_error(input: torch.Tensor, weight: torch.Tensor, output: torch.Tensor) -> float:
    """The largest error of `output` against input x weight^T in float64 (over the last axes),
    relative to sum_k |w x|, to compare with LINEAR_TOLERANCE; inf for a wrong shape."""
    x, w = input.double().cpu(), weight.double().cpu()
    if output.shape != (*x.shape[:-1], w.shape[0]):
        return float("inf")
    scale = x.abs() @ w.abs().t() + 1e-30
    return ((output.double().cpu() - x @ w.t()).abs() / scale).max().item()


def linear_check(kernels: Kernels, shapes=LINEAR_GEMV_SHAPES + LINEAR_GEMM_SHAPES, offsets=(0, 1)) -> list[dict]:
    """ua_linear_cuda against input x weight^T in float64, every dtype and shape, the memory
    around the output untouched; offset 1 starts every tensor one element into its buffer."""
    results = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for rows, k, n in shapes:
            for offset in offsets:
                generator = torch.Generator().manual_seed(rows * 7919 + k * 31 + n)
                values = [torch.randn(size, generator=generator) for size in (rows * k, n * k)]
                tensors = []
                for flat, shape in zip(values, ((rows, k), (n, k))):
                    buffer = torch.zeros(flat.numel() + offset, dtype=dtype, device=kernels.device)
                    buffer[offset:].copy_(flat.to(dtype))
                    tensors.append(buffer[offset:].view(shape))
                input, weight = tensors
                out_buffer = torch.full((rows * n + offset + 8,), 7.0, dtype=dtype, device=kernels.device)
                output = out_buffer[offset:offset + rows * n].view(rows, n)
                status, message = kernels.linear(input, weight, output)
                error = linear_error(input, weight, output)
                untouched = bool((out_buffer[offset + rows * n:].cpu() == 7.0).all()) and bool(
                    (out_buffer[:offset].cpu() == 7.0).all())
                ok = status == 0 and error <= LINEAR_TOLERANCE[dtype] and untouched
                results.append({"case": f"linear-{str(dtype).removeprefix('torch.')}-{rows}x{k}x{n}-offset{offset}",
                                "ok": ok, "max_relative_error": error, "status": status, "message": message})
    return results


# SplitRotary shapes (tokens, Hq, Hkv, D, table rows): decode of Llama-3.2-1B's heads, prefill
# tokens, a half head not a multiple of 8 (the element path), GQA groups 1 and 3; each also with
# every tensor one element off 16-byte alignment (the element path), and positions outside the
# tables (clamped) in every case.
SPLIT_ROTARY_SHAPES = ((1, 32, 8, 64, 64), (37, 6, 2, 64, 48), (5, 4, 4, 12, 9), (3, 9, 3, 128, 16))
# Relative to the largest |output| of the token's head: a float32 rounding of two products and
# a sum, then one rounding to T.
SPLIT_ROTARY_TOLERANCE = {torch.float32: 1e-6, torch.float16: 2**-10, torch.bfloat16: 2**-7}


def split_rotary_values(tokens: int, num_heads: int, kv_num_heads: int, head_dim: int, table_rows: int,
                        seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """float32 qkv (tokens, (Hq + 2*Hkv)*D), cos/sin tables of rotary angles (rows, D/2) and int64
    positions (tokens) covering the tables, their ends, and -3 and rows + 5 (clamped)."""
    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn(tokens, (num_heads + 2 * kv_num_heads) * head_dim, generator=gen) * 3
    angles = torch.arange(table_rows, dtype=torch.float64)[:, None] * 10000.0 ** (
        -torch.arange(head_dim // 2, dtype=torch.float64) * 2 / head_dim)
    positions = torch.randint(0, table_rows, (tokens,), generator=gen)
    positions[: 4] = torch.tensor([0, table_rows - 1, -3, table_rows + 5])[: min(4, tokens)]
    return qkv, angles.cos().float(), angles.sin().float(), positions


def split_rotary_reference(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                           num_heads: int, kv_num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """query, key, value in float64 from docs/ops.md's formula (positions clamped to the tables)."""
    half = cos.shape[1]
    rows = positions.cpu().clamp(0, cos.shape[0] - 1)
    c, s = cos.double().cpu()[rows][:, None], sin.double().cpu()[rows][:, None]
    heads = qkv.double().cpu().view(qkv.shape[0], num_heads + 2 * kv_num_heads, 2 * half)
    rotated, value = heads[:, : num_heads + kv_num_heads], heads[:, num_heads + kv_num_heads :]
    first, second = rotated[..., :half], rotated[..., half:]
    rotated = torch.cat((first * c - second * s, second * c + first * s), dim=-1)
    query, key = rotated[:, :num_heads], rotated[:, num_heads:]
    return tuple(t.reshape(qkv.shape[0], -1) for t in (query, key, value))


def split_rotary_error(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...]) -> float:
    """The largest error of the outputs against the float64 reference, relative to the largest
    |value| of each output (NaN when an output holds one)."""
    return max(((g.double().cpu() - w).abs().max() / w.abs().max().clamp_min(1e-30)).item() for g, w in zip(got, want))


def split_rotary_check(kernels: Kernels, shapes=SPLIT_ROTARY_SHAPES) -> list[dict]:
    """ua_split_rotary_cuda against the float64 reference, every dtype and shape, aligned and
    one element off, with the memory around every output untouched."""
    results = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for tokens, heads, kv_heads, dim, rows in shapes:
            for offset in (0, 1):
                qkv, cos, sin, positions = split_rotary_values(tokens, heads, kv_heads, dim, rows, seed=tokens * 31 + dim)
                dev = kernels.device

                def placed(values, fill=0.0):
                    buffer = torch.full((values.numel() + offset + 8,), fill, dtype=dtype, device=dev)
                    view = buffer[offset:offset + values.numel()].view(values.shape)
                    view.copy_(values.to(dtype))
                    return buffer, view

                inputs = [placed(t)[1] for t in (qkv, cos, sin)]
                outputs = [placed(torch.zeros(tokens, h * dim), 7.0) for h in (heads, kv_heads, kv_heads)]
                status, message = kernels.split_rotary(*inputs, positions.to(dev), tuple(v for _, v in outputs),
                                                       heads, kv_heads)  # fmt: skip
                want = split_rotary_reference(*inputs, positions, heads, kv_heads)
                got = tuple(v for _, v in outputs)
                error = split_rotary_error(got, want)
                untouched = all(bool((b[:offset].cpu() == 7.0).all()) and bool((b[offset + v.numel():].cpu() == 7.0).all())
                                for b, v in outputs)  # fmt: skip
                ok = status == 0 and error <= SPLIT_ROTARY_TOLERANCE[dtype] and untouched
                results.append({"case": f"split_rotary-{str(dtype).removeprefix('torch.')}-{tokens}x{heads}/{kv_heads}"
                                        f"x{dim}-M{rows}-offset{offset}",
                                "ok": ok, "max_relative_error": error, "status": status, "message": message})
    return results


# The MLP of a decode step as the library runs it (K, I): Llama-3.2-1B's, fp16, and a small one.
DEPENDENT_CHAIN_SHAPES = ((2048, 8192, torch.float16), (64, 96, torch.float32))


def dependent_chain_check(kernels: Kernels, rounds: int = 6, shapes=DEPENDENT_CHAIN_SHAPES) -> list[dict]:
    """gate_up = Linear(x, W1), act = GatedSilu(gate_up), y = Linear(act, W2): kernels that start
    before the one they read from has finished (device.cuh, dependent launches) must still read
    its output. `rounds` chains go back to back on one stream without synchronizing, each into
    buffers filled with NaN just before it; on the GPU the same rounds are then captured in one
    CUDA graph and replayed with new inputs. Each stage against float64 from its actual input."""
    results = []
    dev = kernels.device
    for k, inner, dtype in shapes:
        gen = torch.Generator().manual_seed(k + inner)
        w1 = (torch.randn(2 * inner, k, generator=gen) / k**0.5).to(dtype).to(dev)
        w2 = (torch.randn(k, inner, generator=gen) / inner**0.5).to(dtype).to(dev)
        x = torch.zeros(rounds, 1, k, dtype=dtype, device=dev)
        gate_up = torch.zeros(rounds, 1, 2 * inner, dtype=dtype, device=dev)
        act = torch.zeros(rounds, 1, inner, dtype=dtype, device=dev)
        y = torch.zeros(rounds, 1, k, dtype=dtype, device=dev)
        statuses: list[tuple[int, str]] = []

        def chains():
            for r in range(rounds):
                for t in (gate_up[r], act[r], y[r]):
                    t.fill_(float("nan"))
                statuses.append(kernels.linear(x[r], w1, gate_up[r]))
                statuses.append(kernels.gated_silu(gate_up[r], act[r]))
                statuses.append(kernels.linear(act[r], w2, y[r]))

        def check(how: str):
            errors = [max(linear_error(x[r], w1, gate_up[r]) / LINEAR_TOLERANCE[dtype],
                          gated_silu_error(gate_up[r], act[r]) / GATED_SILU_TOLERANCE[dtype],
                          linear_error(act[r], w2, y[r]) / LINEAR_TOLERANCE[dtype]) for r in range(rounds)]
            failed = [(s, m) for s, m in statuses if s != 0]
            results.append({"case": f"dependent_chain-{str(dtype).removeprefix('torch.')}-K{k}-I{inner}-{how}",
                            "ok": not failed and all(e <= 1.0 for e in errors),  # NaN compares False
                            "max_error_over_tolerance": max(errors), "status": failed[0][0] if failed else 0,
                            "message": failed[0][1] if failed else ""})
            statuses.clear()

        x.copy_(torch.randn(rounds, 1, k, generator=gen).to(dtype))
        chains()
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        check("stream")
        if not dev.startswith("cuda"):
            continue
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(stream):
            with torch.cuda.graph(graph, stream=stream):
                chains()
        torch.cuda.current_stream().wait_stream(stream)
        captured = list(statuses)  # the launches' statuses at capture: what the replays run
        for replay in range(2):
            x.copy_(torch.randn(rounds, 1, k, generator=gen).to(dtype))
            graph.replay()
            torch.cuda.synchronize()
            statuses[:] = captured
            check(f"graph-replay{replay}")
    return results


def graph_check(kernels: Kernels, steps: int = 6) -> dict:
    """A static decode step (producer emitting P, consumer reusing it; caches bound in place)
    through the C entry points, captured once in a CUDA graph on a side stream and replayed
    `steps` times with new inputs and position_ids written in place between replays; each
    replay against static_reference on a host mirror of the caches. Fails if capture fails
    (a host sync or allocation inside the entry points breaks it)."""
    dev, dt = kernels.device, torch.bfloat16
    B, C, Hq, Hkv, D = 3, 1024, 8, 2, 64
    starts = torch.tensor([[5], [60], [C - steps]])  # row 1 crosses a split boundary, row 2 ends at the last slot
    gen = torch.Generator().manual_seed(11)
    r = lambda *shape: torch.randn(*shape, generator=gen).to(dt)  # noqa: E731
    mirror = {"k": r(B, Hkv, C, D), "v": r(B, Hkv, C, D), "v2": r(B, Hkv, C, D)}
    cache = {name: t.to(dev) for name, t in mirror.items()}
    q, k, v, v2 = (torch.empty(B, 1, h * D, dtype=dt, device=dev) for h in (Hq, Hkv, Hkv, Hkv))
    positions = starts.clone().to(dev)
    out, out2 = torch.empty_like(q), torch.empty_like(q)
    probs = torch.full((B, Hq, 1, C), float("nan"), dtype=dt, device=dev)
    lse = torch.empty(B, Hq, 1, device=dev)
    desc = make_desc(B, 1, 0, Hq, Hkv, D, dt, D**-0.5, True, 0, capacity=C)
    ws_p, ws_c = kernels.workspace("producer", desc, True), kernels.workspace("consumer", desc, True)

    def step():
        kernels.call("producer", desc, producer_io(
            query=q, key=k, value=v, past_key=cache["k"], past_value=cache["v"], output=out,
            present_key=cache["k"], present_value=cache["v"], shared_probs=probs, shared_lse=lse,
            position_ids=positions), ws_p)
        kernels.call("consumer", desc, consumer_io(
            value=v2, past_value=cache["v2"], shared_probs=probs, shared_lse=lse, producer_query=q,
            producer_key=cache["k"], output=out2, present_value=cache["v2"], position_ids=positions), ws_c)

    captured = str(dev).startswith("cuda")  # the emulated dry run (CI) calls the step directly
    result = {"steps": steps, "captured": captured, "checks": [], "ok": False}
    try:
        replay = step
        if captured:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.stream(stream):
                step()  # warm-up outside the capture (first-call device queries); overwritten below
                stream.synchronize()
                for name, t in mirror.items():
                    cache[name].copy_(t)
                with torch.cuda.graph(graph, stream=stream):
                    step()
            torch.cuda.synchronize()
            replay = graph.replay
        attrs = dict(num_heads=Hq, kv_num_heads=Hkv, scale=D**-0.5, sliding_window=0)
        for n in range(steps):
            inputs = [r(*t.shape) for t in (q, k, v, v2)]
            for dst, src in zip((q, k, v, v2), inputs):
                dst.copy_(src)
            pos = starts + n
            positions.copy_(pos)  # in place: the graph reads them on the device
            replay()
            _sync(dev)
            want, mirror["k"], mirror["v"], want_probs, want_lse = static_reference(
                inputs[0], inputs[1], inputs[2], mirror["k"], mirror["v"], pos, **attrs)
            want2, _, mirror["v2"], _, _ = static_reference(inputs[0], inputs[1], inputs[3], mirror["k"], mirror["v2"],
                                                            pos, **attrs)
            seen = torch.arange(C).view(1, 1, 1, C) <= pos.view(B, 1, 1, 1)
            v_scale = max(float(mirror["v"].float().abs().max()), float(mirror["v2"].float().abs().max()))
            tag = f"replay {n}"
            result["checks"] += [
                _max_error(f"{tag} producer.output", out.cpu(), want.to(dt), REL_TOL[dt] * v_scale),
                _max_error(f"{tag} producer.shared_probs", torch.where(seen, probs.cpu(), 0),
                           want_probs.nan_to_num(0).to(dt), REL_TOL[dt]),
                _max_error(f"{tag} producer.shared_lse", lse.cpu(), want_lse, LSE_TOL * max(1.0, float(want_lse.abs().max()))),
                _max_error(f"{tag} consumer.output", out2.cpu(), want2.to(dt), REL_TOL[dt] * v_scale),
                *[_exact(f"{tag} cache {name}", _bits(cache[name].cpu()), _bits(mirror[name])) for name in mirror],
            ]
        result["ok"] = all(c["ok"] for c in result["checks"])
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc(limit=6)
    return result


def bench_prefill(kernels: Kernels, seq: int, heads: tuple[int, int, int] = HEADS) -> dict:
    dt, dev = torch.bfloat16, kernels.device
    B, L = 1, seq
    Hq, Hkv, D = heads
    gen = torch.Generator(device=dev).manual_seed(seq)
    r = lambda *shape: torch.randn(*shape, generator=gen, device=dev).to(dt)  # noqa: E731
    q, k, v = r(B, L, Hq * D), r(B, L, Hkv * D), r(B, L, Hkv * D)
    mask = torch.ones(B, L, dtype=torch.int64, device=dev)
    empty = torch.empty(B, Hkv, 0, D, dtype=dt, device=dev)
    desc = make_desc(B, L, 0, Hq, Hkv, D, dt, D**-0.5, True, 0)
    out = torch.empty(B, L, Hq * D, dtype=dt, device=dev)
    present_k, present_v = torch.empty(B, Hkv, L, D, dtype=dt, device=dev), torch.empty(B, Hkv, L, D, dtype=dt, device=dev)
    lse = torch.empty(B, Hq, L, dtype=torch.float32, device=dev)
    v2 = r(B, L, Hkv * D)
    present_v2 = torch.empty_like(present_v)

    def producer():
        kernels.call("producer", desc, producer_io(
            query=q, key=k, value=v, past_key=empty, past_value=empty, attention_mask=mask, output=out,
            present_key=present_k, present_value=present_v, shared_probs=None, shared_lse=lse), None)

    def consumer():
        kernels.call("consumer", desc, consumer_io(
            value=v2, past_value=empty, attention_mask=mask, shared_probs=None, shared_lse=lse, producer_query=q,
            producer_key=present_k, output=out, present_value=present_v2), None)

    qh = q.view(B, L, Hq, D).transpose(1, 2).contiguous()
    kh = k.view(B, L, Hkv, D).transpose(1, 2).contiguous()
    vh = v.view(B, L, Hkv, D).transpose(1, 2).contiguous()

    def sdpa():
        torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, is_causal=True, enable_gqa=True)

    flops = 4 * B * Hq * L * L * D * 0.5  # causal: half the score matrix
    ms, method = {}, {}
    for name, fn in [("sdpa", sdpa), ("ours_producer", producer), ("ours_consumer", consumer)]:
        try:
            producer()  # the consumer needs the producer's lse and keys
            ms[name], method[name] = _bench(fn, device=dev)
        except Exception as exc:
            ms[name] = None
            ms[name + "_error"] = f"{type(exc).__name__}: {exc}"
    return {"seq": seq, "ms": ms, "timing": method, "TFLOPs": {k: (flops / (v * 1e-3) / 1e12 if isinstance(v, float) else None)
                                              for k, v in ms.items() if not k.endswith("_error")}}


def kernel_name(name: str) -> str:
    """A profiler kernel name without return type, namespaces and argument list:
    'void uniattn::cuda::(anonymous namespace)::split_kv_kernel<float, (uniattn::cuda::Weights)0,
    true, 8>(uniattn::...)' -> 'split_kv_kernel<float, (Weights)0, true, 8>'."""
    name = re.sub(r"\(anonymous namespace\)::|uniattn::cuda::|^void ", "", name)
    depth = 0
    for i, c in enumerate(name):
        depth += {"<": 1, ">": -1}.get(c, 0)
        if c == "(" and depth == 0 and i > 0 and name[i - 1] != " ":  # "Memset (Device)" keeps its words
            return name[:i]
    return name


def kernel_breakdown(kernels: Kernels, batch: int, seq: int) -> dict:
    """Per-kernel device time (profiler) of one decode step of a SuperBlock's attention: the
    producer emitting P, then a consumer reusing it, both writing their present caches."""
    from torch.profiler import ProfilerActivity, profile

    dt, dev = torch.bfloat16, "cuda"
    B, S, P = batch, seq, seq - 1
    Hq, Hkv, D = HEADS
    r = lambda *shape: torch.randn(*shape, device=dev, dtype=dt)  # noqa: E731
    desc = make_desc(B, 1, P, Hq, Hkv, D, dt, D**-0.5, True, 0)
    q, kn, vn = r(B, 1, Hq * D), r(B, 1, Hkv * D), r(B, 1, Hkv * D)
    pk, pv = r(B, Hkv, P, D), r(B, Hkv, P, D)
    mask = torch.ones(B, S, dtype=torch.int64, device=dev)
    out, probs = torch.empty(B, 1, Hq * D, dtype=dt, device=dev), torch.empty(B, Hq, 1, S, dtype=dt, device=dev)
    lse = torch.empty(B, Hq, 1, dtype=torch.float32, device=dev)
    prk, prv = torch.empty(B, Hkv, S, D, dtype=dt, device=dev), torch.empty(B, Hkv, S, D, dtype=dt, device=dev)
    ws_p, ws_c = kernels.workspace("producer", desc, True), kernels.workspace("consumer", desc, True)
    prv2 = torch.empty_like(prv)

    def step():
        kernels.call("producer", desc, producer_io(
            query=q, key=kn, value=vn, past_key=pk, past_value=pv, attention_mask=mask, output=out, present_key=prk,
            present_value=prv, shared_probs=probs, shared_lse=lse), ws_p)
        kernels.call("consumer", desc, consumer_io(
            value=vn, past_value=pv, attention_mask=mask, shared_probs=probs, shared_lse=lse, producer_query=q,
            producer_key=prk, output=out, present_value=prv2), ws_c)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA], acc_events=True) as prof:
        for _ in range(10):
            step()
        torch.cuda.synchronize()
    totals: dict[str, list[float]] = {}
    for e in prof.events():
        if e.device_type.name == "CUDA":  # kernels, memsets, copies: their own duration on the GPU
            totals.setdefault(kernel_name(e.name), []).append(e.time_range.elapsed_us())
    return {name: {"calls": len(t), "mean_us": sum(t) / len(t)} for name, t in totals.items()}


# ---------------------------------------------------------------------------------------
# Driver

# Builds that differ from the default in one compile-time knob, each checked and timed on what
# it changes: the choices NOTES.md could not settle without a GPU.
VARIANTS = {
    "keys2": (["-DUA_KEYS_PER_THREAD=2"], "decode"),  # K/V rows in flight per lane (producer): 2 / 4
    "ckeys4": (["-DUA_CONSUMER_KEYS_PER_THREAD=4"], "decode"),  # V rows in flight per lane (consumer): 4 / 8
    "warps2": (["-DUA_DECODE_WARPS=2"], "decode"),  # warps per split-KV block: 2 / 4
    "blocks512": (["-DUA_SPLIT_MAX_BLOCKS=512"], "decode"),  # at most 512 blocks: fewer splits at batch 1
    "split-plan": (["-DUA_SPLIT_CLUSTERS=0"], "decode"),  # no clusters: the split plan at batch 1 too (until 2026-12-07)
    "clusters-forced": (["-DUA_SPLIT_CLUSTERS=2"], "decode"),  # clusters wherever the shapes allow, batch 32 too
    "flash32rows": (["-DUA_FLASH_TILES_D64=2"], "prefill"),  # run 1's default, for the record
}
# The one source a variant's flags change.
VARIANT_SOURCE = {"decode": "split_kv.cu", "prefill": "flash.cu"}


def build_libraries(out_dir: Path, variants: dict[str, tuple[list[str], str]], arch: str | None = None
                    ) -> dict[str, str]:
    """nvcc builds of the CUDA kernels alone for `arch` (default: the local GPU's): every
    source once without flags, plus each variant's one changed source with its flags, all
    compiled in parallel; one library per variant (and "default"). Their C ABI is ua_*_cuda
    (the CPU kernels are not built: --build-only builds the full library)."""
    arch = arch or "".join(map(str, torch.cuda.get_device_capability()))
    out_dir.mkdir(parents=True, exist_ok=True)
    base = ["nvcc", "-std=c++17", "-O3", "-Xcompiler", "-fPIC", f"-arch=sm_{arch}",
            f"-I{REPO / 'plugins/kernels/include'}", "-c"]
    sources = [*sorted((REPO / "plugins/kernels/cuda").glob("*.cu")), REPO / "plugins/kernels/src/common.cpp"]
    jobs = {out_dir / f"default_{src.stem}.o": base + [str(src)] for src in sources}
    objects = {"default": list(jobs)}
    for name, (flags, kind) in variants.items():
        stem = Path(VARIANT_SOURCE[kind]).stem
        changed = out_dir / f"{name}_{stem}.o"
        jobs[changed] = base + flags + [str(REPO / "plugins/kernels/cuda" / VARIANT_SOURCE[kind])]
        objects[name] = [changed if obj.stem == f"default_{stem}" else obj for obj in objects["default"]]
    procs = [(cmd, subprocess.Popen(cmd + ["-o", str(obj)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
             for obj, cmd in jobs.items()]
    for cmd, proc in procs:
        output = proc.communicate()[0].decode()
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{output[-2000:]}")
    libraries = {}
    for name, objs in objects.items():
        target = out_dir / f"libuniattn_kernels_{name}.so"
        subprocess.run(["nvcc", "-shared", *map(str, objs), "-o", str(target)], check=True)
        libraries[name] = str(target)
    return libraries


def build_full_library(build_dir: Path, arch: str) -> str:
    """The package's own CMake build for one GPU architecture: libuniattn_kernels.so (CPU and
    CUDA kernels, the library every backend and tests/targets/trt/gpu_enqueue_check.py load)
    and libuniattn_ort.so, in build_dir/lib. Needs no GPU."""
    subprocess.run(["cmake", "-S", str(REPO), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                    "-DUNIATTN_CUDA=ON", f"-DUNIATTN_CUDA_ARCHITECTURES={arch}"], check=True)
    subprocess.run(["cmake", "--build", str(build_dir), "-j", str(os.cpu_count() or 2), "--target",
                    "uniattn_kernels", "uniattn_ort"], check=True)
    library = build_dir / "lib" / "libuniattn_kernels.so"
    if Kernels(str(library), device="cpu").lib.ua_has_cuda() != 1:
        raise RuntimeError(f"{library} was built without its CUDA kernels (is nvcc on PATH?)")
    return str(library)


def find_library(explicit: str | None) -> str | None:
    from uniattn_export.native import kernels_library

    return explicit or kernels_library()


def _fmt(x, spec=".3f"):
    return "-" if x is None else format(x, spec)


VARIANT_SHAPES = ((1, 8192), (8, 2048), (32, 8192))
VARIANT_STATIC_SHAPES = ((1, 2048), (1, 8192), (8, 2048), (32, 8192))  # (batch, slots read) of STATIC_CAPACITY
STATIC_BENCHES = ("ours_producer", "ours_base", "ours_consumer", "ours_consumer_recompute")
VARIANT_BENCHES = ("ours_producer_attn", "ours_base_attn", "ours_consumer_attn", "ours_consumer_recompute_attn")


def run_checks(kernels: Kernels, cases: list[Case | StaticCase]) -> list[dict]:
    results = []
    for case in cases:
        run = run_static_case if isinstance(case, StaticCase) else run_case
        results.append(run(kernels, case, "cuda"))
        if "illegal" in results[-1].get("error", "").lower():
            results.append({"case": "remaining cases", "ok": False, "checks": [],
                            "error": "CUDA context lost (illegal memory access); later cases not run"})
            break
    return results


def sanitize(library: str, tool: str, timeout_s: float) -> dict:
    """This script's small edge cases (the emulator's set) under compute-sanitizer `tool`
    (memcheck: out-of-bounds and misaligned accesses; racecheck: shared-memory hazards)."""
    command = ["compute-sanitizer", "--tool", tool, "--error-exitcode", "9", sys.executable, __file__, "--lib",
               library, "--cases", "small", "--random", "0", "--skip-bench", "--out", tempfile.mkdtemp()]
    started = time.time()
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"tool": tool, "ok": None, "why": f"stopped after {timeout_s:.0f} s"}
    errors = [line for line in run.stdout.splitlines() if "ERROR SUMMARY" in line or line.startswith("=========")]
    return {"tool": tool, "ok": run.returncode == 0, "returncode": run.returncode,
            "seconds": round(time.time() - started, 1), "summary": errors[-12:], "tail": run.stdout[-1500:]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lib", help="built libuniattn_kernels.so (default: uniattn_export/lib, else build with nvcc)")
    ap.add_argument("--cases", choices=("all", "small"), default="all",
                    help="small: the emulator's edge cases only (for compute-sanitizer)")
    ap.add_argument("--random", type=int, default=150, help="randomized correctness cases")
    ap.add_argument("--no-variants", action="store_true", help="skip the tuning variants")
    ap.add_argument("--skip-bench", action="store_true")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"comma-separated tuning variants to build and time (default all: {','.join(VARIANTS)})")
    ap.add_argument("--sanitize", action="store_true",
                    help="last, run the small cases under compute-sanitizer memcheck and racecheck")
    ap.add_argument("--budget-s", type=float, default=330,
                    help="whole run: no variant or sanitizer starts that cannot finish inside it")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--build-only", metavar="DIR",
                    help="only build the full kernel library (CPU + CUDA, CMake) into DIR/lib; no GPU needed")
    ap.add_argument("--arch", default="90", help="with --build-only: CUDA architectures, e.g. 90 or '80-real;90'")
    args = ap.parse_args(argv)
    unknown = sorted(set(filter(None, args.variants.split(","))) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if args.build_only:
        print(build_full_library(Path(args.build_only), args.arch))
        return 0
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    started = time.time()

    def save():
        report["seconds"] = round(time.time() - started, 1)
        (out_dir / "gpu_kernels.json").write_text(json.dumps(report, indent=1))

    def left_s() -> float:
        return args.budget_s - (time.time() - started)

    # The default library is built first when none was given or found; the variants build in
    # the background while the checks run.
    scratch = Path(tempfile.mkdtemp())
    try:
        library = find_library(args.lib)
        if library is None:
            if shutil.which("nvcc") is None:
                raise RuntimeError("no built library and no nvcc to build one")
            library = build_libraries(scratch / "default", {})["default"]
        kernels = Kernels(library)
        report["library"] = library
        if not kernels.has_cuda():
            raise RuntimeError(f"{library} was built without the CUDA kernels")
        if kernels.lib.ua_abi_version() != ABI_VERSION:  # a stale build would read the structs wrongly
            raise RuntimeError(f"{library} has ABI {kernels.lib.ua_abi_version()}, this script speaks {ABI_VERSION}: "
                               "rebuild it")
    except Exception as exc:
        report["fatal"] = f"{type(exc).__name__}: {exc}"
        save()
        print("FATAL:", report["fatal"])
        return 1
    builds = None
    chosen = {name: VARIANTS[name] for name in args.variants.split(",") if name}
    if not args.no_variants and not args.skip_bench and chosen and shutil.which("nvcc"):
        builds = ThreadPoolExecutor(1).submit(build_libraries, scratch / "variants", chosen)

    cases = edge_cases(large=args.cases == "all") + random_cases(
        args.random, seed=7, max_batch=6, max_query=300, max_past=3000,
        head_dims=(8, 16, 40, 64, 64, 64, 80, 96, 128, 128, 256), max_kv_heads=8)
    statics = static_cases(large=args.cases == "all") + random_static_cases(args.random // 2, seed=8)
    report["checks"] = run_checks(kernels, cases + statics)
    save()
    report["graph"] = graph_check(kernels)
    report["gated_silu"] = gated_silu_check(kernels)
    report["split_rotary"] = split_rotary_check(kernels)
    report["linear"] = linear_check(kernels)
    report["dependent_chain"] = dependent_chain_check(kernels)
    save()

    if not args.skip_bench:
        def attempt(what: dict, run):
            try:
                return run()
            except Exception as exc:  # recorded; the other configurations still run
                return {**what, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=4)}

        try:
            ceilings = device_bandwidth()
            report["bandwidth_TBps"] = {k: v / 1e12 for k, v in ceilings.items()}
            report["copy_TBps"] = max(ceilings["memcpy"], ceilings["elementwise"]) / 1e12
            report["read_TBps"] = ceilings["read"] / 1e12
            bw = report["copy_TBps"] * 1e12
        except Exception as exc:
            bw, report["bench_error"] = float("nan"), f"bandwidth: {type(exc).__name__}: {exc}"
        report["decode"] = []
        for b in (1, 8, 32):
            for seq in (512, 2048, 8192):
                report["decode"].append(attempt({"batch": b, "seq": seq}, lambda: bench_decode(kernels, b, seq, bw)))
                save()
        report["static_decode"] = [
            attempt({"batch": b, "length": n}, lambda: bench_static_decode(kernels, b, n))
            for b, n in STATIC_DECODE_SHAPES]
        save()
        report["prefill"] = [attempt({"seq": seq}, lambda: bench_prefill(kernels, seq)) for seq in (2048, 8192)]
        report["breakdown"] = {f"B{b}_S{seq}": attempt({}, lambda: kernel_breakdown(kernels, b, seq))
                               for b, seq in ((32, 8192), (1, 8192))}
        save()
        if builds is not None:
            report["variants"] = {}
            try:
                for name, path in builds.result().items():
                    if name not in VARIANTS:
                        continue  # the default build of the variants' base objects
                    flags, kind = VARIANTS[name]
                    if left_s() < 45:
                        report["variants"][name] = {"flags": flags, "skipped": "time budget spent"}
                        continue
                    variant = Kernels(path)
                    checks = run_checks(variant, [c for c in edge_cases(large=True) + static_cases(large=True)
                                                  if (c.query_len <= 16) == (kind == "decode")])
                    entry = {"flags": flags, "kind": kind, "checks_passed": sum(c["ok"] for c in checks),
                             "checks": len(checks), "failed": [c["case"] for c in checks if not c["ok"]][:10]}
                    if entry["checks_passed"] == entry["checks"] and kind == "decode" and "copy_TBps" in report:
                        entry["decode"] = [bench_decode(variant, b, s, bw, VARIANT_BENCHES) for b, s in VARIANT_SHAPES]
                        entry["static_decode"] = [bench_static_decode(variant, b, n) for b, n in VARIANT_STATIC_SHAPES]
                    elif entry["checks_passed"] == entry["checks"] and kind == "prefill":
                        entry["prefill"] = [bench_prefill(variant, s) for s in (2048, 8192)]
                    report["variants"][name] = entry
                    save()
            except Exception as exc:
                report["variants_error"] = f"{type(exc).__name__}: {exc}"
        save()
    if args.sanitize:
        report["sanitizer"] = []
        for tool in ("memcheck", "racecheck"):
            if left_s() < 30:
                report["sanitizer"].append({"tool": tool, "ok": None, "why": "time budget spent"})
                continue
            report["sanitizer"].append(sanitize(library, tool, left_s() - 10))
            save()

    report["not_verified"] = not_verified(report, sanitize_requested=args.sanitize)
    save()
    print_summary(report, out_dir)
    return 1 if report["not_verified"] else 0


def not_verified(report: dict, sanitize_requested: bool) -> list[str]:
    """Everything the run was asked to establish and did not: failed or crashed cases, the
    graph replay check, benchmarks that raised, sanitizer runs that reported errors or did not
    complete (time budget, timeout). Any entry makes the exit status 1."""
    elementwise = (report.get("gated_silu", []) + report.get("split_rotary", []) + report.get("linear", [])
                   + report.get("dependent_chain", []))
    reasons = [f"case {c['case']} failed" for c in report.get("checks", []) + elementwise if not c["ok"]]
    graph = report.get("graph")
    if graph is not None and not graph["ok"]:
        reasons.append(f"CUDA graph replay: {graph.get('error') or [c['output'] for c in graph['checks'] if not c['ok']][:4]}")
    for section in ("decode", "static_decode", "prefill"):
        for entry in report.get(section, []):
            errors = ([entry["error"]] if "error" in entry else []) + [
                f"{k}: {v}" for k, v in entry.get("ms", {}).items() if k.endswith("_error")]
            where = " ".join(f"{k}={entry[k]}" for k in ("batch", "seq", "length") if k in entry)
            reasons += [f"{section} {where}: {e[:200]}" for e in errors]
    for key in ("bench_error", "variants_error"):
        if key in report:
            reasons.append(f"{key}: {report[key][:200]}")
    if sanitize_requested:
        for tool in ("memcheck", "racecheck"):
            run = next((r for r in report.get("sanitizer", []) if r["tool"] == tool), None)
            if run is None or run.get("ok") is not True:
                why = "not run" if run is None else run.get("why") or f"exit {run.get('returncode')}: {run.get('summary')}"
                reasons.append(f"compute-sanitizer {tool}: {why}")
    return reasons


def _decode_row(d: dict, cells) -> str:
    if "error" in d:
        return f"{d['batch']:>4} {d['seq']:>5} | error: {d['error'][:150]}"
    return f"{d['batch']:>4} {d['seq']:>5} | " + " | ".join(" ".join(c(d) for c in group) for group in cells)


def print_summary(report: dict, out_dir: Path) -> None:
    checks = report["checks"]
    failed = [c for c in checks if not c["ok"]]
    print(f"\ncorrectness: {len(checks) - len(failed)}/{len(checks)} cases passed")
    for c in failed[:12]:
        bad = [k for k in c["checks"] if not k["ok"]]
        print("  FAIL", c["case"], c.get("error", ""), bad[:2])
    graph = report.get("graph")
    if graph is not None:
        how = "captured once, replayed" if graph["captured"] else "called directly (no GPU),"
        print(f"static decode step {how} {graph['steps']} times with new position_ids: "
              f"{'all outputs and caches match' if graph['ok'] else 'FAILED'}")
    for name, error in (("gated_silu", "max_relative_error"), ("split_rotary", "max_relative_error"),
                        ("linear", "max_relative_error"), ("dependent_chain", "max_error_over_tolerance")):
        cases = report.get(name, [])
        if cases:
            worst = max((c[error] or 0.0) for c in cases)
            print(f"{name}: {sum(c['ok'] for c in cases)}/{len(cases)} cases passed (worst {error.replace('_', ' ')} "
                  f"{worst:.2g})")
            for c in [c for c in cases if not c["ok"]][:6]:
                print("  FAIL", c["case"], c["status"], c["message"], c[error])
    for s in report.get("sanitizer", []):
        print(f"compute-sanitizer {s['tool']}: {'clean' if s.get('ok') else s.get('why') or s.get('summary')}")
    if "copy_TBps" in report:
        b = report["bandwidth_TBps"]
        print(f"HBM: copy {report['copy_TBps']:.2f} TB/s read+write (cudaMemcpy {b['memcpy']:.2f}, elementwise "
              f"{b['elementwise']:.2f}), read-only {report['read_TBps']:.2f} TB/s; 1 GiB buffers")
    if report.get("decode"):
        ms = lambda k: lambda d: _fmt(d["ms"].get(k))  # noqa: E731
        tbps = lambda k: lambda d: _fmt(d["TBps"].get(k), ".2f")  # noqa: E731
        print("decode, ms (bf16, Hq 32, Hkv 8, D 64; attn = caches already in place, full = with the concat copy)")
        print("   B     S |  sdpa torchP torchPV | prod.attn prod.full base.attn base.full | cons.attn cons.full "
              "cons.rec | concat")
        for d in report["decode"]:
            print(_decode_row(d, [[ms("sdpa"), ms("torch_producer_P"), ms("torch_PV")],
                                  [ms("ours_producer_attn"), ms("ours_producer"), ms("ours_base_attn"), ms("ours_base")],
                                  [ms("ours_consumer_attn"), ms("ours_consumer"), ms("ours_consumer_recompute_attn")],
                                  [ms("torch_concat_kv")]]))
        print("decode, TB/s of the least bytes (copy ceiling above) and targets: cons.attn >= 85% of copy and < "
              "torchPV; prod.attn <= 1.15 sdpa")
        print("   B     S |  sdpa torchPV | prod.attn base.attn cons.attn cons.rec | %copy(cons) prod/sdpa cons/torchPV")
        for d in report["decode"]:
            m, f = d.get("ms", {}), d.get("fraction_of_copy", {})
            ratio = lambda a, b: (m[a] / m[b] if m.get(a) and m.get(b) else None)  # noqa: E731, B023
            frac = f.get("ours_consumer_attn")
            print(_decode_row(d, [[tbps("sdpa"), tbps("torch_PV")],
                                  [tbps("ours_producer_attn"), tbps("ours_base_attn"), tbps("ours_consumer_attn"),
                                   tbps("ours_consumer_recompute_attn")],
                                  [lambda _: _fmt(frac and 100 * frac, ".0f") + "%",
                                   lambda _: _fmt(ratio("ours_producer_attn", "sdpa"), ".2f"),
                                   lambda _: _fmt(ratio("ours_consumer_attn", "torch_PV"), ".2f")]]))
    if report.get("static_decode"):
        print(f"static decode (op v2, caches in place, capacity {STATIC_CAPACITY}, every row at slot n-1), ms")
        print("   B     n |  sdpa sdpa(C,mask) torchPV | producer  base consumer cons.rec | prod/sdpa cons/torchPV")
        for d in report["static_decode"]:
            if "error" in d:
                print(f"{d['batch']:>4} {d['length']:>5} | error: {d['error'][:150]}")
                continue
            m = d["ms"]
            ratio = lambda a, b: _fmt(m[a] / m[b] if m.get(a) and m.get(b) else None, ".2f")  # noqa: E731, B023
            print(f"{d['batch']:>4} {d['length']:>5} | " + " ".join(_fmt(m.get(k)) for k in (
                "sdpa", "sdpa_capacity_masked", "torch_PV")) + " | " + " ".join(_fmt(m.get(k)) for k in STATIC_BENCHES) +
                f" | {ratio('ours_producer', 'sdpa')} {ratio('ours_consumer', 'torch_PV')}")
    for p in report.get("prefill", []):
        if "error" in p:
            print(f"prefill L=S={p['seq']}: error: {p['error'][:150]}")
            continue
        m, t = p["ms"], p["TFLOPs"]
        print(f"prefill causal L=S={p['seq']}: sdpa {_fmt(m.get('sdpa'))} ms ({_fmt(t.get('sdpa'), '.0f')} TFLOP/s), "
              f"ours producer {_fmt(m.get('ours_producer'))} ms ({_fmt(t.get('ours_producer'), '.0f')}), "
              f"consumer {_fmt(m.get('ours_consumer'))} ms ({_fmt(t.get('ours_consumer'), '.0f')})")
    for shape, kernels in report.get("breakdown", {}).items():
        if "error" in kernels:
            print(f"kernels {shape}: error: {kernels['error'][:150]}")
            continue
        print(f"kernels {shape} (producer + consumer, us): " +
              ", ".join(f"{name[:60]} {v['mean_us']:.1f}" for name, v in kernels.items()))
    for name, v in report.get("variants", {}).items():
        cells = [f"B{d['batch']} S{d['seq']}: " + " ".join(_fmt(d["ms"].get(k)) for k in VARIANT_BENCHES)
                 for d in v.get("decode", [])]
        cells += [f"static B{d['batch']} n{d['length']}: " + " ".join(_fmt(d["ms"].get(k)) for k in STATIC_BENCHES)
                  for d in v.get("static_decode", [])]
        cells += [f"prefill {p['seq']}: " + " ".join(_fmt(p["ms"].get(k)) for k in ("ours_producer", "ours_consumer"))
                  for p in v.get("prefill", [])]
        passed = f"{v['checks_passed']}/{v['checks']} checks" if "checks" in v else v.get("skipped", "")
        print(f"variant {name} ({passed}): {' | '.join(cells)}")
    for key in ("bench_error", "variants_error"):
        if key in report:
            print(key, report[key][:400])
    print(f"full results: {out_dir / 'gpu_kernels.json'}")
    missing = report.get("not_verified", [])
    print(f"NOT VERIFIED ({len(missing)}): " + "; ".join(missing[:20]) if missing else "ALL VERIFIED")


if __name__ == "__main__":
    sys.exit(main())
