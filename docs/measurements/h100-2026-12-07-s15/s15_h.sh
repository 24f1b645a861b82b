# Call H: the two block barriers of the cluster path as `barrier.sync 0` (no `.aligned`) instead of
# __syncthreads(): synccheck on the forced and the default build (random cases too), then the cases.
export PYTHONPATH=$PWD; date +%T
for v in yf yd; do
  L=build/gpu90-$v/lib/libuniattn_kernels.so
  timeout 150 compute-sanitizer --tool synccheck --print-limit 4 --error-exitcode 9 python3 tests/plugins/gpu_kernels.py --lib $L --cases small --random 6 --skip-bench --no-variants --out /tmp/s_$v > $OUT/synccheck_$v.txt 2>&1; echo "synccheck $v exit $?"
  grep -E "ERROR SUMMARY|correctness|replayed|VERIFIED|Barrier|split_kv.cu:" $OUT/synccheck_$v.txt | sort | uniq -c | head -6
done
timeout 120 python3 tests/plugins/gpu_kernels.py --lib build/gpu90-yf/lib/libuniattn_kernels.so --cases all --random 6 --skip-bench --no-variants --out $OUT/kernels_yf > $OUT/kernels_yf.txt 2>&1; echo "forced all exit $?"; tail -2 $OUT/kernels_yf.txt
timeout 150 python3 tests/plugins/gpu_kernels.py --lib build/gpu90-yd/lib/libuniattn_kernels.so --cases small --random 6 --no-variants --out $OUT/kernels_yd > $OUT/kernels_yd.txt 2>&1; echo "default exit $?"; grep -A8 "^static decode" $OUT/kernels_yd.txt; tail -1 $OUT/kernels_yd.txt
date +%T
