"""`uniattn-export heal` end to end on a tiny converted model."""

from __future__ import annotations

import json

import pytest
import torch

from uniattn_export.cli.main import main
from uniattn_export.model import load_model
from uniattn_export.model.synthetic import byte_tokenizer, random_base_model, tiny_config

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("heal")
    base = root / "base"
    random_base_model(tiny_config("llama", vocab_size=256), seed=21).save_pretrained(base)
    byte_tokenizer().save_pretrained(base)
    converted = root / "converted"
    assert main(["convert", str(base), "-G", "3", "--begin", "1", "--end", "6", "--calibration",
                 "gensim:lee_background", "--num-samples", "4", "--heldout-samples", "2",
                 "--max-length", "32", "--mode", "improved", "-o", str(converted)]) == 0  # fmt: skip
    return base, converted


ARGS = ["--data", "gensim:lee_background", "--num-samples", "6", "--heldout-samples", "2",
        "--max-length", "32", "--batch-size", "2", "--eval-every", "2"]  # fmt: skip


def test_heal_writes_a_checkpoint_that_differs_only_in_wc(folders, tmp_path, capsys):
    base, converted = folders
    out = tmp_path / "healed"
    assert main(["heal", str(converted), "--base", str(base), *ARGS, "--steps", "4", "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "KL(base||model)" in captured.out and "relative change" in captured.out
    assert {"config.json", "model.safetensors", "tokenizer.json", "heal_report.json", "heal_curve.png"} <= {
        p.name for p in out.iterdir()
    }
    assert (out / "heal_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["healed"]  # no temp folder, no resume file left
    report = json.loads((out / "heal_report.json").read_text())
    assert [p["step"] for p in report["curve"]] == [2, 4]
    assert report["settings"]["steps"] == 4 and report["settings"]["loss"] == "kl"
    assert [c["layer"] for c in report["consumers"]] == [2, 3, 5]
    before, after = load_model(converted), load_model(out)
    changed = {n for n, t in after.state_dict().items() if not torch.equal(t, before.state_dict()[n])}
    assert changed == {f"model.layers.{i}.compensation.weight" for i in (2, 3, 5)}
    assert after.dtype == before.dtype


@pytest.mark.parametrize(
    "change, message",
    [
        (["--steps", "0"], "steps must be >= 1, got 0"),
        (["--steps", "2", "--lr", "-1"], "the learning rate must be a positive number, got -1.0"),
        (["--steps", "2", "--batch-size", "5000"], "fewer than one batch of 5000"),
        (["--steps", "2", "--device", "cuda"], "--device cuda, but torch sees no CUDA device here"),
    ],
)
def test_heal_errors_are_one_line_and_write_nothing(folders, tmp_path, capsys, change, message):
    base, converted = folders
    assert main(["heal", str(converted), "--base", str(base), *ARGS, *change, "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("uniattn-export heal: error: ") and message in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_heal_refuses_a_base_model_as_checkpoint_and_the_input_as_output(folders, tmp_path, capsys):
    base, converted = folders
    assert main(["heal", str(base), "--base", str(base), *ARGS, "--steps", "2", "-o", str(tmp_path / "o")]) == 2
    assert "no consumer layers" in capsys.readouterr().err
    assert main(["heal", str(converted), "--base", str(base), *ARGS, "--steps", "2", "-o", str(converted)]) == 2
    assert "writing there would destroy the input" in capsys.readouterr().err
    assert load_model(converted).uniattn_config.consumers == [2, 3, 5]
