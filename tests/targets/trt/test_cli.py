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
    from uniattn_export.targets.trt.cli import options_from_args

    args = _args()
    # Unset sequence and past ranges: their defaults depend on the cache mode.
    assert (args.trt_batch, args.trt_seq, args.trt_past) == ("1:1:8", None, None)
    assert options_from_args(args).profile.to_dict() == {"batch": [1, 1, 8], "sequence": [1, 1, 512],
                                                         "past": [0, 256, 2048]}  # fmt: skip
    # Static caches: prefill up to the capacity when it is below 512.
    assert options_from_args(args, capacity=64).profile.sequence.max == 64
    assert options_from_args(args, capacity=4096).profile.sequence.max == 512
    assert args.trt_plugins == "uniattn"
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


def test_static_artifact_builds_prefill_and_decode_profiles(tiny_static_artifact, tmp_path, capsys):
    import shutil

    from uniattn_export.cli.main import main
    from uniattn_export.targets.trt.cli import describe_build

    artifact = shutil.copytree(tiny_static_artifact.path, tmp_path / "artifact")
    message = r"--trt-past applies to dynamic caches; a static-cache engine holds the artifact's capacity \(64 tokens\)"
    with pytest.raises(UniAttnError, match=message):
        build_from_args(_args("--trt-past", "0:8:16"), artifact)
    report = json.loads(json.dumps(build_from_args(_args("--trt-batch", "1:1:2"), artifact)))
    assert report["cache"] == {"mode": "static", "capacity": 64} and report["aliased_caches"] == 7
    assert report["profiles"] == [
        {"name": "prefill", "dims": {"batch": [1, 1, 2], "sequence": [1, 1, 64], "capacity": 64}},
        {"name": "decode", "dims": {"batch": [1, 1, 2], "sequence": [1, 1, 1], "capacity": 64}},
    ]
    runs_on = describe_build(report)[1]
    assert runs_on.endswith("profile: prefill: batch 1-2, sequence 1-64; decode: batch 1-2, sequence 1-1; "
                            "caches of 64 tokens, updated in place (aliased plugin I/O)")  # fmt: skip
    # `validate ENGINE_DIR` runs the engine (TensorRTSession): every check of the manifest
    # passes here, and the first thing this machine lacks is a GPU. One line, exit 2.
    capsys.readouterr()
    assert main(["validate", str(artifact / "trt")]) == 2
    err = capsys.readouterr().err
    assert err == ("uniattn-export validate: error: no CUDA GPU is visible to this process. Run TensorRT engines "
                   "on a machine with an NVIDIA GPU (and a CUDA build of torch).\n")  # fmt: skip


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


def test_the_build_summary_says_what_was_built_where_it_runs_and_what_was_not_checked(artifact_copy):
    from uniattn_export.targets.trt.cli import describe_build

    report = build_from_args(_args("--trt-compute-capability", "8.6,8.9", "--trt-plugins", "none"), artifact_copy)
    engine = artifact_copy / "trt" / "engine.plan"
    size = f"{engine.stat().st_size / 2**20:.1f} MiB"
    first, runs_on, unchecked = describe_build(report)
    assert first.startswith(f"engine {engine} ({size}, float32, plugins: none), built in ")
    assert first.endswith(f" s with TensorRT-RTX {report['tensorrt']['version']}")
    assert runs_on == ("runs on compute capability 8.6 Ampere (RTX 30, A10, A40), 8.9 Ada (RTX 40, L4, L40); "
                       "profile: batch 1-8, sequence 1-512, past 0-2048")  # fmt: skip
    assert unchecked.startswith("not checked here: the engine was built but not run")
    assert unchecked.endswith(f"uniattn-export generate {artifact_copy / 'trt'} --prompt ...")
    preflight = describe_build(build_from_args(_args("--trt-preflight-only"), artifact_copy))
    assert preflight == ["TensorRT preflight only: every custom node resolves; no engine built"]


def test_model_target_trt_without_tensorrt_fails_before_exporting(tmp_path, capsys, monkeypatch):
    import sys

    from uniattn_export.cli.main import main
    from uniattn_export.model.synthetic import random_base_model, tiny_config

    random_base_model(tiny_config("llama"), seed=3).save_pretrained(tmp_path / "checkpoint")
    capsys.readouterr()  # transformers' save progress bar
    # Both bindings fail to import, as when neither package is installed.
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx_bindings", None)
    out = tmp_path / "out"
    assert main(["model", str(tmp_path / "checkpoint"), "--target", "trt", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("uniattn-export model: error: no usable TensorRT (tensorrt: not installed; "
                          "tensorrt_rtx_bindings: not installed). Install TensorRT-RTX")  # fmt: skip
    assert err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]  # nothing exported


def test_model_target_trt_with_bad_flags_fails_before_exporting(tmp_path, capsys):
    from uniattn_export.cli.main import main
    from uniattn_export.model.synthetic import random_base_model, tiny_config

    random_base_model(tiny_config("llama"), seed=3).save_pretrained(tmp_path / "checkpoint")
    capsys.readouterr()  # transformers' save progress bar
    for flags, message in [(["--trt-batch", "8:1:4"], "--trt-batch range 8:1:4 must satisfy"),
                           (["--trt-precision", "float16"], "the artifact is float32 but float16 was asked for"),
                           (["--trt-compute-capability", "7.0"], "cannot target compute capability 7.0")]:  # fmt: skip
        assert main(["model", str(tmp_path / "checkpoint"), "--target", "trt", "-o", str(tmp_path / "out"), *flags]) == 2
        assert message in capsys.readouterr().err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
