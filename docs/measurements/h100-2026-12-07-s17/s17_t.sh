# Call T (no wheels staged: torch only): the projections' layouts in torch's cuBLAS (x @ W with W (K, N)
# against F.linear with W (N, K), per shape of Llama-3.2-1B, M 1 / 32 / 8192, kernels by CUPTI), then
# the CUDA kernels' small cases (SplitRotary's included) under compute-sanitizer memcheck and racecheck.
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
here=docs/measurements/h100-2026-12-07-s17
timeout 150 python3 $here/matmul_layouts.py $OUT/matmul_layouts_torch.json > $OUT/matmul_layouts_torch.txt 2>&1
echo "matmul_layouts exit $?" >> $OUT/matmul_layouts_torch.txt
timeout 300 python3 tests/plugins/gpu_kernels.py --lib build/gpu90/lib/libuniattn_kernels.so --cases small \
  --random 0 --no-variants --skip-bench --sanitize --budget-s 290 --out $OUT > $OUT/gpu_kernels.txt 2>&1
echo "gpu_kernels exit $?" >> $OUT/gpu_kernels.txt
python3 - <<'PY'
import json, os
d = json.load(open(os.environ["OUT"] + "/matmul_layouts_torch.json"))
for r in d["rows"]:
    print(r["shape"], r["m"], {k: round(v, 2) for k, v in r.items() if k.endswith(("_us", "_tbps"))})
PY
tail -6 $OUT/gpu_kernels.txt
