# Call I: how the split-KV kernels load K/V rows. The tree (__ldcs: ld.global.cs) against
# ld.global.nc.L1::no_allocate with and without the .L2::256B prefetch size, and ld.global.cs.L2::256B:
# each build's cases and kernel benchmark, the tree's run first and last (drift).
export PYTHONPATH=$PWD; date +%T
for v in tree nc256 cs256 nc tree2; do
  d=build/gpu90-$v; [ $v = tree ] || [ $v = tree2 ] && d=build/gpu90
  timeout 110 python3 tests/plugins/gpu_kernels.py --lib $d/lib/libuniattn_kernels.so --cases small --random 0 --no-variants --out $OUT/k_$v > $OUT/k_$v.txt 2>&1; echo "== $v exit $?"
  grep -E "correctness|^  32  8192|^  32  2048|^   1  2048|^   8  2048" $OUT/k_$v.txt
done
date +%T
