# Call A (with chunk-01 and both builds of the kernel library): the kernel checks on the build with
# dependent launches on (-DUA_DEPENDENT_LAUNCH=1, build/gpu90-pdl; the dependent-launch chain among
# them, on a stream and replayed from a CUDA graph, and the static cases and graph replay whose
# attention is then a dependent cluster launch), then chain_bench.py: that build against the
# default one (build/gpu90, dependent launches off). Needs only torch.
date +%T
bash .devstage/chunk-01/unpack.sh > $OUT/unpack_01.txt 2>&1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
mkdir -p $OUT/kernels
python3 tests/plugins/gpu_kernels.py --lib build/gpu90-pdl/lib/libuniattn_kernels.so --cases small --random 0 \
  --no-variants --skip-bench --out $OUT/kernels > $OUT/kernels.txt 2>&1; echo "gpu_kernels exit $?"
tail -8 $OUT/kernels.txt
python3 docs/measurements/h100-2026-12-08-s20/chain_bench.py build/gpu90-pdl/lib/libuniattn_kernels.so \
  build/gpu90/lib/libuniattn_kernels.so $OUT/chain_bench.json > $OUT/chain_bench.txt 2>&1; echo "chain_bench exit $?"
cut -c1-400 $OUT/chain_bench.txt
date +%T
