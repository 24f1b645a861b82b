"""One static decode step of each split-KV kernel kind, a few calls each, for a profiler
(ncu) to attach to: bf16, Hq 32 / Hkv 8 / D 64, capacity 8192, every row at slot n - 1.
Usage: python3 probe_static.py LIB BATCH N [calls]"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests/plugins"))
import gpu_kernels as g  # noqa: E402

lib, B, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
calls = int(sys.argv[4]) if len(sys.argv) > 4 else 3
k = g.Kernels(lib)
dt, dev, C, Hq, Hkv, D = torch.bfloat16, "cuda", 8192, 32, 8, 64
gen = torch.Generator(device=dev).manual_seed(0)
r = lambda *s: torch.randn(*s, generator=gen, device=dev).to(dt)  # noqa: E731
q, kn, vn = r(B, 1, Hq * D), r(B, 1, Hkv * D), r(B, 1, Hkv * D)
ck, cv = r(B, Hkv, C, D), r(B, Hkv, C, D)
pos = torch.full((B, 1), n - 1, dtype=torch.int64, device=dev)
out = torch.empty(B, 1, Hq * D, dtype=dt, device=dev)
probs = torch.empty(B, Hq, 1, C, dtype=dt, device=dev)
lse = torch.empty(B, Hq, 1, device=dev)
desc = g.make_desc(B, 1, 0, Hq, Hkv, D, dt, D**-0.5, True, 0, capacity=C)
for emit in (False, True):
    ws = k.workspace("producer", desc, emit)
    for _ in range(calls):
        k.call("producer", desc, g.producer_io(query=q, key=kn, value=vn, past_key=ck, past_value=cv, output=out,
               present_key=ck, present_value=cv, shared_probs=probs if emit else None,
               shared_lse=lse if emit else None, position_ids=pos), ws)
ws = k.workspace("consumer", desc, True)
for _ in range(calls):
    k.call("consumer", desc, g.consumer_io(value=vn, past_value=cv, shared_probs=probs, shared_lse=lse,
           producer_query=q, producer_key=ck, output=out, present_value=cv, position_ids=pos), ws)
torch.cuda.synchronize()
print("probe done", B, n)
