# Call: chunk-06 (installs onnxruntime-gpu, genai, nlohmann-json); whole-model GPU checks on transformers 5.25.
date +%T
bash .devstage/chunk-06/unpack.sh | tail -1
export PYTHONPATH=/root/site:/root/site-tf:$PWD
python3 -c "import transformers, onnxruntime; print(transformers.__version__, onnxruntime.__version__, onnxruntime.get_available_providers())"
UNIATTN_EXPORT_LIB_DIR=$PWD/build/gpu90/lib CHECKS="${CHECKS:-cpp_service ort_cuda_graph genai}" timeout ${T:-540} bash tests/gpu/run_all.sh 2>&1 | tail -12
date +%T
