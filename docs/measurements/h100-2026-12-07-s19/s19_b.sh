# Call B (after the six wheel chunks): transformers 5.25 into /root/site-tf, then the Linear node on
# ONNX Runtime's CUDA EP (ort_ops) and whole static models with Linear through CUDA graphs
# (ort_cuda_graph: tokens with graphs on and off, seeded samples, logits vs PyTorch).
date +%T
bash .devstage-tf/unpack.sh > $OUT/unpack_tf.txt 2>&1
export PYTHONPATH=/root/site:/root/site-tf:$PWD
UNIATTN_EXPORT_LIB_DIR=$PWD/build/gpu90/lib CHECKS="${CHECKS:-ort_ops ort_cuda_graph}" timeout ${T:-500} bash tests/gpu/run_all.sh 2>&1 | tail -8
grep -E "linear|checks passed" $OUT/gpu_checks/ort_ops/log.txt | cut -c1-160
tail -5 $OUT/gpu_checks/ort_cuda_graph/log.txt | cut -c1-200
date +%T
