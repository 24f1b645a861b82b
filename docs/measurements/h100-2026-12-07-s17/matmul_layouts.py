"""Does the weight layout change what cuBLAS does for the decode step's projections in ONNX Runtime?

The ort/genai targets store every projection as MatMul(X, W) with W (K, N) (cuBLAS "NN" from
ORT's row-major view); at batch 1 cuBLAS runs them at 1.4-2.9 TB/s depending on the shape (the
sixteenth session's kernel list). This times, per shape of Llama-3.2-1B and per M (rows of X),
16 independent products in one ONNX graph replayed as an ORT CUDA graph, in three forms:

  nn     MatMul(X, W)                         W (K, N)   what we export today
  nt     com.microsoft FusedMatMul(X, Wt, transB=1)      Wt (N, K)  (nn.Linear's layout)
  gemm   Gemm(X, Wt, transB=1)                Wt (N, K)

and the same products in torch (x @ W and F.linear(x, Wt), a CUDA graph of 16) for orientation.
Also the mask-length reduction the static graph runs once per step (ReduceSum of an int32 cast
of the (B, C) mask) against a float32 ReduceSum. Weights are graph inputs bound once to device
memory (no 2 GB protobuf limit, no prepacking on CUDA anyway). Every form's result is checked
against the first form's (same inputs) before it is timed.

Usage (GPU machine, onnxruntime-gpu on PYTHONPATH): python3 matmul_layouts.py OUT_JSON
"""
import json
import statistics
import sys
import time

import numpy as np
import torch

try:  # without onnxruntime-gpu staged, only the torch rows are measured
    import onnxruntime as ort
    from onnx import TensorProto, helper
    HAVE_ORT = "CUDAExecutionProvider" in ort.get_available_providers()
except ImportError:
    HAVE_ORT = False

COPIES = 16
SHAPES = {  # name: (K, N)
    "qkv": (2048, 3072),
    "o": (2048, 2048),
    "gate_up": (2048, 16384),
    "down": (8192, 2048),
    "lm_head": (2048, 128256),
}


def graph(form: str, m: int, k: int, n: int, copies: int) -> bytes:
    fp16 = TensorProto.FLOAT16
    inputs = [helper.make_tensor_value_info("x", fp16, [m, k])]
    nodes, outputs = [], []
    for i in range(copies):
        w_shape = [k, n] if form == "nn" else [n, k]
        inputs.append(helper.make_tensor_value_info(f"w{i}", fp16, w_shape))
        outputs.append(helper.make_tensor_value_info(f"y{i}", fp16, [m, n]))
        if form == "nn":
            nodes.append(helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"]))
        elif form == "nt":
            nodes.append(helper.make_node("FusedMatMul", ["x", f"w{i}"], [f"y{i}"], domain="com.microsoft",
                                          transB=1, alpha=1.0))
        else:
            nodes.append(helper.make_node("Gemm", ["x", f"w{i}"], [f"y{i}"], transB=1))
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    return model.SerializeToString()


def replay_ms(run, sync, repeats=60, warmup=5):
    for _ in range(warmup):
        run()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def kernels(run, sync, runs=5) -> dict:
    """{kernel name: device us per run} over `runs` runs (CUPTI, as the bench's kernel lists)."""
    from torch.profiler import ProfilerActivity, profile

    sync()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            run()
        sync()
    found = {}
    for event in prof.key_averages():
        us = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0)
        if us:
            found[event.key[:120]] = round(us / runs, 2)
    return found


def ort_session(model: bytes, feeds: dict, out_shapes: dict):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model, so, providers=[("CUDAExecutionProvider", {"enable_cuda_graph": "1"})])
    binding = sess.io_binding()
    keep = {}
    for name, value in feeds.items():
        keep[name] = ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0)
        binding.bind_ortvalue_input(name, keep[name])
    for name, shape in out_shapes.items():
        keep[name] = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float16, "cuda", 0)
        binding.bind_ortvalue_output(name, keep[name])
    ro = ort.RunOptions()

    def run():
        sess.run_with_iobinding(binding, ro)

    def sync():
        binding.synchronize_outputs()

    return run, sync, keep


def matmuls(results: list):
    rng = np.random.default_rng(0)
    for name, (k, n) in SHAPES.items():
        copies = 4 if name == "lm_head" else COPIES
        w_kn = [(rng.standard_normal((k, n), dtype=np.float32) * k ** -0.5).astype(np.float16) for _ in range(copies)]
        w_nk = [np.ascontiguousarray(w.T) for w in w_kn]
        for m in (1, 32, 8192) if name != "lm_head" else (1, 32):
            x = rng.standard_normal((m, k), dtype=np.float32).astype(np.float16)
            row = {"shape": name, "m": m, "k": k, "n": n, "copies": copies}
            ref = None
            for form in ("nn", "nt", "gemm") if HAVE_ORT else ():
                feeds = {"x": x, **{f"w{i}": (w_kn if form == "nn" else w_nk)[i] for i in range(copies)}}
                try:
                    run, sync, keep = ort_session(graph(form, m, k, n, copies), feeds,
                                                  {f"y{i}": [m, n] for i in range(copies)})
                    run()
                    sync()
                    y0 = keep["y0"].numpy().astype(np.float32)
                    if ref is None:
                        ref = y0
                    row[f"{form}_max_diff_vs_nn"] = float(np.abs(y0 - ref).max())
                    row[f"ort_{form}_us"] = replay_ms(run, sync) * 1e3 / copies
                    row[f"ort_{form}_kernels"] = kernels(run, sync)
                    del run, sync, keep
                except Exception as error:  # noqa: BLE001  (a form ORT cannot run is a result)
                    row[f"ort_{form}_error"] = str(error).splitlines()[0][:200]
            # torch (its own cuBLAS), a CUDA graph of `copies` products, for orientation
            xt = torch.from_numpy(x).cuda()
            wk = [torch.from_numpy(w).cuda() for w in w_kn]
            wn = [torch.from_numpy(w).cuda() for w in w_nk]
            for form, fn in (("nn", lambda: [xt @ w for w in wk]),
                             ("nt", lambda: [torch.nn.functional.linear(xt, w) for w in wn])):
                fn()
                torch.cuda.synchronize()
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    fn()
                row[f"torch_{form}_us"] = replay_ms(g.replay, torch.cuda.synchronize) * 1e3 / copies
                row[f"torch_{form}_kernels"] = kernels(g.replay, torch.cuda.synchronize)
                del g
            weight_bytes = k * n * 2
            for key in [key for key in row if key.endswith("_us")]:
                row[key.replace("_us", "_tbps")] = weight_bytes / (row[key] * 1e-6) / 1e12
            print(json.dumps(row), flush=True)
            results.append(row)
            del wk, wn, xt
            torch.cuda.empty_cache()


def reductions(results: list):
    for b in (1, 32):
        for c in (2048, 8192):
            mask = np.ones((b, c), dtype=np.int64)
            mask[:, c // 2 + 3:] = 0
            row = {"reduction": "mask lengths", "b": b, "c": c}
            for form in ("int32", "float32"):
                to = TensorProto.INT32 if form == "int32" else TensorProto.FLOAT
                nodes, outputs = [], []
                for i in range(COPIES):
                    nodes += [helper.make_node("Cast", ["mask"], [f"c{i}"], to=to),
                              helper.make_node("ReduceSum", [f"c{i}", "axes"], [f"s{i}"], keepdims=0),
                              helper.make_node("Cast", [f"s{i}"], [f"y{i}"], to=TensorProto.INT64)]
                    outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.INT64, [b]))
                model = helper.make_model(helper.make_graph(
                    nodes, "r", [helper.make_tensor_value_info("mask", TensorProto.INT64, [b, c])], outputs,
                    [helper.make_tensor("axes", TensorProto.INT64, [1], [1])]),
                    opset_imports=[helper.make_opsetid("", 21)])
                model.ir_version = 10
                so = ort.SessionOptions()
                so.log_severity_level = 3
                sess = ort.InferenceSession(model.SerializeToString(), so,
                                            providers=[("CUDAExecutionProvider", {"enable_cuda_graph": "1"})])
                binding = sess.io_binding()
                keep = {"mask": ort.OrtValue.ortvalue_from_numpy(mask, "cuda", 0)}
                binding.bind_ortvalue_input("mask", keep["mask"])
                for i in range(COPIES):
                    keep[f"y{i}"] = ort.OrtValue.ortvalue_from_shape_and_type([b], np.int64, "cuda", 0)
                    binding.bind_ortvalue_output(f"y{i}", keep[f"y{i}"])
                ro = ort.RunOptions()
                sess.run_with_iobinding(binding, ro)
                binding.synchronize_outputs()
                got = keep["y0"].numpy()
                row[f"{form}_correct"] = bool((got == mask.sum(1)).all())
                row[f"{form}_us_per_chain"] = replay_ms(lambda: sess.run_with_iobinding(binding, ro),
                                                        binding.synchronize_outputs) * 1e3 / COPIES
            print(json.dumps(row), flush=True)
            results.append(row)


if __name__ == "__main__":
    out = []
    ort_version = ort.__version__ if HAVE_ORT else None
    print(torch.cuda.get_device_name(0), "onnxruntime", ort_version, "torch", torch.__version__, flush=True)
    if HAVE_ORT:
        reductions(out)
    matmuls(out)
    with open(sys.argv[1], "w") as f:
        json.dump({"device": torch.cuda.get_device_name(0), "onnxruntime": ort_version,
                   "torch": torch.__version__, "rows": out}, f, indent=1)
