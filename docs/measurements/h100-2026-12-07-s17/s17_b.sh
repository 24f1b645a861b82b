# Call B (after the six wheel chunks): transformers 5.25 into /root/site-tf, the projections'
# weight-layout probe (matmul_layouts.py), then the whole-model checks of the CUDA-graph path and
# onnxruntime-genai on the ort/genai targets' graph (SplitRotary, GatedSilu, skip norms).
bash .devstage-tf/unpack.sh > $OUT/unpack_tf.txt 2>&1
export PYTHONPATH=/root/site:/root/site-tf:$PWD
here=docs/measurements/h100-2026-12-07-s17
timeout 200 python3 $here/matmul_layouts.py $OUT/matmul_layouts.json > $OUT/matmul_layouts.txt 2>&1
echo "matmul_layouts exit $?" >> $OUT/matmul_layouts.txt
UNIATTN_EXPORT_LIB_DIR=$PWD/build/gpu90/lib CHECKS="ort_cuda_graph genai" timeout 330 bash tests/gpu/run_all.sh > $OUT/run_all.txt 2>&1
echo "run_all exit $?" >> $OUT/run_all.txt
cd $OUT && tar czf gpu_checks.tgz gpu_checks && rm -rf gpu_checks
cat $OUT/matmul_layouts.txt | cut -c1-400; tail -5 $OUT/run_all.txt
