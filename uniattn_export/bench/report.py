"""The benchmark's outputs: bench.json (rewritten after every cell), bench.png and a table.

Ratios are time ratios (numerator median / denominator median) of two runtimes measured in
the same run on the same cell: below 1 the numerator is faster.
"""

from __future__ import annotations

import os
from pathlib import Path

from rich.table import Table

from ..validate.report import write_report
from .measure import CATEGORY_ORDER, kernel_label

REPORT_FORMAT = "uniattn-export/bench"
# 2: a CUDA profile lists every kernel (kernel_list) and by_category; 1 kept the 12 largest
# kernels as top_kernels (profiled_kernels reads both).
REPORT_VERSION = 2
JSON_FILE, PLOT_FILE = "bench.json", "bench.png"

# (name, numerator runtime, denominator runtime)
RATIOS = (
    ("uniattn / base, ort-static-graph", "artifact/ort-static-graph", "baseline/ort-static-graph"),
    ("uniattn / base, ort-static-library", "artifact/ort-static-library", "baseline/ort-static-library"),
    ("uniattn / base, ort-static-bodies", "artifact/ort-static-bodies", "baseline/ort-static-bodies"),
    ("uniattn ort-static-graph / transformers static compiled", "artifact/ort-static-graph", "baseline/transformers-static-compiled"),
    ("uniattn ort-static-library / transformers static compiled", "artifact/ort-static-library", "baseline/transformers-static-compiled"),
    ("uniattn ort-static-graph / onnxruntime-genai", "artifact/ort-static-graph", "baseline/onnxruntime-genai"),
    ("uniattn ort-static-library / onnxruntime-genai", "artifact/ort-static-library", "baseline/onnxruntime-genai"),
    ("base ort-static-library / onnxruntime-genai", "baseline/ort-static-library", "baseline/onnxruntime-genai"),
    # our --target genai folders in onnxruntime-genai: against its builder's model, UniAttn
    # against base, and against the same model through our OrtSession (genai's own overhead)
    ("uniattn genai-artifact / onnxruntime-genai", "artifact/genai-artifact", "baseline/onnxruntime-genai"),
    ("base genai-artifact / onnxruntime-genai", "baseline/genai-artifact", "baseline/onnxruntime-genai"),
    ("uniattn / base, genai-artifact", "artifact/genai-artifact", "baseline/genai-artifact"),
    ("genai-artifact / ort-static-graph, uniattn", "artifact/genai-artifact", "artifact/ort-static-graph"),
    ("genai-artifact / ort-static-library, uniattn", "artifact/genai-artifact", "artifact/ort-static-library"),
    ("library / function bodies, uniattn static", "artifact/ort-static-library", "artifact/ort-static-bodies"),
    ("static / dynamic, uniattn ort-library", "artifact/ort-static-library", "artifact/ort-library"),
    ("uniattn ort-static-library / transformers dynamic", "artifact/ort-static-library", "baseline/transformers-dynamic"),
    ("uniattn / base, ort-library", "artifact/ort-library", "baseline/ort-library"),
    ("uniattn / base, ort-bodies", "artifact/ort-bodies", "baseline/ort-bodies"),
    ("library / function bodies, uniattn", "artifact/ort-library", "artifact/ort-bodies"),
    ("uniattn ort-library / transformers static compiled", "artifact/ort-library", "baseline/transformers-static-compiled"),
    ("uniattn ort-library / transformers dynamic", "artifact/ort-library", "baseline/transformers-dynamic"),
    ("base ort-library / transformers static compiled", "baseline/ort-library", "baseline/transformers-static-compiled"),
)
PHASES = ("decode", "prefill")
_SHORT_MODEL = {"artifact": "ua", "baseline": "base"}
_SHORT_BACKEND = {
    "ort-library": "lib", "ort-bodies": "bodies", "ort-static-library": "st lib", "ort-static-bodies": "st bodies",
    "ort-static-graph": "st graph", "onnxruntime-genai": "genai", "genai-artifact": "genai ours", "transformers-dynamic": "hf dyn",
    "transformers-static": "hf static", "transformers-static-compiled": "hf compiled",
}  # fmt: skip


def short_name(runtime_id: str) -> str:
    model, backend = runtime_id.split("/")
    return f"{_SHORT_MODEL[model]} {_SHORT_BACKEND[backend]}"


def _median(phase: dict | None) -> float | None:
    return phase["median_ms"] if phase and phase.get("status") == "ok" else None


def compute_ratios(results: list[dict]) -> list[dict]:
    """Every RATIOS pair on every cell where at least one phase was measured by both."""
    cells = {(r["runtime"], r["batch"], r["context"]): r for r in results}
    shapes = sorted({(r["batch"], r["context"]) for r in results})
    ratios = []
    for name, numerator, denominator in RATIOS:
        for batch, context in shapes:
            top, bottom = cells.get((numerator, batch, context)), cells.get((denominator, batch, context))
            if top is None or bottom is None:
                continue
            entry = {"name": name, "numerator": numerator, "denominator": denominator, "batch": batch, "context": context}
            for phase in PHASES:
                a, b = _median(top.get(phase)), _median(bottom.get(phase))
                entry[phase] = a / b if a is not None and b is not None else None
            if any(entry[phase] is not None for phase in PHASES):
                ratios.append(entry)
    return ratios


class BenchReport:
    """The JSON document, written whole (atomically) after every change so an interrupted run
    leaves a readable file; `complete` says whether the run reached its end."""

    def __init__(self, out_dir: Path, header: dict):
        self.out_dir = out_dir
        self.doc = {
            "format": REPORT_FORMAT, "format_version": REPORT_VERSION, "complete": False, "stopped": None,
            **header, "runtimes": [], "results": [], "ratios": [], "failures": 0,
        }  # fmt: skip

    @property
    def json_path(self) -> Path:
        return self.out_dir / JSON_FILE

    @property
    def plot_path(self) -> Path:
        return self.out_dir / PLOT_FILE

    def add_result(self, result: dict) -> None:
        self.doc["results"].append(result)
        self.doc["failures"] += sum(str(result.get(p, {}).get("status", "")).startswith("failed") for p in PHASES)
        self.write()

    def write(self) -> None:
        self.doc["ratios"] = compute_ratios(self.doc["results"])
        write_report(self.doc, self.json_path)


def plot(doc: dict, path: Path) -> Path:
    """Decode and prefill medians against context, one column per batch size, one line per
    runtime (log-log). Written beside `path` and renamed into place."""
    from matplotlib.figure import Figure

    batches = doc["settings"]["batches"]
    figure = Figure(figsize=(4.2 * len(batches), 7.5), layout="constrained")
    axes = figure.subplots(len(PHASES), len(batches), squeeze=False)
    runtimes = [r["id"] for r in doc["runtimes"]]
    for row, phase in enumerate(PHASES):
        for col, batch in enumerate(batches):
            ax = axes[row][col]
            for runtime in runtimes:
                points = sorted(
                    (r["context"], r[phase]["median_ms"])
                    for r in doc["results"]
                    if r["runtime"] == runtime and r["batch"] == batch and _median(r.get(phase)) is not None
                )
                if points:
                    ax.plot(*zip(*points), marker="o", label=short_name(runtime))
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{phase}, batch {batch}")
            ax.set_xlabel("context (tokens)")
            ax.set_ylabel("ms per step (median)" if phase == "decode" else "ms per prefill (median)")
            ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4))
    dtype, model = _dtype_and_model(doc)
    figure.suptitle(f"{doc['device']['name']}, {dtype}: {model}", fontsize=9)
    tmp = path.with_name(f".{path.name}.tmp")
    figure.savefig(tmp, format="png", dpi=110)
    os.replace(tmp, path)
    return path


def _dtype_and_model(doc: dict) -> tuple[str, str]:
    """The dtype and the layer map that titles name. A preset run of transformers rows alone
    builds no artifact: the dtype is then the build's."""
    artifact = doc["models"].get("artifact")
    if artifact is None:
        return doc["build"]["dtype"], "the preset's base model (no artifact built)"
    return artifact["dtype"], artifact["layer_map"]


# The table's ratio columns: (column title, RATIOS name); a column shows when any cell has it.
HEADLINE_RATIOS = (
    ("ua/base st", "uniattn / base, ort-static-library"),
    ("ua st/genai", "uniattn ort-static-library / onnxruntime-genai"),
    ("ua genai ours/genai", "uniattn genai-artifact / onnxruntime-genai"),
    ("ua graph/hf comp", "uniattn ort-static-graph / transformers static compiled"),
    ("ua st lib/bodies", "library / function bodies, uniattn static"),
    ("ua st/dyn", "static / dynamic, uniattn ort-library"),
)


def summary_table(doc: dict) -> Table:
    """Per cell and phase, the medians (ms) of every runtime that ran, then the headline ratios
    of that phase."""
    runtimes = [r["id"] for r in doc["runtimes"] if r["status"] == "ok"]
    table = Table(
        title=f"ms per decode step / per prefill, median ({doc['device']['name']}, {_dtype_and_model(doc)[0]})",
        caption="ua = the UniAttn artifact, base = the base model; lib = ORT + custom-op library, bodies = ORT "
        "function bodies, st = static caches through OrtSession (graph: + CUDA graphs), genai = onnxruntime-genai "
        "on its own build of the base model, genai ours = onnxruntime-genai on our --target genai export, hf = "
        "transformers (dyn: DynamicCache, static: StaticCache, compiled: + torch.compile). Ratios: time ratios in the "
        "same run (< 1: faster). All ratios in bench.json.",
    )
    for column in ("phase", "B", "S"):
        table.add_column(column, justify="right")
    for runtime in runtimes:
        table.add_column(short_name(runtime), justify="right")
    present = {r["name"] for r in doc["ratios"]}
    headline = [(title, name) for title, name in HEADLINE_RATIOS if name in present]
    for title, _ in headline:
        table.add_column(title, justify="right")
    ratios = {(r["name"], r["batch"], r["context"]): r for r in doc["ratios"]}
    cells = {(r["runtime"], r["batch"], r["context"]): r for r in doc["results"]}
    shapes = sorted({(r["batch"], r["context"]) for r in doc["results"]})
    for phase in PHASES:
        for batch, context in shapes:
            medians = [_median(cells.get((runtime, batch, context), {}).get(phase)) for runtime in runtimes]
            if all(m is None for m in medians):
                continue
            row = [phase, str(batch), str(context), *(f"{m:.3f}" if m is not None else "-" for m in medians)]
            for _, name in headline:
                ratio = ratios.get((name, batch, context), {}).get(phase)
                row.append(f"{ratio:.3f}" if ratio is not None else "-")
            table.add_row(*row)
    return table


def copies_table(doc: dict) -> Table | None:
    """Bytes one profiled decode step copies, per profiled row and cell, beside the KV cache it
    holds (CUDA: memcpy device to device + copy-like kernels; CPU: outputs of copying nodes);
    None when no step was profiled."""
    profiled = _profiled(doc)
    if not profiled:
        return None
    cuda = any("memcpy_dtod_bytes" in r["decode"]["cache_copies"] for r in profiled)
    table = Table(title="bytes copied by one decode step (profiled after the timed ones)")
    for column in ("runtime", "B", "S", "KV cache bytes", "DtoD memcpy bytes" if cuda else "copied bytes",
                   "copy kernels" if cuda else "by op"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("runtime", "by op", "copy kernels") else "right")
    for result in profiled:
        copies = result["decode"]["cache_copies"]
        if "error" in copies:
            table.add_row(short_name(result["runtime"]), str(result["batch"]), str(result["context"]),
                          str(copies["kv_cache_bytes"]), "-", f"profiler failed: {copies['error']}")  # fmt: skip
            continue
        if cuda:
            copied = copies["memcpy_dtod_bytes"]
            detail = ", ".join(f"{kernel_label(name)} x{k['count']}" for name, k in copies["copy_kernels"].items()) or "none"
        else:
            copied = copies["copy_bytes"]
            detail = ", ".join(f"{op} {size}" for op, size in copies["copy_bytes_by_op"].items()) or "none"
            if not copies["caches_bound_in_place"]:
                detail += f", uniattn outputs {sum(copies['uniattn_output_bytes'].values())}"
        table.add_row(short_name(result["runtime"]), str(result["batch"]), str(result["context"]),
                      str(result["kv_cache_bytes"]), str(copied), detail)  # fmt: skip
    return table


def kernels_table(doc: dict) -> Table | None:
    """Where one profiled CUDA decode step's GPU time goes, per profiled row and cell: the timed
    median beside the kernels' summed time (the difference is time outside kernels: launches,
    gaps between kernels, host work) and the kernels that take most of it; None without CUDA
    profiles."""
    profiled = [r for r in _profiled(doc) if "kernel_us" in r["decode"]["cache_copies"]]
    if not profiled:
        return None
    table = Table(title="kernels of one profiled decode step (CUDA)")
    for column in ("runtime", "B", "S", "step ms (median)", "kernels", "kernel ms", "largest kernels (share of kernel ms)"):
        table.add_column(column, justify="left" if column in ("runtime", "largest kernels (share of kernel ms)") else "right")
    for result in profiled:
        profile = result["decode"]["cache_copies"]
        largest = ", ".join(f"{kernel_label(k['name'])} x{k['count']} {100 * k['share']:.0f}%" for k in profiled_kernels(profile)[:3])
        table.add_row(short_name(result["runtime"]), str(result["batch"]), str(result["context"]),
                      f"{result['decode']['median_ms']:.3f}", str(profile["kernels"]),
                      f"{profile['kernel_us'] / 1000:.3f}", largest)  # fmt: skip
    return table


def categories_table(doc: dict) -> Table | None:
    """Where one profiled CUDA decode step's kernel time goes by kind of kernel (measure.py's
    kernel_category), per profiled row and cell: a column per kind that occurs, in
    CATEGORY_ORDER, with its time and kernel count; None without such profiles (format 1
    files have no by_category)."""
    profiled = [r for r in _profiled(doc) if "by_category" in r["decode"]["cache_copies"]]
    if not profiled:
        return None
    present = {category for r in profiled for category in r["decode"]["cache_copies"]["by_category"]}
    categories = [category for category in CATEGORY_ORDER if category in present]
    table = Table(title="GPU time of one profiled decode step by kind of kernel (ms)",
                  caption="a kernel counts in the first kind its name matches (bench/measure.py KERNEL_CATEGORIES); "
                  "(xN): kernels launched")  # fmt: skip
    for column in ("runtime", "B", "S", "step ms (median)", "kernel ms", *categories):
        table.add_column(column, justify="left" if column == "runtime" else "right")
    for result in profiled:
        profile = result["decode"]["cache_copies"]
        cells = [profile["by_category"].get(category) for category in categories]
        table.add_row(short_name(result["runtime"]), str(result["batch"]), str(result["context"]),
                      f"{result['decode']['median_ms']:.3f}", f"{profile['kernel_us'] / 1000:.3f}",
                      *(f"{c['us'] / 1000:.3f} (x{c['count']})" if c else "-" for c in cells))  # fmt: skip
    return table


def profiled_kernels(profile: dict) -> list[dict]:
    """A CUDA profile's kernels by total time: all of them (kernel_list), or in a format 1
    bench.json the 12 largest (top_kernels)."""
    return profile["kernel_list"] if "kernel_list" in profile else profile["top_kernels"]


def _profiled(doc: dict) -> list[dict]:
    return [r for r in doc["results"] if "cache_copies" in r.get("decode", {})]
