"""Per-op CPU timings of the attention ops in onnxruntime: our custom-op library (op versions 1
and 2; producers as ordinary layers, and a version-2 consumer), the model-local function bodies
(plain onnxruntime, version 1), and ORT's own com.microsoft GroupQueryAttention, on one layer of SmolLM2-135M's geometry (9 query heads,
3 KV heads, D = 64, float32, batch 1), decode (one token after a prompt) and prefill (the
prompt). Single-node models, inputs and outputs pre-bound (IOBinding; version 2's caches bound
to one buffer as a static-cache runtime binds them), median of repeated runs.

    UNIATTN_EXPORT_LIB_DIR=build/c1/lib python -m uniattn_export.bench.attention_ops --threads 2

prints one row per (phase, prompt, implementation) with ms per op and x 30 layers. A
measurement, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from .. import native
from ..export.functions import function_protos

HEADS, KV_HEADS, DIM, LAYERS = 9, 3, 64, 30
SCALE = DIM**-0.5
FLOAT, INT64, INT32 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32


def model(op_type: str, domain: str, inputs: dict, outputs: list[str], opsets: dict, functions=None,
          **attributes) -> bytes:  # fmt: skip
    node = helper.make_node(op_type, list(inputs), outputs, domain=domain, name="attn", **attributes)
    types = {np.dtype("float32"): FLOAT, np.dtype("int64"): INT64, np.dtype("int32"): INT32}
    graph = helper.make_graph(
        [node], "attention",
        [helper.make_tensor_value_info(name, types[array.dtype], array.shape) for name, array in inputs.items()],
        [helper.make_tensor_value_info(name, FLOAT, None) for name in outputs if name],
    )  # fmt: skip
    imports = [helper.make_opsetid(domain, version) for domain, version in opsets.items()]
    return helper.make_model(graph, opset_imports=imports, ir_version=10, functions=functions).SerializeToString()


def time_session(model_bytes: bytes, inputs: dict, threads: int, library: str | None, aliased=(), repeats=50):
    """Median ms of session.run over pre-bound inputs, as (wall clock, CPU time of the calling
    thread); `aliased` (input, output) pairs share one buffer. With one thread ORT runs the op on
    the calling thread, so its CPU time is the op's work, little disturbed by other load on a
    shared machine (the wall clock is)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if library:
        options.register_custom_ops_library(library)
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    binding = session.io_binding()
    values = {name: ort.OrtValue.ortvalue_from_numpy(array) for name, array in inputs.items()}
    for name, value in values.items():
        binding.bind_ortvalue_input(name, value)
    bound = dict(aliased)
    for output in session.get_outputs():
        if output.name in bound.values():
            source = next(name for name, target in bound.items() if target == output.name)
            binding.bind_ortvalue_output(output.name, values[source])
        else:
            binding.bind_output(output.name)
    for _ in range(5):
        session.run_with_iobinding(binding)
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.thread_time()
        session.run_with_iobinding(binding)
        wall.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.thread_time() - start_cpu) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def cases(prompt: int, rng):
    """(phase, name, model, inputs, uses library, aliased pairs) for one prompt length."""
    def rand(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    rows = []
    for phase, length, past in (("decode", 1, prompt), ("prefill", prompt, 0)):
        q, k, v = rand(1, length, HEADS * DIM), rand(1, length, KV_HEADS * DIM), rand(1, length, KV_HEADS * DIM)
        attrs = dict(num_heads=HEADS, kv_num_heads=KV_HEADS, scale=SCALE)
        v1_inputs = dict(query=q, key=k, value=v, past_key=rand(1, KV_HEADS, past, DIM),
                         past_value=rand(1, KV_HEADS, past, DIM),
                         attention_mask=np.ones((1, past + length), np.int64))  # fmt: skip
        # Outputs 3-4 absent, as the exporter writes an ordinary layer (the function bodies need 5 slots).
        outputs = ["output", "present_key", "present_value", "", ""]
        v1 = model("UniAttnProducer", "uniattn", v1_inputs, outputs, {"": 18, "uniattn": 1}, **attrs)
        bodies = model("UniAttnProducer", "uniattn", v1_inputs, outputs, {"": 18, "uniattn": 1}, function_protos(),
                       **attrs)  # fmt: skip
        capacity = prompt + 64
        v2_inputs = dict(query=q, key=k, value=v, past_key=rand(1, KV_HEADS, capacity, DIM),
                         past_value=rand(1, KV_HEADS, capacity, DIM),
                         position_ids=np.arange(past, past + length, dtype=np.int64)[None])  # fmt: skip
        v2 = model("UniAttnProducer", "uniattn", v2_inputs, outputs, {"": 18, "uniattn": 2}, plugin_version="2",
                   **attrs)  # fmt: skip
        # GQA as onnxruntime-genai runs it: past and present share one (B, Hkv, C, D) buffer.
        gqa_inputs = dict(query=q, key=k, value=v, past_key=rand(1, KV_HEADS, capacity, DIM),
                          past_value=rand(1, KV_HEADS, capacity, DIM),
                          seqlens_k=np.array([past + length - 1], np.int32),
                          total_sequence_length=np.array(past + length, np.int32))  # fmt: skip
        gqa = model("GroupQueryAttention", "com.microsoft", gqa_inputs, outputs[:3], {"": 18, "com.microsoft": 1},
                    num_heads=HEADS, kv_num_heads=KV_HEADS, scale=SCALE)  # fmt: skip
        # A consumer layer of version 2: decode reuses the producer's P (no K reads), prefill
        # recomputes exp(q.k - lse).
        probs_len = capacity if length == 1 else 0
        probs = rng.random((1, HEADS, length, probs_len), dtype=np.float32) / (past + length)
        consumer_inputs = dict(value=v, past_value=rand(1, KV_HEADS, capacity, DIM),
                               position_ids=v2_inputs["position_ids"], shared_probs=probs,
                               shared_lse=np.full((1, HEADS, length), 5.0, np.float32), producer_query=q,
                               producer_key=v2_inputs["past_key"])  # fmt: skip
        consumer = model("UniAttnConsumer", "uniattn", consumer_inputs, ["output", "present_value"],
                         {"": 18, "uniattn": 2}, plugin_version="2", **attrs)  # fmt: skip
        rows += [
            (phase, "library v1 (dynamic caches)", v1, v1_inputs, True, ()),
            (phase, "library v2 (static, in place)", v2, v2_inputs, True,
             (("past_key", "present_key"), ("past_value", "present_value"))),
            (phase, "function bodies v1", bodies, v1_inputs, False, ()),
            (phase, "ORT GroupQueryAttention (shared)", gqa, gqa_inputs, False,
             (("past_key", "present_key"), ("past_value", "present_value"))),
            (phase, "library v2 consumer " + ("(reuse P)" if length == 1 else "(recompute)"), consumer,
             consumer_inputs, True, (("past_value", "present_value"),)),
        ]  # fmt: skip
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompts", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--phases", nargs="+", choices=["decode", "prefill"], default=["decode", "prefill"])
    args = parser.parse_args(argv)
    library = native.ort_custom_op_library()
    rng = np.random.default_rng(0)
    print(f"onnxruntime {ort.__version__}, {args.threads} intra-op threads, library {library}")
    print(f"wall: median ms per op with {args.threads} threads (x{LAYERS}: per step of the model); "
          "cpu: median CPU ms of the op on one thread")
    print(f"{'phase':8} {'prompt':>6}  {'implementation':34} {'wall ms':>8} {'x30':>8} {'cpu ms':>8} {'x30':>8}")
    for prompt in args.prompts:
        for phase, name, model_bytes, inputs, uses_library, aliased in cases(prompt, rng):
            if phase not in args.phases:
                continue
            repeats = args.repeats if phase == "decode" else max(5, args.repeats // 5)
            lib = library if uses_library else None
            wall, _ = time_session(model_bytes, inputs, args.threads, lib, aliased, repeats)
            _, cpu = time_session(model_bytes, inputs, 1, lib, aliased, repeats)
            print(f"{phase:8} {prompt:6d}  {name:34} {wall:8.3f} {wall * LAYERS:8.2f} {cpu:8.3f} {cpu * LAYERS:8.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
