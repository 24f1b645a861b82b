"""optimum-onnx's ORTModelForCausalLM generates the same greedy tokens from our artifacts as
our runtime (issue 3's interop contract). optimum-onnx 0.1 pins transformers < 4.58, so the
check runs in a second virtual environment: run_optimum_check.sh creates it (about 3.5
minutes with pip's network access; pip requests time out after 30 s and are retried, the
whole install is stopped after OPTIMUM_INSTALL_TIMEOUT, 600 s here) in $OPTIMUM_VENV, by default
.venv-optimum in the repository (git-ignored, reused by later local runs once complete; CI
starts from a clean clone).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from uniattn_export import native

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("optimum_check", HERE / "optimum_check.py")
optimum_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(optimum_check)  # the script's case list (its top level imports nothing else)
REPO = HERE.parents[1]
INSTALL_TIMEOUT_S = 600
# Both halves of the check (no network): about 1.5 minutes on 2 idle cores, 5.5 on 2 cores
# shared with a dozen busy processes.
CHECK_TIMEOUT_S = 600


def test_optimum_generates_our_tokens(tmp_path):
    assert native.ort_custom_op_library() is not None, f"{native.ORT_LIBRARY} is not built: {native.BUILD_FIX}"
    env = {**os.environ, "PYTHON": sys.executable, "OPTIMUM_INSTALL_TIMEOUT": str(INSTALL_TIMEOUT_S),
           "OPTIMUM_VENV": os.environ.get("OPTIMUM_VENV", str(REPO / ".venv-optimum"))}
    run = subprocess.run(["bash", str(HERE / "run_optimum_check.sh"), str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S + CHECK_TIMEOUT_S)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = [line for line in run.stdout.splitlines() if line.startswith(("ok ", "FAIL"))]
    # Every artifact with and without the custom-op library (built in CI) and IOBinding.
    expected = [
        f"ok   {name} ({kernels}, io_binding={io_binding})"
        for name in optimum_check.CASES
        for kernels in ("function bodies", "custom-op library")
        for io_binding in (False, True)
    ]
    assert results == expected, run.stdout[-3000:]
    assert "ALL IDENTICAL" in run.stdout
