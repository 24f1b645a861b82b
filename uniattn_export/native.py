"""Where the compiled libraries are, and the kernels' C ABI from Python.

Two shared libraries are built from plugins/ (see CMakeLists.txt) and installed into this
package's `lib/` folder:
  libuniattn_kernels.so  the C ABI over the CPU and CUDA kernels (plugins/kernels/include)
  libuniattn_ort.so      the ONNX Runtime custom-op library (exports RegisterCustomOps)
  libuniattn_runtime.so  the C runtime for services (runtime/, include/uniattn/runtime.h)
Set UNIATTN_EXPORT_LIB_DIR to use libraries from a development build folder instead
(`cmake -S . -B build/dev && cmake --build build/dev` puts them in build/dev/lib).

`run_producer` / `run_consumer` call the kernels on torch tensors with the signature of
model/attention.py (op version 1, growing caches); `run_producer_static` / `run_consumer_static`
call them with version 2's fixed-capacity caches (slots = position_ids, optionally in place).
CPU tensors go to the CPU kernels (on the calling thread: Python passes no thread pool), CUDA
tensors to the CUDA kernels on torch's current stream.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
from importlib import metadata
from pathlib import Path

from .dtypes import DTYPES
from .errors import UniAttnError

KERNELS_LIBRARY = "libuniattn_kernels.so"
ORT_LIBRARY = "libuniattn_ort.so"
RUNTIME_LIBRARY = "libuniattn_runtime.so"
DISTRIBUTION = "uniattn-export"
BUILD_FIX = (
    "build it with `pip install .` (or `cmake -S . -B build/dev && cmake --build build/dev` "
    "and UNIATTN_EXPORT_LIB_DIR=build/dev/lib)"
)


def _candidates(name: str) -> list[Path]:
    folders = []
    if os.environ.get("UNIATTN_EXPORT_LIB_DIR"):
        folders.append(Path(os.environ["UNIATTN_EXPORT_LIB_DIR"]))
    folders.append(Path(__file__).parent / "lib")
    candidates = [folder / name for folder in folders]
    # A source checkout on sys.path shadows the installed package; its wheel files still count.
    try:
        candidates.append(Path(metadata.distribution(DISTRIBUTION).locate_file(f"uniattn_export/lib/{name}")))
    except metadata.PackageNotFoundError:
        pass
    return candidates


def _find(name: str) -> str | None:
    return next((str(path) for path in _candidates(name) if path.is_file()), None)


def ort_custom_op_library() -> str | None:
    """Path of the ONNX Runtime custom-op library, or None when it was not built."""
    return _find(ORT_LIBRARY)


def kernels_library() -> str | None:
    """Path of the kernel library (C ABI), or None when it was not built."""
    return _find(KERNELS_LIBRARY)


def runtime_library() -> str | None:
    """Path of the C runtime for services (include/uniattn/runtime.h), or None when it was not built."""
    return _find(RUNTIME_LIBRARY)


def runtime_include_dir() -> str | None:
    """The folder holding uniattn/runtime.h, from the same place as the libraries: this
    source checkout's include/ when UNIATTN_EXPORT_LIB_DIR points at a development build,
    else the wheel's include/, else the checkout's."""
    checkout = Path(__file__).parents[1] / "include"
    folders = [checkout] if os.environ.get("UNIATTN_EXPORT_LIB_DIR") else []
    folders.append(Path(__file__).parent / "include")
    try:
        folders.append(Path(metadata.distribution(DISTRIBUTION).locate_file("uniattn_export/include")))
    except metadata.PackageNotFoundError:
        pass
    folders.append(checkout)
    return next((str(f) for f in folders if (f / "uniattn" / "runtime.h").is_file()), None)


def onnxruntime_library() -> str | None:
    """The libonnxruntime.so inside the installed onnxruntime wheel (what the C runtime loads)."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted((Path(spec.submodule_search_locations[0]) / "capi").glob("libonnxruntime.so.*"))
    return str(found[-1]) if found else None


# ---- plugins/kernels/include/uniattn/kernels.h ----------------------------------------

ABI_VERSION = 2
DTYPE_CODES = {d.name: d.kernel_code for d in DTYPES.values()}
UA_OK = 0


class AttentionDesc(ctypes.Structure):
    _fields_ = [
        ("batch", ctypes.c_int64),
        ("query_len", ctypes.c_int64),
        ("past_len", ctypes.c_int64),
        ("num_heads", ctypes.c_int64),
        ("kv_num_heads", ctypes.c_int64),
        ("head_dim", ctypes.c_int64),
        ("scale", ctypes.c_float),
        ("is_causal", ctypes.c_int32),
        ("sliding_window", ctypes.c_int64),
        ("dtype", ctypes.c_int),
        ("capacity", ctypes.c_int64),  # 0: dynamic layout (op version 1); > 0: static layout (version 2)
    ]


class ProducerIO(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_void_p)
        for name in (
            "query", "key", "value", "past_key", "past_value", "attention_mask",
            "output", "present_key", "present_value", "shared_probs", "shared_lse", "position_ids",
        )
    ]


class ConsumerIO(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_void_p)
        for name in (
            "value", "past_value", "attention_mask", "shared_probs", "shared_lse",
            "producer_query", "producer_key", "output", "present_value", "position_ids",
        )
    ]


# The CPU entry points take a `const ua_cpu_threads*`; Python passes NULL (the calling thread).
CPU_THREADS = ctypes.c_void_p


def kernel_abi_version() -> int | None:
    """ABI version of the installed kernel library, or None when it is absent or unreadable.

    Never raises: the ONNX Runtime session asks it whether the custom-op library (built from
    the same kernels, installed beside them) serves op contract version 2 (ABI >= 2)."""
    path = kernels_library()
    if path is None:
        return None
    try:
        function = ctypes.CDLL(path).ua_abi_version
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = [], ctypes.c_int
    return int(function())


@functools.cache
def kernels() -> ctypes.CDLL:
    """The kernel library with typed entry points (see kernels.h)."""
    path = kernels_library()
    if path is None:
        raise UniAttnError(f"the kernel library {KERNELS_LIBRARY} is not built", BUILD_FIX)
    lib = ctypes.CDLL(path)
    desc, status, size = ctypes.POINTER(AttentionDesc), ctypes.c_int, ctypes.c_size_t
    signatures = {
        "ua_abi_version": ([], ctypes.c_int),
        "ua_has_cuda": ([], ctypes.c_int),
        "ua_last_error": ([], ctypes.c_char_p),
        "ua_producer_cpu": ([desc, ctypes.POINTER(ProducerIO), CPU_THREADS], status),
        "ua_consumer_cpu": ([desc, ctypes.POINTER(ConsumerIO), CPU_THREADS], status),
        "ua_producer_cuda_workspace_size": ([desc, ctypes.c_int], size),
        "ua_consumer_cuda_workspace_size": ([desc, ctypes.c_int], size),
        "ua_producer_cuda": ([desc, ctypes.POINTER(ProducerIO), ctypes.c_void_p, ctypes.c_void_p], status),
        "ua_consumer_cuda": ([desc, ctypes.POINTER(ConsumerIO), ctypes.c_void_p, ctypes.c_void_p], status),
    }
    for name, (argtypes, restype) in signatures.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, restype
    if lib.ua_abi_version() != ABI_VERSION:
        raise UniAttnError(
            f"{path} implements kernel ABI {lib.ua_abi_version()}, this package needs {ABI_VERSION}",
            "rebuild the native libraries from this checkout",
        )
    return lib


class KernelError(RuntimeError):
    """A kernel refused a call (status != UA_OK); the message is the kernel's."""

    def __init__(self, function: str, status: int, message: str):
        self.status = status
        super().__init__(f"{function} returned status {status}: {message}")


def _pointer(tensor) -> int | None:
    return tensor.data_ptr() if tensor is not None and tensor.numel() > 0 else None


def _dense(*tensors):
    """The kernels read dense row-major tensors; masks and positions as int64."""
    import torch

    return [
        None if t is None else (t.to(torch.int64) if t.dtype in (torch.bool, torch.int32) else t).contiguous()
        for t in tensors
    ]


def _call(function: str, desc: AttentionDesc, io, device, workspace_size_args: tuple):
    import torch

    lib = kernels()
    if device.type == "cuda":
        size = getattr(lib, f"{function}_cuda_workspace_size")(ctypes.byref(desc), *workspace_size_args)
        workspace = torch.empty(size, dtype=torch.uint8, device=device) if size else None
        stream = torch.cuda.current_stream(device).cuda_stream
        status = getattr(lib, f"{function}_cuda")(ctypes.byref(desc), ctypes.byref(io), _pointer(workspace), stream)
    else:
        status = getattr(lib, f"{function}_cpu")(ctypes.byref(desc), ctypes.byref(io), None)
    if status != UA_OK:
        raise KernelError(function, status, lib.ua_last_error().decode())


def _desc(batch, query_len, past_len, num_heads, kv_num_heads, head_dim, scale, is_causal, sliding_window, dtype,
          capacity=0):  # fmt: skip
    code = DTYPE_CODES[str(dtype).removeprefix("torch.")]
    return AttentionDesc(
        batch, query_len, past_len, num_heads, kv_num_heads, head_dim, scale, int(is_causal), sliding_window, code,
        capacity,
    )


def run_producer(
    query, key, value, past_key, past_value, attention_mask, *, num_heads: int, kv_num_heads: int,
    scale: float, is_causal: bool = True, sliding_window: int = 0, probs_max_query_len: int = 16,
    emit_shared: bool = True,
):
    """UniAttnProducer version 1 (dynamic caches) through the kernel library; returns what
    model.attention.producer_attention returns (the shared state is None when not emitted)."""
    import torch

    query, key, value, past_key, past_value, attention_mask = _dense(
        query, key, value, past_key, past_value, attention_mask
    )
    batch, query_len, width = query.shape
    head_dim, past_len = width // num_heads, past_key.shape[2]
    key_len = past_len + query_len
    new = functools.partial(torch.empty, dtype=query.dtype, device=query.device)
    output = new((batch, query_len, width))
    present_key = new((batch, kv_num_heads, key_len, head_dim))
    present_value = new((batch, kv_num_heads, key_len, head_dim))
    probs_len = key_len if query_len <= probs_max_query_len else 0
    shared_probs = new((batch, num_heads, query_len, probs_len)) if emit_shared else None
    shared_lse = torch.empty((batch, num_heads, query_len), device=query.device) if emit_shared else None
    tensors = [query, key, value, past_key, past_value, attention_mask, output, present_key, present_value,
               shared_probs, shared_lse, None]
    io = ProducerIO(*[_pointer(t) for t in tensors])
    desc = _desc(batch, query_len, past_len, num_heads, kv_num_heads, head_dim, scale, is_causal, sliding_window,
                 query.dtype)
    _call("ua_producer", desc, io, query.device, (int(probs_len > 0 and emit_shared),))
    return output, present_key, present_value, shared_probs, shared_lse


def run_consumer(
    value, past_value, attention_mask, shared_probs, shared_lse, producer_query, producer_key, *,
    num_heads: int, kv_num_heads: int, scale: float, is_causal: bool = True, sliding_window: int = 0,
):
    """UniAttnConsumer version 1 (dynamic caches) through the kernel library; returns
    (output, present_value) like model.attention.consumer_attention."""
    import torch

    value, past_value, attention_mask, shared_probs, shared_lse, producer_query, producer_key = _dense(
        value, past_value, attention_mask, shared_probs, shared_lse, producer_query, producer_key
    )
    batch, query_len, width = value.shape
    head_dim, past_len = width // kv_num_heads, past_value.shape[2]
    key_len = past_len + query_len
    output = torch.empty((batch, query_len, num_heads * head_dim), dtype=value.dtype, device=value.device)
    present_value = torch.empty((batch, kv_num_heads, key_len, head_dim), dtype=value.dtype, device=value.device)
    reuse_probs = shared_probs.shape[-1] == key_len and key_len > 0
    tensors = [value, past_value, attention_mask, shared_probs if reuse_probs else None, shared_lse,
               producer_query, producer_key, output, present_value, None]
    io = ConsumerIO(*[_pointer(t) for t in tensors])
    desc = _desc(batch, query_len, past_len, num_heads, kv_num_heads, head_dim, scale, is_causal, sliding_window,
                 value.dtype)
    _call("ua_consumer", desc, io, value.device, (int(reuse_probs),))
    return output, present_value


def run_producer_static(
    query, key, value, past_key, past_value, position_ids, *, num_heads: int, kv_num_heads: int, scale: float,
    sliding_window: int = 0, probs_max_query_len: int = 16, emit_shared: bool = True, in_place: bool = False,
):
    """UniAttnProducer version 2 (fixed-capacity caches (B, Hkv, C, D), slots = position_ids)
    through the kernel library. `in_place` binds present to past (the caches are updated and
    returned); otherwise present is a new tensor and past is left as it was. Returns
    (output, present_key, present_value, shared_probs, shared_lse); shared_probs is
    (B, Hq, L, C) or (B, Hq, L, 0), its entries beyond a row's last position unspecified."""
    import torch

    query, key, value, position_ids = _dense(query, key, value, position_ids)
    if not in_place:
        past_key, past_value = _dense(past_key, past_value)
    batch, query_len, width = query.shape
    head_dim, capacity = width // num_heads, past_key.shape[2]
    new = functools.partial(torch.empty, dtype=query.dtype, device=query.device)
    output = new((batch, query_len, width))
    present_key = past_key if in_place else torch.empty_like(past_key)
    present_value = past_value if in_place else torch.empty_like(past_value)
    probs_len = capacity if query_len <= probs_max_query_len else 0
    shared_probs = new((batch, num_heads, query_len, probs_len)) if emit_shared else None
    shared_lse = torch.empty((batch, num_heads, query_len), device=query.device) if emit_shared else None
    tensors = [query, key, value, past_key, past_value, None, output, present_key, present_value,
               shared_probs, shared_lse, position_ids]
    io = ProducerIO(*[_pointer(t) for t in tensors])
    desc = _desc(batch, query_len, 0, num_heads, kv_num_heads, head_dim, scale, True, sliding_window, query.dtype,
                 capacity)
    _call("ua_producer", desc, io, query.device, (int(probs_len > 0 and emit_shared),))
    return output, present_key, present_value, shared_probs, shared_lse


def run_consumer_static(
    value, past_value, position_ids, shared_probs, shared_lse, producer_query, producer_key, *, num_heads: int,
    kv_num_heads: int, scale: float, sliding_window: int = 0, in_place: bool = False,
):
    """UniAttnConsumer version 2 (fixed-capacity caches) through the kernel library: reuses
    shared_probs when its last dim is C (decode), else recomputes from producer_query,
    producer_key (the producer's present_key) and shared_lse. Returns (output, present_value)."""
    import torch

    value, position_ids, shared_probs, shared_lse, producer_query, producer_key = _dense(
        value, position_ids, shared_probs, shared_lse, producer_query, producer_key
    )
    if not in_place:
        (past_value,) = _dense(past_value)
    batch, query_len, width = value.shape
    head_dim, capacity = width // kv_num_heads, past_value.shape[2]
    output = torch.empty((batch, query_len, num_heads * head_dim), dtype=value.dtype, device=value.device)
    present_value = past_value if in_place else torch.empty_like(past_value)
    reuse_probs = shared_probs.shape[-1] == capacity
    tensors = [value, past_value, None, shared_probs if reuse_probs else None, shared_lse, producer_query,
               producer_key, output, present_value, position_ids]
    io = ConsumerIO(*[_pointer(t) for t in tensors])
    desc = _desc(batch, query_len, 0, num_heads, kv_num_heads, head_dim, scale, True, sliding_window, value.dtype,
                 capacity)
    _call("ua_consumer", desc, io, value.device, (int(reuse_probs),))
    return output, present_value
