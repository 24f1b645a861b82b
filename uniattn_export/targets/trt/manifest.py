"""The engine manifest (engine_manifest.json next to engine.plan), checked before an engine
is deserialized.

TensorRT engines are tied to the exact TensorRT build, the GPU architecture and (here) the
plugin code; deserializing a mismatching one fails with messages like "Version tag does not
match" or worse. The manifest records what the engine was built with, and `check_loadable`
turns a mismatch into one sentence that says what to rebuild.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from ...errors import UniAttnError
from ...export.artifact import sha256_of

FORMAT_VERSION = 1
MANIFEST_NAME = "engine_manifest.json"
ENGINE_NAME = "engine.plan"
REBUILD = "rebuild it with `uniattn-export model ... --target trt` on this machine"


def plugin_code_sha256() -> str:
    """The plugin classes' source: what serializes and reads the plugin fields."""
    return sha256_of(Path(__file__).with_name("plugins.py"))


def write_manifest(folder: Path, manifest: dict) -> Path:
    path = folder / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise UniAttnError(
            f"{folder} has no {MANIFEST_NAME}",
            "point at the trt/ folder of an artifact built by uniattn-export --target trt",
        )
    try:
        manifest = json.loads(path.read_text())
        version = int(manifest["format_version"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UniAttnError(f"{path} is malformed ({exc!r})", REBUILD) from None
    if version > FORMAT_VERSION:
        raise UniAttnError(
            f"{path} was written by a newer uniattn-export (format {version})", "upgrade uniattn-export"
        )
    return manifest


def check_loadable(
    folder: Path,
    manifest: dict,
    flavour_name: str,
    flavour_version: str,
    compute_capability: Callable[[], str],
    kernels_path: str | None,
) -> Path:
    """Raise a one-sentence UniAttnError if the engine cannot load here; return its path.
    `compute_capability` is asked last: it needs a GPU, the other checks do not."""
    built = manifest["tensorrt"]
    label = {"tensorrt": "TensorRT", "tensorrt_rtx": "TensorRT-RTX"}
    if (built["flavour"], built["version"]) != (flavour_name, flavour_version):
        raise UniAttnError(
            f"the engine was built with {label.get(built['flavour'], built['flavour'])} "
            f"{built['version']} but this process uses {label.get(flavour_name, flavour_name)} "
            f"{flavour_version}",
            f"install that exact version or {REBUILD}",
        )
    plugins = manifest["plugins"]
    if plugins["mode"] == "uniattn":
        if kernels_path is None:
            raise UniAttnError(
                "the engine uses the UniAttn plugins but the kernel library is not built",
                "install the package with its native libraries (pip install .)",
            )
        if sha256_of(kernels_path) != plugins["kernels_sha256"]:
            raise UniAttnError(
                f"the kernel library {kernels_path} differs from the one the engine was built "
                "with (its workspace sizes are baked into the engine)",
                REBUILD,
            )
        if plugin_code_sha256() != plugins["plugin_code_sha256"]:
            raise UniAttnError(
                "the TensorRT plugin code changed since the engine was built (its serialized "
                "fields may no longer read back)",
                REBUILD,
            )
    engine_path = Path(folder) / manifest["engine"]["file"]
    if not engine_path.is_file():
        raise UniAttnError(f"{engine_path} is missing", REBUILD)
    if sha256_of(engine_path) != manifest["engine"]["sha256"]:
        raise UniAttnError(f"{engine_path} does not match its manifest (truncated or replaced)", REBUILD)
    targets = manifest["target"]["compute_capabilities"]
    device = compute_capability()
    if device not in targets:
        hopper_rtx = built["flavour"] == "tensorrt_rtx" and device == "9.0"
        raise UniAttnError(
            f"the engine targets compute capability {', '.join(targets)} but this GPU is {device}",
            "TensorRT-RTX does not run on Hopper (9.0): build with NVIDIA TensorRT 10/11 there"
            if hopper_rtx else REBUILD,
        )  # fmt: skip
    return engine_path
