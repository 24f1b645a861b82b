"""Per-node CPU cost of SplitRotary + UniAttnProducer (+ consumer) as in SmolLM2-135M decode:
LAYERS independent layers in one graph, caches (1,3,C,64) bound in place. Prints the wall
time per run (median) and ORT-profiled kernel time per op type."""
import collections, json, os, sys, time
import numpy as np, onnx, onnxruntime as ort
from onnx import helper as h, TensorProto as TP
from uniattn_export import native

LAYERS, C = 30, 4096
ctx = int(sys.argv[1]); rounds = 800
nodes, inputs, outputs = [], [], []
inputs += [h.make_tensor_value_info("qkv", TP.FLOAT, [1, 1, 960]),
           h.make_tensor_value_info("cos", TP.FLOAT, [C, 32]), h.make_tensor_value_info("sin", TP.FLOAT, [C, 32]),
           h.make_tensor_value_info("pos", TP.INT64, [1, 1])]
for l in range(LAYERS):
    q, k, v = f"q{l}", f"k{l}", f"v{l}"
    nodes.append(h.make_node("SplitRotary", ["qkv", "cos", "sin", "pos"], [q, k, v], domain="uniattn", num_heads=9, kv_num_heads=3))
    inputs += [h.make_tensor_value_info(f"pk{l}", TP.FLOAT, [1, 3, C, 64]), h.make_tensor_value_info(f"pv{l}", TP.FLOAT, [1, 3, C, 64])]
    nodes.append(h.make_node("UniAttnProducer", [q, k, v, f"pk{l}", f"pv{l}", "pos"], [f"o{l}", f"ck{l}", f"cv{l}", "", ""],
                             domain="uniattn", num_heads=9, kv_num_heads=3, scale=0.125, sliding_window=0,
                             probs_max_query_len=16, plugin_version="2", plugin_namespace="uniattn"))
    outputs += [h.make_tensor_value_info(f"o{l}", TP.FLOAT, [1, 1, 576]), h.make_tensor_value_info(f"ck{l}", TP.FLOAT, [1, 3, C, 64]),
                h.make_tensor_value_info(f"cv{l}", TP.FLOAT, [1, 3, C, 64])]
g = h.make_graph(nodes, "micro", inputs, outputs)
m = h.make_model(g, opset_imports=[h.make_opsetid("", 23), h.make_opsetid("uniattn", 2)], ir_version=10)

def make(lib):
    o = ort.SessionOptions(); o.intra_op_num_threads = int(os.environ.get("THREADS", 2))
    o.register_custom_ops_library(lib)
    s = ort.InferenceSession(m.SerializeToString(), o, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"qkv": rng.standard_normal((1, 1, 960)).astype(np.float32),
             "cos": np.cos(rng.standard_normal((C, 32))).astype(np.float32), "sin": np.sin(rng.standard_normal((C, 32))).astype(np.float32),
             "pos": np.array([[ctx - 1]], np.int64)}
    for l in range(LAYERS):
        feeds[f"pk{l}"] = rng.standard_normal((1, 3, C, 64)).astype(np.float32)
        feeds[f"pv{l}"] = rng.standard_normal((1, 3, C, 64)).astype(np.float32)
    b, keep = s.io_binding(), {}
    for n, v in feeds.items():
        keep[n] = ort.OrtValue.ortvalue_from_numpy(v); b.bind_ortvalue_input(n, keep[n])
    for l in range(LAYERS):
        b.bind_output(f"o{l}"); b.bind_ortvalue_output(f"ck{l}", keep[f"pk{l}"]); b.bind_ortvalue_output(f"cv{l}", keep[f"pv{l}"])
    return s, b, keep
libs = sys.argv[2:]
runs = [make(l + "/libuniattn_ort.so") for l in libs]
times = [[] for _ in libs]
for r in range(rounds // 8):
    for i, (s, b, _) in enumerate(runs):
        for k in range(10):
            a = time.perf_counter(); s.run_with_iobinding(b)
            if k >= 2 and r: times[i].append(time.perf_counter() - a)
outs = [[np.array(x) for x in s.run_with_iobinding(b) or b.copy_outputs_to_cpu()[:3]] for s, b, _ in runs]
same = all(np.array_equal(a, b_) for a, b_ in zip(outs[0], outs[-1]))
print(f"ctx {ctx}: " + ", ".join(f"{l.split('/')[-2]}/{l.split('/')[-1]} {np.median(t)*1e6/LAYERS:.2f} us/layer" for l, t in zip(libs, times)) + f"; outputs equal: {same}")
