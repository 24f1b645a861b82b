"""One-shot GPU check of the TensorRT plugins' enqueue path (run by hand on a CUDA machine).

No TensorRT can run an engine on the H100 (TensorRT proper is not obtainable here and
TensorRT-RTX refuses sm_90), so this drives what a plugin's enqueue does without TensorRT:
`plugins.launch` with device pointers, a workspace of the size get_workspace_size reserves
for a profile around the call (`workspace_bound`) and a non-default CUDA stream, i.e. the real
ua_producer_cuda / ua_consumer_cuda kernels through the plugins' own binding code. Outputs
are poisoned with NaN first and compared with model/attention.py on the same GPU.

    UNIATTN_EXPORT_LIB_DIR=build/gpu/lib PYTHONPATH=. python3 tests/targets/trt/gpu_enqueue_check.py

Prints one line per case and a summary; writes $OUT/trt_enqueue_check.json (or ./ when
$OUT is unset). Exit code 0 only when every case passed. Needs torch with CUDA and the
kernel library built with its CUDA kernels; no TensorRT, onnx or onnxruntime.
"""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

import torch

from uniattn_export.model import attention as reference
from uniattn_export.targets.trt.plugins import CONSUMER_OP, PRODUCER_OP, AttentionFields, launch, workspace_bound

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "gpu"))
import check_loop  # noqa: E402  (tests/gpu/check_loop.py: the scripts' shared main loop)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TOLERANCE = {"float32": 2e-5, "float16": 4e-3, "bfloat16": 3e-2}  # relative to max(1, |expected|)
PROBS_MAX = 16

# (name, batch, query_len, past_len, num_heads, kv_num_heads, head_dim, dtype, producer outputs, sliding window)
CASES = [
    ("decode", 4, 1, 1000, 8, 2, 64, "float16", 5, 0),
    ("decode-bf16", 4, 1, 1000, 32, 8, 64, "bfloat16", 5, 0),
    ("decode-fp32", 2, 1, 300, 8, 2, 128, "float32", 5, 0),
    ("decode-B1-long", 1, 1, 8191, 32, 8, 64, "bfloat16", 5, 0),
    ("speculative-L16", 2, 16, 500, 8, 2, 64, "float16", 5, 0),
    ("prefill", 2, 200, 0, 8, 2, 64, "float16", 5, 0),
    ("prefill-bf16-past", 2, 64, 100, 8, 2, 128, "bfloat16", 5, 0),
    ("prefill-window", 2, 100, 50, 8, 2, 64, "float16", 5, 32),
    ("ordinary-3-outputs", 3, 1, 700, 8, 2, 64, "float16", 3, 0),
    ("first-token", 2, 1, 0, 8, 2, 80, "float16", 5, 0),
]


def _workspace(op_type, fields, dtype, batch, query_len, past_len, head_dim):
    # The size TensorRT would reserve for a profile reaching from 1 token / empty cache to this call.
    size = workspace_bound(op_type, fields, dtype, (1, batch), (1, query_len), (0, past_len), head_dim)
    return torch.empty(max(size, 1), dtype=torch.uint8, device="cuda"), size


def _launch(op_type, fields, inputs, outputs, dtype, workspace, stream):
    launch(op_type, fields, [list(x.shape) for x in inputs], [list(x.shape) for x in outputs], dtype,
           [x.data_ptr() for x in inputs], [x.data_ptr() for x in outputs], workspace.data_ptr(),
           stream.cuda_stream)  # fmt: skip


def run_case(name, batch, query_len, past_len, heads, kv_heads, head_dim, dtype, outputs, window) -> dict:
    torch.manual_seed(zlib.crc32(name.encode()))
    t = DTYPES[dtype]
    rand = lambda *shape: torch.randn(*shape, device="cuda").to(t)  # noqa: E731
    key_len = past_len + query_len
    query = rand(batch, query_len, heads * head_dim)
    key, value = rand(batch, query_len, kv_heads * head_dim), rand(batch, query_len, kv_heads * head_dim)
    past_key, past_value = rand(batch, kv_heads, past_len, head_dim), rand(batch, kv_heads, past_len, head_dim)
    mask = torch.ones(batch, key_len, dtype=torch.int64, device="cuda")
    if batch > 1:
        mask[-1, : min(key_len - 1, 7)] = 0  # left padding in the last row
    scale = head_dim**-0.5
    attrs = dict(num_heads=heads, kv_num_heads=kv_heads, scale=scale, sliding_window=window)
    expected = reference.producer_attention(
        query, key, value, past_key, past_value, mask, **attrs, probs_max_query_len=PROBS_MAX
    )
    producer = AttentionFields(**attrs, probs_max_query_len=PROBS_MAX, num_outputs=outputs)
    results = [torch.full_like(e, float("nan")) for e in expected[:outputs]]
    inputs = [query, key, value, past_key, past_value, mask]
    stream = torch.cuda.Stream()
    workspace, producer_bytes = _workspace(PRODUCER_OP, producer, dtype, batch, query_len, past_len, head_dim)
    torch.cuda.synchronize()
    with torch.cuda.stream(stream):
        _launch(PRODUCER_OP, producer, inputs, results, dtype, workspace, stream)
    stream.synchronize()
    report = {"case": name, "producer_workspace": producer_bytes, "errors": {}}
    names = ("output", "present_key", "present_value", "shared_probs", "shared_lse")
    failed = []
    for label, actual, wanted in zip(names, results, expected):
        worst = check_loop.relative_error_within(actual, wanted, TOLERANCE[dtype] if label != "shared_lse" else 2e-5)
        report["errors"][f"producer.{label}"] = worst
        failed += [f"producer.{label}"] if worst is None else []
    if outputs == 5:
        c_value, c_past = rand(batch, query_len, kv_heads * head_dim), rand(batch, kv_heads, past_len, head_dim)
        shared = [expected[3], expected[4], query, expected[1]]
        wanted = reference.consumer_attention(c_value, c_past, mask, *shared, **attrs)
        consumer = AttentionFields(**attrs, num_outputs=2)
        c_inputs = [c_value, c_past, mask, *shared]
        c_results = [torch.full_like(w, float("nan")) for w in wanted]
        workspace, consumer_bytes = _workspace(CONSUMER_OP, consumer, dtype, batch, query_len, past_len, head_dim)
        torch.cuda.synchronize()
        with torch.cuda.stream(stream):
            _launch(CONSUMER_OP, consumer, c_inputs, c_results, dtype, workspace, stream)
        stream.synchronize()
        report["consumer_workspace"] = consumer_bytes
        report["consumer_path"] = "reuse P" if query_len <= PROBS_MAX else "recompute from lse"
        for label, actual, want in zip(("output", "present_value"), c_results, wanted):
            worst = check_loop.relative_error_within(actual, want, TOLERANCE[dtype])
            report["errors"][f"consumer.{label}"] = worst
            failed += [f"consumer.{label}"] if worst is None else []
    report["passed"] = not failed
    report["failed"] = failed
    return report


def main() -> int:
    header = check_loop.announce_cuda_device()
    if header is None:
        return 2
    reports = check_loop.run_cases(
        ((case[0], lambda case=case: run_case(*case)) for case in CASES),
        lambda report: ", ".join(f"{k}={v:.2e}" if v is not None else f"{k}=OFF" for k, v in report["errors"].items()),
    )
    return check_loop.finish({"header": header, "cases": reports}, check_loop.results_dir() / "trt_enqueue_check.json",
                             f"trt plugin enqueue on {header['device']}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
