"""optimum-onnx's ORTModelForCausalLM generates the same greedy tokens from our artifacts as
our runtime (issue 3's interop contract). optimum-onnx 0.1 pins transformers < 4.58, so the
check runs in a second virtual environment: run_optimum_check.sh creates it (about 3.5
minutes with pip's network access) in $OPTIMUM_VENV, by default .venv-optimum in the
repository (git-ignored, reused by later local runs; CI starts from a clean clone).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def test_optimum_generates_our_tokens(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable,
           "OPTIMUM_VENV": os.environ.get("OPTIMUM_VENV", str(REPO / ".venv-optimum"))}
    run = subprocess.run(["bash", str(HERE / "run_optimum_check.sh"), str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lines = run.stdout.splitlines()
    # 5 artifacts x with/without IOBinding (x with/without the custom-op library when built)
    assert sum(line.startswith("ok ") for line in lines) >= 10, run.stdout[-3000:]
    assert not any(line.startswith("FAIL") for line in lines) and "ALL IDENTICAL" in run.stdout
