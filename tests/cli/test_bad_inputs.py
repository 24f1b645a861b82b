"""Every bad input gets one line on stderr, exit code 2, no traceback, and nothing is written
or changed (docs/cli.md). One table row per case of issue 13; each row builds its own
damaged copy, so the check that nothing changed covers the inputs too."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from uniattn_export.cli.main import main
from uniattn_export.cli.outcome import run_command
from uniattn_export.export import export_model
from uniattn_export.model import load_model
from uniattn_export.model.synthetic import byte_tokenizer, random_base_model, released_checkpoint, tiny_config

from artifact_edits import edit_json, manifest_edit, rehash, setting

pytestmark = pytest.mark.usefixtures("single_torch_thread")

REPO = Path(__file__).resolve().parents[2]
UNWRITABLE = Path("/sys/uniattn-export-test")  # sysfs refuses new folders, also to root


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A released-layout checkpoint (vocab 256, 256 positions, byte tokenizer), its artifact
    and golden outputs stored from it."""
    root = tmp_path_factory.mktemp("bad_inputs")
    checkpoint = root / "checkpoint"
    config = tiny_config("llama", num_hidden_layers=4, vocab_size=256)
    released_checkpoint(random_base_model(config, seed=8), checkpoint, 2, 1, 4)
    byte_tokenizer().save_pretrained(checkpoint)
    artifact = export_model(load_model(checkpoint), root / "artifact", source_dir=checkpoint)
    assert main(["validate", str(artifact), "--golden", str(root / "golden"), "--max-new-tokens", "2",
                 "--report", str(root / "r.json")]) == 0  # fmt: skip
    return {"checkpoint": checkpoint, "artifact": artifact, "golden": root / "golden"}


@contextlib.contextmanager
def read_only(folder: Path):
    """Make `folder` unwritable, for root too (the immutable attribute; chmod binds others)."""
    folder.chmod(0o555)
    immutable = os.geteuid() == 0
    if immutable:
        subprocess.run(["chattr", "+i", str(folder)], check=True)
    try:
        yield folder
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def _int64_weight(checkpoint: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(str(checkpoint / "model.safetensors"))
    name = "model.layers.0.mlp.gate_proj.weight"
    weights[name] = weights[name].to(dtype=__import__("torch").int64)
    save_file(weights, str(checkpoint / "model.safetensors"), metadata={"format": "pt"})


# (id, damage of the checkpoint copy, extra `model` arguments, words of the one line)
CHECKPOINT_CASES = [
    ("config_json_a_list", lambda c: (c / "config.json").write_text("[1, 2]"), [],
     "config.json holds a JSON list, not an object"),
    ("unknown_rope_type", lambda c: edit_json(c / "config.json", setting("rope_scaling", {"rope_type": "bogus", "factor": 2.0})),
     [], "rope_scaling rope_type 'bogus', which transformers does not know. Use one of default, linear"),
    ("grouping_idx_float", lambda c: edit_json(c / "config.json", setting("grouping_idx", 3.7)), [],
     "grouping_idx / grouping_begin_idx / grouping_end_idx must be integers, got 3.7 / 1 / 4"),
    ("int64_weight", _int64_weight, [],
     "weight model.layers.0.mlp.gate_proj.weight has dtype int64, not a floating-point type"),
    ("max_position_embeddings_0", lambda c: edit_json(c / "config.json", setting("max_position_embeddings", 0)), [],
     "has max_position_embeddings=0, expected a positive integer"),
    ("dtype_int8", None, ["--dtype", "int8"], "argument --dtype: invalid choice: 'int8'"),
    ("max_new_tokens_beyond_the_context", None, ["--max-new-tokens", "100000"],
     "prompt tokens (1) + max_new_tokens (100000) exceed the model's 256 positions"),
    ("perplexity_tokens_negative", None, ["--perplexity-tokens", "-5"], "--perplexity-tokens must be >= 2, got -5"),
    ("perplexity_text_empty", None, ["--perplexity-text", "{tmp}/empty.txt"], "empty.txt is empty. Pass a file with text"),
    ("golden_a_file", None, ["--golden", "{tmp}/notes.txt"], "notes.txt is a file, not a folder"),
    ("junit_a_directory", None, ["--junit", "{tmp}/results"], "results is a folder, not a file (a JUnit file"),
    ("output_unwritable", None, ["-o", str(UNWRITABLE / "out")], "cannot write to /sys"),
    ("report_unwritable", None, ["--report", str(UNWRITABLE / "r.json")], "cannot write to /sys"),
    ("report_foreign_file", None, ["--report", "{tmp}/notes.txt"], "notes.txt exists and is not a validation report"),
]  # fmt: skip


@pytest.mark.parametrize("damage, extra, words", [c[1:] for c in CHECKPOINT_CASES], ids=[c[0] for c in CHECKPOINT_CASES])
def test_model_bad_input_is_one_line_before_any_work(made, tmp_path, capsys, damage, extra, words):
    checkpoint = shutil.copytree(made["checkpoint"], tmp_path / "checkpoint")
    if damage is not None:
        damage(checkpoint)
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / "results").mkdir()
    before = {p: p.read_bytes() if p.is_file() else None for p in sorted(tmp_path.rglob("*"))}
    argv = ["model", str(checkpoint), "--target", "onnx", "-o", str(tmp_path / "out"), *extra]
    try:
        code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    except SystemExit as exit_info:  # argparse's usage errors end the process
        code = exit_info.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("uniattn-export model: error: ") and words in err, err
    assert {p: p.read_bytes() if p.is_file() else None for p in sorted(tmp_path.rglob("*"))} == before


def test_device_cuda_without_a_gpu_fails_before_the_export(made, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "uniattn_export", "model", str(made["checkpoint"]), "--target", "onnx",
         "-o", str(tmp_path / "out"), "--device", "cuda"],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("uniattn-export model: error: --device cuda: ")
    assert result.stderr.strip().endswith("or pass --device cpu.") and len(result.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage_graph(artifact: Path) -> None:
    (artifact / "model.onnx").write_bytes(b"not a protobuf" * 50)
    rehash(artifact, "model.onnx")


# (id, damage of the artifact copy, damage of the golden copy, words of the one line)
ARTIFACT_CASES = [
    ("garbage_model_onnx_rehashed", _garbage_graph, None, "model.onnx is not a readable ONNX model"),
    ("manifest_dtype_edited", manifest_edit(setting("dtype", "float16")), None,
     "says dtype float16 but its caches are float32"),
    ("manifest_dtype_unknown", manifest_edit(setting("dtype", "int8")), None,
     "field dtype is 'int8', expected float32, float16 or bfloat16"),
    ("manifest_files_a_list", manifest_edit(setting("files", ["model.onnx"])), None,
     "field files is ['model.onnx'], expected an object listing model.onnx"),
    ("manifest_format_version_abc", manifest_edit(setting("format_version", "abc")), None,
     "field format_version is 'abc', expected a positive integer"),
    ("manifest_vocab_size_edited", manifest_edit(lambda m: m["geometry"].update(vocab_size=999)), None,
     "says vocab_size=999 but config.json has vocab_size=256"),
    ("manifest_num_layers_edited", manifest_edit(lambda m: m["geometry"].update(num_layers=9)), None,
     "says num_layers=9 but config.json has num_hidden_layers=4"),
    ("manifest_input_dtype_edited",
     manifest_edit(lambda m: m["inputs"][0].update(dtype="int32")), None,
     "the inputs of", ),
    ("golden_logits_truncated", None, lambda g: _truncate(g / "logits.npz"), "cannot read the golden outputs in"),
    ("golden_json_truncated", None, lambda g: _truncate(g / "golden.json"), "cannot read the golden outputs in"),
    ("golden_missing_keys", None, lambda g: edit_json(g / "golden.json", lambda r: r.pop("tokens")),
     "golden.json lacks tokens. Store them again with --update-golden"),
    ("golden_tolerance_missing", None, lambda g: edit_json(g / "golden.json", setting("tolerance", {})),
     "golden.json has no numeric tolerance.logits_abs"),
]  # fmt: skip


@pytest.mark.parametrize(
    "damage_artifact, damage_golden, words", [c[1:] for c in ARTIFACT_CASES], ids=[c[0] for c in ARTIFACT_CASES]
)
def test_validate_bad_input_is_one_line(made, tmp_path, capsys, damage_artifact, damage_golden, words):
    artifact = shutil.copytree(made["artifact"], tmp_path / "artifact")
    golden = shutil.copytree(made["golden"], tmp_path / "golden")
    if damage_artifact is not None:
        damage_artifact(artifact)
    if damage_golden is not None:
        damage_golden(golden)
    before = {p: p.read_bytes() if p.is_file() else None for p in sorted(tmp_path.rglob("*"))}
    code = main(["validate", str(artifact), "--golden", str(golden)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("uniattn-export validate: error: ") and words in err, err
    assert {p: p.read_bytes() if p.is_file() else None for p in sorted(tmp_path.rglob("*"))} == before


def test_validating_a_read_only_artifact_says_where_to_put_the_report(made, tmp_path, capsys):
    artifact = shutil.copytree(made["artifact"], tmp_path / "artifact")
    shutil.rmtree(artifact / "reports", ignore_errors=True)
    with read_only(artifact):
        code = main(["validate", str(artifact), "--max-new-tokens", "2"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert err.startswith(f"uniattn-export validate: error: cannot write to {artifact} (") and err.endswith("Pass --report PATH in a writable folder.")
        # The fix it names works: the report goes elsewhere.
        assert main(["validate", str(artifact), "--max-new-tokens", "2", "--report", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["passed"]


def test_golden_logits_are_a_zip_the_test_really_broke(made):
    # The truncation rows above mean something only if the stored file is a real archive.
    assert zipfile.is_zipfile(made["golden"] / "logits.npz")
    with np.load(made["golden"] / "logits.npz") as stored:
        assert stored.files == ["step_000", "step_001"]


# --- exit codes of unexpected errors and of interrupts (cli/outcome.py) ------------------


def _namespace(run):
    import argparse

    return argparse.Namespace(command="model", run=run)


def _crash(_args):
    raise RuntimeError("tensor shapes disagree\nsecond line of detail")


def test_an_internal_error_is_exit_3_with_one_line(capsys, monkeypatch):
    monkeypatch.delenv("UNIATTN_EXPORT_DEBUG", raising=False)
    assert run_command(_namespace(_crash)) == 3
    err = capsys.readouterr().err
    assert err == (
        "uniattn-export model: internal error: RuntimeError: tensor shapes disagree. This is a bug: please report "
        "it with the command line; rerun with UNIATTN_EXPORT_DEBUG=1 for the traceback\n"
    )
    monkeypatch.setenv("UNIATTN_EXPORT_DEBUG", "1")
    assert run_command(_namespace(_crash)) == 3
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and "second line of detail" in err
    assert err.splitlines()[-1] == (
        "uniattn-export model: internal error: RuntimeError: tensor shapes disagree. This is a bug: please report "
        "it with the command line"
    )


def test_exit_codes_of_a_run_and_of_a_failed_validation(capsys):
    assert run_command(_namespace(lambda args: 0)) == 0
    assert run_command(_namespace(lambda args: 1)) == 1
    assert capsys.readouterr().err == ""
