"""Commands never delete or overwrite what they did not create (uniattn_export/output.py):
the output is never an input, inside one or holding one, the current directory or a folder
that holds it; an existing folder is replaced only when it is our own output holding
nothing else, or with --force; interrupts (SIGINT/SIGTERM) leave no temporary folder."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from uniattn_export.cli.main import main
from uniattn_export.export import export_model
from uniattn_export.model import load_model, save_model
from uniattn_export.model.synthetic import byte_tokenizer, random_base_model, released_checkpoint, tiny_config

pytestmark = pytest.mark.usefixtures("single_torch_thread")

REPO = Path(__file__).resolve().parents[2]
CONVERT = [
    "-G", "3", "--begin", "1", "--end", "6", "--calibration", "gensim:lee_background",
    "--heldout", "gensim:lee", "--num-samples", "2", "--heldout-samples", "1", "--max-length", "16",
]  # fmt: skip


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A base model, a UniAttn checkpoint (our layout) and an artifact exported from it."""
    root = tmp_path_factory.mktemp("output_safety")
    base = root / "base"
    random_base_model(tiny_config("llama", vocab_size=256), seed=3).save_pretrained(base)
    byte_tokenizer().save_pretrained(base)
    released = root / "released"
    released_checkpoint(random_base_model(tiny_config("llama", num_hidden_layers=4), seed=4), released, 2, 1, 4)
    ours = save_model(load_model(released), root / "ours")
    artifact = export_model(load_model(ours), root / "artifact", source_dir=ours)
    return {"base": base, "ours": ours, "artifact": artifact}


def _tree(folder: Path) -> dict[str, bytes | None]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def _copy(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    return dest


def _refused(capsys, argv: list, *words: str) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    return err


def _no_temporary_folders(folder: Path) -> None:
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


# --- convert ---------------------------------------------------------------------------


def test_convert_output_dot_inside_the_base_model_deletes_nothing(made, tmp_path, capsys, monkeypatch):
    base = _copy(made["base"], tmp_path / "base")
    before = _tree(base)
    monkeypatch.chdir(base)
    _refused(capsys, ["convert", base, *CONVERT, "-o", "."], "the output . is the input", "even --force never replaces")
    _refused(capsys, ["convert", base, *CONVERT, "-o", ".", "--force"], "the output . is the input")
    assert _tree(base) == before


def test_convert_output_dot_in_another_model_folder_is_refused(made, tmp_path, capsys, monkeypatch):
    other = _copy(made["base"], tmp_path / "other")
    before = _tree(other)
    monkeypatch.chdir(other)
    _refused(capsys, ["convert", made["base"], *CONVERT, "-o", ".", "--force"],
             "the output . is the current directory or holds it")  # fmt: skip
    assert _tree(other) == before


@pytest.mark.parametrize(
    "where, words",
    [
        ("base", ["is the input", "base"]),
        ("parent_of_base", ["holds the input"]),
        ("inside_base", ["is inside the input"]),
        ("another_base_model", ["exists and is not a UniAttn checkpoint folder", "--force"]),
        ("artifact", ["exists and is not a UniAttn checkpoint folder"]),
        ("notes_and_src", ["exists and is not a UniAttn checkpoint folder"]),
        ("old_output_with_notes", ["is a UniAttn checkpoint folder but also holds notes.txt", "--force"]),
        ("a_file", ["is a file, not a folder"]),
    ],
)  # fmt: skip
def test_convert_never_replaces_what_it_did_not_write(made, tmp_path, capsys, where, words):
    parent = tmp_path / "parent_of_base"
    base = _copy(made["base"], parent / "base")
    destinations = {
        "base": base,
        "parent_of_base": parent,
        "inside_base": base / "converted",
        "another_base_model": _copy(made["base"], tmp_path / "another_base_model"),
        "artifact": _copy(made["artifact"], tmp_path / "artifact"),
        "notes_and_src": tmp_path / "notes_and_src",
        "old_output_with_notes": _copy(made["ours"], tmp_path / "old_output"),
        "a_file": tmp_path / "a_file",
    }
    (tmp_path / "notes_and_src" / "src").mkdir(parents=True)
    (tmp_path / "notes_and_src" / "notes.txt").write_text("keep me")
    (tmp_path / "notes_and_src" / "src" / "main.c").write_text("int main;")
    (destinations["old_output_with_notes"] / "notes.txt").write_text("keep me")
    (tmp_path / "a_file").write_text("keep me")
    before = _tree(tmp_path)
    _refused(capsys, ["convert", base, *CONVERT, "-o", destinations[where]], *words)
    assert _tree(tmp_path) == before


def test_convert_replaces_its_own_output_and_force_replaces_a_foreign_folder(made, tmp_path, capsys):
    out = _copy(made["ours"], tmp_path / "out")  # an earlier output: replaced without --force
    assert main(["convert", str(made["base"]), *CONVERT, "-o", str(out)]) == 0
    assert (out / "conversion_report.json").is_file()
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    _refused(capsys, ["convert", made["base"], *CONVERT, "-o", out], "also holds notes.txt")
    assert main(["convert", str(made["base"]), *CONVERT, "-o", str(out), "--force"]) == 0
    assert not (out / "notes.txt").exists() and (out / "conversion_report.json").is_file()
    _no_temporary_folders(tmp_path)


# --- model -----------------------------------------------------------------------------


def test_model_output_dot_inside_an_artifact_deletes_nothing(made, tmp_path, capsys, monkeypatch):
    artifact = _copy(made["artifact"], tmp_path / "artifact")
    before = _tree(artifact)
    monkeypatch.chdir(artifact)
    _refused(capsys, ["model", made["ours"], "--target", "ort", "-o", ".", "--force"],
             "the output . is the current directory or holds it")  # fmt: skip
    assert _tree(artifact) == before


def test_model_output_holding_the_checkpoint_deletes_nothing(made, tmp_path, capsys):
    out = tmp_path / "out"
    checkpoint = _copy(made["ours"], out / "ckpt")
    before = _tree(out)
    _refused(capsys, ["model", checkpoint, "--target", "ort", "-o", out], f"the output {out} holds the input {checkpoint}")
    _refused(capsys, ["model", checkpoint, "--target", "ort", "-o", out / "ckpt", "--force"], "is the input")
    assert _tree(out) == before


def test_model_replaces_its_own_artifact_but_not_user_files_in_it(made, tmp_path, capsys):
    out = tmp_path / "art"
    argv = ["model", str(made["ours"]), "--target", "onnx", "-o", str(out), "--no-validate"]
    assert main(argv) == 0 and main(argv) == 0  # the second run replaces the first (reports/ included)
    (out / "reports" / "my_notes.md").write_text("mine")
    before = _tree(out)
    capsys.readouterr()
    _refused(capsys, argv, f"{out} is an artifact folder but also holds reports/my_notes.md", "--force")
    assert _tree(out) == before
    assert main([*argv, "--force"]) == 0
    assert not (out / "reports" / "my_notes.md").exists() and (out / "uniattn_manifest.json").is_file()
    _no_temporary_folders(tmp_path)


# --- validate --golden -----------------------------------------------------------------


@pytest.mark.parametrize(
    "where, words",
    [
        ("inside_artifact", ["is inside the input"]),
        ("a_file", ["is a file, not a folder"]),
        ("foreign", ["exists and is not a golden folder", "--force"]),
    ],
)
def test_golden_never_replaces_what_validate_did_not_write(made, tmp_path, capsys, where, words):
    artifact = _copy(made["artifact"], tmp_path / "artifact")
    golden = {"inside_artifact": artifact / "golden", "a_file": tmp_path / "a_file", "foreign": tmp_path / "foreign"}[where]
    (tmp_path / "a_file").write_text("keep me")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "results.csv").write_text("keep me")
    before = _tree(tmp_path)
    _refused(capsys, ["validate", artifact, "--golden", golden, "--update-golden"], *words)
    assert _tree(tmp_path) == before


# --- interrupts --------------------------------------------------------------------------

# Runs the real command, with the export's file copying slowed down so that the signal
# surely arrives while the temporary folder is being filled.
_SLOW_WRITE = """
import sys, time
from uniattn_export.export import exporter
copy = exporter._copy_side_files
def copy_then_wait(source, out):
    copied = copy(source, out)
    print("writing", out, flush=True)
    time.sleep(120)
    return copied
exporter._copy_side_files = copy_then_wait
from uniattn_export.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_an_interrupted_export_leaves_no_temporary_folder_and_the_old_artifact_intact(made, tmp_path, signum, code):
    checkpoint = _copy(made["ours"], tmp_path / "ckpt")
    out = _copy(made["artifact"], tmp_path / "out")
    before = {"ckpt": _tree(checkpoint), "out": _tree(out)}
    process = subprocess.Popen(
        [sys.executable, "-c", _SLOW_WRITE, "model", str(checkpoint), "--target", "onnx", "-o", str(out), "--no-validate"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    line = process.stdout.readline()
    assert line.startswith("writing ") and Path(line.split()[1]).name.startswith(".out.")
    assert Path(line.split()[1]).is_dir()
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == code
    assert "Traceback" not in err
    name = signal.Signals(signum).name
    assert err.strip().splitlines()[-1] == (
        f"uniattn-export model: interrupted by {name}; no partial output folder was left behind"
    )
    _no_temporary_folders(tmp_path)
    assert {"ckpt": _tree(checkpoint), "out": _tree(out)} == before
