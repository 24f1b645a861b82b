"""The main loop the GPU check scripts share (tests/gpu/*_check.py, tests/targets/ort/gpu_check.py,
tests/targets/trt/gpu_*_check.py): run every case (one that raises is recorded as failed and
never hides the others), print one PASS/FAIL line per case, write the results JSON under $OUT,
and exit 0 only when every case passed.

The scripts run as files (`python3 tests/.../x.py`, not collected by pytest), so they import
this module by its folder: `sys.path.insert(0, ...tests/gpu)`, then `import check_loop`.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Iterable


def results_dir(default: str = ".") -> Path:
    """$OUT (the GPU machine's result folder), else `default`."""
    return Path(os.environ.get("OUT", default))


def announce_cuda_device() -> dict | None:
    """What a torch-driven kernel check runs on (printed as JSON and kept in its results): the
    GPU and the kernel library; None, after saying so on stderr, without a CUDA device."""
    import torch

    from uniattn_export import native

    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return None
    header = {
        "device": torch.cuda.get_device_name(0),
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
        "kernels": native.kernels_library(),
        "has_cuda": bool(native.kernels().ua_has_cuda()),
        "torch": torch.__version__,
    }
    print(json.dumps(header))
    return header


def relative_error_within(actual, expected, tol: float) -> float | None:
    """Worst |actual - expected| / max(|expected|, 1) of two tensors, or None when it exceeds
    `tol` or some element is NaN; infinities of the same sign count as equal (e.g. the lse of
    a row that sees no key)."""
    import torch

    a, e = actual.float(), expected.float()
    same_inf = a.isinf() & e.isinf() & (a.sign() == e.sign())
    error = torch.where(same_inf, torch.zeros_like(a), (a - e).abs() / e.abs().clamp(min=1.0))
    worst = float(error.nan_to_num(nan=float("inf")).max()) if error.numel() else 0.0
    return worst if worst <= tol else None


def run_cases(cases: Iterable[tuple[str, Callable[[], dict]]], describe: Callable[[dict], str]) -> list[dict]:
    """Each case's report (a dict with "passed"), plus its "seconds"; a case that raises gives
    {"case", "passed": False, "error", "traceback"}. describe(report) is the detail printed
    after PASS/FAIL and the name when the case did not raise."""
    reports = []
    for name, check in cases:
        started = time.perf_counter()
        try:
            report = check()
        except Exception as exc:  # one failing case must not hide the others
            report = {"case": name, "passed": False, "error": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc(limit=8)}  # fmt: skip
        report["seconds"] = round(time.perf_counter() - started, 3)
        reports.append(report)
        detail = report["error"] if "error" in report else describe(report)
        print(f"{'PASS' if report['passed'] else 'FAIL'} {name}: {detail}", flush=True)
    return reports


def finish(document: dict, path: Path, what: str, passed: bool | None = None) -> int:
    """Write `document` (with "passed") as JSON to `path` and print the summary line; the exit
    code. passed: None = document["cases"] is not empty and every case passed."""
    if passed is None:
        passed = bool(document["cases"]) and all(case["passed"] for case in document["cases"])
    document["passed"] = passed
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    cases = document["cases"]
    print(f"{'ALL PASSED' if passed else 'FAILURES'}: {what}, {sum(c['passed'] for c in cases)}/{len(cases)} cases "
          f"passed; details in {path}")  # fmt: skip
    return 0 if passed else 1
