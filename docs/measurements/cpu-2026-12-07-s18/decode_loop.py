"""Run N decode steps of one model (for perf): python loop.py DIR genai|ours CTX N"""
import sys, numpy as np
sys.path.insert(0, __import__("os").path.join(__import__("os").path.dirname(__file__), "..", "cpu-2026-12-07-s17"))
import cpu_decode
folder, kind, ctx, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
run, _ = cpu_decode.stepper(folder, ctx, kind == "genai", False, np.random.default_rng(0))
for _ in range(n): run()
