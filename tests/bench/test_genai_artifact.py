"""The genai-artifact rows: our `--target genai` exports (UniAttn and base) run by
onnxruntime-genai the way the onnxruntime-genai row runs its builder's model, on the CPU with
the tiny preset. Needs onnxruntime-genai (the `genai` extra) and the custom-op library of op
version 2 (kernel ABI >= 2), which the folders ship."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest

from uniattn_export.bench import BenchSettings, run_bench, run_preset
from uniattn_export.bench.build import (
    Target, build_pair, export_random_model, preset_targets, random_base_weights, reuse_artifact,
)  # fmt: skip
from uniattn_export.bench.report import summary_table
from uniattn_export.bench.runtimes import GenaiRuntime
from uniattn_export.errors import UniAttnError
from uniattn_export.export import load_artifact
from uniattn_export.model.config import UniAttnConfig
from uniattn_export.model.synthetic import preset_config
from uniattn_export.native import ORT_LIBRARY
from uniattn_export.targets.genai.runner import genai_config
from uniattn_export.targets.ort import OrtSession

from .conftest import assert_ratios_divide_medians

pytestmark = pytest.mark.usefixtures("single_torch_thread")

# The tiny preset: 6 layers, 2 KV heads of 16, layers 4-5 consume layer 3 (no K), float32.
LAYERS, KV_HEADS, HEAD_DIM, CONSUMERS, ITEMSIZE = 6, 2, 16, 2, 4
GENAI_ROWS = ["artifact/genai-artifact", "baseline/genai-artifact"]
EOS = preset_config("tiny").eos_token_id


def _settings(**overrides) -> BenchSettings:
    fields = dict(
        batches=(1, 2), contexts=(8, 24), device="cpu", decode_steps=3, warmup_steps=1, prefill_repeats=2,
        backends=("ort-static-library", "onnxruntime-genai", "genai-artifact"),
    )  # fmt: skip
    fields.update(overrides)
    return BenchSettings(**fields)


@pytest.fixture(scope="session")
def genai_run(work, tmp_path_factory):
    """(document, work folder) of a preset run with our genai folders, genai's own build and
    the static library rows (the same capacity as test_static's run: its static pair is reused)."""
    out = tmp_path_factory.mktemp("genai_run")
    return run_preset("tiny", out, work_dir=work, dtype="float32", settings=_settings()), work


def test_genai_artifact_rows_run_our_genai_exports(genai_run):
    doc, work = genai_run
    rows = {r["id"]: r for r in doc["runtimes"]}
    assert list(rows) == ["artifact/ort-static-library", "baseline/ort-static-library", "baseline/onnxruntime-genai",
                          *GENAI_ROWS]  # fmt: skip
    assert all(r["status"] == "ok" for r in rows.values()) and doc["failures"] == 0 and doc["complete"]
    for row, folder, target in (("artifact/genai-artifact", "uniattn_genai", "artifact-genai"),
                                ("baseline/genai-artifact", "base_genai", "baseline-genai")):  # fmt: skip
        entry = rows[row]
        assert entry["folder"] == str(work / folder)
        assert entry["folder_origin"].startswith("preset build: ") and entry["folder_origin"].endswith(f"(build.steps.{target})")
        assert doc["build"]["steps"][target]["path"] == str(work / folder)
        artifact = load_artifact(work / folder)
        assert (artifact.cache_layout, artifact.cache_mode, artifact.capacity) == ("genai", "static", 256)
        # the folder ships the library, and onnxruntime-genai registered it
        assert genai_config(work / folder)["model"]["decoder"]["session_options"]["custom_ops_library"] == ORT_LIBRARY
        assert f"our --target genai export, custom-op library {ORT_LIBRARY} in the folder ({work / folder})" in entry["description"]
    assert rows["baseline/onnxruntime-genai"]["folder_origin"] == "built by onnxruntime-genai's model builder (build.genai)"
    assert rows["artifact/ort-static-library"]["folder"] == str(work / "uniattn_static")
    assert doc["models"]["artifact"]["paths"]["genai"] == str(work / "uniattn_genai")
    for result in doc["results"]:
        if result["runtime"] in GENAI_ROWS:
            assert result["prefill"]["status"] == result["decode"]["status"] == "ok", result
            consumers = CONSUMERS if result["runtime"].startswith("artifact/") else 0
            # the model's own cache: consumers keep no K (genai's pseudo layer pairs their V)
            expected = result["batch"] * result["context"] * (2 * LAYERS - consumers) * KV_HEADS * HEAD_DIM * ITEMSIZE
            assert result["kv_cache_bytes"] == expected


def test_ratios_and_table_of_the_genai_artifact_rows(genai_run):
    doc, _ = genai_run
    assert_ratios_divide_medians(doc, (
        ("uniattn genai-artifact / onnxruntime-genai", "artifact/genai-artifact", "baseline/onnxruntime-genai"),
        ("base genai-artifact / onnxruntime-genai", "baseline/genai-artifact", "baseline/onnxruntime-genai"),
        ("uniattn / base, genai-artifact", "artifact/genai-artifact", "baseline/genai-artifact"),
        ("genai-artifact / ort-static-library, uniattn", "artifact/genai-artifact", "artifact/ort-static-library"),
    ), phases=("decode", "prefill"))  # fmt: skip
    table = summary_table(doc)
    headers = [column.header for column in table.columns]
    assert "ua genai ours" in headers and "base genai ours" in headers and "ua genai ours/genai" in headers


def test_the_timed_decode_is_greedy_generation_of_our_folder(genai_run):
    """The row's decode run (prefill of random ids, then generate_next_token per timed step)
    generates exactly the greedy tokens our own runtime generates from that folder."""
    _, work = genai_run
    artifact = load_artifact(work / "uniattn_genai")
    runtime = GenaiRuntime(artifact, "artifact", "cpu", seed=5)
    assert runtime.id == "artifact/genai-artifact"
    context, steps = 20, 6
    run = runtime.start_decode(2, context, steps)
    for _ in range(steps):
        run.step()
    sequences = [list(run.generator.get_sequence(row)) for row in range(2)]
    del run
    runtime.close()
    prompts = [sequence[:context] for sequence in sequences]
    theirs = [sequence[context:] for sequence in sequences]  # the first pick + one per step
    ours = OrtSession(artifact, custom_ops=True).generate(prompts, steps + 1).tokens.tolist()
    assert all(EOS not in row for row in ours)  # min_length masks eos in genai; greedy never chose it here
    assert theirs == ours
    assert prompts[0] != prompts[1] and len(set(ours[0])) > 1


def test_cells_beyond_the_capacity_are_skipped(genai_run):
    _, work = genai_run
    runtime = GenaiRuntime(load_artifact(work / "base_genai"), "baseline", "cpu", seed=0)
    assert runtime.unsupported("decode", 1, 250, 6) is None
    assert runtime.unsupported("decode", 1, 251, 6) == (
        "needs a cache of 257 tokens, the artifact holds 256 (export with --max-length 257 or more)"
    )
    runtime.close()


def test_artifact_mode_takes_a_genai_export_and_builds_its_baseline(genai_run, tmp_path):
    _, work = genai_run
    out = tmp_path / "out"
    settings = _settings(batches=(1,), contexts=(8,), backends=("genai-artifact",), prefill=False)
    doc = run_bench([work / "uniattn_genai"], out, build_baseline=True, settings=settings)
    rows = {r["id"]: r for r in doc["runtimes"]}
    assert list(rows) == GENAI_ROWS and all(r["status"] == "ok" for r in rows.values())
    assert rows["artifact/genai-artifact"]["folder_origin"] == "given (ARTIFACT)"
    assert rows["baseline/genai-artifact"]["folder"] == str(out / "baseline_artifact_genai")
    assert rows["baseline/genai-artifact"]["folder_origin"] == "--baseline build: exported, random weights (build.genai)"
    base = load_artifact(out / "baseline_artifact_genai")
    assert (base.cache_layout, base.capacity, base.uniattn.consumers) == ("genai", 256, [])
    assert genai_config(base.path)["model"]["decoder"]["num_hidden_layers"] == LAYERS
    assert [r["decode"]["status"] for r in doc["results"]] == ["ok", "ok"]


def test_two_genai_exports_and_a_genai_baseline_without_artifact_are_refused(genai_run, tmp_path):
    _, work = genai_run
    with pytest.raises(UniAttnError, match=r"two --target genai artifacts were given .* Pass at most one artifact per "
                                           r"cache mode \(and one --target genai export\)"):  # fmt: skip
        run_bench([work / "uniattn_genai", work / "base_genai"], tmp_path / "out")
    with pytest.raises(UniAttnError, match=r"the baseline .*base_genai is a --target genai export but no artifact is"):
        run_bench([work / "uniattn_static"], tmp_path / "out", baseline=[work / "base_genai"])


def test_a_dynamic_cache_genai_export_is_refused(tmp_path):
    """The genai-artifact rows run static caches (CUDA graphs need them)."""
    config = preset_config("tiny")
    weights = random_base_weights(config, "float32", seed=0)
    folder = export_random_model(lambda: preset_config("tiny"), UniAttnConfig.none(LAYERS), weights, tmp_path / "dyn",
                                 logits="all", seed=0, layout="genai")  # fmt: skip
    assert (folder / "genai_config.json").is_file()
    with pytest.raises(UniAttnError, match=r"dyn is a --target genai export with dynamic caches; the genai-artifact rows "
                                           r"run static ones \(CUDA graphs need them\). Export it with --target genai --cache static"):  # fmt: skip
        run_bench([folder], tmp_path / "out")


def test_a_missing_genai_package_is_the_rows_status(genai_run, tmp_path, monkeypatch):
    _, work = genai_run
    monkeypatch.setitem(sys.modules, "onnxruntime_genai", None)  # `import onnxruntime_genai` raises ImportError
    settings = _settings(batches=(1,), contexts=(8,), backends=("genai-artifact",))
    doc = run_bench([work / "uniattn_genai"], tmp_path / "out", baseline=[work / "base_genai"], settings=settings)
    reason = ("skipped: onnxruntime-genai is not installed. Pip install 'uniattn-export[genai]' (onnxruntime-genai-cuda "
              "with onnxruntime-gpu for CUDA).")  # fmt: skip
    assert [(r["id"], r["status"]) for r in doc["runtimes"]] == [(row, reason) for row in GENAI_ROWS]
    assert doc["complete"] and doc["failures"] == 0


def test_a_failed_genai_build_is_the_rows_failure(genai_run, tmp_path):
    """onnxruntime-genai's builder failing on the base checkpoint (an architecture it does not
    build): its row is listed as failed (every cell counted as a failure), the other rows run."""
    _, work = genai_run
    checkpoint = tmp_path / "bert"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps({"model_type": "bert"}))
    settings = _settings(batches=(1,), contexts=(8,), backends=("onnxruntime-genai", "genai-artifact"), prefill=False)
    doc = run_bench([work / "uniattn_genai"], tmp_path / "out", baseline=[work / "base_genai"], base_checkpoint=checkpoint,
                    settings=settings)  # fmt: skip
    status = {r["id"]: r["status"] for r in doc["runtimes"]}
    assert status["baseline/onnxruntime-genai"] == (
        f"failed: building its model: onnxruntime-genai's model builder failed on {checkpoint} (NotImplementedError: "
        f"The {tmp_path}/out/.genai.cache/source model is not currently supported.). Run the builder command by hand to "
        "see its full output."
    )
    assert doc["build"]["genai"]["status"].startswith("failed: ")
    assert status["artifact/genai-artifact"] == status["baseline/genai-artifact"] == "ok"
    assert doc["failures"] == 2  # the failed row's one cell: prefill and decode


def test_a_failed_genai_export_is_recorded_when_allowed_to_fail(tmp_path):
    """A genai target that cannot be exported (a capacity below the exporter's minimum):
    recorded and left out under may_fail, raised otherwise."""
    make_config = lambda: preset_config("tiny")  # noqa: E731
    target = {"artifact-genai": Target(tmp_path / "g", UniAttnConfig.none(LAYERS), "static", 4, "genai")}
    built, steps = build_pair(make_config, target, "float32", logits="last", seed=0, log=lambda _: None,
                              may_fail=["artifact-genai"])  # fmt: skip
    assert built == {}
    assert steps["artifact-genai"]["status"].startswith(
        "failed: UniAttnError: a static-cache export needs a capacity (max_length) of at least 8, got 4"
    )
    with pytest.raises(UniAttnError, match="needs a capacity"):
        build_pair(make_config, target, "float32", logits="last", seed=0, log=lambda _: None)


def test_a_genai_folder_is_reused_only_with_the_library_an_export_would_ship(genai_run, tmp_path):
    _, work = genai_run
    make_config, targets = preset_targets("tiny", tmp_path, capacity_needed=28, genai=True)
    assert sorted(targets) == ["artifact", "artifact-genai", "artifact-static", "baseline", "baseline-genai", "baseline-static"]
    target = targets["artifact-genai"]
    geometry = {"num_layers": LAYERS, "hidden_size": make_config().hidden_size, "vocab_size": make_config().vocab_size}
    copy = tmp_path / "copy"
    shutil.copytree(work / "uniattn_genai", copy)
    assert reuse_artifact(copy, "float32", target, geometry) is not None
    assert reuse_artifact(work / "uniattn_static", "float32", target, geometry) is None  # optimum layout
    (copy / ORT_LIBRARY).write_bytes(b"an older build")
    assert reuse_artifact(copy, "float32", target, geometry) is None


def test_cli_runs_genai_artifact_rows_on_given_exports(genai_run, tmp_path, capsys):
    from uniattn_export.cli.main import main

    _, work = genai_run
    out = tmp_path / "out"
    code = main(["bench", str(work / "uniattn_genai"), "--baseline", str(work / "base_genai"), "--device", "cpu",
                 "--batches", "1", "--contexts", "8", "--decode-steps", "2", "--prefill-repeats", "1",
                 "--backends", "genai-artifact", "-o", str(out)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "ua genai ours" in printed and "base genai ours" in printed
    doc = json.loads((out / "bench.json").read_text())
    assert [(r["id"], r["status"], r["folder_origin"]) for r in doc["runtimes"]] == [
        ("artifact/genai-artifact", "ok", "given (ARTIFACT)"), ("baseline/genai-artifact", "ok", "given (--baseline)"),
    ]
    assert np.isfinite([r["decode"]["median_ms"] for r in doc["results"]]).all()
