# Call C: the 1B benchmark on the H100: UniAttn/base on the new path, onnxruntime-genai, transformers
# StaticCache + torch.compile, same run: the fourteenth session's call (the same lines ran here).
bash docs/measurements/h200-2026-12-07/s14_h.sh
