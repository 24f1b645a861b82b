"""The native build: the installed libraries carry the CUDA kernels for every target GPU
when nvcc was there, and a build without CUDA still gives working CPU libraries whose CUDA
entry points refuse with a message."""

from __future__ import annotations

import ctypes
import os
import shutil
import struct
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from uniattn_export import native

ROOT = Path(__file__).parents[2]
ELF_IMAGE, PTX_IMAGE = 2, 1
FATBIN_MAGIC = 0xBA55ED50


def fatbin_images(library: str) -> set[tuple[str, int]]:
    """(kind, sm) of every image in the library's .nv_fatbin section."""
    data = Path(library).read_bytes()
    section_offset = struct.unpack_from("<Q", data, 0x28)[0]
    entry_size, count, names_index = struct.unpack_from("<HHH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, section_offset + i * entry_size) for i in range(count)]
    names = sections[names_index]

    def name(section):
        start = names[4] + section[0]
        return data[start : data.index(b"\0", start)].decode()

    found = [s for s in sections if name(s) == ".nv_fatbin"]
    if not found:
        return set()
    blob = data[found[0][4] : found[0][4] + found[0][5]]
    images, position = set(), 0
    while position + 16 <= len(blob):
        magic, _, header_size, fat_size = struct.unpack_from("<IHHQ", blob, position)
        if magic != FATBIN_MAGIC:
            position += 8
            continue
        entry, end = position + header_size, position + header_size + fat_size
        while entry < end:
            kind, _, entry_header, size = struct.unpack_from("<HHIQ", blob, entry)
            arch = struct.unpack_from("<I", blob, entry + 28)[0]
            images.add(({ELF_IMAGE: "sass", PTX_IMAGE: "ptx"}[kind], arch))
            entry += entry_header + size
        position = end
    return images


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="the CUDA build is checked where nvcc is installed")
def test_cuda_kernels_are_built_for_every_target_gpu(kernels):
    """nvcc is on PATH here (and in CI), so the installed library must hold the CUDA kernels:
    SASS for Ampere (sm_80, sm_86), Ada (sm_89), Hopper (sm_90) and sm_90 PTX for newer GPUs."""
    assert kernels.ua_has_cuda() == 1
    images = fatbin_images(native.kernels_library())
    assert {("sass", 80), ("sass", 86), ("sass", 89), ("sass", 90), ("ptx", 90)} <= images
    # The ONNX Runtime library links the same kernels.
    assert fatbin_images(native.ort_custom_op_library()) == images


CPU_ONLY_CHECK = """
import ctypes, sys
from uniattn_export import native
lib = native.kernels()
status = lib.ua_producer_cuda(ctypes.byref(native.AttentionDesc()), ctypes.byref(native.ProducerIO()), None, None)
print(lib.ua_has_cuda(), status, lib.ua_last_error().decode(), sep="|")
"""


def test_build_without_nvcc_gives_cpu_libraries(tmp_path):
    """Configured where no CUDA compiler can be found (nvcc's folders off PATH, no CUDACXX)."""
    cmake, build = shutil.which("cmake"), tmp_path / "build"
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if not (Path(p) / "nvcc").exists())
    env = {k: v for k, v in os.environ.items() if k != "CUDACXX"} | {"PATH": path}
    configure = subprocess.run([cmake, "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"],
                               capture_output=True, text=True, check=True, env=env)  # fmt: skip
    assert "uniattn: CUDA kernels OFF (no CUDA compiler found (put nvcc on PATH or set CUDACXX)); building the " \
           "CPU kernels only." in " ".join(configure.stderr.split())  # fmt: skip
    subprocess.run([cmake, "--build", str(build), "-j", str(os.cpu_count() or 2), "--target", "uniattn_kernels",
                    "uniattn_ort"], capture_output=True, check=True, env=env)  # fmt: skip
    lib_dir = build / "lib"
    assert fatbin_images(str(lib_dir / native.KERNELS_LIBRARY)) == set()
    result = subprocess.run(
        [sys.executable, "-c", CPU_ONLY_CHECK], capture_output=True, text=True, check=True, cwd=ROOT,
        env=os.environ | {"UNIATTN_EXPORT_LIB_DIR": str(lib_dir), "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    has_cuda, status, message = result.stdout.strip().split("|")
    assert (has_cuda, status) == ("0", "2")
    assert message.startswith("ua_producer_cuda: this library was built without CUDA kernels")


def test_library_lookup_prefers_the_development_folder(tmp_path, monkeypatch):
    (tmp_path / native.ORT_LIBRARY).write_bytes(b"")
    monkeypatch.setenv("UNIATTN_EXPORT_LIB_DIR", str(tmp_path))
    assert native.ort_custom_op_library() == str(tmp_path / native.ORT_LIBRARY)
    # A development folder without the library falls back to the installed package's copy
    # (`pip install .` puts it in site-packages/uniattn_export/lib).
    monkeypatch.setenv("UNIATTN_EXPORT_LIB_DIR", str(tmp_path / "elsewhere"))
    installed = Path(sysconfig.get_paths()["platlib"]) / "uniattn_export" / "lib" / native.ORT_LIBRARY
    assert installed.is_file(), f"{installed} missing: install the package (pip install .)"
    assert native.ort_custom_op_library() == str(installed)


def test_kernel_library_reports_its_abi(kernels):
    assert kernels.ua_abi_version() == native.ABI_VERSION
    assert isinstance(kernels, ctypes.CDLL)
    # ... and both are the ABI of this checkout's header.
    header = (ROOT / "plugins" / "kernels" / "include" / "uniattn" / "kernels.h").read_text()
    assert f"#define UA_ABI_VERSION {native.ABI_VERSION}\n" in header


LAYOUT_PROBE = """
#include <stddef.h>
#include <stdio.h>
#include "uniattn/kernels.h"
#define FIELD(type, name) printf(#type " " #name " %zu\\n", offsetof(type, name));
int main(void) {
  printf("ua_attention_desc size %zu\\n", sizeof(ua_attention_desc));
  printf("ua_producer_io size %zu\\n", sizeof(ua_producer_io));
  printf("ua_consumer_io size %zu\\n", sizeof(ua_consumer_io));
  %s
  return 0;
}
"""


def test_ctypes_structs_mirror_kernels_h(tmp_path):
    """native.py's ctypes structures have kernels.h's layout: every field at the C compiler's
    offset, and the same sizes (the TensorRT plugin and the tests pass them to the library)."""
    structs = {"ua_attention_desc": native.AttentionDesc, "ua_producer_io": native.ProducerIO,
               "ua_consumer_io": native.ConsumerIO}  # fmt: skip
    fields = "".join(f"FIELD({c_name}, {name})" for c_name, struct in structs.items() for name, _ in struct._fields_)
    source = tmp_path / "probe.c"
    source.write_text(LAYOUT_PROBE.replace("%s", fields))
    compiler = shutil.which("cc") or shutil.which("gcc")
    subprocess.run([compiler, "-I", str(ROOT / "plugins/kernels/include"), str(source), "-o", str(tmp_path / "probe")],
                   check=True, capture_output=True)  # fmt: skip
    lines = subprocess.run([str(tmp_path / "probe")], capture_output=True, text=True, check=True).stdout.split("\n")
    for line in filter(None, lines):
        c_name, field, value = line.split()
        struct = structs[c_name]
        expected = ctypes.sizeof(struct) if field == "size" else getattr(struct, field).offset
        assert int(value) == expected, f"{c_name}.{field}: C says {value}, native.py {expected}"
