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
# How many kernels (by total time) the step's breakdown lists; all of them count in kernel_us.
TOP_KERNELS = 12


def kernel_label(name: str) -> str:
    """A kernel's name as tables show it: without the return type, anonymous namespaces, template
    arguments and parameters (`void uniattn::cuda::(anonymous namespace)::split_kv_kernel<...>(...)`
    -> `uniattn::cuda::split_kv_kernel`); bench.json keeps the full name."""
    name = name.removeprefix("void ").replace("(anonymous namespace)::", "")
    return re.split(r"[<(]", name, maxsplit=1)[0] or name


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
    the step's GPU time goes: the kernels' summed duration, and the TOP_KERNELS names by total
    time with their count, microseconds and share."""
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
    kernel_us = sum(k["us"] for k in by_name.values())
    ranked = sorted(by_name.items(), key=lambda item: item[1]["us"], reverse=True)
    top = [{"name": name, **k, "share": k["us"] / kernel_us if kernel_us else 0.0} for name, k in ranked[:TOP_KERNELS]]
    copy_kernels = {name: k for name, k in by_name.items() if any(w in name.lower() for w in _COPY_KERNEL_WORDS)}
    return {
        "method": "torch.profiler, CUDA activities, one decode step after the timed ones",
        "kernels": sum(k["count"] for k in by_name.values()), "kernel_us": kernel_us, "top_kernels": top,
        "memcpy_bytes": memcpy, "memcpy_dtod_bytes": sum(b for name, b in memcpy.items() if "DtoD" in name),
        "copy_kernels": copy_kernels,
    }  # fmt: skip
