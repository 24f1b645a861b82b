"""`bench -o OUT` under uniattn_export/output.py's rule: a folder that is not an earlier bench
output (or holds anything else) is refused in one line with nothing touched; an earlier output
is replaced and the models it built are re-used; a failed or interrupted run leaves OUT as it
was (or absent) and no temporary folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from uniattn_export.cli.main import main

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny models: per-op overhead only

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--device", "cpu", "--batches", "1", "--contexts", "8", "--decode-steps", "2", "--no-prefill",
         "--backends", "ort-bodies"]  # fmt: skip
WHAT = "an earlier output of uniattn-export bench (its bench.json)"


def _files(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `folder`: its bytes and modification time."""
    return {
        p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _hidden(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def _argv(artifact, out: Path, *extra: str) -> list[str]:
    return ["bench", str(artifact.path), *SMALL, *extra, "-o", str(out)]


def _user_files(out: Path) -> None:
    out.mkdir()
    (out / "notes.txt").write_text("my notes")


def _user_bench_files(out: Path) -> None:
    out.mkdir()
    (out / "bench.json").write_text("my own numbers")
    (out / "bench.png").write_bytes(b"my own plot")


@pytest.mark.parametrize("make", [_user_files, _user_bench_files], ids=["notes", "own-bench-json"])
def test_a_foreign_folder_is_refused_and_untouched(artifacts, tmp_path, capsys, make):
    out = tmp_path / "out"
    make(out)
    before = _files(out)
    assert main(_argv(artifacts[0], out)) == 2
    assert capsys.readouterr().err.strip() == (
        f"uniattn-export bench: error: {out} exists and is not {WHAT}. Pass a new folder name."
    )
    assert _files(out) == before and _hidden(tmp_path) == []


def test_an_earlier_output_holding_a_user_file_is_refused_and_untouched(artifacts, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_argv(artifacts[0], out)) == 0
    (out / "notes.txt").write_text("my notes")
    before = _files(out)
    capsys.readouterr()
    assert main(_argv(artifacts[0], out)) == 2
    assert capsys.readouterr().err.strip() == (
        f"uniattn-export bench: error: {out} is {WHAT} but also holds notes.txt, which replacing it would delete. "
        "Move those files out, or pass a new folder name."
    )
    assert _files(out) == before and _hidden(tmp_path) == []


def test_the_output_is_never_the_artifact(artifacts, tmp_path, capsys):
    artifact = shutil.copytree(artifacts[0].path, tmp_path / "artifact")
    before = _files(artifact)
    assert main(["bench", str(artifact), *SMALL, "-o", str(artifact)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"uniattn-export bench: error: the output {artifact} is the input {artifact}; writing there would destroy "
        "the input. Pass an output folder outside the input."
    )
    assert _files(artifact) == before and _hidden(tmp_path) == []


def test_a_rerun_replaces_its_own_output_and_reuses_the_built_baseline(artifacts, tmp_path, capsys):
    out = tmp_path / "out"
    argv = _argv(artifacts[0], out, "--baseline", "build")
    assert main(argv) == 0
    first = json.loads((out / "bench.json").read_text())
    assert first["build"]["dynamic"]["baseline"]["reused"] is False
    weights = _files(out / "baseline_artifact")
    assert main(argv) == 0
    second = json.loads((out / "bench.json").read_text())
    built = second["build"]["dynamic"]["baseline"]
    # the path recorded is where the model is now, not the run's temporary folder
    assert built["reused"] is True and built["path"] == str(out / "baseline_artifact")
    assert _files(out / "baseline_artifact") == weights  # re-used as it was: moved, never rewritten
    assert sorted(p.name for p in out.iterdir()) == ["baseline_artifact", "bench.json", "bench.png"]
    assert _hidden(tmp_path) == []
    assert f"wrote {out / 'bench.json'} and {out / 'bench.png'}" in capsys.readouterr().out


# The real command, stopped once the first cell is in the temporary folder's bench.json.
_STOP_AFTER_FIRST_CELL = """
import sys, time
from uniattn_export.bench.report import BenchReport
add_result = BenchReport.add_result
def add_result_then_wait(self, result):
    add_result(self, result)
    print("cell", self.json_path, flush=True)
    time.sleep(120)
BenchReport.add_result = add_result_then_wait
from uniattn_export.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _interrupt(argv: list[str], signum: int) -> tuple[Path, int, str]:
    process = subprocess.Popen([sys.executable, "-c", _STOP_AFTER_FIRST_CELL, *argv], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    line = process.stdout.readline()
    assert line.startswith("cell "), process.communicate(timeout=60)
    written = Path(line.split()[1])
    assert written.is_file()
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    return written, process.returncode, err.strip().splitlines()[-1]


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_an_interrupted_rerun_leaves_the_earlier_output_as_it_was(artifacts, tmp_path, capsys, signum, code):
    out = tmp_path / "out"
    argv = _argv(artifacts[0], out, "--baseline", "build")
    assert main(argv) == 0
    before = _files(out)
    written, returncode, last = _interrupt(argv, signum)
    # the run wrote into a temporary sibling, which held the re-used baseline meanwhile
    assert written.parent.parent == tmp_path and written.parent.name.startswith(".out.")
    assert returncode == code
    assert last == f"uniattn-export bench: interrupted by {signal.Signals(signum).name}; no partial output folder was left behind"
    assert _files(out) == before and _hidden(tmp_path) == []


def test_an_interrupted_first_run_leaves_nothing(artifacts, tmp_path):
    out = tmp_path / "out"
    written, returncode, _ = _interrupt(_argv(artifacts[0], out), signal.SIGTERM)
    assert written.parent.name.startswith(".out.") and returncode == 143
    assert list(tmp_path.iterdir()) == []
