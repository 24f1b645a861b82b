"""`uniattn-export generate` on the ONNX artifact exported from a tiny checkpoint, and on a
TensorRT engine folder: the runtime follows from the folder, --runtime forces one."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from uniattn_export.cli.main import main
from uniattn_export.export import export_model
from uniattn_export.model import load_model

from .test_generate import PROMPTS, _error_line, _generate_json, checkpoint  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def artifact(checkpoint, tmp_path_factory):
    """The checkpoint exported to an ONNX artifact (tokenizer copied along)."""
    return export_model(load_model(checkpoint), tmp_path_factory.mktemp("exported") / "artifact", source_dir=checkpoint)


def test_artifact_generates_the_checkpoints_greedy_tokens(checkpoint, artifact, capsys):
    args = ["--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--max-new-tokens", "8"]
    from_checkpoint = _generate_json(capsys, str(checkpoint), *args)
    from_artifact = _generate_json(capsys, str(artifact), *args)  # onnxruntime, chosen by the folder
    forced = _generate_json(capsys, str(artifact), "--runtime", "ort", *args)
    assert [len(r["tokens"]) for r in from_checkpoint] == [8, 8]
    assert from_artifact == from_checkpoint == forced


def test_dtype_is_for_checkpoints(artifact, capsys):
    assert "--dtype applies to checkpoints" in _error_line(capsys, str(artifact), "--prompt", "x", "--dtype", "float16")


def test_artifact_is_not_run_as_torch_or_trt_without_an_engine(artifact, capsys):
    assert "holds no PyTorch weights" in _error_line(capsys, str(artifact), "--prompt", "x", "--runtime", "torch")
    err = _error_line(capsys, str(artifact), "--prompt", "x", "--runtime", "trt")
    assert f"{artifact} has no TensorRT engine (trt/engine_manifest.json)" in err


@pytest.fixture(scope="module")
def artifact_with_engine(artifact, tmp_path_factory):
    """A copy of the artifact with a TensorRT-RTX engine in trt/ (builds on any machine)."""
    from uniattn_export.targets.trt.build import BuildOptions, build_engine

    folder = tmp_path_factory.mktemp("with_engine") / "artifact"
    shutil.copytree(artifact, folder)
    build_engine(folder / "model.onnx", folder / "trt", BuildOptions(plugins="none"))
    return folder


def test_engine_folder_runs_with_tensorrt_or_says_what_is_missing(artifact_with_engine, capsys, monkeypatch):
    engine = artifact_with_engine / "trt"
    # This machine has TensorRT-RTX but no GPU: the session refuses with one line.
    assert "no CUDA GPU is visible to this process" in _error_line(capsys, str(engine), "--prompt", "x")
    assert "no CUDA GPU is visible" in _error_line(capsys, str(artifact_with_engine), "--prompt", "x", "--runtime", "trt")
    # Without any TensorRT installed (imports of both bindings fail as for a missing package):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx_bindings", None)
    assert "no usable TensorRT (tensorrt_rtx_bindings: not installed)" in _error_line(capsys, str(engine), "--prompt", "x")
    # The same engine folder's artifact still runs with onnxruntime.
    assert main(["generate", str(engine), "--runtime", "ort", "--prompt", "x", "--max-new-tokens", "2", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["tokens"]) == 2


def test_a_generation_beyond_a_static_artifacts_capacity_is_only_its_error_line(checkpoint, tmp_path, capsys):
    static = export_model(load_model(checkpoint), tmp_path / "static", source_dir=checkpoint, cache="static",
                          max_length=16)  # fmt: skip
    err = _error_line(capsys, str(static), "--prompt", PROMPTS[0], "--max-new-tokens", "16")
    assert "exceeds the artifact's cache capacity (16)" in err  # and no progress output before it
    assert capsys.readouterr().out == ""
