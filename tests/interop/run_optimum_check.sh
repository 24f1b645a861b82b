#!/usr/bin/env bash
# Interop check with optimum-onnx (see optimum_check.py). Usage, from the repository root:
#   tests/interop/run_optimum_check.sh [WORK_DIR]
# PYTHON: the project's interpreter (default: python). OPTIMUM_VENV: the second virtual
# environment, created when missing (about 3.5 minutes on 2 cores with a warm pip cache).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="${1:-$(mktemp -d)}"
python="${PYTHON:-python}"
venv="${OPTIMUM_VENV:-$work/venv-optimum}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
  # optimum-onnx 0.1 needs transformers < 4.58; the onnxruntime pin matches the project's.
  "$venv/bin/pip" install --quiet "torch==2.13.0" "transformers<4.58" "optimum-onnx==0.1.0" "onnxruntime==1.31.1"
fi
mkdir -p "$work"
"$python" "$here/optimum_check.py" expect "$work"
"$venv/bin/python" "$here/optimum_check.py" check "$work"
