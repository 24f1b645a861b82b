"""The bench's terminal tables of profiled decode steps (bench/report.py)."""

from rich.console import Console

from uniattn_export.bench.measure import account_cuda_trace
from uniattn_export.bench.report import categories_table, copies_table, kernels_table


def _render(table) -> str:
    console = Console(width=240, record=True)
    console.print(table)
    return console.export_text()


def _cells(text: str) -> list[list[str]]:
    """The header and body rows of a rendered table, cell by cell."""
    return [[cell.strip() for cell in line.strip()[1:-1].replace("┃", "│").split("│")]
            for line in text.splitlines() if line.strip().startswith(("┃", "│"))]  # fmt: skip


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


def _profile(kernel_us: float, kernels: list[dict], by_category: dict) -> dict:
    return {"kernels": sum(k["count"] for k in kernels), "kernel_us": kernel_us, "kernel_list": kernels,
            "by_category": by_category, "memcpy_bytes": {}, "memcpy_dtod_bytes": 0, "copy_kernels": {}}  # fmt: skip


def test_kernel_time_by_kind_has_a_column_per_kind_that_occurs_in_the_fixed_order():
    ua = _profile(3200.0, [{"name": "nvjet_sm90_hsh_128x8_64x12_2x1_v_bz_NNT", "count": 16, "us": 1580.0, "share": 0.49}],
                  {"gemm": {"count": 16, "us": 1580.0}, "attention": {"count": 8, "us": 1200.0},
                   "other": {"count": 2, "us": 20.0}, "norm": {"count": 9, "us": 400.0}})  # fmt: skip
    genai = _profile(2500.25, [{"name": "kernel_mha", "count": 16, "us": 1500.0, "share": 0.6}],
                     {"gemm": {"count": 17, "us": 900.0}, "attention": {"count": 16, "us": 1500.0},
                      "sampling": {"count": 1, "us": 100.25}})  # fmt: skip
    doc = {"results": [_result("artifact/ort-static-graph", ua), _result("baseline/onnxruntime-genai", genai),
                       _result("baseline/ort-static-graph", {"error": "RuntimeError: CUPTI busy"})]}  # fmt: skip
    text = _render(categories_table(doc))
    assert "GPU time of one profiled decode step by kind of kernel (ms)" in text
    header, *rows = _cells(text)
    # no rotary, cache write, split/slice or elementwise kernel in either row: no column
    assert header == ["runtime", "B", "S", "step ms (median)", "kernel ms", "gemm", "attention", "norm", "sampling", "other"]
    assert rows == [
        ["ua st graph", "32", "8192", "4.500", "3.200", "1.580 (x16)", "1.200 (x8)", "0.400 (x9)", "-", "0.020 (x2)"],
        ["base genai", "32", "8192", "4.500", "2.500", "0.900 (x17)", "1.500 (x16)", "-", "0.100 (x1)", "-"],
    ]  # fmt: skip


def test_a_format_1_profile_shows_its_largest_kernels_but_no_kinds():
    old = {"kernels": 3, "kernel_us": 4000.0, "memcpy_bytes": {}, "memcpy_dtod_bytes": 0, "copy_kernels": {},
           "top_kernels": [{"name": "uniattn_producer_decode", "count": 2, "us": 3000.0, "share": 0.75},
                           {"name": "gemv", "count": 1, "us": 1000.0, "share": 0.25}]}  # fmt: skip
    doc = {"results": [_result("artifact/ort-static-graph", old)]}
    assert _cells(_render(kernels_table(doc)))[1] == [
        "ua st graph", "32", "8192", "4.500", "3", "4.000", "uniattn_producer_decode x2 75%, gemv x1 25%"]  # fmt: skip
    assert categories_table(doc) is None


def test_no_profile_no_table():
    doc = {"results": [{"runtime": "baseline/transformers-dynamic", "decode": {"status": "ok", "median_ms": 9.0}}]}
    assert kernels_table(doc) is None and copies_table(doc) is None and categories_table(doc) is None
