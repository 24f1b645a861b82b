"""The benchmark run on the CPU with tiny artifacts: what it records (numbers are not
asserted, their relations are), the runtimes' decode on a directly built cache, the time
budget, skips and failures, and the errors for bad input."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import signal

import numpy as np
import pytest
import torch

from uniattn_export.bench import run as bench_run
from uniattn_export.bench import run_bench, run_preset
from uniattn_export.bench.report import JSON_FILE, PLOT_FILE, RATIOS, compute_ratios
from uniattn_export.bench.runtimes import DecodeRun, OrtRuntime, Runtime, TransformersRuntime
from uniattn_export.bench.settings import BenchSettings
from uniattn_export.errors import UniAttnError

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny models: per-op overhead only

# The tiny preset: 6 layers, 2 KV heads of 16, layers 4-5 consume layer 3 (no K), float32.
LAYERS, KV_HEADS, HEAD_DIM, CONSUMERS, ITEMSIZE = 6, 2, 16, 2, 4


def kv_bytes(batch: int, context: int, consumers: int) -> int:
    """K and V for every layer but no K for consumers (the layer map formula)."""
    return batch * context * (2 * LAYERS - consumers) * KV_HEADS * HEAD_DIM * ITEMSIZE


def test_the_document_covers_every_runtime_and_cell(preset_run):
    doc, out, _ = preset_run
    assert doc["complete"] and doc["stopped"] is None and doc["failures"] == 0
    assert json.loads((out / JSON_FILE).read_text()) == doc
    ids = [r["id"] for r in doc["runtimes"]]
    assert ids == [
        "baseline/transformers-dynamic", "artifact/ort-library", "baseline/ort-library",
        "artifact/ort-bodies", "baseline/ort-bodies",
    ]  # fmt: skip
    # ort-library rows need the custom-op library (built by `pip install .`).
    assert [r["status"] for r in doc["runtimes"]] == ["ok"] * len(ids)
    cells = {(r["runtime"], r["batch"], r["context"]) for r in doc["results"]}
    assert cells == set(itertools.product(ids, (1, 2), (8, 24)))
    assert len(doc["results"]) == len(cells)
    assert doc["models"]["artifact"]["consumers"] == [4, 5] and doc["models"]["baseline"]["consumers"] == []
    assert doc["device"]["type"] == "cpu" and doc["settings"]["batches"] == [1, 2]


def test_measurements_are_consistent(preset_run):
    doc, _, _ = preset_run
    weights = {r["id"]: r["weight_bytes"] for r in doc["runtimes"]}
    for result in doc["results"]:
        batch, context, decode, prefill = result["batch"], result["context"], result["decode"], result["prefill"]
        assert decode["status"] == prefill["status"] == "ok", result
        assert decode["samples"] == 3 and prefill["samples"] == 2 and len(decode["warmup_ms"]) == 1
        assert 0 < decode["min_ms"] <= decode["median_ms"] <= decode["p90_ms"]
        assert 0 < prefill["min_ms"] <= prefill["median_ms"] <= prefill["p90_ms"]
        # The derived rates are pinned with hand-computed numbers in
        # test_rates_and_bandwidth_from_known_step_times; here: the bytes they are derived from.
        assert decode["min_bytes_per_step"] == weights[result["runtime"]] + result["kv_cache_bytes"]
        assert result["peak_memory_bytes"] is None  # no device memory on the CPU


def test_kv_cache_bytes_follow_the_layer_map(preset_run):
    doc, _, _ = preset_run
    for result in doc["results"]:
        consumers = CONSUMERS if result["runtime"].startswith("artifact/") else 0
        assert result["kv_cache_bytes"] == kv_bytes(result["batch"], result["context"], consumers), result["runtime"]
    # The ORT artifacts and transformers agree on the base model's weights too.
    weights = {r["id"]: r["weight_bytes"] for r in doc["runtimes"]}
    assert weights["baseline/ort-bodies"] == pytest.approx(weights["baseline/transformers-dynamic"], rel=0.01)


def test_ratios_divide_medians_of_the_same_cell(preset_run):
    doc, _, _ = preset_run
    medians = {(r["runtime"], r["batch"], r["context"], phase): r[phase]["median_ms"]
               for r in doc["results"] for phase in ("decode", "prefill")}  # fmt: skip
    names = {entry["name"] for entry in doc["ratios"]}
    ran = {r["id"] for r in doc["runtimes"]}
    assert names == {name for name, numerator, denominator in RATIOS if {numerator, denominator} <= ran}
    for entry in doc["ratios"]:
        for phase in ("decode", "prefill"):  # both medians exist: the ratio was computed from them
            assert medians[(entry["numerator"], entry["batch"], entry["context"], phase)] > 0
            assert medians[(entry["denominator"], entry["batch"], entry["context"], phase)] > 0
    assert len(doc["ratios"]) == len(names) * 4


class _TimedRuntime(Runtime):
    """A runtime whose steps take known times: decode 4, 2, 3 ms (median 3), prefill 500 and
    250 ms (median 375); 2.0e9 weight bytes and a 1.0e9-byte cache."""

    description, weight_bytes, memory_method = "known step times", 2_000_000_000, "none"

    class _Run(DecodeRun):
        kv_cache_bytes = 1_000_000_000

        def __init__(self):
            self.times = iter([0.010, 0.004, 0.002, 0.003])  # the first is the untimed warmup

        def step(self):
            return next(self.times)

        def last_logits(self):
            return np.zeros((1, 1, 4), np.float32)

    def __init__(self):
        super().__init__("artifact", "ort-bodies", "cpu", 0)
        self.prefill_times = iter([1.0, 0.5, 0.25])  # the first is the untimed warmup

    def prefill_bytes(self, batch, length):
        return 0

    def prefill(self, batch, length):
        return next(self.prefill_times)

    def start_decode(self, batch, context, steps):
        return self._Run()

    def peak_memory(self):
        return None


def test_rates_and_bandwidth_from_known_step_times():
    settings = BenchSettings(batches=(8,), contexts=(300,), device="cpu", decode_steps=3, warmup_steps=1,
                             prefill_repeats=2, cell_seconds=1e9)  # fmt: skip
    no_deadline = lambda: 0.0  # noqa: E731
    decode = bench_run._decode(_TimedRuntime(), 8, 300, settings, 1.0, no_deadline)
    assert (decode["median_ms"], decode["min_ms"], decode["p90_ms"], decode["samples"]) == pytest.approx((3.0, 2.0, 3.8, 3))
    assert decode["tokens_per_s"] == pytest.approx(8 / 0.003)  # 2666.67: 8 rows, one token each, per 3 ms
    # (2.0e9 + 1.0e9) bytes per 3 ms step = 1.0e12 B/s = 1000 GB/s
    assert decode["effective_bandwidth_gbps"] == pytest.approx(1000.0)
    prefill = bench_run._prefill(_TimedRuntime(), 2, 300, settings, 1.0, no_deadline)
    assert (prefill["median_ms"], prefill["warmup_ms"]) == pytest.approx((375.0, 1000.0))
    assert prefill["tokens_per_s"] == pytest.approx(1600.0)  # 2 x 300 tokens per 0.375 s


def test_ratios_from_known_medians():
    numerator, denominator = "artifact/ort-library", "baseline/ort-library"
    name = next(n for n, top, bottom in RATIOS if (top, bottom) == (numerator, denominator))
    cell = lambda runtime, decode, prefill: {  # noqa: E731
        "runtime": runtime, "batch": 1, "context": 8,
        "decode": {"status": "ok", "median_ms": decode}, "prefill": {"status": "ok", "median_ms": prefill},
    }  # fmt: skip
    ratios = compute_ratios([cell(numerator, 6.0, 9.0), cell(denominator, 4.0, 12.0)])
    assert ratios == [{"name": name, "numerator": numerator, "denominator": denominator, "batch": 1, "context": 8,
                       "decode": 1.5, "prefill": 0.75}]  # fmt: skip


def test_plot_is_a_png(preset_run):
    import matplotlib.image

    _, out, _ = preset_run
    image = matplotlib.image.imread(out / PLOT_FILE)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 300
    assert image.std() > 0.01  # lines were drawn, not an empty canvas


def _decode_logits(runtime, batch=2, context=20, steps=3) -> np.ndarray:
    run = runtime.start_decode(batch, context, steps)
    for _ in range(steps):
        run.step()
    logits = run.last_logits()
    runtime.close()
    return logits


def test_library_and_function_bodies_decode_the_same_cache_alike(artifacts):
    uniattn, _ = artifacts
    library = _decode_logits(OrtRuntime(uniattn, "artifact", "ort-library", "cpu", seed=5))
    bodies = _decode_logits(OrtRuntime(uniattn, "artifact", "ort-bodies", "cpu", seed=5))
    assert library.shape == (2, 1, 256) and np.isfinite(library).all()
    np.testing.assert_allclose(library, bodies, rtol=1e-4, atol=1e-4)
    other = _decode_logits(OrtRuntime(uniattn, "artifact", "ort-bodies", "cpu", seed=6))
    assert np.abs(other - bodies).max() > 1e-3  # the cache's values matter: they were bound


def test_ort_decode_grows_the_cache_like_generation(artifacts):
    uniattn, _ = artifacts
    runtime = OrtRuntime(uniattn, "artifact", "ort-bodies", "cpu", seed=0)
    run = runtime.start_decode(2, 10, 2)
    for _ in range(2):
        run.step()
    shapes = {name: value.shape() for name, value in run.pasts.items()}
    assert shapes["past_key_values.4.value"] == [2, KV_HEADS, 12, HEAD_DIM]
    assert "past_key_values.4.key" not in shapes and shapes["past_key_values.3.key"] == [2, KV_HEADS, 12, HEAD_DIM]
    runtime.close()


def test_static_cache_decodes_like_the_dynamic_cache(artifacts):
    """The bench fills a StaticCache directly; with its unfilled slots masked, it must give
    the DynamicCache's logits (same seed: same weights, cache and tokens)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(artifacts[1].path)
    dynamic = _decode_logits(TransformersRuntime(config, "float32", "transformers-dynamic", "cpu", seed=3))
    static = _decode_logits(TransformersRuntime(config, "float32", "transformers-static", "cpu", seed=3))
    compiled = _decode_logits(
        TransformersRuntime(config, "float32", "transformers-static-compiled", "cpu", seed=3, compile_backend="eager")
    )
    np.testing.assert_allclose(static, dynamic, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(compiled, dynamic, rtol=1e-5, atol=1e-5)


def test_compile_runs_only_on_requested_shapes(artifacts, settings, tmp_path):
    uniattn, base = artifacts
    chosen = settings(backends=("transformers-static-compiled",), compile_shapes=frozenset({(1, 8)}),
                      compile_backend="eager")  # fmt: skip
    doc = run_bench(uniattn, tmp_path, baseline=base, settings=chosen)
    decode = {(r["batch"], r["context"]): r["decode"] for r in doc["results"]}
    assert decode[(1, 8)]["status"] == "ok" and decode[(1, 8)]["compile_seconds"] > 0
    assert decode[(2, 24)]["status"] == "skipped: torch.compile not requested for this shape (--compile 2x24)"
    assert all(r["prefill"]["status"].startswith("not measured: generate() prefills eagerly") for r in doc["results"])


def test_time_budget_stops_gracefully(artifacts, settings, tmp_path):
    ticks = itertools.count()
    doc = run_bench(*artifacts[:1], tmp_path, baseline=artifacts[1], settings=settings(time_budget=12.0),
                    clock=lambda: float(next(ticks)))  # fmt: skip
    statuses = [r["decode"]["status"] for r in doc["results"]]
    budget = "skipped: time budget of 12 s spent"
    assert statuses[0] == "ok" and budget in statuses
    first_skip = statuses.index(budget)
    assert set(statuses[first_skip:]) == {budget}  # nothing ran after the budget was spent
    assert doc["complete"] and doc["stopped"].startswith("time budget of 12 s spent after")
    assert f"{statuses.count(budget)} cells not run" in doc["stopped"]
    assert json.loads((tmp_path / JSON_FILE).read_text()) == doc and (tmp_path / PLOT_FILE).is_file()


def test_missing_library_skips_its_runtimes(artifacts, settings, tmp_path, monkeypatch):
    monkeypatch.setattr("uniattn_export.bench.runtimes.ort_custom_op_library", lambda: None)
    doc = run_bench(artifacts[0], tmp_path, settings=settings(backends=("ort-library",)))
    reason = "skipped: the custom-op library (libuniattn_ort.so) is not built. Build the package's native libraries."
    assert [r["status"] for r in doc["runtimes"]] == [reason]
    assert {r["decode"]["status"] for r in doc["results"]} == {reason} and doc["failures"] == 0


def test_failures_and_out_of_memory_are_recorded_and_the_run_goes_on(artifacts, settings, tmp_path, monkeypatch):
    def decode_fails(self, batch, context, steps):
        if batch == 1:
            raise RuntimeError("Failed to allocate memory for requested buffer of size 1073741824")
        raise ValueError("the kernel refused")

    monkeypatch.setattr(OrtRuntime, "start_decode", decode_fails)
    chosen = settings(backends=("ort-bodies", "transformers-dynamic"), contexts=(8,))
    doc = run_bench(artifacts[0], tmp_path, settings=chosen)
    decode = {(r["runtime"], r["batch"]): r["decode"]["status"] for r in doc["results"]}
    assert decode[("artifact/ort-bodies", 1)].startswith("skipped: out of memory (RuntimeError: Failed to allocate")
    assert decode[("artifact/ort-bodies", 2)] == "failed: ValueError: the kernel refused"
    assert decode[("baseline/transformers-dynamic", 2)] == "ok"  # the run went on
    assert all(r["prefill"]["status"] == "ok" for r in doc["results"])
    assert doc["failures"] == 1 and doc["complete"]


def test_prefill_that_cannot_fit_is_skipped(artifacts, settings, tmp_path, monkeypatch):
    monkeypatch.setattr("uniattn_export.bench.run.device_free_bytes", lambda device: 1 << 10)
    doc = run_bench(artifacts[0], tmp_path, settings=settings(backends=("ort-bodies",), contexts=(8,), batches=(1,)))
    (result,) = doc["results"]
    assert result["prefill"]["status"] == (
        f"skipped: needs ~{result['prefill']['estimated_bytes'] / (1 << 30):.2f} GiB of device memory, 0.00 GiB free"
    )
    assert result["decode"]["status"] == "ok"


def test_baseline_can_be_built_from_the_artifact(artifacts, settings, tmp_path):
    doc = run_bench(artifacts[0], tmp_path, build_baseline=True,
                    settings=settings(backends=("ort-bodies",), batches=(1,), contexts=(8,)))  # fmt: skip
    assert doc["models"]["baseline"]["consumers"] == []
    assert doc["models"]["baseline"]["paths"] == {"dynamic": str(tmp_path / "baseline_artifact")}
    assert [r["runtime"] for r in doc["results"]] == ["artifact/ort-bodies", "baseline/ort-bodies"]
    assert doc["results"][1]["kv_cache_bytes"] == kv_bytes(1, 8, 0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda a, b, out, s: run_bench(a.path / "nope", out, settings=s), r"artifact folder .*nope does not exist"),
        (lambda a, b, out, s: run_bench(a, out, baseline=a, settings=s), r"the baseline .* has SuperBlocks \(6 layers"),
        (lambda a, b, out, s: run_bench(a, out, baseline=b, build_baseline=True, settings=s),
         "both a baseline artifact and --baseline build were given"),
        (lambda a, b, out, s: run_preset("tiny", out, dtype="bfloat16", settings=s),
         "onnxruntime's CPU execution provider has no bfloat16 kernels"),
        (lambda a, b, out, s: run_bench(a, out, settings=dataclasses.replace(s, contexts=(100_000,))),
         r"the largest cell needs 100\d\d\d positions \(context \+ \d+ warm-up and timed decode steps\) "
         r"but the model of .* has \d+\. Pass smaller --contexts or fewer --decode-steps"),
        (lambda a, b, out, s: run_preset("tiny", out, settings=dataclasses.replace(s, contexts=(510,))),
         r"the largest cell needs 5\d\d positions .* but the tiny preset has 512\."),
    ],
)  # fmt: skip
def test_bad_input_is_one_clear_error_and_writes_nothing(artifacts, settings, tmp_path, call, message):
    out = tmp_path / "out"
    with pytest.raises(UniAttnError, match=message):
        call(*artifacts, out, settings())
    assert not out.exists()


def test_cuda_without_a_gpu(artifacts, settings, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UniAttnError, match="no CUDA device is visible to torch. Run on a GPU machine or pass --device cpu"):
        run_bench(artifacts[0], tmp_path / "out", settings=settings(device="cuda"))
    assert not (tmp_path / "out").exists()


def test_output_folder_that_is_a_file(artifacts, settings, tmp_path):
    (tmp_path / "taken").write_text("")
    with pytest.raises(UniAttnError, match="is a file. Pass a folder for the benchmark's outputs"):
        run_bench(artifacts[0], tmp_path / "taken", settings=settings())


def test_rows_in_their_own_processes_record_what_one_process_records(artifacts, settings, tmp_path):
    chosen = settings(backends=("ort-bodies", "transformers-dynamic"), batches=(1,), contexts=(8,))
    lines: list[str] = []
    doc = run_bench(*artifacts[:1], tmp_path / "spawned", baseline=artifacts[1],
                    settings=dataclasses.replace(chosen, row_processes=True), log=lines.append)  # fmt: skip
    same = run_bench(*artifacts[:1], tmp_path / "same", baseline=artifacts[1], settings=chosen)
    assert doc["settings"]["row_processes"] is True and same["settings"]["row_processes"] is False
    assert [(r["id"], r["status"], r["weight_bytes"]) for r in doc["runtimes"]] == [
        (r["id"], r["status"], r["weight_bytes"]) for r in same["runtimes"]
    ]
    assert doc["failures"] == 0 and all(r["load_seconds"] > 0 for r in doc["runtimes"])
    keys = ["runtime", "batch", "context", "kv_cache_bytes"]
    assert [[r[k] for k in keys] for r in doc["results"]] == [[r[k] for k in keys] for r in same["results"]]
    assert all(r[phase]["status"] == "ok" and r[phase]["samples"] > 0 for r in doc["results"] for phase in ("decode", "prefill"))
    # the child's log lines reach the parent's log, in order
    ort = lines.index("loading artifact/ort-bodies")
    assert lines[ort + 1].startswith("artifact/ort-bodies: ") and "(loaded in " in lines[ort + 1]
    assert lines[ort + 2].startswith("artifact/ort-bodies B=1 S=8: prefill ")


@pytest.mark.parametrize(("how", "ended"), [(lambda: os._exit(3), "exit code 3"),
                                            (lambda: os.kill(os.getpid(), signal.SIGKILL), "signal SIGKILL")],
                         ids=["exits", "killed"])  # fmt: skip
def test_a_row_whose_process_dies_is_recorded_and_the_run_goes_on(artifacts, settings, tmp_path, monkeypatch, how, ended):
    # forked, so that the patch below reaches the row's process (spawned on CUDA)
    monkeypatch.setattr(bench_run, "_ROW_PROCESS_START", "fork")
    measure = OrtRuntime.start_decode

    def start_decode(self, batch, context, steps):
        if batch == 2:
            how()  # the process ends here, as after a CUDA error that kills it
        return measure(self, batch, context, steps)

    monkeypatch.setattr(OrtRuntime, "start_decode", start_decode)
    chosen = settings(backends=("ort-bodies", "transformers-dynamic"), contexts=(8,), row_processes=True)
    doc = run_bench(artifacts[0], tmp_path, settings=chosen)
    reason = f"failed: the row's process ended ({ended}) before the row was done"
    status = {r["id"]: r["status"] for r in doc["runtimes"]}
    assert status == {"artifact/ort-bodies": reason, "baseline/transformers-dynamic": "ok"}
    cells = {(r["runtime"], r["batch"]): r for r in doc["results"]}
    assert cells[("artifact/ort-bodies", 1)]["decode"]["status"] == "ok"  # reported before it died
    assert cells[("artifact/ort-bodies", 2)]["decode"]["status"] == reason
    assert cells[("artifact/ort-bodies", 2)]["prefill"]["status"] == reason
    assert cells[("baseline/transformers-dynamic", 2)]["decode"]["status"] == "ok"  # the run went on
    assert len(doc["results"]) == 4 and doc["failures"] == 2 and doc["complete"]  # its prefill and decode


def test_an_error_that_would_stop_the_run_ends_only_its_row_process(artifacts, settings, tmp_path, monkeypatch):
    monkeypatch.setattr(bench_run, "_ROW_PROCESS_START", "fork")

    def broken(*args):
        raise RuntimeError("the cell could not start")

    monkeypatch.setattr(bench_run, "_measure_cell", broken)
    chosen = settings(backends=("ort-bodies",), batches=(1,), contexts=(8,), row_processes=True)
    doc = run_bench(artifacts[0], tmp_path, baseline=artifacts[1], settings=chosen)
    reason = "failed: RuntimeError: the cell could not start"
    assert [(r["id"], r["status"]) for r in doc["runtimes"]] == [("artifact/ort-bodies", reason), ("baseline/ort-bodies", reason)]
    assert [r["decode"]["status"] for r in doc["results"]] == [reason, reason] and doc["complete"]


def test_a_preset_with_only_transformers_rows_builds_no_artifact(preset_run, settings, tmp_path):
    chosen = settings(backends=("transformers-dynamic",), batches=(1,), contexts=(8,))
    doc = run_preset("tiny", tmp_path / "out", work_dir=tmp_path / "work", dtype="float32", settings=chosen)
    assert [(r["id"], r["status"]) for r in doc["runtimes"]] == [("baseline/transformers-dynamic", "ok")]
    assert doc["build"]["steps"] == {} and doc["failures"] == 0
    # the preset's architecture, as the transformers row of a run with artifacts builds it
    weights = {r["id"]: r["weight_bytes"] for r in preset_run[0]["runtimes"]}
    assert doc["runtimes"][0]["weight_bytes"] == weights["baseline/transformers-dynamic"]
