"""The engine manifest is checked before deserialization: each mismatch is one sentence that
says what to do, and nothing touches TensorRT's runtime until every check passed."""

from __future__ import annotations

import json
import shutil

import pytest

from uniattn_export import native
from uniattn_export.errors import UniAttnError
from uniattn_export.targets.trt.manifest import MANIFEST_NAME, check_loadable, read_manifest
from uniattn_export.targets.trt.session import TensorRTSession


@pytest.fixture
def engine_copy(engines, tmp_path):
    """A private copy of the plugin engine folder and its manifest."""
    folder = shutil.copytree(engines["uniattn"].engine_path.parent, tmp_path / "trt")
    return folder, read_manifest(folder)


def _never_asked():
    raise AssertionError("the GPU was queried although an earlier check failed")


def test_matching_engine_passes(engine_copy, flavour):
    folder, manifest = engine_copy
    path = check_loadable(folder, manifest, flavour.name, flavour.version, lambda: "8.6", native.kernels_library())
    assert path == folder / "engine.plan"


@pytest.mark.parametrize(
    "built_with, message",
    [
        (("tensorrt_rtx", "1.6.0.1"), r"built with TensorRT-RTX 1\.6\.0\.1 but this process uses TensorRT-RTX 1\.7"),
        (("tensorrt", "10.13.0"), r"built with TensorRT 10\.13\.0 but this process uses TensorRT-RTX"),
    ],
)
def test_tensorrt_mismatch(engine_copy, flavour, built_with, message):
    folder, manifest = engine_copy
    manifest["tensorrt"] = {"flavour": built_with[0], "version": built_with[1]}
    with pytest.raises(UniAttnError, match=message + r".*\. Install that exact version or rebuild it"):
        check_loadable(folder, manifest, flavour.name, flavour.version, _never_asked, native.kernels_library())


def test_compute_capability_mismatch(engine_copy, flavour):
    folder, manifest = engine_copy
    kernels = native.kernels_library()
    with pytest.raises(UniAttnError) as hopper:
        check_loadable(folder, manifest, flavour.name, flavour.version, lambda: "9.0", kernels)
    assert str(hopper.value) == (
        "the engine targets compute capability 8.0, 8.6, 8.9, 12.0, 12.1 but this GPU is 9.0. "
        "TensorRT-RTX does not run on Hopper (9.0): build with NVIDIA TensorRT 10/11 there."
    )
    manifest["target"]["compute_capabilities"] = ["8.6"]
    with pytest.raises(UniAttnError, match=r"targets compute capability 8\.6 but this GPU is 8\.9\. Rebuild it"):
        check_loadable(folder, manifest, flavour.name, flavour.version, lambda: "8.9", kernels)


def test_kernel_library_mismatch(engine_copy, flavour, tmp_path):
    folder, manifest = engine_copy
    other = tmp_path / "libuniattn_kernels.so"
    other.write_bytes(open(native.kernels_library(), "rb").read() + b"\0")
    with pytest.raises(UniAttnError, match="kernel library .* differs from the one the engine was built with"):
        check_loadable(folder, manifest, flavour.name, flavour.version, _never_asked, str(other))
    with pytest.raises(UniAttnError, match="uses the UniAttn plugins but the kernel library is not built"):
        check_loadable(folder, manifest, flavour.name, flavour.version, _never_asked, None)


def test_plugin_code_mismatch(engine_copy, flavour):
    folder, manifest = engine_copy
    manifest["plugins"]["plugin_code_sha256"] = "0" * 64
    with pytest.raises(UniAttnError, match="plugin code changed since the engine was built"):
        check_loadable(folder, manifest, flavour.name, flavour.version, _never_asked, native.kernels_library())


def test_truncated_engine(engine_copy, flavour):
    folder, manifest = engine_copy
    plan = folder / "engine.plan"
    plan.write_bytes(plan.read_bytes()[:1000])
    with pytest.raises(UniAttnError, match="engine.plan does not match its manifest .truncated or replaced."):
        check_loadable(folder, manifest, flavour.name, flavour.version, _never_asked, native.kernels_library())
    plan.unlink()
    with pytest.raises(UniAttnError, match="engine.plan is missing"):
        check_loadable(folder, manifest, flavour.name, flavour.version, _never_asked, native.kernels_library())


def test_engine_without_plugins_does_not_need_the_kernels(engines, flavour):
    folder = engines["none"].engine_path.parent
    manifest = read_manifest(folder)
    assert check_loadable(folder, manifest, flavour.name, flavour.version, lambda: "12.0", None).is_file()


def test_unreadable_manifests(tmp_path):
    with pytest.raises(UniAttnError, match="has no engine_manifest.json"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(UniAttnError, match="engine_manifest.json is malformed"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"format_version": 99}))
    with pytest.raises(UniAttnError, match="written by a newer uniattn-export"):
        read_manifest(tmp_path)


def test_session_checks_everything_it_can_before_needing_a_gpu(engine_copy):
    """On this CPU-only machine the session gets as far as the GPU query and stops there with
    one sentence; a stale manifest is reported before that."""
    folder, manifest = engine_copy
    with pytest.raises(UniAttnError, match="^no CUDA GPU is visible to this process. Run TensorRT engines on"):
        TensorRTSession(folder)
    manifest["tensorrt"]["version"] = "1.0.0"
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(UniAttnError, match="built with TensorRT-RTX 1.0.0 but this process uses"):
        TensorRTSession(folder)
