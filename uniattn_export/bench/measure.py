"""Timing statistics, the run's time budget, device memory and out-of-memory detection."""

from __future__ import annotations

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


def cuda_copy_profile(step: Callable[[], float]) -> dict:
    """Run `step` once under torch.profiler with CUDA activities (CUPTI records every kernel
    and memcpy of the process, ORT's included) and account its copies: memcpy bytes by kind
    (from the trace's `bytes` field) and the copy-like kernels by name with their count and
    time (a kernel's bytes are not in the trace; a full-cache copy shows as time)."""
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
    memcpy: dict[str, int] = {}
    kernels: dict[str, dict] = {}
    kernel_count = 0
    for event in events:
        category = event.get("cat", "")
        if category == "gpu_memcpy":
            name = event.get("name", "memcpy")
            memcpy[name] = memcpy.get(name, 0) + int(event.get("args", {}).get("bytes", 0))
        elif category == "kernel":
            kernel_count += 1
            name = event.get("name", "")
            if any(word in name.lower() for word in _COPY_KERNEL_WORDS):
                entry = kernels.setdefault(name[:160], {"count": 0, "us": 0.0})
                entry["count"] += 1
                entry["us"] += float(event.get("dur", 0))
    device_to_device = sum(b for name, b in memcpy.items() if "DtoD" in name)
    return {
        "method": "torch.profiler, CUDA activities, one uncaptured decode step",
        "kernels": kernel_count, "memcpy_bytes": memcpy, "memcpy_dtod_bytes": device_to_device,
        "copy_kernels": kernels,
    }  # fmt: skip
