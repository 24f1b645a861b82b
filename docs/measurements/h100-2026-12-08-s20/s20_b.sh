# Call B (after the wheel chunks 02-06; call A left both kernel libraries on the machine):
# transformers 5.25 into /root/site-tf, then
# 1. the 1 x 2048 decode cell through the build with dependent launches on (build/gpu90-pdl)
#    beside onnxruntime-genai and transformers StaticCache + compile;
# 2. the same artifacts through the default build (build/gpu90, dependent launches off), in a
#    second process of the same call;
# 3. with the time left, through the build with dependent launches on: ort_cuda_graph (whole static
#    models through CUDA graphs: tokens with graphs on and off, seeded samples, logits vs PyTorch),
#    cpp_service (CUDA cases, and the CPU-EP case on this GPU machine, which the Linear config entry
#    fixed after the nineteenth session's run) and ort_ops.
# Carry .devstage-tf, build/gpu90-pdl/lib/libuniattn_ort.so, build/gpu90/lib/libuniattn_ort.so and
# build/gpu90-pdl/lib/libuniattn_runtime.so (the 64 MiB limit; build that target too).
date +%T
bash .devstage-tf/unpack.sh > $OUT/unpack_tf.txt 2>&1
export PYTHONPATH=/root/site:/root/site-tf:$PWD
bench() {  # lib dir, backends, out name, time budget
  UNIATTN_EXPORT_LIB_DIR=$1 timeout $(( $4 + 30 )) python3 -m uniattn_export bench --preset llama-3.2-1b \
    --dtype float16 --work /root/bench_work --backends $2 --compile 1x2048 --batches 1 --contexts 2048 \
    --decode-cells 1x2048 --prefill-cells 1x2048 --decode-steps 40 --warmup-steps 5 --prefill-repeats 2 \
    --cell-seconds 10 --time-budget $4 --device cuda -o $OUT/$3 > $OUT/$3.txt 2> $OUT/$3.log
  echo "$3 exit $?"; grep -E "decode [0-9.]+ ms" $OUT/$3.log | cut -c1-200
}
bench $PWD/build/gpu90-pdl/lib ort-static-graph,onnxruntime-genai,transformers-static-compiled bench_1x2048 240
bench $PWD/build/gpu90/lib ort-static-graph bench_1x2048_default_launch 90
date +%T
UNIATTN_EXPORT_LIB_DIR=$PWD/build/gpu90-pdl/lib CHECKS="${CHECKS:-ort_cuda_graph cpp_service ort_ops}" \
  timeout $(( 570 - SECONDS )) bash tests/gpu/run_all.sh 2>&1 | tail -8
tail -3 $OUT/gpu_checks/ort_cuda_graph/log.txt | cut -c1-200
tail -3 $OUT/gpu_checks/cpp_service/log.txt | cut -c1-200
date +%T
