# Call: chunk-01 of the wheels; the default kernels (clusters where one wave fits) with replay, trt enqueue/graphs.
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date +%T
bash .devstage/chunk-01/unpack.sh | tail -1
export PYTHONPATH=$PWD
timeout 100 python3 tests/plugins/gpu_kernels.py --lib build/gpu90/lib/libuniattn_kernels.so --cases small --random 6 --skip-bench --no-variants --out $OUT/kernels_default > $OUT/kernels_default.txt 2>&1; echo "kernels default exit $?"
tail -6 $OUT/kernels_default.txt
UNIATTN_EXPORT_LIB_DIR=$PWD/build/gpu90/lib CHECKS="trt_enqueue trt_graphs" timeout 150 bash tests/gpu/run_all.sh 2>&1 | tail -5
date +%T
