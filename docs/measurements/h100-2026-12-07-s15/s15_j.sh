# Call J: K/V of full steps staged into shared memory one step ahead (cp.async, two stages per
# warp) in the split-KV instances without P emission. The staged default build against the
# previous one (build/gpu90-prev: the tree before, block_sync included) in the same call, each
# timed twice interleaved; the staged builds' cases (default and forced clusters) and synccheck.
export PYTHONPATH=$PWD; date +%T
for v in prev staged prev2 staged2; do
  d=build/gpu90/lib; case $v in prev*) d=build/gpu90-prev/lib;; esac
  timeout 100 python3 tests/plugins/gpu_kernels.py --lib $d/libuniattn_kernels.so --cases small --random 6 --no-variants --out $OUT/k_$v > $OUT/k_$v.txt 2>&1; echo "== $v exit $?"
  grep -E "correctness|^  32  8192|^  32  2048|^   1  2048|^   8  2048|^   1  8192|replayed|VERIFIED" $OUT/k_$v.txt
done
timeout 100 python3 tests/plugins/gpu_kernels.py --lib build/gpu90-c2/lib/libuniattn_kernels.so --cases all --random 6 --skip-bench --no-variants --out $OUT/k_forced > $OUT/k_forced.txt 2>&1; echo "== forced all exit $?"; grep -E "correctness|replayed|VERIFIED" $OUT/k_forced.txt
timeout 100 compute-sanitizer --tool synccheck --error-exitcode 9 python3 tests/plugins/gpu_kernels.py --lib build/gpu90/lib/libuniattn_kernels.so --cases small --random 6 --skip-bench --no-variants --out /tmp/sy > $OUT/synccheck_staged.txt 2>&1; echo "== synccheck staged exit $?"; grep -E "ERROR SUMMARY|correctness" $OUT/synccheck_staged.txt
date +%T
