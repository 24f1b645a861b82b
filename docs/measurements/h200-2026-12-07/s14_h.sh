# Call: the 1B benchmark, UniAttn/base on the new path, onnxruntime-genai, transformers StaticCache+compile, same run.
date +%T
export PYTHONPATH=/root/site-tf
UNIATTN_EXPORT_LIB_DIR=$PWD/build/gpu90/lib BENCH_ROWS=${ROWS:-ort-static-graph,onnxruntime-genai,transformers-static-compiled} \
  BUDGET_1B=${B:-480} OUT=$OUT timeout 570 bash uniattn_export/bench/gpu_run.sh 1b > $OUT/run.txt 2>&1
echo "bench exit $?"; date +%T
cp $OUT/bench/llama_1b/bench.json $OUT/bench/llama_1b/bench.png $OUT/bench/llama_1b.table.txt $OUT/bench/llama_1b.log.txt $OUT/ 2>/dev/null
grep -E "^---|decode|prefill|copies|transformers" $OUT/run.txt | head -50
