"""Dependent launches (device.cuh) measured on their own: Llama-3.2-1B's projections at one row,
fp16, through ua_linear_cuda of two builds of the kernel library in one process (one built with
-DUA_DEPENDENT_LAUNCH=1, and the default, where they are off), each in a CUDA graph replayed 20
times (median):
* isolated: a one-element torch kernel between the calls, so no call overlaps the one before;
* chained: the calls back to back (each may start while the one before runs, and prefetch);
* mlp: 16 layers of gate_up -> GatedSilu -> down, distinct weights per layer (1.6 GB, past L2).
Each projection cycles through enough weight copies to exceed L2, as a decode step does.
Every output is checked against float64 once (gpu_kernels.linear_error).
Usage: python chain_bench.py DEPENDENT_ON.so DEFAULT.so OUT.json"""
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "plugins"))
import gpu_kernels as gk  # noqa: E402

SHAPES = {"qkv (producer)": (2048, 3072), "v+Wc (consumer)": (2048, 2560), "o": (2048, 2048),
          "gate_up": (2048, 16384), "down": (8192, 2048), "lm_head": (2048, 128256)}


def timed(body, reps=20) -> float:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        body()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1000)
    return statistics.median(times)


def main():
    libs = {"dependent": gk.Kernels(sys.argv[1]), "plain": gk.Kernels(sys.argv[2])}
    out = {"device": torch.cuda.get_device_name(), "projections": [], "mlp": {}}
    torch.manual_seed(0)
    dt = torch.float16
    spacer = torch.zeros(1, device="cuda")
    for name, (k, n) in SHAPES.items():
        copies = max(2, min(16, int(1.5e9 // (k * n * 2))))
        weights = [torch.randn(n, k, device="cuda", dtype=dt) / k**0.5 for _ in range(copies)]
        x = torch.randn(1, k, device="cuda", dtype=dt)
        y = torch.empty(1, n, device="cuda", dtype=dt)
        row = {"projection": name, "K": k, "N": n, "copies": copies}
        for lib_name, lib in libs.items():
            status, message = lib.linear(x, weights[0], y)
            assert status == 0, message
            row[f"{lib_name} error/tol"] = gk.linear_error(x, weights[0], y) / gk.LINEAR_TOLERANCE[dt]

            def chained():
                for w in weights:
                    lib.linear(x, w, y)

            def isolated():
                for w in weights:
                    spacer.add_(1)
                    lib.linear(x, w, y)

            row[f"{lib_name} chained us"] = timed(chained) / copies
            row[f"{lib_name} isolated us"] = timed(isolated) / copies
        print(row, flush=True)
        out["projections"].append(row)
        del weights
    layers = 16
    w1 = [torch.randn(16384, 2048, device="cuda", dtype=dt) / 45 for _ in range(layers)]
    w2 = [torch.randn(2048, 8192, device="cuda", dtype=dt) / 90 for _ in range(layers)]
    x = torch.randn(1, 2048, device="cuda", dtype=dt)
    h, a, y = (torch.empty(1, n, device="cuda", dtype=dt) for n in (16384, 8192, 2048))
    for lib_name, lib in libs.items():
        def mlp():
            for l in range(layers):
                lib.linear(x, w1[l], h)
                lib.gated_silu(h, a)
                lib.linear(a, w2[l], y)
        out["mlp"][f"{lib_name} us per layer"] = timed(mlp) / layers
        out["mlp"][f"{lib_name} down error/tol"] = gk.linear_error(a, w2[-1], y) / gk.LINEAR_TOLERANCE[dt]
    print(out["mlp"], flush=True)
    Path(sys.argv[3]).write_text(json.dumps(out, indent=1))


main()
