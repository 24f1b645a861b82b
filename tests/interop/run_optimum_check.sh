#!/usr/bin/env bash
# Interop check with optimum-onnx (see optimum_check.py). Usage, from the repository root:
#   tests/interop/run_optimum_check.sh [WORK_DIR]
# PYTHON: the project's interpreter (default: python). OPTIMUM_VENV: the second virtual
# environment, created when missing or incomplete (about 3.5 minutes on 2 cores).
# The install is bounded: every pip request times out after 30 s of silence and is retried
# 5 times (network blips), and the whole install is stopped after OPTIMUM_INSTALL_TIMEOUT
# seconds (default 600, about 2.5 times a normal install on 2 busy cores).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="${1:-$(mktemp -d)}"
python="${PYTHON:-python}"
venv="${OPTIMUM_VENV:-$work/venv-optimum}"
install_timeout="${OPTIMUM_INSTALL_TIMEOUT:-600}"
# Written only after a complete install, so an interrupted one is redone, never reused.
complete="$venv/.uniattn-install-complete"
if [ ! -f "$complete" ]; then
  if [ -e "$venv" ] && [ ! -f "$venv/pyvenv.cfg" ]; then
    echo "FAIL $venv exists and is not a virtual environment: refusing to replace it (set OPTIMUM_VENV)" >&2
    exit 1
  fi
  rm -rf "$venv"
  "$python" -m venv "$venv"
  # optimum-onnx 0.1 needs transformers < 4.58; the onnxruntime pin matches the project's.
  if ! timeout "$install_timeout" "$venv/bin/pip" install --quiet --timeout 30 --retries 5 \
      "torch==2.13.0" "transformers<4.58" "optimum-onnx==0.1.0" "onnxruntime==1.31.1"; then
    echo "FAIL installing the optimum-onnx environment in $venv (pip failed or took over ${install_timeout} s)" >&2
    exit 1
  fi
  touch "$complete"
fi
mkdir -p "$work"
"$python" "$here/optimum_check.py" expect "$work"
"$venv/bin/python" "$here/optimum_check.py" check "$work"
