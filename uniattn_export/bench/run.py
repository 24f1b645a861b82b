"""The benchmark's two entries: `run_bench` (an artifact, optionally its base model) and
`run_preset` (builds both from a shape preset with random weights, then runs the same).

Runtimes are loaded one at a time (the 1B model in four runtimes at once would not leave
room for batch 32 x 8192 caches) in order of importance, so a run cut short by its time
budget still has the headline comparisons; each measures every cell, smallest first.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from ..errors import UniAttnError
from ..export.artifact import Artifact, load_artifact, package_versions
from ..output import check_file_destination
from .build import build_baseline_for, build_pair, preset_targets, strip_weights
from .measure import (
    Clock, Deadline, device_free_bytes, first_line, gib, is_out_of_memory, release_device_memory, summarize,
)  # fmt: skip
from .report import JSON_FILE, PLOT_FILE, REPORT_FORMAT, BenchReport, plot
from .runtimes import OrtRuntime, Runtime, TransformersRuntime
from .settings import ORT_BACKENDS, BenchSettings

Log = Callable[[str], None]
# Most important first: the UniAttn vs base and library vs transformers comparisons.
RUNTIME_ORDER = (
    ("artifact", "ort-library"), ("baseline", "ort-library"), ("baseline", "transformers-static-compiled"),
    ("baseline", "transformers-dynamic"), ("artifact", "ort-bodies"), ("baseline", "ort-bodies"),
    ("baseline", "transformers-static"),
)  # fmt: skip
# Keep this much of the free device memory for what the prefill estimate does not count.
_PREFILL_MEMORY_MARGIN = 0.9
# torch.compile(mode="reduce-overhead") records its CUDA graph on the second or third call.
_COMPILED_WARMUP = 3
EXPORT_RISK = (
    "the exporter is developed on torch 2.13; if it fails on this torch, export the graphs on a machine "
    "with torch 2.13 (`uniattn-export bench --preset NAME --prepare DIR`), carry DIR (graphs only, the "
    "weights are refilled with random values here) and pass --work DIR"
)
METHOD = {
    "decode": "per-step wall time, synchronized, on a cache of `context` random tokens built directly "
    "(consumer layers of a UniAttn artifact have no K) with a full attention mask; the cache grows by one "
    "token per step as in generation; logits stay on the device; ORT steps include binding inputs and "
    "outputs from Python, as uniattn_export's generation loop does every step",
    "prefill": "one call over `context` new tokens per row from an empty cache (after one untimed call); "
    "skipped where the estimated footprint exceeds free device memory",
    "transformers": "the base architecture of the artifact's config with random weights, SDPA, "
    "attention_mask None (no padding); static-compiled = StaticCache + torch.compile, only on --compile shapes",
    "ratios": "numerator median / denominator median, same cell, same run (< 1: numerator faster)",
    "effective_bandwidth_gbps": "(weight bytes + KV-cache bytes) / median decode step: the bytes a step must read",
}


def _quiet(_: str) -> None:
    pass


def _device_info(device: str, backends: tuple[str, ...]) -> dict:
    from .. import native

    info: dict = {"type": device, "name": "CPU"}
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UniAttnError("no CUDA device is visible to torch", "run on a GPU machine or pass --device cpu")
        props = torch.cuda.get_device_properties(0)
        info.update(name=props.name, total_memory_bytes=props.total_memory, capability=f"{props.major}.{props.minor}")
    if any(b in ORT_BACKENDS for b in backends):
        import onnxruntime as ort

        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise UniAttnError(
                f"onnxruntime {ort.__version__} here has no CUDA execution provider",
                "install onnxruntime-gpu of the same version, or pass --device cpu",
            )
        info["onnxruntime_providers"] = ort.get_available_providers()
    info["custom_op_library"] = native.ort_custom_op_library()
    return info


def _model_info(artifact: Artifact) -> dict:
    return {
        "path": str(artifact.path), "dtype": artifact.dtype, "logits": artifact.manifest["logits"],
        "layer_map": artifact.uniattn.describe(), "consumers": artifact.uniattn.consumers,
        "kv_cache_bytes_per_token": artifact.manifest["kv_cache_bytes_per_token"],
    }  # fmt: skip


def _check_baseline(artifact: Artifact, baseline: Artifact) -> None:
    if baseline.uniattn.consumers:
        raise UniAttnError(
            f"the baseline {baseline.path} has SuperBlocks ({baseline.uniattn.describe()})",
            "pass an artifact of the plain base model (or --baseline build)",
        )
    for what, mine, theirs in (
        ("geometry", artifact.manifest["geometry"], baseline.manifest["geometry"]),
        ("dtype", artifact.dtype, baseline.dtype),
        ("logits mode", artifact.manifest["logits"], baseline.manifest["logits"]),
    ):
        if mine != theirs:
            raise UniAttnError(
                f"the baseline's {what} ({theirs}) differs from the artifact's ({mine})",
                "export the base model the same way as the artifact (or pass --baseline build)",
            )


def _make_runtime(model: str, backend: str, models: dict[str, Artifact], settings: BenchSettings) -> Runtime:
    if backend in ORT_BACKENDS:
        return OrtRuntime(models[model], model, backend, settings.device, settings.seed)
    from transformers import AutoConfig

    artifact = models["artifact"]
    config = AutoConfig.from_pretrained(artifact.path)
    return TransformersRuntime(config, artifact.dtype, backend, settings.device, settings.seed, settings.compile_backend)


def _failed(exc: BaseException) -> dict:
    reason = first_line(exc)
    return {"status": f"skipped: out of memory ({reason})" if is_out_of_memory(exc) else f"failed: {reason}"}


def _prefill(runtime: Runtime, batch: int, context: int, settings: BenchSettings, cell_end: float, clock: Clock) -> dict:
    if not settings.prefill:
        return {"status": "skipped: --no-prefill"}
    if not runtime.measures_prefill:
        return {"status": "not measured: generate() prefills eagerly with every cache kind (see transformers-dynamic)"}
    need, free = runtime.prefill_bytes(batch, context), device_free_bytes(settings.device)
    if free is not None and need > _PREFILL_MEMORY_MARGIN * free:
        return {"status": f"skipped: needs ~{gib(need)} of device memory, {gib(free)} free", "estimated_bytes": need}
    try:
        warmup = runtime.prefill(batch, context)
        times = []
        while not times or (len(times) < settings.prefill_repeats and clock() < cell_end):
            times.append(runtime.prefill(batch, context))
    except Exception as exc:  # out of memory, or a runtime error: recorded, the run goes on
        release_device_memory(settings.device)
        return _failed(exc)
    stats = summarize(times)
    return {"status": "ok", **stats, "warmup_ms": 1000 * warmup, "tokens_per_s": batch * context / (stats["median_ms"] / 1000)}


def _decode(runtime: Runtime, batch: int, context: int, settings: BenchSettings, cell_end: float, clock: Clock) -> dict:
    compiled = getattr(runtime, "compiled", False)
    if compiled and (batch, context) not in settings.compile_shapes:
        return {"status": f"skipped: torch.compile not requested for this shape (--compile {batch}x{context})"}
    warmup_steps = max(settings.warmup_steps, _COMPILED_WARMUP) if compiled else settings.warmup_steps
    try:
        run = runtime.start_decode(batch, context, warmup_steps + settings.decode_steps)
        warmup = [run.step() for _ in range(warmup_steps)]
        times = []
        while not times or (len(times) < settings.decode_steps and clock() < cell_end):
            times.append(run.step())
        kv_cache_bytes = run.kv_cache_bytes
        del run
    except Exception as exc:
        release_device_memory(settings.device)
        return _failed(exc)
    stats = summarize(times)
    seconds = stats["median_ms"] / 1000
    # Every weight and every cached K/V is read at least once per step.
    min_bytes = runtime.weight_bytes + kv_cache_bytes
    result = {
        "status": "ok", **stats, "warmup_ms": [1000 * t for t in warmup], "tokens_per_s": batch / seconds,
        "kv_cache_bytes": kv_cache_bytes, "min_bytes_per_step": min_bytes,
        "effective_bandwidth_gbps": min_bytes / seconds / 1e9,
    }  # fmt: skip
    if compiled:
        result["compile_seconds"] = warmup[0]  # the first call compiles this shape
    return result


def _measure_cell(runtime: Runtime, batch: int, context: int, settings: BenchSettings, clock: Clock) -> dict:
    runtime.reset_peak_memory()
    start = clock()
    prefill = _prefill(runtime, batch, context, settings, start + settings.cell_seconds / 2, clock)
    decode = _decode(runtime, batch, context, settings, start + settings.cell_seconds, clock)
    result = {
        "runtime": runtime.id, "batch": batch, "context": context, "kv_cache_bytes": decode.get("kv_cache_bytes"),
        "prefill": prefill, "decode": decode, "peak_memory_bytes": runtime.peak_memory(),
    }  # fmt: skip
    release_device_memory(settings.device)
    return result


def _cell_line(result: dict) -> str:
    parts = []
    for phase in ("prefill", "decode"):
        entry = result[phase]
        if entry["status"] == "ok":
            parts.append(f"{phase} {entry['median_ms']:.3f} ms (p90 {entry['p90_ms']:.3f}, {entry['tokens_per_s']:.0f} tok/s)")
        else:
            parts.append(f"{phase} {entry['status']}")
    memory = f", peak {gib(result['peak_memory_bytes'])}" if result["peak_memory_bytes"] is not None else ""
    return f"{result['runtime']} B={result['batch']} S={result['context']}: {'; '.join(parts)}{memory}"


def _skipped_cell(runtime_id: str, batch: int, context: int, reason: str) -> dict:
    skipped = {"status": reason}
    return {"runtime": runtime_id, "batch": batch, "context": context, "kv_cache_bytes": None,
            "prefill": skipped, "decode": skipped, "peak_memory_bytes": None}  # fmt: skip


def _skip_runtime(report: BenchReport, entry: dict, settings: BenchSettings, reason: str) -> None:
    entry["status"] = reason
    for batch, context in settings.cells():
        report.add_result(_skipped_cell(entry["id"], batch, context, reason))


def _measure_all(
    models: dict[str, Artifact], settings: BenchSettings, report: BenchReport, deadline: Deadline, log: Log
) -> dict:
    report.doc["models"] = {name: _model_info(artifact) for name, artifact in models.items()}
    report.doc["settings"] = settings.to_dict()
    report.doc["method"] = METHOD
    release_device_memory(settings.device)
    plan = [(m, b) for m, b in RUNTIME_ORDER if b in settings.backends and (m in models or not b.startswith("ort"))]
    budget_reason = f"skipped: time budget of {settings.time_budget:g} s spent"
    for model, backend in plan:
        entry = {"id": f"{model}/{backend}", "model": model, "backend": backend, "status": "loading"}
        report.doc["runtimes"].append(entry)
        if deadline.expired():
            _skip_runtime(report, entry, settings, budget_reason)
            continue
        log(f"loading {entry['id']}")
        start = time.perf_counter()
        try:
            runtime = _make_runtime(model, backend, models, settings)
        except UniAttnError as exc:  # e.g. the library is not built: nothing to measure
            _skip_runtime(report, entry, settings, f"skipped: {exc}")
            log(f"{entry['id']}: {entry['status']}")
            continue
        except Exception as exc:
            _skip_runtime(report, entry, settings, f"failed: {first_line(exc)}")
            log(f"{entry['id']}: {entry['status']}")
            continue
        entry.update(status="ok", description=runtime.description, load_seconds=round(time.perf_counter() - start, 2),
                     weight_bytes=runtime.weight_bytes, memory_method=runtime.memory_method)  # fmt: skip
        log(f"{entry['id']}: {runtime.description} (loaded in {entry['load_seconds']:.1f} s)")
        try:
            for batch, context in settings.cells():
                if deadline.expired():
                    report.add_result(_skipped_cell(entry["id"], batch, context, budget_reason))
                    continue
                result = _measure_cell(runtime, batch, context, settings, deadline.clock)
                report.add_result(result)
                log(_cell_line(result))
        finally:
            runtime.close()
    not_run = sum(r["decode"]["status"] == budget_reason for r in report.doc["results"])
    if not_run:
        report.doc["stopped"] = f"time budget of {settings.time_budget:g} s spent after {deadline.elapsed():.0f} s; {not_run} cells not run"
    report.doc["complete"] = True
    report.doc["total_seconds"] = round(deadline.elapsed(), 1)
    report.write()
    plot(report.doc, report.plot_path)
    return report.doc


def _is_bench_json(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("format") == REPORT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _open_report(out_dir: Path, settings: BenchSettings, mode: str) -> BenchReport:
    out_dir = Path(out_dir)
    if out_dir.is_file():
        raise UniAttnError(f"{out_dir} is a file", "pass a folder for the benchmark's outputs")
    # bench.json and bench.png are replaced only when they are an earlier run's (output.py's rule).
    earlier_run = _is_bench_json(out_dir / JSON_FILE)
    fix = "pass another -o folder, or move the file away"
    check_file_destination(out_dir / JSON_FILE, "a bench.json of uniattn-export", _is_bench_json, foreign_fix=fix)
    check_file_destination(out_dir / PLOT_FILE, "the plot of an earlier bench run", lambda _: earlier_run, foreign_fix=fix)
    header = {"mode": mode, "created_with": package_versions(), "device": _device_info(settings.device, settings.backends)}
    out_dir.mkdir(parents=True, exist_ok=True)
    return BenchReport(out_dir, header)


def _check_dtype(dtype: str, settings: BenchSettings) -> None:
    if dtype == "bfloat16" and settings.device == "cpu" and any(b in ORT_BACKENDS for b in settings.backends):
        raise UniAttnError(
            "onnxruntime's CPU execution provider has no bfloat16 kernels",
            "benchmark bfloat16 artifacts with --device cuda, or export float16/float32 for the CPU",
        )


def run_bench(
    artifact: str | Path | Artifact,
    out_dir: str | Path,
    *,
    baseline: str | Path | Artifact | None = None,
    build_baseline: bool = False,
    settings: BenchSettings = BenchSettings(),
    clock: Clock = time.monotonic,
    log: Log = _quiet,
) -> dict:
    """Benchmark `artifact` (and its base model: `baseline`, or one exported here with random
    weights when `build_baseline`) across settings' matrix and backends.

    Writes OUT/bench.json (after every cell) and OUT/bench.png; returns the JSON document.
    Cells past settings.time_budget are recorded as skipped; `complete` is True once the run
    reached its end, `stopped` says why cells were not run, `failures` counts failed cells.
    """
    if baseline is not None and build_baseline:
        raise UniAttnError("both a baseline artifact and --baseline build were given", "pass one of them")
    deadline = Deadline(settings.time_budget, clock)
    models = {"artifact": artifact if isinstance(artifact, Artifact) else load_artifact(artifact)}
    _check_dtype(models["artifact"].dtype, settings)
    if baseline is not None:
        models["baseline"] = baseline if isinstance(baseline, Artifact) else load_artifact(baseline)
        _check_baseline(models["artifact"], models["baseline"])
    report = _open_report(Path(out_dir), settings, "artifact")
    if build_baseline:
        folder = report.out_dir / "baseline_artifact"
        models["baseline"], report.doc["build"] = build_baseline_for(models["artifact"], folder, seed=settings.seed, log=log)
    return _measure_all(models, settings, report, deadline, log)


def run_preset(
    preset: str,
    out_dir: str | Path,
    *,
    work_dir: str | Path | None = None,
    dtype: str = "float16",
    settings: BenchSettings = BenchSettings(),
    clock: Clock = time.monotonic,
    log: Log = _quiet,
) -> dict:
    """Build a UniAttn artifact (SuperBlocks of 4 over the top half of the layers) and its
    base model from a shape preset with random weights (or reuse them from `work_dir`), then
    benchmark them like run_bench. The build counts against settings.time_budget; a failed
    export is recorded in bench.json before the error is raised."""
    import torch

    deadline = Deadline(settings.time_budget, clock)
    _check_dtype(dtype, settings)
    report = _open_report(Path(out_dir), settings, f"preset {preset}")
    work_dir = Path(work_dir) if work_dir is not None else report.out_dir / "work"
    make_config, targets = preset_targets(preset, work_dir)
    report.doc["build"] = {"status": "running", "preset": preset, "dtype": dtype, "torch": torch.__version__, "risk": EXPORT_RISK}
    report.write()
    log(f"torch {torch.__version__}: building the {preset} artifacts ({EXPORT_RISK})")
    start = time.perf_counter()
    try:
        models, steps = build_pair(make_config, targets, dtype, logits="last", seed=settings.seed, log=log)
    except UniAttnError:
        raise
    except Exception as exc:
        report.doc["build"]["status"] = f"failed: {first_line(exc)}"
        report.write()
        raise UniAttnError(f"building the {preset} artifacts failed on torch {torch.__version__} ({first_line(exc)})", EXPORT_RISK) from exc
    report.doc["build"].update(status="ok", seconds=round(time.perf_counter() - start, 1), steps=steps)
    return _measure_all(models, settings, report, deadline, log)


def prepare_preset(preset: str, out_dir: str | Path, *, dtype: str = "float16", seed: int = 0, log: Log = _quiet) -> dict:
    """The preset's artifacts without their external weight files (small enough to carry to a
    machine whose exporter fails; `run_preset(work_dir=out_dir)` refills the weights there)."""
    make_config, targets = preset_targets(preset, Path(out_dir))
    _, steps = build_pair(make_config, targets, dtype, logits="last", seed=seed, log=log, external_data=True)
    sizes = {name: strip_weights(folder) for name, (folder, _) in targets.items()}
    return {"preset": preset, "dtype": dtype, "steps": steps, "bytes_left": sizes}
