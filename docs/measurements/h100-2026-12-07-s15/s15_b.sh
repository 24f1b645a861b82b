# Call B (after the six wheel chunks): the C++ service's whole-model checks, the hidden-GPU one-line checks included.
date +%T
export PYTHONPATH=/root/site:/root/site-tf:$PWD
UNIATTN_EXPORT_LIB_DIR=$PWD/build/gpu90/lib CHECKS="${CHECKS:-cpp_service}" timeout ${T:-300} bash tests/gpu/run_all.sh 2>&1 | tail -8
grep -iE "fail|hidden" $OUT/gpu_checks/cpp_service/log.txt | head -20
date +%T
