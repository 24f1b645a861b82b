"""Splits a `perf report` of a decode loop (loop.py under `perf record`) into ONNX Runtime's
SGEMM kernel, its pool's spin-wait, the rest of its work, and our library's kernels.
The onnxruntime 1.31.1 wheel has no symbols: the two address ranges were read off the
hottest samples (the SGEMM kernel, and the spin loop that dominates an idle pool's samples).

Usage: perf report -i perf.data --no-children --sort dso,sym -F sample,dso,sym | python3 perf_split.py NAME"""
import sys

GEMM = range(0x1472500, 0x1472700)
SPIN = range(0x10E5200, 0x10E5300)
gemm = spin = ort = ours = total = 0
for line in sys.stdin:
    parts = line.split()
    if len(parts) < 4 or not parts[0].isdigit():
        continue
    samples, dso, symbol = int(parts[0]), parts[1], parts[3]
    total += samples
    if "onnxruntime" in dso:
        ort += samples
        if symbol.startswith("0x"):
            address = int(symbol, 16)
            gemm += samples * (address in GEMM)
            spin += samples * (address in SPIN)
    elif "uniattn" in dso:
        ours += samples
print(f"{sys.argv[1]:12s} samples {total:6d}; ORT + library {ort + ours:6d}: SGEMM {gemm:6d}, spin {spin:5d}, "
      f"other work {ort + ours - gemm - spin:5d} (our library {ours})")
