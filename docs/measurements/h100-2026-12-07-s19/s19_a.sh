# Call A (with chunk-01 and the libraries): the kernel checks (the Linear GEMV and its cuBLAS path
# among them) and the projection microbenchmark with the final kernel. Needs only torch.
date +%T
bash .devstage/chunk-01/unpack.sh > $OUT/unpack_01.txt 2>&1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
mkdir -p $OUT/kernels
python3 tests/plugins/gpu_kernels.py --lib build/gpu90/lib/libuniattn_kernels.so --cases small --random 0 \
  --no-variants --skip-bench --out $OUT/kernels > $OUT/kernels.txt 2>&1; echo "gpu_kernels exit $?"
tail -5 $OUT/kernels.txt
python3 docs/measurements/h100-2026-12-07-s19/gemv_bench.py docs/measurements/h100-2026-12-07-s19/libgemv.so \
  build/gpu90/lib/libuniattn_kernels.so $OUT/gemv_bench.json > $OUT/gemv_bench.txt 2>&1; echo "gemv_bench exit $?"
date +%T
