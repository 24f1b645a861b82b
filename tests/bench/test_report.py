"""The bench's terminal tables of profiled decode steps (bench/report.py)."""

from rich.console import Console

from uniattn_export.bench.measure import account_cuda_trace
from uniattn_export.bench.report import copies_table, kernels_table


def _render(table) -> str:
    console = Console(width=240, record=True)
    console.print(table)
    return console.export_text()


def _result(runtime: str, copies: dict) -> dict:
    return {"runtime": runtime, "batch": 32, "context": 8192, "kv_cache_bytes": 1000,
            "decode": {"status": "ok", "median_ms": 4.5, "cache_copies": {**copies, "kv_cache_bytes": 1000}}}  # fmt: skip


def test_profiled_steps_show_their_kernels_and_a_failed_profile_its_error():
    profile = account_cuda_trace([{"cat": "kernel", "name": "uniattn_producer_decode", "dur": 3000.0},
                                  {"cat": "kernel", "name": "gemv", "dur": 1000.0}])  # fmt: skip
    doc = {"results": [_result("artifact/ort-static-graph", profile),
                       _result("baseline/ort-static-graph", {"error": "RuntimeError: CUPTI busy"}),
                       {"runtime": "baseline/transformers-dynamic", "decode": {"status": "ok", "median_ms": 9.0}}]}  # fmt: skip
    kernels = _render(kernels_table(doc))
    assert "4.500" in kernels and "4.000" in kernels  # the timed median beside the kernels' sum
    assert "uniattn_producer_decode x1 75%" in kernels and "gemv x1 25%" in kernels
    assert "ua st graph" in kernels
    assert "base" not in kernels  # neither the failed profile nor the unprofiled row
    copies = _render(copies_table(doc))
    assert "base st graph" in copies and "profiler failed: RuntimeError: CUPTI busy" in copies


def test_no_profile_no_table():
    doc = {"results": [{"runtime": "baseline/transformers-dynamic", "decode": {"status": "ok", "median_ms": 9.0}}]}
    assert kernels_table(doc) is None and copies_table(doc) is None
