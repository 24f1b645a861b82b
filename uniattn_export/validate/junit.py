"""A validation report (run.py) as JUnit XML, the format CI systems show as test results.

One <testsuite name="uniattn-export validate"> with a test case per check, so a regression
points at what regressed:
  logits.step_NNN        max |logit error| of generation step NNN within the tolerance
  greedy_tokens.row_N    no greedy-token divergence (beyond near-ties) in batch row N
  perplexity             the text's perplexity within its tolerance (when one was measured)
These are exactly the rules that decide report["passed"], so the file has a failure if and
only if the verdict is "failed". Measured numbers ride along as <properties>.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

SUITE = "uniattn-export validate"


def _case(suite: ET.Element, name: str, failure: str | None, properties: dict) -> None:
    case = ET.SubElement(suite, "testcase", classname=SUITE, name=name, time="0")
    props = ET.SubElement(case, "properties")
    for key, value in properties.items():
        ET.SubElement(props, "property", name=key, value=str(value))
    if failure is not None:
        ET.SubElement(case, "failure", message=failure, type="regression").text = failure


def junit_xml(report: dict) -> ET.ElementTree:
    tolerance = report["tolerance"]["logits_abs"]
    suites = ET.Element("testsuites", name=SUITE)
    suite = ET.SubElement(suites, "testsuite", name=SUITE)
    props = ET.SubElement(suite, "properties")
    for key in ("artifact", "dtype", "runtime", "reference", "reference_source", "golden"):
        ET.SubElement(props, "property", name=key, value=str(report[key]))
    ET.SubElement(props, "property", name="logits_tolerance_abs", value=repr(tolerance))

    for step in report["logits"]["per_step"]:
        failure = None
        if step["max_abs"] > tolerance:
            failure = f"logits of step {step['step']} differ by {step['max_abs']:.3g} > tolerance {tolerance:.3g}"
        _case(suite, f"logits.step_{step['step']:03d}", failure,
              {"max_abs": step["max_abs"], "mean_abs": step["mean_abs"], "tolerance_abs": tolerance})  # fmt: skip

    tokens = report["tokens"]
    for row, first in enumerate(tokens["first_divergence_step"]):
        diverged = [d for d in tokens["divergences"] if d["batch_row"] == row]
        failure = None
        if diverged:
            d = diverged[0]
            failure = (
                f"greedy token differs at step {d['step']} ({d['artifact_token']} vs reference "
                f"{d['reference_token']}, reference margin {d['reference_margin']:.3g}); "
                f"{len(diverged)} divergent step(s) in this row"
            )
        near_ties = sum(d["batch_row"] == row for d in tokens["near_tie_divergences"])
        _case(suite, f"greedy_tokens.row_{row}", failure,
              {"first_divergence_step": first, "near_tie_divergences": near_ties})  # fmt: skip

    text = report.get("perplexity")
    if text is not None:
        failure = None
        if text["abs_diff"] > text["tolerance_abs"]:
            failure = (
                f"perplexity {text['artifact']:.4f} vs reference {text['reference']:.4f} "
                f"exceeds tolerance {text['tolerance_abs']:.3g}"
            )
        _case(suite, "perplexity", failure, {k: text[k] for k in ("artifact", "reference", "abs_diff", "tolerance_abs")})

    cases = suite.findall("testcase")
    failures = sum(case.find("failure") is not None for case in cases)
    for element in (suites, suite):
        element.set("tests", str(len(cases)))
        element.set("failures", str(failures))
        element.set("errors", "0")
        element.set("skipped", "0")
        element.set("time", "0")
    ET.indent(suites)
    return ET.ElementTree(suites)


def write_junit(report: dict, path: str | Path) -> Path:
    """Write the JUnit XML atomically (a temp file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    junit_xml(report).write(tmp, encoding="utf-8", xml_declaration=True)
    os.replace(tmp, path)
    return path
