"""`uniattn-export model`: export + validation end to end, targets, exit codes, messages."""

from __future__ import annotations

import json

import pytest

from uniattn_export import native
from uniattn_export.cli.main import main
from uniattn_export.model.synthetic import random_base_model, released_checkpoint, tiny_config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoint")
    released_checkpoint(random_base_model(tiny_config("llama", num_hidden_layers=4), seed=5), folder, 2, 1, 4)
    return folder


def _report(out, name="validation.json"):
    return json.loads((out / "reports" / name).read_text())


def test_onnx_target_exports_and_validates_the_portable_file(checkpoint, tmp_path, capsys):
    out = tmp_path / "onnx"
    assert main(["model", str(checkpoint), "--target", "onnx", "-o", str(out), "--max-new-tokens", "4"]) == 0
    assert {"model.onnx", "config.json", "uniattn_manifest.json", "uniattn_layer_map.json"} <= {p.name for p in out.iterdir()}
    report = _report(out)
    assert report["passed"] and report["max_new_tokens"] == 4
    assert "ONNX function bodies (no custom-op library)" in report["runtime"]
    assert _report(out, "export.json")["target"] == "onnx"
    printed = capsys.readouterr()
    assert "verdict" in printed.out and "pass" in printed.out
    assert "4 layers, 1 SuperBlocks (1->2), 1 consumers" in printed.err


def test_ort_target_exports_static_caches_and_uses_the_library_when_it_serves_them(checkpoint, tmp_path, capsys):
    out = tmp_path / "ort"
    assert main(["model", str(checkpoint), "--target", "ort", "-o", str(out), "--max-new-tokens", "3", "--json"]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert printed == _report(out) and printed["passed"]
    # Static by default, capacity min(max_position_embeddings = 256, 4096).
    assert _report(out, "export.json")["manifest"]["cache"] == {"mode": "static", "capacity": 256, "op_version": 2, "layout": "optimum"}
    assert "static caches, capacity 256 tokens" in captured.err
    assert "static caches of 256 tokens" in printed["runtime"]
    library = native.ort_custom_op_library()
    assert library is not None, f"{native.ORT_LIBRARY} is not built: {native.BUILD_FIX}"
    assert native.kernel_abi_version() == 2  # the library built from this checkout serves op version 2
    assert f"custom-op library {library}" in printed["runtime"]


def test_trt_target_builds_static_caches_by_default(checkpoint, tmp_path, capsys):
    out = tmp_path / "trt"
    argv = ["model", str(checkpoint), "--target", "trt", "--max-length", "32", "--trt-batch", "1:1:2", "-o", str(out),
            "--no-validate"]  # fmt: skip
    assert main(argv) == 0
    report = _report(out, "export.json")
    assert report["manifest"]["cache"] == {"mode": "static", "capacity": 32, "op_version": 2, "layout": "optimum"}
    assert report["trt"]["cache"] == {"mode": "static", "capacity": 32} and report["trt"]["aliased_caches"] == 7
    assert [p["name"] for p in report["trt"]["profiles"]] == ["prefill", "decode"]
    assert "caches of 32 tokens, updated in place (aliased plugin I/O)" in capsys.readouterr().err
    assert (out / "trt" / "engine.plan").is_file()


def test_trt_target_hands_over_to_the_tensorrt_builder(checkpoint, tmp_path):
    out = tmp_path / "trt"
    argv = ["model", str(checkpoint), "--target", "trt", "-o", str(out), "--trt-preflight-only", "--no-validate"]
    assert main(argv) == 0
    report = _report(out, "export.json")
    assert report["target"] == "trt" and report["trt"]["engine"] is None and report["trt"]["preflight"]


def test_trt_flags_need_the_trt_target(checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["model", str(checkpoint), "--target", "onnx", "-o", str(tmp_path / "x"), "--trt-batch", "1:1:1"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --trt-batch" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--dtype", "bfloat16"], "CPU execution provider has no bfloat16 kernels"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1, got 0"),
        (["--update-golden"], "--update-golden needs --golden DIR"),
        (["--cache", "dynamic", "--max-length", "8"], "max_length applies to static caches only"),
        (["--logits", "all"], "a static-cache artifact returns only each row's last logits"),
    ],
)
def test_bad_settings_exit_2_with_one_line(checkpoint, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert main(["model", str(checkpoint), "--target", "ort", "-o", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("uniattn-export model: error: ") and message in err[-1]
    assert not out.exists()  # rejected before the export


def test_bad_paths_exit_2_and_write_nothing(checkpoint, tmp_path, capsys):
    assert main(["model", str(tmp_path / "missing"), "--target", "onnx", "-o", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"uniattn-export model: error: checkpoint folder {tmp_path / 'missing'} does not exist. Check the path."
    )
    assert main(["model", str(checkpoint), "--target", "onnx", "-o", str(checkpoint)]) == 2
    assert f"the output {checkpoint} is the input {checkpoint}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
