# Call A2: Nsight Compute at 32 x 8192 again (call A's 32 x 8192 report did not come back: too many
# files), details page and source counters, gzipped.
export PYTHONPATH=$PWD; NCU=$(which ncu || ls /usr/local/cuda*/bin/ncu | head -1)
timeout 200 $NCU --target-processes all -k regex:split_kv --launch-count 6 --section SpeedOfLight --section MemoryWorkloadAnalysis \
  --section WarpStateStats --section SchedulerStats --section Occupancy --section LaunchStats --section InstructionStats \
  --section SourceCounters --import-source yes -o /tmp/n32 -f \
  python3 docs/measurements/h100-2026-12-07-s16/probe_static.py build/gpu90-li/lib/libuniattn_kernels.so 32 8192 2 > /tmp/n32.log 2>&1
$NCU -i /tmp/n32.ncu-rep --page details > /tmp/d.txt 2>&1; gzip -c /tmp/d.txt > $OUT/ncu_32x8192_details.txt.gz
