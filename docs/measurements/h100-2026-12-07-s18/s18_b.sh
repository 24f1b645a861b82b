# Call B (after the six wheel chunks): transformers 5.25 into /root/site-tf, then the C++ service's
# whole-model checks, whose static artifacts are now the graph --target ort writes (skip norms,
# GatedSilu, SplitRotary), with CUDA graphs on and off, against the Python runtime.
date +%T
bash .devstage-tf/unpack.sh > $OUT/unpack_tf.txt 2>&1
export PYTHONPATH=/root/site:/root/site-tf:$PWD
UNIATTN_EXPORT_LIB_DIR=$PWD/build/gpu90/lib CHECKS="${CHECKS:-cpp_service}" timeout ${T:-420} bash tests/gpu/run_all.sh 2>&1 | tail -8
grep -E "^(PASS|FAIL)" $OUT/gpu_checks/cpp_service/log.txt | cut -c1-160
date +%T
