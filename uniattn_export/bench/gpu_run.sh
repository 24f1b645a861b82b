#!/usr/bin/env bash
# The H100 benchmark (run by the integrator on the GPU machine, from the repository root):
#
#   bash uniattn_export/bench/gpu_run.sh 1b     # Llama-3.2-1B shape, fp16, every row, one run (see BUDGET_1B)
#   bash uniattn_export/bench/gpu_run.sh tiny   # ~2 min: tiny models, fp16, every row (a dry run of 1b)
#   bash uniattn_export/bench/gpu_run.sh 8b     # Llama-3.1-8B shape, fp16, static-graph rows (BUDGET_8B)
#
# Needs in /root/site (PYTHONPATH): onnxruntime-gpu 1.31.1 and onnxruntime-genai-cuda 0.18
# (staged like onnxruntime-gpu: ../shared/gpu/stage-wheels.sh onnxruntime-genai-cuda==0.18.0),
# and the custom-op library of op version 2: $UNIATTN_EXPORT_LIB_DIR, else build/dev/lib when it
# holds libuniattn_ort.so (carry that folder), else the library rows are recorded as skipped.
# The 1b run: decode cells 1x2048, 32x2048, 32x8192 and prefill cells 1x8192, 8x8192; rows
# ort-static-graph (UniAttn and base, OrtSession(cuda_graph=True)), ort-static-library,
# onnxruntime-genai (its builder's fp16 CUDA model of the same base weights, CUDA graph on),
# genai-artifact (our --target genai exports, UniAttn and base, in onnxruntime-genai, CUDA graph
# on), ort-library (dynamic caches), transformers StaticCache + torch.compile (1x2048, 32x2048)
# and DynamicCache (the SDPA prefill). Its budget (BUDGET_1B seconds, default 500) includes the
# builds (6 exports, the base checkpoint, onnxruntime-genai's builder); the run stops gracefully
# there and bench.json says what was not run. The exports run in parallel processes where cores
# and memory allow (`export_workers`: all six at once on 16 cores and 128 GB); before that, on
# the lent H100 (2026-12-06), the six took 440 s one after another and every row did not fit a
# 600 s command (560 s covered ort-static-graph, ort-static-library and onnxruntime-genai); with the
# exports in parallel every row took 379 s, all rows in one process. Each row now runs in its own
# process (the bench's default on CUDA: a few seconds of imports per row, 11 rows; not yet timed on
# the GPU, so keep BUDGET_1B below ~540 for a 600 s command). Artifacts are built in .gpu/bench_work
# (git-ignored; reused while the machine is warm). Written under $OUT/bench/: <run>/ (the bench's
# output folder: bench.json, bench.png), <run>.table.txt (its stdout) and <run>.log.txt (its
# stderr, every cell's line: what is left when the run is killed from outside, since the bench
# then removes its unfinished folder). Nothing there is overwritten: a run whose table or log
# already exists is refused (exit 2); pass a fresh OUT.
# BENCH_DEVICE=cpu is a dry run of this script on a machine without a GPU, in float32
# (onnxruntime-genai's builder makes fp32 models only for the CPU): `BENCH_DEVICE=cpu bash
# uniattn_export/bench/gpu_run.sh tiny` runs every row that can run on the CPU.
# Exit status: the first non-zero exit of a bench run (1: a measurement failed, 2: bad input).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out}
WORK=${BENCH_WORK:-.gpu/bench_work}
DEVICE=${BENCH_DEVICE:-cuda}
DTYPE=float16
if [ "$DEVICE" = cpu ]; then DTYPE=float32; fi
export PYTHONPATH=/root/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
if [ -z "${UNIATTN_EXPORT_LIB_DIR:-}" ] && [ -f build/dev/lib/libuniattn_ort.so ]; then
  export UNIATTN_EXPORT_LIB_DIR=$PWD/build/dev/lib
fi

# What this machine has, before anything slow (the exporter risk shows in the first log lines).
python3 - <<'EOF'
import onnxruntime as ort, torch, transformers
from uniattn_export import native
print(f"torch {torch.__version__} (cuda {torch.cuda.is_available()}), transformers {transformers.__version__}, "
      f"onnxruntime {ort.__version__} {ort.get_available_providers()}")
try:
    import onnxruntime_genai as og
    print(f"onnxruntime-genai {og.__version__} (cuda {og.is_cuda_available()})")
except ImportError as exc:
    print(f"onnxruntime-genai missing ({exc}): its row will be skipped")
library = native.ort_custom_op_library()
cuda = native.kernels().ua_has_cuda() if native.kernels_library() else None
print(f"custom-op library: {library} (CUDA kernels: {bool(cuda)}, kernel ABI {native.kernel_abi_version()})")
EOF

status=0
bench() {
  local name=$1; shift
  local start=$(date +%s) table="$OUT/bench/$name.table.txt" log="$OUT/bench/$name.log.txt"
  mkdir -p "$OUT/bench"
  for file in "$table" "$log"; do
    if [ -e "$file" ]; then
      echo "gpu_run.sh: error: $file exists (an earlier run's or yours). Pass a fresh OUT." >&2
      exit 2
    fi
  done
  echo "=== $name: uniattn-export bench $*"
  # The bench itself refuses an $OUT/bench/$name that is not its own earlier output.
  python3 -m uniattn_export bench "$@" --device "$DEVICE" -o "$OUT/bench/$name" \
    > "$table" 2> >(tee "$log" >&2)
  local rc=$?
  cat "$table"
  echo "=== $name: exit $rc after $(( $(date +%s) - start )) s"
  if [ "$status" -eq 0 ] && [ "$rc" -ne 0 ]; then status=$rc; fi
}

# BENCH_ROWS: fewer rows when device time is short (each row family's artifacts cost two 1B
# exports of 70 s each, run in parallel: ort-library, genai-artifact, the static rows).
ROWS=${BENCH_ROWS:-ort-static-graph,ort-static-library,onnxruntime-genai,genai-artifact,ort-library,transformers-static-compiled,transformers-dynamic}
case "${1:-}" in
  tiny)
    bench "tiny_$DTYPE" --preset tiny --dtype "$DTYPE" --work "$WORK/tiny_$DTYPE" --backends "$ROWS,ort-static-bodies" \
      --batches 1,4 --contexts 128,256 --compile 1x128 --decode-steps 10 --time-budget 150
    ;;
  1b)
    bench llama_1b --preset llama-3.2-1b --dtype "$DTYPE" --work "$WORK/llama_1b" --backends "$ROWS" \
      --batches 1,8,32 --contexts 2048,8192 --decode-cells 1x2048,32x2048,32x8192 --prefill-cells 1x8192,8x8192 \
      --compile 1x2048,32x2048 --decode-steps 10 --warmup-steps 3 --prefill-repeats 2 --cell-seconds 6 \
      --time-budget "${BUDGET_1B:-500}"
    ;;
  8b)
    # Issue 12's stretch: the Llama-3.1-8B shape at 1x2048 and 16x8192 (and the 1x8192 prefill).
    # Only the static-graph rows by default: each 8B artifact is 16 GB of weights, and the
    # onnxruntime-genai row would add the base checkpoint and genai's build (32 GB more) on a
    # 64 GB disk. Two exports in parallel (128 GB of memory, export_workers).
    bench llama_8b --preset llama-3.1-8b --dtype "$DTYPE" --work "$WORK/llama_8b" --backends "${BENCH_ROWS:-ort-static-graph}" \
      --batches 1,16 --contexts 2048,8192 --decode-cells 1x2048,16x8192 --prefill-cells 1x8192 \
      --decode-steps 10 --warmup-steps 3 --prefill-repeats 2 --cell-seconds 6 \
      --time-budget "${BUDGET_8B:-540}"
    ;;
  *)
    echo "usage: $0 1b|8b|tiny" >&2
    exit 2
    ;;
esac

# Headline numbers of every run that wrote a report.
python3 - "$OUT/bench" <<'EOF'
import json, sys
from pathlib import Path
from uniattn_export.bench.measure import kernel_label
from uniattn_export.bench.report import profiled_kernels
for path in sorted(Path(sys.argv[1]).glob("*/bench.json")):
    doc = json.loads(path.read_text())
    print(f"--- {path.parent.name}: complete={doc['complete']} failures={doc['failures']} stopped={doc['stopped']}")
    for runtime in doc["runtimes"]:
        print(f"    {runtime['id']}: {runtime['status']} {runtime.get('folder_origin', '')}")
    for ratio in doc["ratios"]:
        for phase in ("decode", "prefill"):
            if ratio[phase] is not None:
                print(f"    {ratio['name']} B={ratio['batch']} S={ratio['context']}: {phase} {ratio[phase]:.3f}")
    for result in doc["results"]:
        copies = result["decode"].get("cache_copies")
        if copies and "error" in copies:
            print(f"    profile {result['runtime']} B={result['batch']} S={result['context']}: {copies['error']}")
        elif copies and "memcpy_dtod_bytes" in copies:  # CUDA
            print(f"    copies {result['runtime']} B={result['batch']} S={result['context']}: "
                  f"DtoD {copies['memcpy_dtod_bytes']} B of a {copies['kv_cache_bytes']} B cache, "
                  f"copy kernels {sum(k['count'] for k in copies['copy_kernels'].values())}; "
                  f"{copies['kernels']} kernels, {copies['kernel_us'] / 1000:.3f} ms of kernels vs "
                  f"{result['decode']['median_ms']:.3f} ms median step")
            print("        by kind: " + ", ".join(f"{kind} {c['us'] / 1000:.3f} ms x{c['count']}"
                                                for kind, c in copies["by_category"].items()))
            for kernel in profiled_kernels(copies)[:6]:
                print(f"        {100 * kernel['share']:4.1f}% {kernel['us'] / 1000:.3f} ms x{kernel['count']} {kernel_label(kernel['name'])}")
        elif copies:  # the CPU dry run
            print(f"    copies {result['runtime']} B={result['batch']} S={result['context']}: "
                  f"{copies['copy_bytes']} B of a {copies['kv_cache_bytes']} B cache")
EOF
exit $status
