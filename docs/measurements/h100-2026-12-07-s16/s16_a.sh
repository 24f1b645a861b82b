# Call A: Nsight Compute on the static decode kernels (bf16, Hq 32 / Hkv 8 / D 64, capacity 8192)
# at 32 x 8192 and 1 x 2048: why the ordinary layer's split-KV kernel reads at ~2.7 TB/s and what
# the P-emitting producer pays beyond it. Build: build/gpu90-li (-lineinfo, otherwise the tree).
set -x
export PYTHONPATH=$PWD; date +%T; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv
P=docs/measurements/h100-2026-12-07-s16/probe_static.py; L=build/gpu90-li/lib/libuniattn_kernels.so
which ncu || ls /usr/local/cuda*/bin/ncu
NCU=$(which ncu || ls /usr/local/cuda*/bin/ncu | head -1)
for shape in "32 8192" "1 2048"; do
  tag=$(echo $shape | tr ' ' x)
  timeout 200 $NCU --target-processes all -k regex:split_kv --launch-skip 0 --launch-count 6 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section SchedulerStats \
    --section Occupancy --section LaunchStats --section InstructionStats --section SourceCounters \
    --import-source yes -o $OUT/ncu_$tag -f python3 $P $L $shape 2 > $OUT/ncu_$tag.log 2>&1; echo "ncu $tag exit $?"
  $NCU -i $OUT/ncu_$tag.ncu-rep --page details > $OUT/ncu_${tag}_details.txt 2>&1
  $NCU -i $OUT/ncu_$tag.ncu-rep --page raw --csv > $OUT/ncu_${tag}_raw.csv 2>&1
  for id in 1 3 5; do
    $NCU -i $OUT/ncu_$tag.ncu-rep --page source --csv --print-source cuda,sass --launch-skip $id --launch-count 1 > $OUT/ncu_${tag}_source_$id.csv 2>&1
  done
done
ls -la $OUT; date +%T
# The tree (vectorized score reads in the P emission) against the previous commit's kernels:
# each build's small cases and kernel benchmark in its own process, the tree first and last.
for v in tree prev tree2; do
  d=build/gpu90; [ $v = prev ] && d=build/gpu90-prev
  timeout 110 python3 tests/plugins/gpu_kernels.py --lib $d/lib/libuniattn_kernels.so --cases small --random 0 --no-variants --out $OUT/k_$v > $OUT/k_$v.txt 2>&1; echo "== $v exit $?"
  grep -E "correctness|^  32  8192|^  32  2048|^   1  2048|^   8  2048" $OUT/k_$v.txt
done
date +%T
python3 docs/measurements/h100-2026-12-07-s16/time_split_rotary.py build/gpu90/lib/libuniattn_kernels.so 2>&1 | tail -3
grep -E "split_rotary|gated_silu" $OUT/k_tree.txt
