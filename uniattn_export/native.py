"""Where the compiled libraries are.

Two shared libraries are built from plugins/ (see CMakeLists.txt) and installed into this
package's `lib/` folder:
  libuniattn_kernels.so  the C ABI over the CPU and CUDA kernels (plugins/kernels/include)
  libuniattn_ort.so      the ONNX Runtime custom-op library (exports RegisterCustomOps)
Set UNIATTN_EXPORT_LIB_DIR to use libraries from a development build folder instead.
"""

from __future__ import annotations

import os
from pathlib import Path

KERNELS_LIBRARY = "libuniattn_kernels.so"
ORT_LIBRARY = "libuniattn_ort.so"


def _find(name: str) -> str | None:
    folders = []
    if os.environ.get("UNIATTN_EXPORT_LIB_DIR"):
        folders.append(Path(os.environ["UNIATTN_EXPORT_LIB_DIR"]))
    folders.append(Path(__file__).parent / "lib")
    for folder in folders:
        candidate = folder / name
        if candidate.is_file():
            return str(candidate)
    return None


def ort_custom_op_library() -> str | None:
    """Path of the ONNX Runtime custom-op library, or None when it was not built."""
    return _find(ORT_LIBRARY)


def kernels_library() -> str | None:
    """Path of the kernel library (C ABI), or None when it was not built."""
    return _find(KERNELS_LIBRARY)
