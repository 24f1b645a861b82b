# Call E: __syncwarp before the block barrier after the main loop (the one synccheck named, with
# line info, in call D). synccheck and racecheck on the build forcing clusters, synccheck on the
# default build, then the cases and timings.
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date +%T
export PYTHONPATH=$PWD
F=build/gpu90-c2/lib/libuniattn_kernels.so
D=build/gpu90/lib/libuniattn_kernels.so
san() {  # tool, name, lib, timeout
  echo "=== $1 $2"; date +%T
  timeout $4 compute-sanitizer --tool $1 --print-limit 8 --error-exitcode 9 python3 tests/plugins/gpu_kernels.py --lib $3 --cases small --random 0 --skip-bench --no-variants --out /tmp/s_$1_$2 > $OUT/$1_$2.txt 2>&1; echo "$1 $2 exit $?"
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY|correctness|Barrier|split_kv.cu:|VERIFIED|replayed" $OUT/$1_$2.txt | sort | uniq -c | sort -rn | head -8
}
san synccheck forced $F 150
san synccheck default $D 150
echo "=== forced: all cases + random"; date +%T
timeout 120 python3 tests/plugins/gpu_kernels.py --lib $F --cases all --random 4 --skip-bench --no-variants --out $OUT/kernels_forced > $OUT/kernels_forced.txt 2>&1; echo "forced exit $?"
tail -3 $OUT/kernels_forced.txt
echo "=== default: cases + benchmarks"; date +%T
timeout 150 python3 tests/plugins/gpu_kernels.py --lib $D --cases small --random 6 --no-variants --out $OUT/kernels_default > $OUT/kernels_default.txt 2>&1; echo "default exit $?"
grep -A8 "^static decode" $OUT/kernels_default.txt; tail -2 $OUT/kernels_default.txt
san racecheck forced $F 200
date +%T
