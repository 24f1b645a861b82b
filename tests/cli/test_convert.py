"""`uniattn-export convert` end to end on a tiny model (offline text from gensim)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from uniattn_export.cli.main import main
from uniattn_export.model import UniAttnConfig, load_model
from uniattn_export.model.convert import convert_to_uniattn
from uniattn_export.model.synthetic import byte_tokenizer, random_base_model, tiny_config
from uniattn_export.model.text import calibration_and_heldout

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-base")
    random_base_model(tiny_config("llama", vocab_size=256), seed=21).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


ARGS = [
    "-G", "3", "--begin", "1", "--end", "6", "--calibration", "gensim:lee_background",
    "--heldout", "gensim:lee", "--num-samples", "6", "--heldout-samples", "2", "--max-length", "32",
]  # fmt: skip


def test_convert_writes_a_complete_checkpoint(base_folder, tmp_path, capsys):
    out = tmp_path / "converted"
    assert main(["convert", str(base_folder), *ARGS, "--mode", "improved", "--ridge", "0.1", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 SuperBlocks (1->2-3, 4->5)" in printed and "fit residual" in printed
    assert {"config.json", "model.safetensors", "tokenizer.json", "conversion_report.json"} <= {
        p.name for p in out.iterdir()
    }
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left
    report = json.loads((out / "conversion_report.json").read_text())
    assert report["mode"] == "improved" and report["ridge"] == 0.1 and report["dtype"] == "float32"
    assert report["uniattn"]["layer_map"] == {"1": [2, 3], "4": [5]}
    assert [c["layer"] for c in report["consumers"]] == [2, 3, 5]
    assert report["calibration_source"] == "gensim:lee_background" and report["heldout_samples"] == 2

    # The CLI computes exactly what the API computes with the same settings.
    split = calibration_and_heldout("gensim:lee_background", "gensim:lee", 6, 2)
    expected, expected_report = convert_to_uniattn(
        base_folder, UniAttnConfig.from_grouping(6, 3, 1, 6, "begin_offset"), split.calibration,
        byte_tokenizer(), heldout=split.heldout, mode="improved", max_length=32, ridge=0.1,
    )  # fmt: skip
    converted = load_model(out)
    for layer in (2, 3, 5):
        assert torch.equal(
            converted.model.layers[layer].compensation.weight, expected.model.layers[layer].compensation.weight
        )
    assert report["heldout"] == json.loads(expected_report.to_json())["heldout"]
    # ... and the result generates.
    assert main(["generate", str(out), "--prompt", "The", "--max-new-tokens", "3"]) == 0


def test_convert_to_another_dtype_and_default_range(base_folder, tmp_path):
    out = tmp_path / "bf16"
    args = ["convert", str(base_folder), "-G", "2", "--calibration", "gensim:lee_background",
            "--num-samples", "4", "--heldout-samples", "2", "--max-length", "16", "--dtype", "bfloat16"]  # fmt: skip
    assert main([*args, "-o", str(out)]) == 0
    model = load_model(out)
    assert model.dtype == torch.bfloat16
    assert model.uniattn_config.layer_map == {3: (4,)}  # default range: layers 3-5
    report = json.loads((out / "conversion_report.json").read_text())
    assert "held out the last 2 documents of gensim:lee_background" in report["text_split"]


@pytest.mark.parametrize(
    "change,message",
    [
        (["--calibration", "missing.txt"], "text file missing.txt does not exist"),
        (["--mode", "paper", "--ridge", "0.5"], "--ridge applies to the improved mode only"),
        (["-G", "1"], "the layer map has no consumer layers"),
        (["--begin", "9"], "SuperBlock begin 9 is outside the model's 6 layers"),
        (["--max-length", "1"], "max_length must be >= 2"),
    ],
)
def test_convert_errors_are_one_line_and_write_nothing(base_folder, tmp_path, capsys, change, message):
    out = tmp_path / "out"
    assert main(["convert", str(base_folder), *ARGS, *change, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("uniattn-export convert: error: ") and message in err
    assert len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_convert_refuses_to_overwrite_a_folder_that_is_not_a_model(base_folder, tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep")
    assert main(["convert", str(base_folder), *ARGS, "-o", str(tmp_path / "notes")]) == 2
    assert "exists and is not a UniAttn checkpoint folder" in capsys.readouterr().err
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep"


def test_convert_missing_base_from_a_real_process(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "uniattn_export", "convert", str(tmp_path / "nope"), *ARGS, "-o", str(tmp_path / "o")],
        capture_output=True, text=True, env=dict(os.environ),
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"uniattn-export convert: error: checkpoint folder {tmp_path / 'nope'} does not exist. Check the path."
    )


def test_convert_help_explains_itself(capsys):
    with pytest.raises(SystemExit) as info:
        main(["convert", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for phrase in ("SuperBlocks", "gensim:lee_background", "--mode", "paper", "improved", "smollm2-135m"):
        assert phrase in text


def test_convert_without_a_terminal_prints_progress_lines_and_no_library_noise(base_folder, tmp_path):
    """stderr is a pipe here (as in logs and CI): plain progress lines instead of a bar that
    would stay silent until the end; transformers' own save progress bar is not shown."""
    result = subprocess.run(
        [sys.executable, "-m", "uniattn_export", "convert", str(base_folder), *ARGS, "--mode", "improved",
         "-o", str(tmp_path / "out")],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    # Batches of 4: 3 consumers x (2 calibration + 1 held-out check), then 1 held-out evaluation.
    fitting = [line.rsplit(" (", 1)[0] for line in lines if line.startswith("fitting Wc of 3 consumers (improved): ")]
    assert fitting[0] == "fitting Wc of 3 consumers (improved): 0/10" and len(fitting) >= 5
    assert lines[-1].startswith("held-out evaluation: 10/10 (") and lines[-1].endswith(" s)")
    assert not [line for line in lines if "Writing model shards" in line or "Warning" in line]


def test_paper_fit_that_overfits_is_replaced_by_zero_and_reported(base_folder, tmp_path, capsys):
    """3 short samples in paper mode (see tests/model/test_convert.py): the fits interpolate
    the calibration set; each consumer whose fit does worse held out gets Wc = 0, said in the
    table, a warning line and conversion_report.json."""
    out = tmp_path / "paper"
    args = ["-G", "3", "--begin", "1", "--end", "6", "--calibration", "gensim:lee_background", "--heldout",
            "gensim:lee", "--num-samples", "3", "--heldout-samples", "3", "--max-length", "16", "--mode", "paper"]  # fmt: skip
    assert main(["convert", str(base_folder), *args, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "conversion_report.json").read_text())
    assert report["fallbacks"], "the constructed case must fall back"
    fell_back = [c for c in report["consumers"] if c["fell_back_to_zero"]]
    assert [c["layer"] for c in fell_back] == report["fallbacks"]
    assert all(c["fitted_heldout_residual"] > 1 and c["compensation_norm"] == 0 for c in fell_back)
    assert f"warning: Wc of consumer(s) {', '.join(map(str, report['fallbacks']))} set to zero" in " ".join(printed.split())
    converted = load_model(out)
    assert all(not converted.model.layers[layer].compensation.weight.any() for layer in report["fallbacks"])
