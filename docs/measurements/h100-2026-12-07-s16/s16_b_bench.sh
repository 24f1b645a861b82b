# Call B: the 1B benchmark with this session's graph (SplitRotary: one kernel for the q/k/v Split and
# both rotaries of every layer with a K cache) and kernels (vectorized score reads in the P emission):
# UniAttn/base on the new path, onnxruntime-genai, transformers StaticCache + compile, same run.
bash docs/measurements/h200-2026-12-07/s14_h.sh
