"""Fixtures for the serving tests: a tiny exported UniAttn artifact (with a byte tokenizer,
so text prompts work), the C runtime through a ctypes binding of include/uniattn/runtime.h
written here as an independent user of that ABI, and the C++ example built with CMake the
way its README says. Exposed as fixtures: test modules cannot import each other under
--import-mode=importlib."""

from __future__ import annotations

import ctypes
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from uniattn_export import native

REPO = Path(__file__).resolve().parents[2]

# A 6-layer model with SuperBlocks of 2 over layers 2-5: producers 2 and 4, consumers 3 and 5.
SUPERBLOCK, BEGIN, END = 2, 2, 6
VOCAB = 256  # the byte tokenizer's


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from uniattn_export.model.synthetic import byte_tokenizer, random_base_model, released_checkpoint, tiny_config

    folder = tmp_path_factory.mktemp("serving") / "checkpoint"
    base = random_base_model(tiny_config(vocab_size=VOCAB), seed=0)
    released_checkpoint(base, folder, superblock_size=SUPERBLOCK, begin=BEGIN, end=END)
    byte_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_artifact(tiny_checkpoint, tmp_path_factory) -> Path:
    from uniattn_export.export import export_model
    from uniattn_export.model import load_model

    out = tmp_path_factory.mktemp("serving") / "artifact"
    return export_model(load_model(tiny_checkpoint), out, source_dir=tiny_checkpoint)


# ---- the C runtime through ctypes -----------------------------------------------------

STATUS = {0: "OK", 1: "INVALID_ARGUMENT", 2: "ARTIFACT_ERROR", 3: "LIBRARY_ERROR", 4: "ORT_ERROR",
          5: "OUT_OF_MEMORY", 6: "INTERNAL_ERROR"}  # fmt: skip


class RuntimeOptions(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32), ("artifact_dir", ctypes.c_char_p),
        ("onnxruntime_library", ctypes.c_char_p), ("custom_op_library", ctypes.c_char_p),
        ("custom_ops", ctypes.c_int32), ("device", ctypes.c_int32), ("device_id", ctypes.c_int32),
        ("intra_op_threads", ctypes.c_int32), ("cuda_graphs", ctypes.c_int32),
    ]  # fmt: skip


class GenerateRequest(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32), ("prompt_ids", ctypes.POINTER(ctypes.c_int64)),
        ("prompt_lengths", ctypes.POINTER(ctypes.c_int64)), ("batch_size", ctypes.c_int64),
        ("max_new_tokens", ctypes.c_int64), ("pad_token_id", ctypes.c_int64), ("eos_token_id", ctypes.c_int64),
        ("do_sample", ctypes.c_int32), ("temperature", ctypes.c_double), ("top_k", ctypes.c_int64),
        ("top_p", ctypes.c_double), ("seed", ctypes.c_uint64), ("return_logits", ctypes.c_int32),
    ]  # fmt: skip


class CRuntimeError(Exception):
    def __init__(self, status: int, message: str):
        self.status, self.message = STATUS[status], message
        super().__init__(f"{self.status}: {message}")


@dataclass
class CGeneration:
    tokens: np.ndarray  # (B, steps)
    lengths: np.ndarray  # (B,)
    logits: np.ndarray | None  # (B, steps, V)


def _bind(path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(path)
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    signatures = {
        "uniattn_runtime_options_init": ([ctypes.POINTER(RuntimeOptions)], None),
        "uniattn_generate_request_init": ([ctypes.POINTER(GenerateRequest)], None),
        "uniattn_runtime_create": ([ctypes.POINTER(RuntimeOptions), ctypes.POINTER(p)], ctypes.c_int),
        "uniattn_runtime_destroy": ([p], None),
        "uniattn_runtime_description": ([p], ctypes.c_char_p),
        "uniattn_runtime_vocab_size": ([p], i64),
        "uniattn_runtime_uses_custom_ops": ([p], ctypes.c_int),
        "uniattn_runtime_cache_capacity": ([p], i64),
        "uniattn_runtime_uses_cuda_graphs": ([p], ctypes.c_int),
        "uniattn_runtime_cuda_graph_warning": ([p], ctypes.c_char_p),
        "uniattn_generate": ([p, ctypes.POINTER(GenerateRequest), ctypes.POINTER(p)], ctypes.c_int),
        "uniattn_generation_batch_size": ([p], i64),
        "uniattn_generation_num_steps": ([p], i64),
        "uniattn_generation_tokens": ([p], ctypes.POINTER(i64)),
        "uniattn_generation_lengths": ([p], ctypes.POINTER(i64)),
        "uniattn_generation_logits": ([p], ctypes.POINTER(ctypes.c_float)),
        "uniattn_generation_destroy": ([p], None),
        "uniattn_random_uniform": ([ctypes.c_uint64, ctypes.POINTER(ctypes.c_double), ctypes.c_size_t], None),
        "uniattn_last_error": ([], ctypes.c_char_p),
        "uniattn_runtime_api_version": ([], ctypes.c_int),
    }
    for name, (argtypes, restype) in signatures.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, restype
    return lib


class CRuntime:
    """One uniattn_runtime*, with generate() mirroring GenerationSession.generate's arguments."""

    def __init__(self, lib: ctypes.CDLL, artifact: Path, *, onnxruntime: str | None = None,
                 custom_ops: int = 0, custom_op_library: str | None = None, struct_size: int | None = None):  # fmt: skip
        self.lib = lib
        options = RuntimeOptions()
        lib.uniattn_runtime_options_init(ctypes.byref(options))
        if struct_size is not None:
            options.struct_size = struct_size
        options.artifact_dir = str(artifact).encode()
        options.onnxruntime_library = (onnxruntime or native.onnxruntime_library()).encode()
        options.custom_op_library = custom_op_library.encode() if custom_op_library else None
        options.custom_ops = custom_ops
        self.handle = ctypes.c_void_p()
        status = lib.uniattn_runtime_create(ctypes.byref(options), ctypes.byref(self.handle))
        if status != 0:
            raise CRuntimeError(status, lib.uniattn_last_error().decode())

    @property
    def description(self) -> str:
        return self.lib.uniattn_runtime_description(self.handle).decode()

    @property
    def uses_custom_ops(self) -> bool:
        return bool(self.lib.uniattn_runtime_uses_custom_ops(self.handle))

    @property
    def cache_capacity(self) -> int:
        return self.lib.uniattn_runtime_cache_capacity(self.handle)

    def request(self, prompts, max_new_tokens, *, sampling=None, eos_token_id=None, pad_token_id=0,
                return_logits=False) -> GenerateRequest:  # fmt: skip
        request = GenerateRequest()
        self.lib.uniattn_generate_request_init(ctypes.byref(request))
        ids = np.ascontiguousarray([t for p in prompts for t in p], dtype=np.int64)
        lengths = np.ascontiguousarray([len(p) for p in prompts], dtype=np.int64)
        request.arrays = (ids, lengths)  # the request points into these: keep them alive with it
        request.prompt_ids = ids.ctypes.data_as(ctypes.POINTER(ctypes.c_int64))
        request.prompt_lengths = lengths.ctypes.data_as(ctypes.POINTER(ctypes.c_int64))
        request.batch_size, request.max_new_tokens = len(prompts), max_new_tokens
        request.pad_token_id = pad_token_id
        request.eos_token_id = -1 if eos_token_id is None else eos_token_id
        if sampling is not None:
            request.do_sample, request.temperature, request.seed = 1, sampling.temperature, sampling.seed
            request.top_k = sampling.top_k or 0
            request.top_p = 1.0 if sampling.top_p is None else sampling.top_p
        request.return_logits = int(return_logits)
        return request

    def run(self, request: GenerateRequest) -> CGeneration:
        out = ctypes.c_void_p()
        status = self.lib.uniattn_generate(self.handle, ctypes.byref(request), ctypes.byref(out))
        if status != 0:
            raise CRuntimeError(status, self.lib.uniattn_last_error().decode())
        try:
            batch, steps = self.lib.uniattn_generation_batch_size(out), self.lib.uniattn_generation_num_steps(out)
            vocab = self.lib.uniattn_runtime_vocab_size(self.handle)
            tokens = np.ctypeslib.as_array(self.lib.uniattn_generation_tokens(out), (batch, steps)).copy()
            lengths = np.ctypeslib.as_array(self.lib.uniattn_generation_lengths(out), (batch,)).copy()
            pointer = self.lib.uniattn_generation_logits(out)
            logits = np.ctypeslib.as_array(pointer, (batch, steps, vocab)).copy() if pointer else None
        finally:
            self.lib.uniattn_generation_destroy(out)
        return CGeneration(tokens, lengths, logits)

    def generate(self, prompts, max_new_tokens, **kwargs) -> CGeneration:
        return self.run(self.request(prompts, max_new_tokens, **kwargs))

    def close(self) -> None:
        self.lib.uniattn_runtime_destroy(self.handle)
        self.handle = ctypes.c_void_p()


@pytest.fixture(scope="session")
def runtime_library() -> str:
    path = native.runtime_library()
    assert path is not None, f"{native.RUNTIME_LIBRARY} is not built: {native.BUILD_FIX}"
    return path


@pytest.fixture(scope="session")
def c_api(runtime_library) -> ctypes.CDLL:
    return _bind(runtime_library)


@pytest.fixture(scope="session")
def c_runtime(c_api):
    """CRuntime(artifact, **options): a runtime over the C API, closed at the end of the session."""
    made = []

    def make(artifact, **options) -> CRuntime:
        made.append(CRuntime(c_api, artifact, **options))
        return made[-1]

    yield make
    for runtime in made:
        runtime.close()


@pytest.fixture(scope="session")
def c_runtime_error():
    return CRuntimeError


# ---- the C++ example -------------------------------------------------------------------


@pytest.fixture(scope="session")
def cpp_service(runtime_library, tmp_path_factory) -> Path:
    """examples/cpp_service built against the runtime library and its installed header."""
    include = native.runtime_include_dir()
    assert include is not None, "include/uniattn/runtime.h not found"
    build = tmp_path_factory.mktemp("cpp_service_build")
    for command in (
        ["cmake", "-S", str(REPO / "examples" / "cpp_service"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
         f"-DUNIATTN_RUNTIME_LIBRARY={runtime_library}", f"-DUNIATTN_INCLUDE_DIR={include}"],
        ["cmake", "--build", str(build), "-j2"],
    ):  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    return build / "uniattn_cpp_service"
