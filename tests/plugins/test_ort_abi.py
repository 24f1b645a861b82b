"""plugins/onnxruntime/include/uniattn/ort_abi.h against the running ONNX Runtime.

The header places OrtApi entries by index from the documented layout. Here the entry order
it declares is checked on the live table of the pinned onnxruntime: entries spread over the
whole table are called through ctypes at the header's indices and must behave as the named
function does. (The entries only a kernel context can call are exercised by
test_ort_ops.py, which runs the library inside ORT.)"""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import onnxruntime
import pytest

HEADER = Path(__file__).parents[2] / "plugins/onnxruntime/include/uniattn/ort_abi.h"
P, SIZE, INT, STR = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_char_p
ONNX_FLOAT, ORT_ARENA_ALLOCATOR, ORT_MEM_TYPE_DEFAULT = 1, 1, 0


def declared_entries() -> list[str]:
    """OrtApi entry names in declaration order, checked against the index comments and the
    static asserts of the header."""
    text = HEADER.read_text()
    body = text[text.index("struct OrtApi {") : text.index("};", text.index("struct OrtApi {"))]
    entries = re.findall(r"/\*\s*(\d+) \*/ (?:UA_ORT_UNTYPED\((\w+)\)|[^;]*?\(ORT_API_CALL\* (\w+)\))", body)
    names = [untyped or typed for _, untyped, typed in entries]
    assert [int(index) for index, _, _ in entries] == list(range(len(names)))
    for name, index in re.findall(r"UA_ORT_AT\((\w+), (\d+)\);", text):
        assert names[int(index)] == name
    return names


class LiveApi:
    """The OrtApi table of the loaded onnxruntime, called by the header's entry names."""

    def __init__(self, version: int):
        path = next((Path(onnxruntime.__file__).parent / "capi").glob("libonnxruntime.so*"))
        library = ctypes.CDLL(str(path))
        library.OrtGetApiBase.restype = ctypes.POINTER(P * 2)
        base = library.OrtGetApiBase().contents
        table = ctypes.CFUNCTYPE(P, ctypes.c_uint32)(base[0])(version)
        assert table, f"onnxruntime {onnxruntime.__version__} does not provide C API {version}"
        self.table = ctypes.cast(table, ctypes.POINTER(P))
        self.index = {name: i for i, name in enumerate(declared_entries())}

    def entry(self, index: int, restype, *argtypes):
        return ctypes.CFUNCTYPE(restype, *argtypes)(self.table[index])

    def __call__(self, name: str, restype, *args):
        """Calls the entry `name` (typed from `args`' ctypes types)."""
        return self.entry(self.index[name], restype, *[type(a) for a in args])(*args)

    def ok(self, name: str, *args):
        status = self(name, P, *args)
        assert status is None, f"{name} failed: {self('GetErrorMessage', STR, P(status))}"


@pytest.fixture(scope="module")
def api():
    header = HEADER.read_text()
    return LiveApi(int(re.search(r"#define UA_ORT_API_VERSION (\d+)", header).group(1)))


def test_status_entries(api):
    status = api("CreateStatus", P, INT(2), STR(b"probe"))
    assert api("GetErrorCode", INT, P(status)) == 2
    assert api("GetErrorMessage", STR, P(status)) == b"probe"
    api("ReleaseStatus", None, P(status))


def test_allocator_tensor_and_memory_info_entries(api):
    allocator, pointer, value, info, memory = P(), P(), P(), P(), P()
    api.ok("GetAllocatorWithDefaultOptions", ctypes.pointer(allocator))
    api.ok("AllocatorAlloc", allocator, SIZE(64), ctypes.pointer(pointer))
    assert pointer.value
    api.ok("AllocatorFree", allocator, pointer)

    shape = (ctypes.c_int64 * 3)(2, 0, 5)
    api.ok("CreateTensorAsOrtValue", allocator, shape, SIZE(3), INT(ONNX_FLOAT), ctypes.pointer(value))
    api.ok("GetTensorTypeAndShape", value, ctypes.pointer(info))
    rank, dims = SIZE(), (ctypes.c_int64 * 3)()
    api.ok("GetDimensionsCount", info, ctypes.pointer(rank))
    api.ok("GetDimensions", info, dims, rank)
    assert rank.value == 3 and list(dims) == [2, 0, 5]
    api("ReleaseTensorTypeAndShapeInfo", None, info)
    has_value = INT()
    api.ok("HasValue", value, ctypes.pointer(has_value))
    assert has_value.value == 1
    api.ok("GetTensorMemoryInfo", value, ctypes.pointer(memory))
    name = STR()
    api.ok("MemoryInfoGetName", memory, ctypes.pointer(name))
    assert name.value == b"Cpu"
    api("ReleaseValue", None, value)


def test_custom_op_domain_entries(api):
    domain, options = P(), P()
    api.ok("CreateCustomOpDomain", STR(b"probe"), ctypes.pointer(domain))
    api.ok("CreateSessionOptions", ctypes.pointer(options))
    api.ok("AddCustomOpDomain", options, domain)
    api("ReleaseSessionOptions", None, options)
    api("ReleaseCustomOpDomain", None, domain)


def test_session_config_entries(api):
    """Add/Has/GetSessionConfigEntry (130, 237, 238): how the library learns whether a session
    asked for Linear's CUDA kernel, and how the C runtime asks for it."""
    options, has, size = P(), INT(), SIZE(8)
    value = ctypes.create_string_buffer(8)
    api.ok("CreateSessionOptions", ctypes.pointer(options))
    api.ok("HasSessionConfigEntry", options, STR(b"uniattn.probe"), ctypes.pointer(has))
    assert has.value == 0
    api.ok("AddSessionConfigEntry", options, STR(b"uniattn.probe"), STR(b"1"))
    api.ok("HasSessionConfigEntry", options, STR(b"uniattn.probe"), ctypes.pointer(has))
    api.ok("GetSessionConfigEntry", options, STR(b"uniattn.probe"), value, ctypes.pointer(size))
    assert (has.value, value.value, size.value) == (1, b"1", 2)  # the size counts the terminating NUL
    api("ReleaseSessionOptions", None, options)


def test_entries_up_to_parallel_for(api):
    """The header declares every entry up to KernelContext_ParallelFor (274, API 17), the last
    the library uses: probes of entries 254 and 273 pin the placeholders in between, so none is
    missing or duplicated. (ParallelFor itself needs a kernel context: test_ort_ops.py runs it
    through ORT, with more than one thread.)"""
    names = declared_entries()
    assert len(names) == 275 and names[274] == "KernelContext_ParallelFor"
    assert api("GetBuildInfoString", STR).startswith(b"ORT Build Info")
    options = P()
    api.ok("CreateSessionOptions", ctypes.pointer(options))
    api.ok("SetDeterministicCompute", options, ctypes.c_bool(True))
    api("ReleaseSessionOptions", None, options)
