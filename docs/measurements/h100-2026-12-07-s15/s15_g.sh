# Call G: the TensorRT-path checks (no TensorRT: the plugins' enqueue and the session's CUDA-graph
# decode) on a machine without onnxruntime-gpu: run_all.sh asks for ORT's CUDA provider only where a
# selected check runs ONNX Runtime.
date +%T
export PYTHONPATH=$PWD
UNIATTN_EXPORT_LIB_DIR=$PWD/build/gpu90/lib CHECKS="trt_enqueue trt_graphs" timeout 400 bash tests/gpu/run_all.sh 2>&1 | tail -6
for c in trt_enqueue trt_graphs; do echo "== $c"; tail -5 $OUT/gpu_checks/$c/log.txt; done
date +%T
# The committed kernels (the default build of this tree): synccheck and the cases once more.
timeout 120 compute-sanitizer --tool synccheck --error-exitcode 9 python3 tests/plugins/gpu_kernels.py --lib build/gpu90/lib/libuniattn_kernels.so --cases small --random 6 --skip-bench --no-variants --out /tmp/sg > $OUT/synccheck_default.txt 2>&1; echo "synccheck default exit $?"
grep -E "ERROR SUMMARY|correctness|replayed|VERIFIED" $OUT/synccheck_default.txt
date +%T
