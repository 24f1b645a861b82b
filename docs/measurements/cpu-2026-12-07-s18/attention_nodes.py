"""Per-layer CPU cost of SplitRotary + UniAttnProducer as in SmolLM2-135M decode: LAYERS
independent layers in one graph, caches (1, 3, C, 64) bound in place, the row at position CTX - 1,
2 intra-op threads (THREADS to change).

  attention_nodes.py CTX [--profile]     wall time per layer (median of 400 runs); --profile adds
                                         ONNX Runtime's per-node kernel times
  attention_nodes.py CTX --ab DIR_A DIR_B  one session per library build (DIR/libuniattn_ort.so),
                                         blocks of 10 runs in turn (the first 2 of a block untimed)"""
import collections
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto as TP
from onnx import helper as h

from uniattn_export import native

LAYERS, C = 30, 4096


def graph() -> bytes:
    value = lambda name, shape, t=TP.FLOAT: h.make_tensor_value_info(name, t, shape)  # noqa: E731
    nodes, outputs = [], []
    inputs = [value("qkv", [1, 1, 960]), value("cos", [C, 32]), value("sin", [C, 32]), value("pos", [1, 1], TP.INT64)]
    for l in range(LAYERS):
        q, k, v = f"q{l}", f"k{l}", f"v{l}"
        nodes.append(h.make_node("SplitRotary", ["qkv", "cos", "sin", "pos"], [q, k, v], domain="uniattn",
                                 num_heads=9, kv_num_heads=3))  # fmt: skip
        nodes.append(h.make_node("UniAttnProducer", [q, k, v, f"pk{l}", f"pv{l}", "pos"], [f"o{l}", f"ck{l}", f"cv{l}", "", ""],
                                 domain="uniattn", num_heads=9, kv_num_heads=3, scale=0.125, sliding_window=0,
                                 probs_max_query_len=16, plugin_version="2", plugin_namespace="uniattn"))  # fmt: skip
        inputs += [value(f"pk{l}", [1, 3, C, 64]), value(f"pv{l}", [1, 3, C, 64])]
        outputs += [value(f"o{l}", [1, 1, 576]), value(f"ck{l}", [1, 3, C, 64]), value(f"cv{l}", [1, 3, C, 64])]
    opsets = [h.make_opsetid("", 23), h.make_opsetid("uniattn", 2)]
    return h.make_model(h.make_graph(nodes, "layers", inputs, outputs), opset_imports=opsets, ir_version=10).SerializeToString()


def stepper(model: bytes, ctx: int, library: str, profile: bool):
    """(run one step, session), every input and cache bound once."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("THREADS", 2))
    options.enable_profiling = profile
    options.register_custom_ops_library(library)
    s = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    angles = rng.standard_normal((C, 32))
    feeds = {"qkv": rng.standard_normal((1, 1, 960)), "cos": np.cos(angles), "sin": np.sin(angles)}
    for l in range(LAYERS):
        feeds[f"pk{l}"], feeds[f"pv{l}"] = rng.standard_normal((2, 1, 3, C, 64))
    binding, keep = s.io_binding(), {}
    for name, data in {**{n: a.astype(np.float32) for n, a in feeds.items()}, "pos": np.array([[ctx - 1]], np.int64)}.items():
        keep[name] = ort.OrtValue.ortvalue_from_numpy(data)
        binding.bind_ortvalue_input(name, keep[name])
    for l in range(LAYERS):
        binding.bind_output(f"o{l}")
        binding.bind_ortvalue_output(f"ck{l}", keep[f"pk{l}"])
        binding.bind_ortvalue_output(f"cv{l}", keep[f"pv{l}"])
    return (lambda: s.run_with_iobinding(binding)), s


def main(argv: list[str]) -> None:
    ctx, model = int(argv[0]), graph()
    if "--ab" in argv:
        dirs = argv[argv.index("--ab") + 1:]
        runs = [stepper(model, ctx, f"{d}/libuniattn_ort.so", False)[0] for d in dirs]
        times = [[] for _ in dirs]
        for block in range(101):
            for run, t in zip(runs, times):
                for i in range(10):
                    start = time.perf_counter()
                    run()
                    if i >= 2 and block:
                        t.append(time.perf_counter() - start)
        print(f"ctx {ctx}: " + ", ".join(f"{d} {np.median(t) * 1e6 / LAYERS:.2f} us/layer" for d, t in zip(dirs, times)))
        return
    profile = "--profile" in argv
    run, s = stepper(model, ctx, native.ort_custom_op_library(), profile)
    for _ in range(50):
        run()
    t = []
    for _ in range(400):
        start = time.perf_counter()
        run()
        t.append(time.perf_counter() - start)
    print(f"ctx {ctx}{' (profiled)' if profile else ''}: {np.median(t) * 1e6 / LAYERS:.2f} us per layer")
    if profile:
        by_op = collections.defaultdict(list)
        for e in json.load(open(path := s.end_profiling())):
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                by_op[e["args"]["op_name"]].append(e["dur"])
        os.remove(path)
        print("  " + ", ".join(f"{op} median {np.median(us):.1f} us" for op, us in by_op.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
