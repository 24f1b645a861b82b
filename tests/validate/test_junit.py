"""uniattn_export/validate/junit.py: the JUnit XML of a validation report has one test case
per check and fails exactly the checks that the report's verdict rules fail."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from uniattn_export.validate.junit import write_junit

TOLERANCE = 1e-3


def _report(step_errors, divergences=(), perplexity=None) -> dict:
    """The fields of a run.py report that the JUnit file reads."""
    return {
        "artifact": "a", "dtype": "float32", "runtime": "r", "reference": "ref", "reference_source": "golden",
        "golden": "g", "tolerance": {"logits_abs": TOLERANCE},
        "logits": {"per_step": [{"step": t, "max_abs": e, "mean_abs": e / 10} for t, e in enumerate(step_errors)]},
        "tokens": {
            "first_divergence_step": [min((d[1] for d in divergences if d[0] == row), default=None) for row in range(2)],
            "divergences": [{"batch_row": r, "step": s, "artifact_token": 1, "reference_token": 2,
                             "reference_margin": 0.5} for r, s in divergences],
            "near_tie_divergences": [],
        },
        "perplexity": perplexity,
    }  # fmt: skip


def _cases(tmp_path, report) -> tuple[ET.Element, dict[str, ET.Element | None]]:
    path = write_junit(report, tmp_path / "reports" / "junit.xml")
    suite = ET.parse(path).getroot().find("testsuite")
    return suite, {case.get("name"): case.find("failure") for case in suite.findall("testcase")}


def test_passing_report(tmp_path):
    suite, cases = _cases(tmp_path, _report([1e-4, 5e-4]))
    assert list(cases) == ["logits.step_000", "logits.step_001", "greedy_tokens.row_0", "greedy_tokens.row_1"]
    assert all(f is None for f in cases.values())
    assert (suite.get("tests"), suite.get("failures")) == ("4", "0")


def test_failures_point_at_the_regressed_checks(tmp_path):
    ppl = {"artifact": 9.5, "reference": 9.0, "abs_diff": 0.5, "tolerance_abs": 0.01}
    suite, cases = _cases(tmp_path, _report([1e-4, 2e-3, 1e-3], divergences=[(1, 2), (1, 4)], perplexity=ppl))
    failed = {name for name, failure in cases.items() if failure is not None}
    assert failed == {"logits.step_001", "greedy_tokens.row_1", "perplexity"}  # 1e-3 == tolerance passes
    assert suite.get("failures") == "3" and suite.get("tests") == "6"
    assert cases["logits.step_001"].get("message") == "logits of step 1 differ by 0.002 > tolerance 0.001"
    assert cases["greedy_tokens.row_1"].text == (
        "greedy token differs at step 2 (1 vs reference 2, reference margin 0.5); 2 divergent step(s) in this row"
    )
    assert cases["perplexity"].get("message") == "perplexity 9.5000 vs reference 9.0000 exceeds tolerance 0.01"


def test_written_atomically(tmp_path):
    write_junit(_report([0.0]), tmp_path / "junit.xml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junit.xml"]  # no temp file left
