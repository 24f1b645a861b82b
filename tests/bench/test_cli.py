"""`uniattn-export bench`: outputs, exit codes 0 / 2, one-line errors."""

from __future__ import annotations

import json

import pytest

from uniattn_export.cli.main import main

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny models: per-op overhead only

SMALL = ["--device", "cpu", "--batches", "1", "--contexts", "8,16", "--decode-steps", "2", "--prefill-repeats", "1"]


def test_bench_writes_json_plot_and_prints_the_table(artifacts, tmp_path, capsys):
    uniattn, base = artifacts
    out = tmp_path / "out"
    code = main(["bench", str(uniattn.path), "--baseline", str(base.path), *SMALL,
                 "--backends", "ort-bodies,transformers-dynamic", "-o", str(out)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "ms per decode step / per prefill, median (CPU, float32)" in printed and "ua bodies" in printed and "base hf dyn" in printed
    assert f"wrote {out / 'bench.json'} and {out / 'bench.png'}" in printed
    doc = json.loads((out / "bench.json").read_text())
    assert [r["id"] for r in doc["runtimes"]] == ["baseline/transformers-dynamic", "artifact/ort-bodies", "baseline/ort-bodies"]
    assert doc["settings"]["contexts"] == [8, 16] and (out / "bench.png").stat().st_size > 0


def test_json_output(artifacts, tmp_path, capsys):
    code = main(["bench", str(artifacts[0].path), *SMALL, "--backends", "ort-bodies", "--no-prefill", "--json",
                 "-o", str(tmp_path)])  # fmt: skip
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["complete"] and {r["prefill"]["status"] for r in doc["results"]} == {"skipped: --no-prefill"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "pass either an ARTIFACT folder or --preset NAME. See `uniattn-export bench --help`."),
        (["{artifact}", "--preset", "tiny"], "pass either an ARTIFACT folder or --preset NAME."),
        (["{artifact}"], "no output folder. Pass -o OUT"),
        (["{artifact}", "--dtype", "float16"], "--dtype and --work apply to --preset."),
        (["--preset", "tiny", "--baseline", "build"], "--preset builds its own baseline. Drop --baseline and --base-checkpoint."),
        (["{artifact}", "--compile", "3x7"], "compile shape 3x7 is not in the matrix."),
        (["{artifact}", "--compile", "3by7"], "cannot read the shape '3by7'."),
        (["{artifact}", "--time-budget", "0"], "time_budget must be > 0, got 0.0."),
        (["/nonexistent/artifact"], "artifact folder /nonexistent/artifact does not exist."),
        (["{artifact}", "--prepare", "somewhere"], "--prepare exports a preset's graphs."),
        (["--preset", "tiny", "--export-processes", "0"],
         "--export-processes 0 is not a number of processes for a preset's exports. Pass --preset NAME with "
         "--export-processes 1 or more."),
        (["{artifact}", "--export-processes", "2"], "--export-processes 2 is not a number of processes for a preset's"),
    ],
)
def test_bad_input_exits_2_with_one_line(artifacts, tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    argv = [a.replace("{artifact}", str(artifacts[0].path)) for a in argv]
    needs_output = "no output folder" not in message
    code = main(["bench", *argv, "--device", "cpu", *(["-o", str(out)] if needs_output else [])])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("uniattn-export bench: error: ") and message in err and "\n" not in err
    assert not out.exists()


@pytest.mark.parametrize("flag", [["--batches", "0"], ["--contexts", "1,x"], ["--backends", "ort,tensorrt"]])
def test_bad_lists_are_usage_errors(tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--preset", "tiny", *flag, "-o", str(tmp_path)])
    assert exit_info.value.code == 2
    assert f"argument {flag[0]}" in capsys.readouterr().err
