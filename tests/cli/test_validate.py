"""`uniattn-export validate`: reports, golden store/check, exit codes 0 / 1 / 2."""

from __future__ import annotations

import json

import pytest

from uniattn_export.cli.main import main
from uniattn_export.export import export_model
from uniattn_export.model import load_model
from uniattn_export.model.synthetic import random_base_model, released_checkpoint, tiny_config


def _checkpoint(folder, seed):
    released_checkpoint(random_base_model(tiny_config("llama", num_hidden_layers=4), seed=seed), folder, 2, 1, 4)
    return folder


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    root = tmp_path_factory.mktemp("validate_cli")
    checkpoint = _checkpoint(root / "checkpoint", seed=6)
    return export_model(load_model(checkpoint), root / "artifact", source_dir=checkpoint)


def _json_run(capsys, *argv) -> tuple[int, dict]:
    code = main(["validate", *map(str, argv), "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_validate_prints_a_table_and_writes_the_report(artifact, tmp_path, capsys):
    report_path = tmp_path / "r.json"
    assert main(["validate", str(artifact), "--max-new-tokens", "3", "--report", str(report_path), "--custom-ops", "off"]) == 0
    out = capsys.readouterr().out
    assert "logits max |abs err|" in out and f"report: {report_path}" in out
    report = json.loads(report_path.read_text())
    assert report["passed"] and report["max_new_tokens"] == 3


def test_golden_store_then_check_then_regression(artifact, tmp_path, capsys):
    golden = tmp_path / "golden"
    code, stored = _json_run(capsys, artifact, "--golden", golden, "--max-new-tokens", "4")
    assert code == 0 and stored["reference_source"] == "pytorch" and (golden / "golden.json").is_file()
    code, checked = _json_run(capsys, artifact, "--golden", golden)
    assert code == 0 and checked["reference_source"] == "golden" and checked["max_new_tokens"] == 4
    # Golden outputs from another model: the artifact no longer matches them.
    other = _checkpoint(tmp_path / "other", seed=7)
    code, _ = _json_run(capsys, artifact, "--golden", golden, "--update-golden", "--checkpoint", other)
    assert code == 1  # stored from `other`, and compared right away: fails
    code, regressed = _json_run(capsys, artifact, "--golden", golden)
    assert code == 1 and not regressed["passed"] and regressed["failures"]


def test_a_wrong_reference_exits_1_and_says_why(artifact, tmp_path, capsys):
    other = _checkpoint(tmp_path / "other", seed=8)
    assert main(["validate", str(artifact), "--checkpoint", str(other), "--max-new-tokens", "2"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "failed: logits differ by" in out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["{missing}"], "artifact folder {missing} does not exist"),
        (["{artifact}/model.onnx"], "{artifact}/model.onnx is a file, not an artifact folder"),
        (["{artifact}", "--update-golden"], "--update-golden needs --golden DIR"),
        (["{artifact}", "--perplexity-text", "{missing}"], "cannot read {missing}"),
        (["{artifact}", "--prompt", "hello"], "text prompts need a tokenizer but {artifact} has none"),
        (["{artifact}", "--checkpoint", "{missing}"], "no PyTorch reference for {artifact}"),
    ],
    ids=["no_artifact", "a_file_of_it", "update_without_golden", "no_text", "no_tokenizer", "no_reference"],
)
def test_bad_input_exits_2_with_one_line(artifact, tmp_path, capsys, argv, message):
    names = {"missing": tmp_path / "missing", "artifact": artifact}
    assert main(["validate", *(a.format(**names) for a in argv)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("uniattn-export validate: error: ")
    assert message.format(**names) in err
