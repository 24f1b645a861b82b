# One GPU call: the cluster path's correctness (forced and one-wave builds), sanitizers, timing.
export PYTHONPATH=$PWD
L=.gpu/klibs
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(), torch.cuda.get_device_capability())"
echo "=== forced: all cases + 6 random"; date +%T
timeout 150 python3 tests/plugins/gpu_kernels.py --lib $L/libuniattn_kernels_clusters-forced.so --cases all --random 4 --skip-bench --out $OUT/forced 2>&1 | tail -25
echo "=== one-wave (=1): all cases"; date +%T
timeout 50 python3 tests/plugins/gpu_kernels.py --lib $L/libuniattn_kernels_clusters.so --cases small --random 0 --skip-bench --out $OUT/onewave 2>&1 | tail -12
echo "=== timing"; date +%T
timeout 110 python3 .gpu/cluster_time.py 2>&1 | tail -45
for tool in memcheck; do
  echo "=== $tool forced"; date +%T
  timeout 60 compute-sanitizer --tool $tool --error-exitcode 9 python3 tests/plugins/gpu_kernels.py --lib $L/libuniattn_kernels_clusters-forced.so --cases small --random 0 --skip-bench --out /tmp/s_$tool > $OUT/$tool.txt 2>&1; echo "$tool exit $?"
  grep -E "ERROR SUMMARY|correctness|Error|error" $OUT/$tool.txt | head -8
done
date +%T
