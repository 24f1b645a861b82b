# Call D: the cluster barrier, again. synccheck (line info) on the build forcing clusters with
# __syncwarp before and after the non-aligned barrier (A, the tree), with __syncwarp before the
# .aligned one (B), on the default build (A), and on the previous commit's build (diagnosis);
# then the cases and the timings of A.
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date +%T
export PYTHONPATH=$PWD
sync() {  # name, lib
  echo "=== synccheck $1"; date +%T
  timeout ${3:-150} compute-sanitizer --tool synccheck --print-limit 8 --error-exitcode 9 python3 tests/plugins/gpu_kernels.py --lib $2 --cases small --random 0 --skip-bench --no-variants --out /tmp/s_$1 > $OUT/synccheck_$1.txt 2>&1; echo "synccheck $1 exit $?"
  grep -E "ERROR SUMMARY|correctness|Barrier|at .*split_kv|split_kv.cu:|device.cuh:|VERIFIED" $OUT/synccheck_$1.txt | sort | uniq -c | sort -rn | head -8
}
sync A_forced build/gpu90-c2/lib/libuniattn_kernels.so
sync B_forced build/gpu90-c2b/lib/libuniattn_kernels.so
sync A_default build/gpu90/lib/libuniattn_kernels.so
sync old_forced build/gpu90-c2old/lib/libuniattn_kernels.so 60
echo "=== A forced: all cases + random"; date +%T
timeout 120 python3 tests/plugins/gpu_kernels.py --lib build/gpu90-c2/lib/libuniattn_kernels.so --cases all --random 4 --skip-bench --no-variants --out $OUT/kernels_forced > $OUT/kernels_forced.txt 2>&1; echo "forced exit $?"
tail -3 $OUT/kernels_forced.txt
echo "=== A default: cases + benchmarks"; date +%T
timeout 150 python3 tests/plugins/gpu_kernels.py --lib build/gpu90/lib/libuniattn_kernels.so --cases small --random 6 --no-variants --out $OUT/kernels_default > $OUT/kernels_default.txt 2>&1; echo "default exit $?"
grep -A8 "^static decode" $OUT/kernels_default.txt; tail -2 $OUT/kernels_default.txt
date +%T
