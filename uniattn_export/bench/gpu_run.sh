#!/usr/bin/env bash
# The H100 benchmark (run by the lead on the GPU machine, from the repository root):
#
#   bash uniattn_export/bench/gpu_run.sh tiny   # ~2 min: tiny models, fp16 and bf16 (does bf16 run on ORT CUDA?)
#   bash uniattn_export/bench/gpu_run.sh 1b     # ~9 min: Llama-3.2-1B shape, UniAttn vs base, full matrix
#
# Needs onnxruntime-gpu in /root/site and the custom-op library: $UNIATTN_EXPORT_LIB_DIR, else
# build/dev/lib when it holds libuniattn_ort.so (carry that folder), else the ORT-with-library
# rows are recorded as skipped. Artifacts are built in .gpu/bench_work (git-ignored; reused when
# the machine is still warm), results go to $OUT/bench/<run>/bench.{json,png}. The 1B budget
# (BUDGET_1B seconds, default 480) includes the two exports; the run stops gracefully there.
# BENCH_DEVICE=cpu is a dry run of this script on a machine without a GPU.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out}
WORK=${BENCH_WORK:-.gpu/bench_work}
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
library = native.ort_custom_op_library()
cuda = native.kernels().ua_has_cuda() if native.kernels_library() else None
print(f"custom-op library: {library} (CUDA kernels: {bool(cuda)})")
EOF

bench() {
  local name=$1; shift
  local start=$(date +%s)
  echo "=== $name: uniattn-export bench $*"
  python3 -m uniattn_export bench "$@" --device "${BENCH_DEVICE:-cuda}" -o "$OUT/bench/$name"
  echo "=== $name: exit $? after $(( $(date +%s) - start )) s"
}

case "${1:-}" in
  tiny)
    # One compiled shape checks torch.compile on this torch before the 1B run relies on it.
    bench tiny_fp16 --preset tiny --dtype float16 --work "$WORK/tiny_fp16" --decode-steps 10 \
      --compile 1x512 --time-budget 100
    bench tiny_bf16 --preset tiny --dtype bfloat16 --work "$WORK/tiny_bf16" --decode-steps 10 \
      --backends ort-library,ort-bodies,transformers-dynamic --time-budget 60
    ;;
  1b)
    bench llama_1b --preset llama-3.2-1b --dtype float16 --work "$WORK/llama_1b" \
      --compile 1x2048,32x2048 --decode-steps 20 --prefill-repeats 2 --cell-seconds 8 \
      --time-budget "${BUDGET_1B:-480}"
    ;;
  *)
    echo "usage: $0 tiny|1b" >&2
    exit 2
    ;;
esac

# Headline numbers of every run that wrote a report.
python3 - "$OUT/bench" <<'EOF'
import json, sys
from pathlib import Path
for path in sorted(Path(sys.argv[1]).glob("*/bench.json")):
    doc = json.loads(path.read_text())
    print(f"--- {path.parent.name}: complete={doc['complete']} failures={doc['failures']} stopped={doc['stopped']}")
    for runtime in doc["runtimes"]:
        print(f"    {runtime['id']}: {runtime['status']}")
    for ratio in doc["ratios"]:
        if ratio["decode"] is not None and (ratio["batch"], ratio["context"]) in ((1, 2048), (32, 2048), (32, 8192)):
            print(f"    {ratio['name']} B={ratio['batch']} S={ratio['context']}: decode {ratio['decode']:.3f}")
EOF
