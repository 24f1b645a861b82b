"""The custom-op library inside ONNX Runtime's CUDAExecutionProvider, checked in one run on
the GPU machine (CI has no GPU; tests/plugins/test_ort_ops.py covers the CPU provider).

For each case it builds a graph holding one UniAttnProducer / UniAttnConsumer node, runs it
with the library registered on CUDAExecutionProvider, inputs and outputs bound to device
memory (IOBinding), and compares with model/attention.py computed by torch on the same GPU.
ORT's profile must show the node on CUDAExecutionProvider (not a CPU fallback). Last, it
times decode-sized nodes through ORT (median of repeated runs with pre-bound buffers).

Run it on the GPU machine from the repository root, with onnxruntime-gpu 1.31 installed
(../shared/gpu/stage-wheels.sh onnxruntime-gpu==1.31.1) and the libraries built here
(cmake -S . -B build/dev && cmake --build build/dev, carried as build/dev/lib):
    PYTHONPATH=/root/site:. UNIATTN_EXPORT_LIB_DIR=build/dev/lib python3 tests/plugins/ort_on_device.py
It prints a table and writes $OUT/ort_on_device.json (or ./ort_on_device.json); exit code 1
if any check failed. One failing case does not stop the others. `--cpu` runs the same
checks on CPUExecutionProvider (a dry run of this script where no GPU is).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
import zlib
from pathlib import Path

import onnx
import torch
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from uniattn_export.export.schema import CUDA_LINEAR_CONFIG_KEY  # noqa: E402

ELEMENT = {torch.float32: TensorProto.FLOAT, torch.float16: TensorProto.FLOAT16,
           torch.bfloat16: TensorProto.BFLOAT16, torch.int64: TensorProto.INT64}  # fmt: skip
PRODUCER_INPUTS = ("query", "key", "value", "past_key", "past_value", "attention_mask")
PRODUCER_OUTPUTS = ("output", "present_key", "present_value", "shared_probs", "shared_lse")
CONSUMER_INPUTS = ("value", "past_value", "attention_mask", "shared_probs", "shared_lse", "producer_query",
                   "producer_key")  # fmt: skip
CONSUMER_OUTPUTS = ("output", "present_value")
TOLERANCE = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def node_model(op_type: str, inputs: dict, outputs: list[str], output_types: dict,
               functions: list[onnx.FunctionProto] | None = None, **attributes) -> bytes:  # fmt: skip
    """A graph with one `op_type` node named "attn"; `inputs` maps names to example tensors
    (for their types); an output named "" is left out of the node as the exporter does."""
    node = helper.make_node(op_type, list(inputs), outputs, domain="uniattn", name="attn", **attributes)
    graph = helper.make_graph(
        [node], "single_node",
        [helper.make_tensor_value_info(name, ELEMENT[t.dtype], None) for name, t in inputs.items()],
        [helper.make_tensor_value_info(name, ELEMENT[output_types[name]], None) for name in outputs if name],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("uniattn", 1)],
                              ir_version=10, functions=functions)  # fmt: skip
    return model.SerializeToString()


def producer_node(dtype, attributes: dict, outputs, inputs: dict, **kwargs) -> bytes:
    types = dict.fromkeys(PRODUCER_OUTPUTS, dtype) | {"shared_lse": torch.float32}
    return node_model("UniAttnProducer", inputs, list(outputs), types, **kwargs,
                      **attributes | dict(plugin_version="1", plugin_namespace="uniattn"))  # fmt: skip


def consumer_node(dtype, attributes: dict, inputs: dict, **kwargs) -> bytes:
    consumer_attributes = {k: v for k, v in attributes.items() if k != "probs_max_query_len"}
    return node_model("UniAttnConsumer", inputs, list(CONSUMER_OUTPUTS), dict.fromkeys(CONSUMER_OUTPUTS, dtype),
                      **kwargs, **consumer_attributes)  # fmt: skip


# ---- the GPU run --------------------------------------------------------------------------

CASES = [
    # name, dtype, B, L, P, Hq, Hkv, D, extra attributes, left padding
    ("decode", torch.float16, 2, 1, 37, 8, 2, 64, {}, 5),
    ("decode", torch.bfloat16, 4, 1, 300, 32, 8, 64, {}, 17),
    ("decode", torch.float32, 1, 1, 9, 4, 4, 128, {}, 0),
    ("few-token decode", torch.bfloat16, 2, 4, 50, 8, 2, 80, {}, 3),
    ("prefill", torch.float16, 2, 40, 0, 8, 2, 128, dict(probs_max_query_len=16), 7),
    ("prefill over a past", torch.bfloat16, 1, 33, 20, 4, 1, 96, {}, 0),
    ("non-causal", torch.float16, 2, 6, 10, 4, 2, 64, dict(is_causal=0), 2),
    ("sliding window", torch.bfloat16, 1, 24, 40, 8, 4, 64, dict(sliding_window=16), 0),
]


def attributes_of(case) -> dict:
    _, _, _, _, _, heads, kv_heads, dim, extra, _ = case
    return dict(num_heads=heads, kv_num_heads=kv_heads, scale=dim**-0.5, is_causal=1, sliding_window=0,
                probs_max_query_len=16) | extra  # fmt: skip


def reference_kwargs(attributes: dict) -> dict:
    return {k: bool(v) if k == "is_causal" else v for k, v in attributes.items() if k != "probs_max_query_len"}


def make_inputs(case, device):
    _, dtype, batch, length, past, heads, kv_heads, dim, _, pad = case
    g = torch.Generator(device="cpu").manual_seed(zlib.crc32(repr(case).encode()))

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    mask = torch.ones(batch, past + length, dtype=torch.int64)
    mask[0, :pad] = 0
    producer = dict(query=rand(batch, length, heads * dim), key=rand(batch, length, kv_heads * dim),
                    value=rand(batch, length, kv_heads * dim), past_key=rand(batch, kv_heads, past, dim),
                    past_value=rand(batch, kv_heads, past, dim), attention_mask=mask.to(device))  # fmt: skip
    consumer_own = dict(value=rand(batch, length, kv_heads * dim), past_value=rand(batch, kv_heads, past, dim))
    return producer, consumer_own


class OrtOnDevice:
    def __init__(self, library: str, workdir: Path, device: str):
        import onnxruntime as ort

        self.ort, self.library, self.workdir, self.device = ort, library, workdir, device
        self.provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"

    def session(self, model: bytes, profile: bool):
        options = self.ort.SessionOptions()
        if self.device == "cuda":  # Linear's kernel (docs/ops.md), as OrtSession asks for it on CUDA
            options.add_session_config_entry(CUDA_LINEAR_CONFIG_KEY, "1")
        options.register_custom_ops_library(self.library)
        if profile:
            options.enable_profiling = True
            options.profile_file_prefix = str(self.workdir / "profile")
        return self.ort.InferenceSession(model, options, providers=list(dict.fromkeys([self.provider, "CPUExecutionProvider"])))

    def bind(self, session, inputs: dict, outputs: list[str]):
        binding = session.io_binding()
        for name, tensor in inputs.items():
            binding.bind_ortvalue_input(name, self.ort.OrtValue.from_dlpack(tensor.contiguous()))
        for name in outputs:
            if name:
                binding.bind_output(name, self.device, 0)
        return binding

    def run(self, model: bytes, inputs: dict, outputs) -> tuple[list[torch.Tensor], str]:
        """Outputs (device tensors) and the provider ORT's profile shows for the node."""
        session = self.session(model, profile=True)
        binding = self.bind(session, inputs, list(outputs))
        session.run_with_iobinding(binding)
        results = [torch.from_dlpack(value).clone() for value in binding.get_outputs()]
        events = json.loads(Path(session.end_profiling()).read_text())
        providers = {e["args"].get("provider") for e in events if e.get("cat") == "Node" and e["name"].startswith("attn")}
        return results, ",".join(sorted(p for p in providers if p))

    def time_node(self, model: bytes, inputs: dict, outputs, repeats: int = 50) -> float:
        session = self.session(model, profile=False)
        binding = self.bind(session, inputs, list(outputs))
        for _ in range(5):
            session.run_with_iobinding(binding)
        samples = []
        for _ in range(repeats):
            if self.device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()
            samples.append(time.perf_counter() - start)
        return sorted(samples)[len(samples) // 2] * 1e3


def max_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    if actual.shape != expected.shape:
        return float("inf")
    a, e = actual.float(), expected.float()
    finite = torch.isfinite(e)
    if not torch.equal(torch.isinf(a), torch.isinf(e)) or a.isnan().any():
        return float("inf")
    return float(((a - e).abs() / e.abs().clamp(min=1.0))[finite].max()) if finite.any() else 0.0


def check_case(runner: OrtOnDevice, case) -> list[dict]:
    from uniattn_export.model import attention as reference

    name, dtype, batch, length, past = case[:5]
    attributes = attributes_of(case)
    producer_inputs, own = make_inputs(case, runner.device)
    expected = reference.producer_attention(*producer_inputs.values(), **reference_kwargs(attributes),
                                            probs_max_query_len=attributes["probs_max_query_len"])  # fmt: skip
    rows = []
    label = f"{name} {str(dtype).removeprefix('torch.')} B{batch} L{length} P{past}"
    for outputs in (PRODUCER_OUTPUTS, (*PRODUCER_OUTPUTS[:3], "", "")):
        actual, provider = runner.run(producer_node(dtype, attributes, outputs, producer_inputs), producer_inputs, outputs)
        named = [n for n in outputs if n]
        errors = {n: max_error(a, expected[PRODUCER_OUTPUTS.index(n)]) for n, a in zip(named, actual)}
        tolerance = max(TOLERANCE[dtype], 2e-5)
        rows.append(dict(case=label, node=f"producer, {len(named)} outputs", provider=provider, errors=errors,
                         ok=provider == runner.provider and all(e <= tolerance for e in errors.values())))  # fmt: skip
    for reuse_probs in (True, False):
        shared = reference.producer_attention(*producer_inputs.values(), **reference_kwargs(attributes),
                                              probs_max_query_len=length if reuse_probs else -1)  # fmt: skip
        inputs = dict(zip(CONSUMER_INPUTS, (own["value"], own["past_value"], producer_inputs["attention_mask"],
                                            shared[3], shared[4], producer_inputs["query"], shared[1])))  # fmt: skip
        want = reference.consumer_attention(*inputs.values(), **reference_kwargs(attributes))
        actual, provider = runner.run(consumer_node(dtype, attributes, inputs), inputs, CONSUMER_OUTPUTS)
        errors = {n: max_error(a, e) for n, a, e in zip(CONSUMER_OUTPUTS, actual, want)}
        rows.append(dict(case=label, node=f"consumer, {'reuse P' if reuse_probs else 'recompute'}",
                         provider=provider, errors=errors,
                         ok=provider == runner.provider and all(e <= TOLERANCE[dtype] for e in errors.values())))  # fmt: skip
    return rows


def check_linear(runner: OrtOnDevice) -> list[dict]:
    """One Linear node (input (1, rows, K), weight (N, K)) on CUDAExecutionProvider against
    input x weight^T in float64 (error relative to |input| x |weight|^T): one row is the
    library's GEMV, nine rows a cuBLAS GEMM through ONNX Runtime's handle. The error measure
    and tolerances are gpu_kernels.py's."""
    sys.path.insert(0, str(Path(__file__).parent))
    from gpu_kernels import LINEAR_TOLERANCE, linear_error

    rows_out = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for rows, k, n in ((1, 2048, 3072), (1, 8192, 2048), (9, 2048, 520)):
            generator = torch.Generator().manual_seed(rows * 131 + k + n)
            inputs = {"input": torch.randn(1, rows, k, generator=generator).to(dtype).to(runner.device),
                      "weight": torch.randn(n, k, generator=generator).to(dtype).to(runner.device)}  # fmt: skip
            (actual,), provider = runner.run(node_model("Linear", inputs, ["output"], {"output": dtype}), inputs,
                                             ["output"])  # fmt: skip
            error = linear_error(inputs["input"], inputs["weight"], actual)
            tolerance = LINEAR_TOLERANCE[dtype]
            rows_out.append(dict(case=f"linear {str(dtype).removeprefix('torch.')} {rows}x{k}x{n}",
                                 node="linear, " + ("GEMV" if rows == 1 else "cuBLAS"), provider=provider,
                                 errors={"output": error}, ok=provider == runner.provider and error <= tolerance))  # fmt: skip
    return rows_out


def timings(runner: OrtOnDevice) -> list[dict]:
    from uniattn_export.model import attention as reference

    rows = []
    for batch, keys in ((1, 2048), (32, 8192)) if runner.device == "cuda" else ((1, 256),):
        case = ("decode", torch.bfloat16, batch, 1, keys - 1, 32, 8, 64, {}, 0)
        attributes = attributes_of(case)
        producer_inputs, own = make_inputs(case, runner.device)
        shared = reference.producer_attention(*producer_inputs.values(), **reference_kwargs(attributes))
        consumer_inputs = dict(zip(CONSUMER_INPUTS, (own["value"], own["past_value"], producer_inputs["attention_mask"],
                                                     shared[3], shared[4], producer_inputs["query"], shared[1])))  # fmt: skip
        producer_ms = runner.time_node(producer_node(torch.bfloat16, attributes, PRODUCER_OUTPUTS, producer_inputs),
                                       producer_inputs, PRODUCER_OUTPUTS)  # fmt: skip
        consumer_ms = runner.time_node(consumer_node(torch.bfloat16, attributes, consumer_inputs), consumer_inputs,
                                       CONSUMER_OUTPUTS)  # fmt: skip
        rows.append(dict(shape=f"bf16 decode B{batch} S{keys} Hq32 Hkv8 D64", producer_ms=producer_ms,
                         consumer_ms=consumer_ms))  # fmt: skip
    return rows


def main(device: str) -> int:
    from uniattn_export import native

    out_dir = Path(os.environ.get("OUT", "."))
    report: dict = {"checks": [], "timings": [], "errors": []}
    try:
        import onnxruntime

        report["onnxruntime"] = onnxruntime.__version__
        report["providers"] = onnxruntime.get_available_providers()
        report["library"] = native.ort_custom_op_library()
        report["kernels_have_cuda"] = bool(native.kernels().ua_has_cuda())
        report["device"] = torch.cuda.get_device_name() if device == "cuda" else "cpu"
        assert report["library"], f"{native.ORT_LIBRARY} not found: {native.BUILD_FIX}"
        runner = OrtOnDevice(report["library"], Path(tempfile.mkdtemp()), device)
        assert runner.provider in report["providers"], f"this onnxruntime has no {runner.provider}"
    except Exception:
        report["errors"].append(traceback.format_exc())
        runner = None
    if runner is not None:
        for case in CASES:
            try:
                report["checks"] += check_case(runner, case)
            except Exception:
                report["errors"].append(f"{case[:8]}: {traceback.format_exc()}")
        if device == "cuda":  # Linear has no CPU kernel: ONNX Runtime runs its body there
            try:
                report["checks"] += check_linear(runner)
            except Exception:
                report["errors"].append(f"linear: {traceback.format_exc()}")
        try:
            report["timings"] = timings(runner)
        except Exception:
            report["errors"].append(f"timings: {traceback.format_exc()}")
    (out_dir / "ort_on_device.json").write_text(json.dumps(report, indent=2, default=str))

    for error in report["errors"]:
        print("ERROR", error)
    for row in report["checks"]:
        worst = max(row["errors"].values(), default=0.0)
        print(f"{'ok  ' if row['ok'] else 'FAIL'} {row['case']:38s} {row['node']:24s} {row['provider']:22s} "
              f"max rel err {worst:.2e}")  # fmt: skip
    for row in report["timings"]:
        print(f"time {row['shape']}: producer {row['producer_ms']:.3f} ms, consumer {row['consumer_ms']:.3f} ms "
              "(ORT run incl. overhead, median)")  # fmt: skip
    passed = not report["errors"] and report["checks"] and all(row["ok"] for row in report["checks"])
    print(f"{sum(r['ok'] for r in report['checks'])}/{len(report['checks'])} checks passed; "
          f"{len(report['errors'])} errors; {'PASS' if passed else 'FAIL'}")  # fmt: skip
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main("cpu" if "--cpu" in sys.argv[1:] else "cuda"))
