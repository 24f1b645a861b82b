"""Timing statistics, the run's time budget, device memory and out-of-memory detection."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

Clock = Callable[[], float]
GIB = 1 << 30


@dataclass
class Deadline:
    """The run's total time budget, read from `clock` (injectable so tests control time)."""

    seconds: float
    clock: Clock = time.monotonic
    start: float = field(init=False)

    def __post_init__(self):
        self.start = self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def expired(self) -> bool:
        return self.elapsed() >= self.seconds


def summarize(seconds: list[float]) -> dict:
    """Median, p90 and min of timed samples, in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000
    return {
        "median_ms": float(np.median(ms)),
        "p90_ms": float(np.percentile(ms, 90)),
        "min_ms": float(ms.min()),
        "samples": len(ms),
    }


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's OutOfMemoryError, or onnxruntime's allocation failure (it raises a generic
    RuntimeException whose text names the failed allocation)."""
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()
    return "out of memory" in text or "failed to allocate memory" in text or "bfcarena" in text


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__


def synchronize(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def device_free_bytes(device: str) -> int | None:
    """Free device memory, counting what torch's caching allocator holds but does not use
    (it is ours to take back); None on the CPU."""
    if device != "cuda":
        return None
    import torch

    free, _ = torch.cuda.mem_get_info()
    return free + torch.cuda.memory_reserved() - torch.cuda.memory_allocated()


def device_used_bytes(device: str) -> int | None:
    """Device memory in use by anyone but torch's allocator (ONNX Runtime's arena, contexts)."""
    if device != "cuda":
        return None
    import torch

    free, total = torch.cuda.mem_get_info()
    return total - free - torch.cuda.memory_reserved()


def release_device_memory(device: str) -> None:
    import gc

    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


def gib(n: float | None) -> str:
    return "n/a" if n is None else f"{n / GIB:.2f} GiB"


# Kernel names of device-side copies (CUDA's and ORT's: Memcpy nodes, Concat, Scatter*, Copy).
_COPY_KERNEL_WORDS = ("copy", "concat", "scatter", "memcpy")
# Kinds of kernel a profiled step's time is summed by (kernel_category), in the order they are
# tried and tables show them: a kernel counts in the first category one of whose words is in
# its lower-cased kernel_label, else in "other". The order settles names that hold words of
# two: UnpackRoPEAppend (rotary, though it also appends to the cache), split_kv_kernel
# (attention, not split), _GatherScatterElementsKernel (cache write, not gather),
# cublasLt::splitKreduce_kernel (gemm: the reduction of a split-K matrix product).
KERNEL_CATEGORIES = (
    ("gemm", ("nvjet", "gemm", "gemv", "cutlass", "cublas", "splitkreduce", "xmma", "sm90_", "ampere_")),
    ("attention", ("split_kv", "flash", "kernel_mha", "mha", "attention", "xqa", "fmha", "softmax")),
    ("norm", ("layernorm", "rmsnorm", "rms_norm", "skiplayernorm", "normalization")),
    ("rotary", ("rotary", "rope")),
    ("cache write", (*_COPY_KERNEL_WORDS, "append")),  # the copy-like kernels (copy_kernels) and appends
    ("split/slice", ("split", "slice", "gather", "transpose", "expand")),
    ("elementwise", ("elementwise", "quickgelu", "silu", "mul", "add", "cast", "sigmoid", "clip")),
    # (not "reduce": ONNX Runtime's reduce_sum_nd_kernel is the step's ReduceSum of the mask)
    ("sampling", ("top1", "argmax", "arg_min_max", "topk", "sort", "sample")),
)  # fmt: skip
OTHER_CATEGORY = "other"
CATEGORY_ORDER = (*(category for category, _ in KERNEL_CATEGORIES), OTHER_CATEGORY)


def kernel_label(name: str) -> str:
    """A kernel's name as tables show it: without the return type, anonymous namespaces, template
    arguments and parameters (`void uniattn::cuda::(anonymous namespace)::split_kv_kernel<...>(...)`
    -> `uniattn::cuda::split_kv_kernel`); bench.json keeps the full name."""
    name = name.removeprefix("void ").replace("(anonymous namespace)::", "")
    return re.split(r"[<(]", name, maxsplit=1)[0] or name


def kernel_category(name: str) -> str:
    """The kind of work a kernel does, from its name (KERNEL_CATEGORIES: its first match), so a
    step's time can be told apart by kind. Matched on the label, without template arguments
    and parameters: their types, which may hold any of the words, do not decide the kind."""
    label = kernel_label(name).lower()
    for category, words in KERNEL_CATEGORIES:
        if any(word in label for word in words):
            return category
    return OTHER_CATEGORY


def cuda_copy_profile(step: Callable[[], float]) -> dict:
    """Run `step` once under torch.profiler with CUDA activities (CUPTI records every kernel
    and memcpy of the process, ORT's included, and the kernels a CUDA-graph replay launches)
    and account the trace (see account_cuda_trace)."""
    import json
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
    with tempfile.TemporaryDirectory() as folder:
        trace = f"{folder}/trace.json"
        prof.export_chrome_trace(trace)
        with open(trace) as f:
            events = json.load(f).get("traceEvents", [])
    return account_cuda_trace(events)


def account_cuda_trace(events: list[dict]) -> dict:
    """One decode step's Chrome-trace events (torch.profiler's export) accounted: memcpy bytes
    by kind (from the trace's `bytes` field), the copy-like kernels by name with their count
    and time (a kernel's bytes are not in the trace; a full-cache copy shows as time), and where
    the step's GPU time goes: the kernels' summed duration, every kernel name by total time
    with its count, microseconds and share (kernel_list: all of them, so a change of a few
    kernels per step can be found), and the count and time of each kernel_category
    (by_category, in CATEGORY_ORDER; its times sum to kernel_us)."""
    memcpy: dict[str, int] = {}
    by_name: dict[str, dict] = {}
    for event in events:
        category = event.get("cat", "")
        if category == "gpu_memcpy":
            name = event.get("name", "memcpy")
            memcpy[name] = memcpy.get(name, 0) + int(event.get("args", {}).get("bytes", 0))
        elif category == "kernel":
            entry = by_name.setdefault(event.get("name", "")[:160], {"count": 0, "us": 0.0})
            entry["count"] += 1
            entry["us"] += float(event.get("dur", 0))
    ranked = sorted(by_name.items(), key=lambda item: item[1]["us"], reverse=True)
    totals = {category: {"count": 0, "us": 0.0} for category in CATEGORY_ORDER}
    for name, k in ranked:
        total = totals[kernel_category(name)]
        total["count"] += k["count"]
        total["us"] += k["us"]
    by_category = {category: total for category, total in totals.items() if total["count"]}
    # Summed over the categories so that by_category adds up to it exactly (float addition).
    kernel_us = sum(total["us"] for total in by_category.values())
    kernel_list = [{"name": name, **k, "share": k["us"] / kernel_us if kernel_us else 0.0} for name, k in ranked]
    copy_kernels = {name: k for name, k in by_name.items() if any(w in name.lower() for w in _COPY_KERNEL_WORDS)}
    return {
        "method": "torch.profiler, CUDA activities, one decode step after the timed ones",
        "kernels": sum(k["count"] for k in by_name.values()), "kernel_us": kernel_us, "kernel_list": kernel_list,
        "by_category": by_category, "memcpy_bytes": memcpy,
        "memcpy_dtod_bytes": sum(b for name, b in memcpy.items() if "DtoD" in name), "copy_kernels": copy_kernels,
    }  # fmt: skip
