"""The one table of the activation dtypes an artifact can have, and their names in every
library that needs them (ONNX element types, numpy, torch, the kernel ABI, TensorRT)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# ONNX TensorProto element types (fixed by the ONNX spec). Spelled as numbers so that the CLI
# can build its parser (dtype choices) without importing onnx.
_ONNX_FLOAT, _ONNX_FLOAT16, _ONNX_BFLOAT16, _ONNX_INT64 = 1, 10, 16, 7


@dataclass(frozen=True)
class DType:
    name: str  # as torch, the manifest and the CLI spell it
    onnx: int  # onnx.TensorProto element type
    itemsize: int
    kernel_code: int  # the kernel C ABI's ua_dtype (include/uniattn/kernels.h)
    epsilon: float  # machine epsilon: the floor of derived tolerances
    higher_precision: str  # where validation measures this precision's own noise
    # numpy has no bfloat16: its values travel as uint16 holding the same bits.
    numpy: np.dtype

    def torch(self):
        import torch

        return getattr(torch, self.name)


DTYPES: dict[str, DType] = {
    d.name: d
    for d in (
        DType("float32", _ONNX_FLOAT, 4, 0, 2.0**-23, "float64", np.dtype(np.float32)),
        DType("float16", _ONNX_FLOAT16, 2, 1, 2.0**-10, "float32", np.dtype(np.float16)),
        DType("bfloat16", _ONNX_BFLOAT16, 2, 2, 2.0**-7, "float32", np.dtype(np.uint16)),
    )
}
DTYPE_NAMES = tuple(DTYPES)
# Element types of the other graph tensors (token ids, masks, positions, lse).
_OTHER_ONNX_TYPES = {"int64": _ONNX_INT64, "float": _ONNX_FLOAT}


def onnx_type(name: str) -> int:
    """ONNX element type of an activation dtype name, "int64" or "float" (float32)."""
    return DTYPES[name].onnx if name in DTYPES else _OTHER_ONNX_TYPES[name]


def onnx_type_name(elem_type: int) -> str:
    """The name of an ONNX element type as manifests and reports spell it."""
    for d in DTYPES.values():
        if d.onnx == elem_type:
            return d.name
    if elem_type == _ONNX_INT64:
        return "int64"
    import onnx

    return onnx.helper.tensor_dtype_to_string(elem_type).removeprefix("TensorProto.").lower()


def trt_type_names(trt) -> dict:
    """TensorRT DataType -> name, for the module (TensorRT or TensorRT-RTX) in use."""
    return {
        trt.DataType.FLOAT: "float32", trt.DataType.HALF: "float16", trt.DataType.BF16: "bfloat16",
        trt.DataType.INT64: "int64", trt.DataType.INT32: "int32", trt.DataType.BOOL: "bool",
    }  # fmt: skip
