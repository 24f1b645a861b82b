"""The compatibility layer: which TensorRT is used and the differences it papers over."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from uniattn_export.errors import UniAttnError
from uniattn_export.targets.trt import compat
from uniattn_export.targets.trt.build import parse_network


def test_tensorrt_rtx_is_found_here(flavour):
    assert flavour.name == "tensorrt_rtx" and flavour.is_rtx
    assert flavour.describe() == f"TensorRT-RTX {flavour.version}"
    assert flavour.version.startswith("1.")
    # Strongly typed: the ONNX graph's types are the engine's.
    assert flavour.network_flags() == 1 << int(flavour.module.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def test_unavailable_flavours_are_explained(monkeypatch):
    with pytest.raises(UniAttnError, match=r"no usable TensorRT \(tensorrt: not installed\)\. Install TensorRT-RTX"):
        compat.load("tensorrt")
    with pytest.raises(UniAttnError, match="unknown TensorRT flavour 'trt'"):
        compat.load("trt")
    monkeypatch.setenv(compat.FLAVOUR_ENV, "tensorrt")
    with pytest.raises(UniAttnError, match="tensorrt: not installed"):
        compat.load()


def test_compute_capability_targets(flavour):
    assert flavour.target_capabilities([]) == list(compat.RTX_COMPUTE_CAPABILITIES)
    assert flavour.target_capabilities(["8.9"]) == ["8.9"]
    with pytest.raises(UniAttnError, match=r"cannot target compute capability 9\.0"):
        flavour.target_capabilities(["9.0"])


def test_child_environment_provides_the_unversioned_library(flavour, tmp_path):
    env = flavour.library_path_env(tmp_path)
    shim = tmp_path / "trt-libs"
    assert env["LD_LIBRARY_PATH"].split(os.pathsep)[0] == str(shim)
    link = shim / "libtensorrt_rtx.so"
    assert link.is_symlink() and Path(os.path.realpath(link)).name.startswith("libtensorrt_rtx.so.")


def test_without_it_the_rtx_parser_aborts_and_that_is_one_error(tiny_artifact, monkeypatch):
    """Why the build runs in a child process: TensorRT-RTX 1.7's parser kills its process
    (std::terminate) when it cannot dlopen libtensorrt_rtx.so for a plugin node."""
    monkeypatch.setattr(compat.Flavour, "library_path_env", lambda self, scratch: dict(os.environ))
    with pytest.raises(UniAttnError, match=r"could not parse the model: the TensorRT process died \(exit -6\)"):
        parse_network(tiny_artifact.onnx_path, with_plugins=True)
    # The function bodies need no plugin, hence no dlopen.
    assert parse_network(tiny_artifact.onnx_path, with_plugins=False)["summary"]["plugin_layers"] == []
