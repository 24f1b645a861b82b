# Call A: transformers 5.25 into /root/site-tf; the cluster barrier without .aligned: synccheck
# and the cases on the build forcing clusters, then the default build's cases, replay and timings.
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date +%T
bash .devstage-tf/unpack.sh 2>&1 | tail -1
export PYTHONPATH=$PWD
F=build/gpu90-c2/lib/libuniattn_kernels.so
D=build/gpu90/lib/libuniattn_kernels.so
echo "=== synccheck, forced clusters"; date +%T
timeout 150 compute-sanitizer --tool synccheck --error-exitcode 9 python3 tests/plugins/gpu_kernels.py --lib $F --cases small --random 0 --skip-bench --no-variants --out /tmp/s_sync > $OUT/synccheck_forced.txt 2>&1; echo "synccheck exit $?"
grep -E "ERROR SUMMARY|passed|failed|Barrier|VERIFIED" $OUT/synccheck_forced.txt | tail -6
echo "=== forced clusters, all cases + random"; date +%T
timeout 120 python3 tests/plugins/gpu_kernels.py --lib $F --cases all --random 4 --skip-bench --no-variants --out $OUT/kernels_forced > $OUT/kernels_forced.txt 2>&1; echo "forced exit $?"
tail -4 $OUT/kernels_forced.txt
echo "=== default build: cases, replay, benchmarks"; date +%T
timeout 240 python3 tests/plugins/gpu_kernels.py --lib $D --cases small --random 6 --no-variants --out $OUT/kernels_default > $OUT/kernels_default.txt 2>&1; echo "default exit $?"
tail -40 $OUT/kernels_default.txt
date +%T
