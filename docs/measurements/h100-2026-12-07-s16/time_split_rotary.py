"""Device time per call of SplitRotary (our kernel), decode shapes of Llama-3.2-1B (Hq 32, Hkv 8,
D 64), fp16, tokens 1 and 32 (what it replaces in ONNX Runtime's graph, a Split and two
RotaryEmbedding kernels, is in the bench's kernel lists). Usage: python3 time_split_rotary.py LIB"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests/plugins"))
import gpu_kernels as g  # noqa: E402

k = g.Kernels(sys.argv[1])
Hq, Hkv, D, M, dt = 32, 8, 64, 8192, torch.float16
for tokens in (1, 32):
    qkv, cos, sin, pos = (t.cuda() for t in g.split_rotary_values(tokens, Hq, Hkv, D, M, seed=1))
    qkv, cos, sin = qkv.to(dt), cos.to(dt), sin.to(dt)
    outs = tuple(torch.empty(tokens, h * D, dtype=dt, device="cuda") for h in (Hq, Hkv, Hkv))
    ms, how = g._bench(lambda: k.split_rotary(qkv, cos, sin, pos, outs, Hq, Hkv))
    print(f"split_rotary tokens {tokens}: {ms * 1e3:.2f} us per call ({how})")
