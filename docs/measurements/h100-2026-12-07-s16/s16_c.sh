# Call C: the 1 x 2048 decode cell again with 40 timed steps (call B's UniAttn cell had p90 1.724 ms
# against a 1.523 median: noisy), UniAttn and base on the new path and onnxruntime-genai, reusing
# call B's artifacts in the work folder.
export PYTHONPATH=/root/site:/root/site-tf:$PWD UNIATTN_EXPORT_LIB_DIR=$PWD/build/gpu90/lib
timeout 280 python3 -m uniattn_export bench --preset llama-3.2-1b --dtype float16 --work .gpu/bench_work/llama_1b \
  --backends ort-static-graph,onnxruntime-genai --batches 1 --contexts 2048 --decode-cells 1x2048 --prefill-cells 1x2048 \
  --decode-steps 40 --warmup-steps 5 --prefill-repeats 2 --cell-seconds 10 --time-budget 250 --device cuda \
  -o $OUT/bench_1x2048 > $OUT/table.txt 2> $OUT/log.txt
