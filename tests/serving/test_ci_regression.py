"""examples/ci_regression/regress.sh on the tiny model: golden outputs stored once from the
PyTorch reference; a later build of the same checkpoint passes; a deliberately regressed
build (one consumer's compensation Wc perturbed, as a broken conversion would) fails with a
non-zero exit, a failed JSON report and JUnit failures naming the regressed checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "examples" / "ci_regression" / "regress.sh"
MAX_NEW = 6


def _regress(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, UNIATTN_EXPORT=f"{sys.executable} -m uniattn_export")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env, timeout=600)


def _export(checkpoint: Path, out: Path, perturb_consumer: int | None = None) -> Path:
    from uniattn_export.export import export_model
    from uniattn_export.model import load_model

    model = load_model(checkpoint)
    if perturb_consumer is not None:
        with torch.no_grad():
            model.model.layers[perturb_consumer].compensation.weight.mul_(1.5)
    return export_model(model, out, source_dir=checkpoint)


def _junit(path: Path) -> ET.Element:
    suites = ET.parse(path).getroot()
    assert suites.tag == "testsuites"
    return suites.find("testsuite")


@pytest.fixture(scope="module")
def golden(tiny_artifact, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ci") / "golden"
    done = _regress("store", tiny_artifact, folder, "--max-new-tokens", MAX_NEW)
    assert done.returncode == 0, done.stderr
    stored = json.loads((folder / "golden.json").read_text())
    assert stored["max_new_tokens"] == MAX_NEW and stored["tolerance"]["logits_abs"] > 0
    return folder


def test_a_later_build_of_the_same_checkpoint_passes(golden, tiny_checkpoint, tmp_path):
    rebuilt = _export(tiny_checkpoint, tmp_path / "rebuilt")
    done = _regress("check", rebuilt, golden, tmp_path / "out")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "out" / "validation.json").read_text())
    assert report["passed"] is True and report["reference_source"] == "golden"
    suite = _junit(tmp_path / "out" / "junit.xml")
    names = [case.get("name") for case in suite.findall("testcase")]
    batch = len(report["prompts"])
    assert names == [f"logits.step_{t:03d}" for t in range(MAX_NEW)] + [f"greedy_tokens.row_{b}" for b in range(batch)]
    assert suite.get("failures") == "0" and suite.get("tests") == str(len(names))
    assert not suite.findall("testcase/failure")


def test_a_regressed_build_fails(golden, tiny_checkpoint, tmp_path):
    regressed = _export(tiny_checkpoint, tmp_path / "regressed", perturb_consumer=3)
    done = _regress("check", regressed, golden, tmp_path / "out")
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads((tmp_path / "out" / "validation.json").read_text())
    assert report["passed"] is False and report["failures"]
    tolerance = report["tolerance"]["logits_abs"]
    assert report["logits"]["max_abs"] > 10 * tolerance  # a real regression, not noise

    suite = _junit(tmp_path / "out" / "junit.xml")
    failed = {case.get("name"): case.find("failure") for case in suite.findall("testcase") if case.find("failure") is not None}
    assert suite.get("failures") == str(len(failed)) and failed
    regressed_steps = {f"logits.step_{s['step']:03d}" for s in report["logits"]["per_step"] if s["max_abs"] > tolerance}
    assert regressed_steps and regressed_steps <= set(failed)
    step = report["logits"]["per_step"][0]
    assert failed["logits.step_000"].get("message") == (
        f"logits of step 0 differ by {step['max_abs']:.3g} > tolerance {tolerance:.3g}"
    )
    diverged_rows = {f"greedy_tokens.row_{d['batch_row']}" for d in report["tokens"]["divergences"]}
    assert diverged_rows == {name for name in failed if name.startswith("greedy_tokens.")}


def test_check_without_stored_outputs_is_bad_input(tiny_artifact, tmp_path):
    done = _regress("check", tiny_artifact, tmp_path / "empty", tmp_path / "out")
    assert done.returncode == 2
    assert "holds no golden outputs" in done.stderr and not (tmp_path / "out").exists()

