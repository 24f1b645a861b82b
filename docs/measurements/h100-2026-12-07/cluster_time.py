"""Static decode step timing of three kernel builds in one process (same GPU, same run)."""
import json, os, sys
sys.path.insert(0, "tests/plugins")
import gpu_kernels as g
import torch
libs = {"default": ".gpu/klibs/libuniattn_kernels_default.so",
        "clusters": ".gpu/klibs/libuniattn_kernels_clusters.so",
        "clusters-forced": ".gpu/klibs/libuniattn_kernels_clusters-forced.so"}
shapes = ((1, 2048), (1, 8192), (8, 2048), (32, 8192))
report = {"device": torch.cuda.get_device_name(), "rounds": []}
for rnd in range(2):  # twice, interleaved: drift shows as a difference between rounds
    for name, path in libs.items():
        k = g.Kernels(path)
        for b, n in shapes:
            try:
                r = g.bench_static_decode(k, b, n)
            except Exception as exc:
                r = {"batch": b, "length": n, "error": repr(exc)}
            r["lib"], r["round"] = name, rnd
            report["rounds"].append(r)
            ms = r.get("ms", {})
            print(rnd, f"{name:16s} B={b:<3d} n={n:<5d}", " ".join(f"{key}={ms.get(key) or 0:.4f}" for key in
                  ("ours_producer", "ours_base", "ours_consumer", "ours_consumer_recompute", "sdpa", "torch_PV")),
                  r.get("error", ""), flush=True)
        out = os.environ["OUT"]
        open(f"{out}/cluster_time.json", "w").write(json.dumps(report, indent=1))
