# Call F: is the warp converged at the barrier synccheck names? A build forcing clusters that traps
# when __activemask() is not full right before it: all cases without the sanitizer, then synccheck.
export PYTHONPATH=$PWD; date +%T
X=build/gpu90-c2x/lib/libuniattn_kernels.so
timeout 120 python3 tests/plugins/gpu_kernels.py --lib $X --cases all --random 4 --skip-bench --no-variants --out $OUT/kernels_x > $OUT/kernels_x.txt 2>&1; echo "activemask build, all cases: exit $?"
grep -E "correctness|VERIFIED|FAIL|error" $OUT/kernels_x.txt | head -5
timeout 100 compute-sanitizer --tool synccheck --print-limit 4 --error-exitcode 9 python3 tests/plugins/gpu_kernels.py --lib $X --cases small --random 0 --skip-bench --no-variants --out /tmp/sx > $OUT/synccheck_x.txt 2>&1; echo "synccheck exit $?"
grep -E "ERROR SUMMARY|Barrier|split_kv.cu:|trap|Illegal|correctness" $OUT/synccheck_x.txt | sort | uniq -c | head -8
date +%T
