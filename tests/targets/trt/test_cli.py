"""The `--target trt` flags (cli.add_arguments) and the build they drive (cli.build_from_args),
as the `model` command uses them."""

from __future__ import annotations

import argparse
import json

import pytest

from uniattn_export.errors import UniAttnError
from uniattn_export.targets.trt.cli import add_arguments, build_from_args
from uniattn_export.targets.trt.manifest import read_manifest


def _args(*argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_are_a_decode_friendly_profile():
    args = _args()
    profile = (args.trt_batch, args.trt_seq, args.trt_past)
    assert args.trt_plugins == "uniattn" and profile == ("1:1:8", "1:1:512", "0:256:2048")
    assert (args.trt_precision, args.trt_opt_level, args.trt_tf32, args.trt_preflight_only) == ("auto", 3, False, False)


def test_build_into_the_artifact(artifact_copy):
    args = _args("--trt-batch", "1:2:4", "--trt-seq", "1:1:64", "--trt-past", "0:32:128",
                 "--trt-compute-capability", "8.6,8.9", "--trt-opt-level", "2")
    # What the model command writes (export.json), read back: the values users see.
    report = json.loads(json.dumps(build_from_args(args, artifact_copy)))
    engine_dir = artifact_copy / "trt"
    assert report["engine"] == str(engine_dir / "engine.plan")
    assert report["compute_capabilities"] == ["8.6", "8.9"]
    assert report["profile"] == {"batch": [1, 2, 4], "sequence": [1, 1, 64], "past": [0, 32, 128]}
    assert report["plugins"] == "uniattn" and len(report["plugin_layers"]) == 4
    assert report["preflight"]["tensorrt_ok"] and report["engine_executed"] is False
    assert report["preflight"]["ort_providers"] == ["CPUExecutionProvider"]  # the CPU onnxruntime wheel
    manifest = read_manifest(engine_dir)
    assert manifest["build"]["optimization_level"] == 2
    assert manifest["engine"]["bytes"] == report["engine_bytes"] == (engine_dir / "engine.plan").stat().st_size


def test_preflight_only_builds_nothing(artifact_copy):
    report = build_from_args(_args("--trt-preflight-only"), artifact_copy)
    assert report["engine"] is None
    assert report["preflight"]["tensorrt_ok"] and report["preflight"]["onnxruntime_ok"]
    assert not (artifact_copy / "trt").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--trt-batch", "8:1:4"], r"--trt-batch range 8:1:4 must satisfy 1 <= min <= opt <= max"),
        (["--trt-seq", "0:1:4"], r"--trt-seq range 0:1:4 must satisfy 1 <= min"),
        (["--trt-past", "a:b"], r"--trt-past range 'a:b' is not MIN:OPT:MAX"),
        (["--trt-precision", "float16"], r"the artifact is float32 but float16 was asked for"),
        (["--trt-compute-capability", "7.0"], r"cannot target compute capability 7\.0"),
    ],
)
def test_bad_flags_are_one_clear_error(artifact_copy, argv, message):
    with pytest.raises(UniAttnError, match=message):
        build_from_args(_args(*argv), artifact_copy)
    assert not (artifact_copy / "trt").exists()


def test_a_tampered_artifact_is_refused_before_building(artifact_copy):
    onnx_file = artifact_copy / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes() + b"\0")
    with pytest.raises(UniAttnError, match="model.onnx was modified after export"):
        build_from_args(_args(), artifact_copy)
    assert not (artifact_copy / "trt").exists()
