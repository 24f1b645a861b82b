# Call D: the whole-model GPU checks of the CUDA-graph path and onnxruntime-genai (before their
# exports asked for the ort/genai targets' graph: see the README of this folder).
export PYTHONPATH=/root/site:/root/site-tf:$PWD
UNIATTN_EXPORT_LIB_DIR=$PWD/build/gpu90/lib CHECKS="ort_cuda_graph genai" timeout 330 bash tests/gpu/run_all.sh > $OUT/run_all.txt 2>&1
