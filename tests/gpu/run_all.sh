#!/usr/bin/env bash
# Every GPU check of the project in one command, on the GPU machine, from the repository root:
#
#   PYTHONPATH=/root/site:$PWD bash tests/gpu/run_all.sh
#   CHECKS="ort_cuda_graph cpp_service" ...   # only those checks (names below)
#
# (onnxruntime-gpu 1.31.1, onnxruntime-genai-cuda 0.18.0 and nlohmann-json staged into /root/site first:
#  ../shared/gpu/stage-wheels.sh onnxruntime-gpu==1.31.1 onnxruntime-genai-cuda==0.18.0 nlohmann-json==3.12.0;
#  the checks export their models there, so for graphs of a supported transformers also stage 5.25 into
#  /root/site-tf and add it to PYTHONPATH: README, "What ran where")
# Builds the native libraries with CUDA for this GPU into build/gpu (unless
# UNIATTN_EXPORT_LIB_DIR already holds them), then runs each check below with its log and
# JSON under $OUT/gpu_checks (./gpu_checks when OUT is unset). Prints one PASS/FAIL line per
# check and exits non-zero if any check failed, crashed, or could not run; nothing counts as
# verified unless its script said so with exit code 0.
set -uo pipefail
cd "$(dirname "$0")/../.."
python="${PYTHON:-python3}"
results="${OUT:-$PWD}/gpu_checks"
mkdir -p "$results"
export PYTHONPATH="${PYTHONPATH:-}:$PWD"

failed=0
summary="$results/summary.txt"
: > "$summary"
report() {  # name, status
  echo "$2 $1" | tee -a "$summary"
  [ "$2" = PASS ] || failed=1
}

# The machine itself: a CUDA GPU for torch, and the CUDA provider for onnxruntime where a
# selected check runs ONNX Runtime (the kernel and TensorRT-path checks do not).
needs_ort=0
for check in ort_ops ort_models cpp_service ort_cuda_graph genai; do
  if [ -z "${CHECKS:-}" ] || [[ " $CHECKS " == *" $check "* ]]; then needs_ort=1; fi
done
if ! NEEDS_ORT=$needs_ort "$python" - > "$results/environment.log" 2>&1 <<'PY'
import os

import torch

assert torch.cuda.is_available(), "torch sees no CUDA GPU"
line = torch.cuda.get_device_name(0)
if os.environ["NEEDS_ORT"] == "1":
    import onnxruntime

    assert "CUDAExecutionProvider" in onnxruntime.get_available_providers(), \
        f"onnxruntime {onnxruntime.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu)"
    line += f" onnxruntime {onnxruntime.__version__}"
print(line)
PY
then
  report "environment (GPU, and the onnxruntime CUDA provider where a check needs it): $(tail -n 1 "$results/environment.log")" FAIL
  echo "FAILED: nothing was verified; details in $results" >&2
  exit 1
fi
report "environment: $(tail -n 1 "$results/environment.log")" PASS

if [ -z "${UNIATTN_EXPORT_LIB_DIR:-}" ] || [ ! -f "$UNIATTN_EXPORT_LIB_DIR/libuniattn_runtime.so" ]; then
  # The GPU's own architecture (CMake's "native" detection failed on the lent H200).
  arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d '.')
  if cmake -S . -B build/gpu -DCMAKE_BUILD_TYPE=Release "-DUNIATTN_CUDA_ARCHITECTURES=${arch:-native}" \
       "-DPython3_EXECUTABLE=$(command -v "$python")" > "$results/build.log" 2>&1 \
     && cmake --build build/gpu -j "$(nproc)" >> "$results/build.log" 2>&1; then
    export UNIATTN_EXPORT_LIB_DIR="$PWD/build/gpu/lib"
    report "build (CUDA kernels, ORT custom-op library, C runtime)" PASS
  else
    report "build (see $results/build.log)" FAIL
    echo "FAILED: the libraries did not build; no check ran" >&2
    exit 1
  fi
fi

run_check() {  # name, command...   (CHECKS="name ..." runs only those, e.g. to split a session)
  local name="$1"
  shift
  if [ -n "${CHECKS:-}" ] && [[ " $CHECKS " != *" $name "* ]]; then
    return 0
  fi
  local out="$results/$name"
  mkdir -p "$out"
  if OUT="$out" "$@" > "$out/log.txt" 2>&1; then
    report "$name" PASS
  else
    report "$name (exit $?; see $out/log.txt)" FAIL
  fi
}

# 1. the CUDA kernels vs the reference, compute-sanitizer, timings
run_check kernels "$python" tests/plugins/gpu_kernels.py --lib "$UNIATTN_EXPORT_LIB_DIR/libuniattn_kernels.so" --sanitize
# 2. the custom-op library's nodes on CUDAExecutionProvider vs the reference
run_check ort_ops "$python" tests/plugins/ort_on_device.py
# 3. whole models on the ORT CUDA EP, with and without the library
run_check ort_models "$python" tests/targets/ort/gpu_check.py --out "$results/ort_models"
# 4. the TensorRT plugins' enqueue path (without TensorRT)
run_check trt_enqueue "$python" tests/targets/trt/gpu_enqueue_check.py
# 4b. the TensorRT session's static-cache decode in CUDA graphs (graphs.py, without TensorRT)
run_check trt_graphs "$python" tests/targets/trt/gpu_graph_check.py
# 5. the C++ service on CUDA and CPU vs the Python runtime
run_check cpp_service "$python" examples/cpp_service/gpu_check.py --out "$results/cpp_service"
# 6. static-cache artifacts decoding through CUDA graphs vs without (OrtSession cuda_graph)
run_check ort_cuda_graph "$python" tests/gpu/ort_cuda_graph_check.py
# 7. onnxruntime-genai-cuda (staged in /root/site) on our genai folders, CUDA graphs on and off
run_check genai "$python" tests/gpu/genai_check.py

if [ "$failed" -ne 0 ]; then
  echo "FAILED: see $summary" >&2
  exit 1
fi
echo "ALL GPU CHECKS PASSED: $summary"
