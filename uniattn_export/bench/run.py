"""The benchmark's two entries: `run_bench` (an artifact, optionally its base model) and
`run_preset` (builds both from a shape preset with random weights, then runs the same).

Runtimes are loaded one at a time (the 1B model in four runtimes at once would not leave
room for batch 32 x 8192 caches) in order of importance, so a run cut short by its time
budget still has the headline comparisons; each measures every cell, smallest first.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import queue
import signal
import time
from pathlib import Path
from typing import Callable

from ..errors import UniAttnError
from ..export.artifact import Artifact, load_artifact, package_versions
from ..model.synthetic import PRESETS, preset_config
from ..output import check_file_destination
from .build import (
    BASE_CHECKPOINT_FOLDER, build_baseline_for, build_genai_model, build_pair, preset_targets, strip_weights,
)  # fmt: skip
from .measure import (
    Clock, Deadline, device_free_bytes, device_used_bytes, first_line, gib, is_out_of_memory,
    release_device_memory, summarize,
)  # fmt: skip
from .report import JSON_FILE, PLOT_FILE, REPORT_FORMAT, BenchReport, plot
from .runtimes import GenaiRuntime, OrtRuntime, OrtStaticRuntime, Runtime, TransformersRuntime
from .settings import (
    ARTIFACT_BACKENDS, DYNAMIC_ORT_BACKENDS, GENAI_ARTIFACT_BACKEND, GENAI_BACKEND, ORT_BACKENDS, STATIC_ORT_BACKENDS,
    BenchSettings, export_kind_of, needs_capacity,
)  # fmt: skip

Log = Callable[[str], None]
# Most important first: the UniAttn vs base comparisons on the fastest path, then the
# baselines users would otherwise run (onnxruntime-genai on its builder's model, and on our
# --target genai exports; transformers: compiled decode, SDPA prefill), then today's dynamic
# path and the function bodies.
RUNTIME_ORDER = (
    ("artifact", "ort-static-graph"), ("baseline", "ort-static-graph"),
    ("artifact", "ort-static-library"), ("baseline", "ort-static-library"), ("baseline", GENAI_BACKEND),
    ("artifact", GENAI_ARTIFACT_BACKEND), ("baseline", GENAI_ARTIFACT_BACKEND),
    ("baseline", "transformers-static-compiled"), ("baseline", "transformers-dynamic"),
    ("artifact", "ort-library"), ("baseline", "ort-library"), ("artifact", "ort-static-bodies"),
    ("baseline", "ort-static-bodies"), ("artifact", "ort-bodies"), ("baseline", "ort-bodies"),
    ("baseline", "transformers-static"),
)  # fmt: skip
# Keep this much of the free device memory for what the prefill estimate does not count.
_PREFILL_MEMORY_MARGIN = 0.9
# torch.compile(mode="reduce-overhead") records its CUDA graph on the second or third call.
_COMPILED_WARMUP = 3
# How a row's process starts (row_processes): spawned, since a process that has used CUDA
# cannot be forked.
_ROW_PROCESS_START = "spawn"
EXPORT_RISK = (
    "the exporter is developed on torch 2.13 and transformers 5.19-5.25; with others it may fail, or trace "
    "another graph (transformers 5.17: static graphs keep the per-step rotary head instead of the capacity's "
    "tables), so for figures that stand for a supported install export the graphs on one "
    "(`uniattn-export bench --preset NAME --prepare DIR`), carry DIR (graphs only, the weights are refilled "
    "with random values here) and pass --work DIR"
)
METHOD = {
    "decode": "per-step wall time, synchronized, on a cache of `context` random tokens built directly "
    "(consumer layers of a UniAttn artifact have no K) with a full attention mask; the cache grows by one "
    "token per step as in generation; logits stay on the device; ORT steps include binding inputs and "
    "outputs from Python, as uniattn_export's generation loop does every step",
    "static": "ort-static-*: OrtSession over a static-cache artifact, the path users get: reset, load_caches "
    "(random values in the first `context` slots, zeros after), then step_greedy at position context + i: "
    "caches bound as past and present, the graph's argmax, B token ids to the host; without CUDA graphs "
    "(cuda_graph=False), except ort-static-graph: the same with OrtSession(cuda_graph=True)",
    "onnxruntime-genai": "the base model built by onnxruntime-genai's model builder from the same config and "
    "weights; prefill = Generator.append_tokens of B x context random ids on a fresh Generator of max_length "
    "context; decode = generate_next_token (one model step + greedy pick) after an untimed prefill of `context` "
    "random tokens (genai cannot load a cache); with CUDA graphs at batch > 1 the cache is filled instead by one "
    "prompt token and context - 1 untimed decode steps (onnxruntime-genai 0.18 masks every run max_length wide under "
    "CUDA graphs, and its GroupQueryAttention takes a batch > 1 prompt shorter than that mask for a second chunk, "
    "which it refuses)",
    "genai-artifact": "our `--target genai` exports (static caches, onnxruntime-genai's cache layout, genai_config.json, "
    "the custom-op library copied in when built for op version 2) of the UniAttn and base models, run exactly as the "
    "onnxruntime-genai row (same Generator calls, CUDA graph on CUDA, ONNX Runtime's default intra-op threads); genai "
    "sizes their caches to the export's capacity",
    "folders": "runtimes[].folder is the model folder a row ran and folder_origin where it came from (given on the command "
    "line, exported or reused by this run's build: see build)",
    "cache_copies": "one more decode step of each ort-* row (and, on CUDA, of the onnxruntime-genai rows) after the "
    "timed ones, under a profiler. "
    "CUDA: torch.profiler with CUDA activities (process-wide, so ORT's kernels too, and those a CUDA-graph replay "
    "launches): memcpy bytes by kind, the copy/concat/scatter kernels, the kernels' summed time (kernel_us), every "
    "kernel name by total time (kernel_list: count, us, share; names cut at 160 characters) and the count and time of "
    "each kind of kernel (by_category: gemm, attention, norm, rotary, cache write, split/slice, elementwise, sampling, "
    "other; a kernel counts in the first kind its name matches, bench/measure.py KERNEL_CATEGORIES; the times sum to "
    "kernel_us); CPU: ONNX Runtime's profiler in a second session of the same file and kernels "
    "swapped into the OrtSession for that step: output bytes of copying nodes (Concat, Scatter*, Expand, Where, "
    "...), plus the uniattn nodes' outputs where the caches are not bound in place (dynamic)",
    "prefill": "one call over `context` new tokens per row from an empty cache (after one untimed call); "
    "skipped where the estimated footprint exceeds free device memory",
    "transformers": "the base architecture of the artifact's config with random weights, SDPA, "
    "attention_mask None (no padding); static-compiled = StaticCache + torch.compile, only on --compile shapes",
    "processes": "settings.row_processes true (the default on CUDA): each runtime is loaded and measured in a fresh "
    "process, so what a row holds on the device (ONNX Runtime's arenas keep their high-water mark, onnxruntime-genai "
    "its device allocator) cannot fail the rows after it; a row whose process ended early has status and remaining "
    "cells `failed: the row's process ended (...)`",
    "ratios": "numerator median / denominator median, same cell, same run (< 1: numerator faster)",
    "effective_bandwidth_gbps": "(weight bytes + KV-cache bytes) / median decode step: the bytes a step must read",
}


def _quiet(_: str) -> None:
    pass


def _device_info(device: str, backends: tuple[str, ...]) -> dict:
    from .. import native

    info: dict = {"type": device, "name": "CPU", "cpu_count": os.cpu_count(), "load_average_at_start": list(os.getloadavg())}
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UniAttnError("no CUDA device is visible to torch", "run on a GPU machine or pass --device cpu")
        props = torch.cuda.get_device_properties(0)
        info.update(name=props.name, total_memory_bytes=props.total_memory, capability=f"{props.major}.{props.minor}")
    if any(b in ARTIFACT_BACKENDS for b in backends):
        import onnxruntime as ort

        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise UniAttnError(
                f"onnxruntime {ort.__version__} here has no CUDA execution provider",
                "install onnxruntime-gpu of the same version, or pass --device cpu",
            )
        info["onnxruntime_providers"] = ort.get_available_providers()
    info["custom_op_library"] = native.ort_custom_op_library()
    return info


def _model_info(artifacts: dict[str, Artifact]) -> dict:
    """One model (UniAttn or base) in its exports by kind (EXPORT_KINDS): what they share,
    and where each is."""
    first = next(iter(artifacts.values()))
    static = [a for a in artifacts.values() if a.cache_mode == "static"]
    return {
        "paths": {kind: str(a.path) for kind, a in artifacts.items()}, "dtype": first.dtype,
        "logits": {kind: a.manifest["logits"] for kind, a in artifacts.items()},
        "capacity": static[0].capacity if static else None,
        "layer_map": first.uniattn.describe(), "consumers": first.uniattn.consumers,
        "kv_cache_bytes_per_token": first.manifest["kv_cache_bytes_per_token"],
    }  # fmt: skip


def _export_kind(artifact: Artifact) -> str:
    """EXPORT_KINDS: "genai" for a `--target genai` export (static caches only: the
    genai-artifact rows), else the cache mode."""
    if artifact.cache_layout != "genai":
        return artifact.cache_mode
    if artifact.cache_mode != "static":
        raise UniAttnError(f"{artifact.path} is a --target genai export with dynamic caches; the genai-artifact rows "
                           "run static ones (CUDA graphs need them)", "export it with --target genai --cache static")  # fmt: skip
    return "genai"


def _by_export_kind(artifacts, what: str) -> dict[str, Artifact]:
    """Artifacts (or folders) keyed by export kind; at most one per kind."""
    items = artifacts if isinstance(artifacts, (list, tuple)) else [artifacts]
    loaded: dict[str, Artifact] = {}
    for item in items:
        artifact = item if isinstance(item, Artifact) else load_artifact(item)
        kind = _export_kind(artifact)
        if kind in loaded:
            named = "--target genai" if kind == "genai" else f"{kind}-cache"
            raise UniAttnError(f"two {named} {what}s were given ({loaded[kind].path}, {artifact.path})",
                               f"pass at most one {what} per cache mode (and one --target genai export)")  # fmt: skip
        loaded[kind] = artifact
    return loaded


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
        ("cache capacity", artifact.capacity, baseline.capacity),
    ):
        if mine != theirs:
            raise UniAttnError(
                f"the baseline's {what} ({theirs}) differs from the artifact's ({mine})",
                "export the base model the same way as the artifact (or pass --baseline build)",
            )


def _make_runtime(model: str, backend: str, models: dict, settings: BenchSettings) -> Runtime:
    """models: {"artifact"|"baseline": {export kind: Artifact}}, "genai": a genai model folder,
    and in preset mode "preset": (make_config, dtype)."""
    kind = export_kind_of(backend)
    if backend in STATIC_ORT_BACKENDS:
        return OrtStaticRuntime(models[model][kind], model, backend, settings.device, settings.seed)
    if backend in ORT_BACKENDS:
        return OrtRuntime(models[model][kind], model, backend, settings.device, settings.seed)
    if backend in (GENAI_BACKEND, GENAI_ARTIFACT_BACKEND):
        source = models["genai"] if backend == GENAI_BACKEND else models[model][kind]
        return GenaiRuntime(source, model, settings.device, settings.seed, cuda_graph=settings.device == "cuda")
    config, dtype = _base_architecture(models)
    return TransformersRuntime(config, dtype, backend, settings.device, settings.seed, settings.compile_backend)


def _base_architecture(models: dict):
    """(transformers config, dtype) of the base model the transformers rows build: the first
    artifact's, or the preset's when only transformers rows run (no artifact was built)."""
    from transformers import AutoConfig

    if models["artifact"]:
        artifact = next(iter(models["artifact"].values()))
        return AutoConfig.from_pretrained(artifact.path), artifact.dtype
    make_config, dtype = models["preset"]
    return make_config(), dtype


def _available(model: str, backend: str, models: dict) -> bool:
    """Whether the run has what this runtime needs (an export of the right kind, a genai model)."""
    if backend == GENAI_BACKEND:
        return models.get("genai") is not None
    kind = export_kind_of(backend)
    return kind is None or kind in models.get(model, {})


def _row_folder(model: str, backend: str, models: dict) -> dict:
    """The model folder a row runs and where it came from (bench.json runtimes[]); nothing
    for transformers (built in memory)."""
    if backend == GENAI_BACKEND:
        return {"folder": str(models["genai"]), "folder_origin": "built by onnxruntime-genai's model builder (build.genai)"}
    kind = export_kind_of(backend)
    if kind is None:
        return {}
    return {"folder": str(models[model][kind].path), "folder_origin": models["origins"][model][kind]}


def _failed(exc: BaseException) -> dict:
    reason = first_line(exc)
    return {"status": f"skipped: out of memory ({reason})" if is_out_of_memory(exc) else f"failed: {reason}"}


def _prefill(runtime: Runtime, batch: int, context: int, settings: BenchSettings, cell_end: float, clock: Clock) -> dict:
    if not settings.prefill:
        return {"status": "skipped: --no-prefill"}
    if not settings.runs("prefill", batch, context):
        return {"status": "skipped: not a --prefill-cells shape"}
    if not runtime.measures_prefill:
        return {"status": "not measured: generate() prefills eagerly with every cache kind (see transformers-dynamic)"}
    reason = runtime.unsupported("prefill", batch, context, 0)
    if reason:
        return {"status": f"skipped: {reason}"}
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
    if not settings.runs("decode", batch, context):
        return {"status": "skipped: not a --decode-cells shape"}
    reason = runtime.unsupported("decode", batch, context, settings.decode_length())
    if reason:
        return {"status": f"skipped: {reason}"}
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
        copies = _profile(runtime, run)
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
    if copies is not None:
        result["cache_copies"] = {**copies, "kv_cache_bytes": kv_cache_bytes}
    return result


def _profile(runtime: Runtime, run) -> dict | None:
    """One more decode step under a profiler (the rows whose runtime has one); a profiler
    failure is recorded beside the cell's timings, which stand."""
    try:
        return runtime.copy_profile(run)
    except Exception as exc:
        return {"error": first_line(exc)}


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


def _budget_reason(settings: BenchSettings) -> str:
    return f"skipped: time budget of {settings.time_budget:g} s spent"


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
    report.doc["models"] = {name: _model_info(models[name]) for name in ("artifact", "baseline") if models.get(name)}
    if models.get("genai") is not None:
        report.doc["models"]["baseline_genai"] = {"path": str(models["genai"])}
    report.doc["settings"] = settings.to_dict()
    report.doc["method"] = METHOD
    release_device_memory(settings.device)
    unbuilt = models.get("unbuilt", {})  # runtime id -> why its model could not be built
    chosen = [(m, b) for m, b in RUNTIME_ORDER if b in settings.backends]
    plan = [(m, b) for m, b in chosen if _available(m, b, models) or f"{m}/{b}" in unbuilt]
    budget_reason = _budget_reason(settings)
    run_row = _run_row_in_child if settings.rows_in_processes() else _run_row
    for model, backend in plan:
        entry = {"id": f"{model}/{backend}", "model": model, "backend": backend, "status": "loading"}
        report.doc["runtimes"].append(entry)
        if entry["id"] in unbuilt:
            _skip_runtime(report, entry, settings, f"failed: {unbuilt[entry['id']]}")
            log(f"{entry['id']}: {entry['status']}")
            continue
        entry.update(_row_folder(model, backend, models))
        if deadline.expired():
            _skip_runtime(report, entry, settings, budget_reason)
            continue
        log(f"loading {entry['id']}")
        reported: set = set()
        emit = functools.partial(_apply, report, entry, reported, settings, log)
        ended = run_row(model, backend, models, settings, deadline, emit)
        if ended is not None:  # the row's process ended early: the cells it did not report failed
            entry["status"] = ended
            log(f"{entry['id']}: {ended}")
            for batch, context in settings.cells():
                if (batch, context) not in reported:
                    report.add_result(_skipped_cell(entry["id"], batch, context, ended))
    not_run = sum(r["decode"]["status"] == budget_reason for r in report.doc["results"])
    if not_run:
        report.doc["stopped"] = f"time budget of {settings.time_budget:g} s spent after {deadline.elapsed():.0f} s; {not_run} cells not run"
    report.doc["complete"] = True
    report.doc["total_seconds"] = round(deadline.elapsed(), 1)
    report.doc["device"]["load_average_at_end"] = list(os.getloadavg())  # 1/5/15 min: a shared machine shows here
    report.write()
    plot(report.doc, report.plot_path)
    return report.doc


Emit = Callable[[str, object], None]


def _run_row(model: str, backend: str, models: dict, settings: BenchSettings, deadline: Deadline, emit: Emit) -> None:
    """Load one runtime and measure its cells, smallest first. What it finds goes to `emit`:
    ("entry", fields of its bench.json runtimes[] entry), ("result", a cell), ("log", a line),
    or ("skip", why the runtime could not be loaded). Returns None (it ran to its end)."""
    row_id = f"{model}/{backend}"
    in_use = device_used_bytes(settings.device)  # what earlier rows (or other processes) still hold
    start = time.perf_counter()
    try:
        runtime = _make_runtime(model, backend, models, settings)
    except UniAttnError as exc:  # e.g. the library is not built: nothing to measure
        emit("skip", f"skipped: {exc}")
        return None
    except Exception as exc:
        emit("skip", f"failed: {first_line(exc)}")
        return None
    load_seconds = round(time.perf_counter() - start, 2)
    emit("entry", {"status": "ok", "description": runtime.description, "load_seconds": load_seconds,
                   "weight_bytes": runtime.weight_bytes, "memory_method": runtime.memory_method,
                   "device_memory_in_use_before_bytes": in_use})  # fmt: skip
    before = "" if in_use is None else f"; device memory in use before it: {gib(in_use)}"
    emit("log", f"{row_id}: {runtime.description} (loaded in {load_seconds:.1f} s{before})")
    budget_reason = _budget_reason(settings)
    try:
        for batch, context in settings.cells():
            if deadline.expired():
                emit("result", _skipped_cell(row_id, batch, context, budget_reason))
                continue
            result = _measure_cell(runtime, batch, context, settings, deadline.clock)
            emit("result", result)
            emit("log", _cell_line(result))
    finally:
        runtime.close()
    return None


def _run_row_in_child(model: str, backend: str, models: dict, settings: BenchSettings, deadline: Deadline,
                      emit: Emit) -> str | None:  # fmt: skip
    """_run_row in a fresh process (_ROW_PROCESS_START), its messages passed on as
    they come. What one row holds on the device (ONNX Runtime's arenas never shrink, and
    onnxruntime-genai keeps its device allocator for the life of the process) or a CUDA error
    that poisons its context then ends with that process instead of failing the rows after it.
    Returns None when the row ran to its end, else why its process ended early."""
    context = multiprocessing.get_context(_ROW_PROCESS_START)
    messages = context.Queue()
    child = context.Process(target=_row_child, args=(model, backend, models, settings,
                                                     deadline.seconds - deadline.elapsed(), messages),
                            daemon=True)  # fmt: skip
    child.start()
    while True:
        try:
            kind, payload = messages.get(timeout=0.5)
        except queue.Empty:
            if child.is_alive():
                continue
            try:  # it may have ended between the two calls with messages still in the pipe
                kind, payload = messages.get(timeout=2)
            except queue.Empty:
                break
        if kind == "ended":
            child.join()
            return payload
        emit(kind, payload)
    child.join()
    code = child.exitcode
    how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
    return f"failed: the row's process ended ({how}) before the row was done"


def _row_child(model: str, backend: str, models: dict, settings: BenchSettings, seconds_left: float, messages) -> None:
    def emit(kind: str, payload) -> None:
        messages.put((kind, payload))

    try:
        _run_row(model, backend, models, settings, Deadline(seconds_left), emit)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the parent cleans up
        return
    except Exception as exc:  # would have stopped the whole run in one process: here it ends the row
        emit("ended", f"failed: {first_line(exc)}")
        return
    emit("ended", None)


def _apply(report: BenchReport, entry: dict, reported: set, settings: BenchSettings, log: Log, kind: str,
           payload) -> None:  # fmt: skip
    """One message of _run_row into the report: the row's entry, a cell, a log line, a skip."""
    if kind == "entry":
        entry.update(payload)
    elif kind == "result":
        report.add_result(payload)
        reported.add((payload["batch"], payload["context"]))
    elif kind == "skip":
        _skip_runtime(report, entry, settings, payload)
        log(f"{entry['id']}: {entry['status']}")
    else:
        log(payload)


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
    if dtype == "bfloat16" and settings.device == "cpu" and any(b in ARTIFACT_BACKENDS for b in settings.backends):
        raise UniAttnError(
            "onnxruntime's CPU execution provider has no bfloat16 kernels",
            "benchmark bfloat16 artifacts with --device cuda, or export float16/float32 for the CPU",
        )


def _check_positions(settings: BenchSettings, max_positions: int, model: str) -> None:
    """Refuse, before any work, cells longer than the model's positions (every row would fail them)."""
    need = settings.positions_needed()
    if need > max_positions:
        raise UniAttnError(
            f"the largest cell needs {need} positions (context + {settings.decode_length()} warm-up and timed "
            f"decode steps) but {model} has {max_positions}",
            "pass smaller --contexts or fewer --decode-steps",
        )


def run_bench(
    artifact: str | Path | Artifact | list,
    out_dir: str | Path,
    *,
    baseline: str | Path | Artifact | list | None = None,
    build_baseline: bool = False,
    base_checkpoint: str | Path | None = None,
    settings: BenchSettings = BenchSettings(),
    clock: Clock = time.monotonic,
    log: Log = _quiet,
) -> dict:
    """Benchmark `artifact` (and its base model: `baseline`, or one exported here with random
    weights when `build_baseline`) across settings' matrix and backends.

    artifact / baseline: one artifact or a list of at most one per export kind (a dynamic, a
    static and a `--target genai` export of the same model): dynamic ones run the
    ort-library/ort-bodies rows, static ones the ort-static-* rows, genai ones the
    genai-artifact rows. base_checkpoint: the base model's transformers folder, which
    onnxruntime-genai's builder turns into the onnxruntime-genai row's model (in OUT/genai).
    Writes OUT/bench.json (after every cell) and OUT/bench.png; returns the JSON document.
    Cells past settings.time_budget are recorded as skipped; `complete` is True once the run
    reached its end, `stopped` says why cells were not run, `failures` counts failed cells.
    """
    if baseline is not None and build_baseline:
        raise UniAttnError("both a baseline artifact and --baseline build were given", "pass one of them")
    deadline = Deadline(settings.time_budget, clock)
    models: dict = {"artifact": _by_export_kind(artifact, "artifact"), "baseline": {}, "genai": None, "unbuilt": {}}
    models["origins"] = {"artifact": dict.fromkeys(models["artifact"], "given (ARTIFACT)"), "baseline": {}}
    for one in models["artifact"].values():
        _check_dtype(one.dtype, settings)
    if baseline is not None:
        models["baseline"] = _by_export_kind(baseline, "baseline")
        for kind, base in models["baseline"].items():
            if kind not in models["artifact"]:
                what = "is a --target genai export" if kind == "genai" else f"has {kind} caches"
                raise UniAttnError(f"the baseline {base.path} {what} but no artifact is",
                                   "pass the UniAttn artifact of the same kind too")  # fmt: skip
            _check_baseline(models["artifact"][kind], base)
            models["origins"]["baseline"][kind] = "given (--baseline)"
    for one in models["artifact"].values():  # after the checks of what was given
        _check_positions(settings, one.max_positions, f"the model of {one.path}")
    report = _open_report(Path(out_dir), settings, "artifact")
    if build_baseline:
        report.doc["build"] = {}
        for kind, one in models["artifact"].items():
            folder = report.out_dir / ("baseline_artifact" if kind == "dynamic" else f"baseline_artifact_{kind}")
            models["baseline"][kind], report.doc["build"][kind] = build_baseline_for(one, folder, seed=settings.seed, log=log)
            done = "reused" if report.doc["build"][kind]["baseline"]["reused"] else "exported"
            models["origins"]["baseline"][kind] = f"--baseline build: {done}, random weights (build.{kind})"
    if base_checkpoint is not None and GENAI_BACKEND in settings.backends:
        dtype = next(iter(models["artifact"].values())).dtype
        _build_genai(Path(base_checkpoint), report.out_dir / "genai", dtype, settings, report, models, log)
    return _measure_all(models, settings, report, deadline, log)


def _build_genai(checkpoint: Path, out: Path, dtype: str, settings: BenchSettings, report: BenchReport, models: dict,
                 log: Log) -> None:  # fmt: skip
    """The onnxruntime-genai row's model, built by its builder into models["genai"]; a failure
    is recorded (build.genai) as that row's failure, and the rest of the run goes on."""
    try:
        folder, info = build_genai_model(checkpoint, out, dtype, settings.device, log)
    except UniAttnError as exc:
        report.doc.setdefault("build", {})["genai"] = {"status": f"failed: {exc}"}
        models["unbuilt"][f"baseline/{GENAI_BACKEND}"] = f"building its model: {exc}"
        log(f"onnxruntime-genai: {exc}")
        return
    report.doc.setdefault("build", {})["genai"] = {"status": "ok", **info}
    models["genai"] = folder


def run_preset(
    preset: str,
    out_dir: str | Path,
    *,
    work_dir: str | Path | None = None,
    dtype: str = "float16",
    settings: BenchSettings = BenchSettings(),
    clock: Clock = time.monotonic,
    log: Log = _quiet,
    export_processes: int | None = None,
) -> dict:
    """Build a UniAttn artifact (SuperBlocks of 4 over the top half of the layers) and its
    base model from a shape preset with random weights (or reuse them from `work_dir`), each
    with dynamic caches, with static caches of capacity >= the largest context + warm-up +
    timed steps when a static ORT row runs, and as `--target genai` folders of that capacity
    when the genai-artifact row runs; the base weights also as a transformers folder for
    onnxruntime-genai's builder when that row runs. Then benchmark them like run_bench.
    The build counts against settings.time_budget; a failed export is recorded in bench.json
    before the error is raised, except for the genai folders and genai's builder: those
    failures are their rows' (the other rows do not depend on them). export_processes: the
    exports run at once (None: as many as cores and memory allow, `export_workers`)."""
    import torch

    deadline = Deadline(settings.time_budget, clock)
    _check_dtype(dtype, settings)
    if preset in PRESETS:  # an unknown one gets its own message from preset_targets
        _check_positions(settings, preset_config(preset).max_position_embeddings, f"the {preset} preset")
    report = _open_report(Path(out_dir), settings, f"preset {preset}")
    work_dir = Path(work_dir) if work_dir is not None else report.out_dir / "work"
    needed = max(settings.contexts) + settings.decode_length() if needs_capacity(settings.backends) else None
    make_config, targets = preset_targets(
        preset, work_dir, capacity_needed=needed, dynamic=any(b in DYNAMIC_ORT_BACKENDS for b in settings.backends),
        static=any(b in STATIC_ORT_BACKENDS for b in settings.backends), genai=GENAI_ARTIFACT_BACKEND in settings.backends,
    )  # fmt: skip
    genai_folders = [name for name, target in targets.items() if target.layout == "genai"]
    genai = GENAI_BACKEND in settings.backends
    checkpoint = work_dir / BASE_CHECKPOINT_FOLDER if genai else None
    import transformers

    report.doc["build"] = {"status": "running", "preset": preset, "dtype": dtype, "torch": torch.__version__,
                           "transformers": transformers.__version__, "risk": EXPORT_RISK}  # fmt: skip
    report.write()
    log(f"torch {torch.__version__}, transformers {transformers.__version__}: building the {preset} artifacts ({EXPORT_RISK})")
    start = time.perf_counter()
    try:
        built, steps = build_pair(make_config, targets, dtype, logits="last", seed=settings.seed, log=log,
                                  base_checkpoint=checkpoint, may_fail=genai_folders,
                                  workers=export_processes)  # fmt: skip
    except UniAttnError:
        raise
    except Exception as exc:
        report.doc["build"]["status"] = f"failed: {first_line(exc)}"
        report.write()
        raise UniAttnError(f"building the {preset} artifacts failed on torch {torch.__version__} ({first_line(exc)})", EXPORT_RISK) from exc
    report.doc["build"].update(status="ok", seconds=round(time.perf_counter() - start, 1), steps=steps)
    models: dict = {"artifact": {}, "baseline": {}, "genai": None, "unbuilt": {}, "origins": {"artifact": {}, "baseline": {}},
                    "preset": (make_config, dtype)}  # fmt: skip
    for name in targets:
        model, _, kind = name.partition("-")
        kind = kind or "dynamic"
        if name in built:
            models[model][kind] = built[name]
            done = "reused from" if steps[name].get("reused") else "exported to"
            models["origins"][model][kind] = f"preset build: {done} {targets[name].folder} (build.steps.{name})"
        else:  # a genai folder whose export failed
            error = steps[name]["status"].removeprefix("failed: ")
            models["unbuilt"][f"{model}/{GENAI_ARTIFACT_BACKEND}"] = f"exporting {targets[name].folder}: {error}"
    if genai:
        _build_genai(checkpoint, work_dir / f"genai_{settings.device}_{dtype}", dtype, settings, report, models, log)
    return _measure_all(models, settings, report, deadline, log)


def prepare_preset(
    preset: str, out_dir: str | Path, *, dtype: str = "float16", seed: int = 0, capacity_needed: int | None = None,
    genai: bool = False, log: Log = _quiet, export_processes: int | None = None,
) -> dict:  # fmt: skip
    """The preset's artifacts without their external weight files (small enough to carry to a
    machine whose exporter fails; `run_preset(work_dir=out_dir)` refills the weights there):
    the dynamic pair and, with capacity_needed, the static pair of at least that capacity, and
    with genai=True too the `--target genai` pair (re-exported where the bench runs if the
    custom-op library it would ship there differs)."""
    make_config, targets = preset_targets(preset, Path(out_dir), capacity_needed=capacity_needed, genai=genai)
    _, steps = build_pair(make_config, targets, dtype, logits="last", seed=seed, log=log, external_data=True,
                          workers=export_processes)
    sizes = {name: strip_weights(target.folder) for name, target in targets.items()}
    return {"preset": preset, "dtype": dtype, "steps": steps, "bytes_left": sizes}
