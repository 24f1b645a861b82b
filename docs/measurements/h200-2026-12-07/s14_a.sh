# Call A: transformers 5.25 into /root/site-tf; racecheck + synccheck on the forced-cluster kernels.
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date +%T
bash .devstage-tf/unpack.sh 2>&1 | tail -3
PYTHONPATH=/root/site-tf python3 -c "import transformers, huggingface_hub, tokenizers, torch; print('transformers', transformers.__version__, 'hub', huggingface_hub.__version__, 'torch', torch.__version__); from transformers import LlamaForCausalLM; print('ok')" 2>&1 | tail -4
export PYTHONPATH=$PWD
L=build/gpu90-c2/lib/libuniattn_kernels.so
for tool in racecheck synccheck; do
  echo "=== $tool forced"; date +%T
  timeout $([ $tool = racecheck ] && echo 200 || echo 100) compute-sanitizer --tool $tool --error-exitcode 9 python3 tests/plugins/gpu_kernels.py --lib $L --cases small --random 0 --skip-bench --no-variants --out /tmp/s_$tool > $OUT/$tool.txt 2>&1; echo "$tool exit $?"
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY|passed|failed|Error" $OUT/$tool.txt | tail -6
done
date +%T
