# The 1B benchmark twice in one call: kernels with the cluster path (UniAttn, base and
# onnxruntime-genai in one run), then the default kernels (UniAttn and base) on the same artifacts.
export PYTHONPATH=/root/site
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
date +%T
BENCH_WORK=.gpu/prepared UNIATTN_EXPORT_LIB_DIR=$PWD/build/gpu90-c1/lib BENCH_ROWS=ort-static-graph,onnxruntime-genai \
  BUDGET_1B=${B1:-290} OUT=$OUT/clusters timeout 340 bash uniattn_export/bench/gpu_run.sh 1b > $OUT/clusters.txt 2>&1
echo "clusters exit $?"; date +%T
grep -E "^---|decode|prefill|copies|by kind|^ +[0-9.]+%" $OUT/clusters.txt | head -60
BENCH_WORK=.gpu/prepared UNIATTN_EXPORT_LIB_DIR=$PWD/build/gpu90-c0/lib BENCH_ROWS=ort-static-graph \
  BUDGET_1B=${B2:-170} OUT=$OUT/default timeout 200 bash uniattn_export/bench/gpu_run.sh 1b > $OUT/default.txt 2>&1
echo "default exit $?"; date +%T
grep -E "^---|decode|prefill|copies|by kind|^ +[0-9.]+%" $OUT/default.txt | head -40
