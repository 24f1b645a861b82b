"""Static-cache rows (OrtSession over v2 artifacts), the onnxruntime-genai row (the base model
built by onnxruntime-genai's own builder) and the static preset build, on the CPU with the
tiny preset. Needs onnxruntime-genai (the `genai` extra) and the custom-op library of op
version 2 (kernel ABI >= 2)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from uniattn_export.bench import BenchSettings, run_preset
from uniattn_export.bench.build import BASE_CHECKPOINT_FOLDER, build_pair, preset_targets
from uniattn_export.bench.runtimes import GenaiRuntime, OrtRuntime, OrtStaticDecode, OrtStaticRuntime
from uniattn_export.errors import UniAttnError
from uniattn_export.export import load_artifact

from .conftest import assert_ratios_divide_medians

pytestmark = pytest.mark.usefixtures("single_torch_thread")

# The tiny preset: 6 layers, 2 KV heads of 16, layers 4-5 consume layer 3 (no K), float32.
LAYERS, KV_HEADS, HEAD_DIM, CONSUMERS, ITEMSIZE = 6, 2, 16, 2, 4
STATIC_ROWS = ["artifact/ort-static-library", "baseline/ort-static-library", "artifact/ort-static-bodies",
               "baseline/ort-static-bodies"]  # fmt: skip


@pytest.fixture(scope="session")
def static_run(work, tmp_path_factory):
    """(document, work folder) of a preset run with the static rows, genai and the dynamic library."""
    out = tmp_path_factory.mktemp("static_run")
    settings = BenchSettings(
        batches=(1, 2), contexts=(8, 24), device="cpu", decode_steps=3, warmup_steps=1, prefill_repeats=2,
        backends=("ort-static-library", "ort-static-bodies", "ort-static-graph", "onnxruntime-genai", "ort-library",
                  "ort-bodies"),
    )  # fmt: skip
    return run_preset("tiny", out, work_dir=work, dtype="float32", settings=settings), work


def test_one_run_shows_static_dynamic_library_bodies_and_genai(static_run):
    doc, work = static_run
    status = {r["id"]: r["status"] for r in doc["runtimes"]}
    assert list(status) == ["artifact/ort-static-graph", "baseline/ort-static-graph", "artifact/ort-static-library",
                            "baseline/ort-static-library", "baseline/onnxruntime-genai", "artifact/ort-library",
                            "baseline/ort-library", "artifact/ort-static-bodies", "baseline/ort-static-bodies",
                            "artifact/ort-bodies", "baseline/ort-bodies"]  # fmt: skip
    graph_reason = "skipped: ONNX Runtime CUDA graphs need the CUDA execution provider. Run with --device cuda."
    assert status["artifact/ort-static-graph"] == status["baseline/ort-static-graph"] == graph_reason
    assert all(v == "ok" for k, v in status.items() if "graph" not in k), status
    assert doc["failures"] == 0 and doc["complete"]
    # the static pair was exported with room for the largest context + warm-up + timed steps
    assert doc["models"]["artifact"]["capacity"] == 256 and set(doc["models"]["artifact"]["paths"]) == {"dynamic", "static"}
    assert doc["build"]["genai"]["status"] == "ok" and doc["build"]["genai"]["precision"] == "fp32"
    for result in doc["results"]:
        if result["runtime"].endswith("graph"):
            continue
        for phase in ("prefill", "decode"):
            entry = result[phase]
            assert entry["status"] == "ok", result
            assert all(math.isfinite(entry[k]) and entry[k] > 0 for k in ("median_ms", "min_ms", "p90_ms", "tokens_per_s"))


def test_static_rows_hold_the_layer_maps_cache(static_run):
    doc, _ = static_run
    for result in doc["results"]:
        if result["runtime"] in STATIC_ROWS or result["runtime"] == "baseline/onnxruntime-genai":
            consumers = CONSUMERS if result["runtime"].startswith("artifact/") else 0
            expected = result["batch"] * result["context"] * (2 * LAYERS - consumers) * KV_HEADS * HEAD_DIM * ITEMSIZE
            assert result["kv_cache_bytes"] == expected, result["runtime"]


def test_ratios_against_genai_and_between_cache_modes(static_run):
    doc, _ = static_run
    assert_ratios_divide_medians(doc, (
        ("uniattn ort-static-library / onnxruntime-genai", "artifact/ort-static-library", "baseline/onnxruntime-genai"),
        ("static / dynamic, uniattn ort-library", "artifact/ort-static-library", "artifact/ort-library"),
        ("library / function bodies, uniattn static", "artifact/ort-static-library", "artifact/ort-static-bodies"),
        ("uniattn / base, ort-static-library", "artifact/ort-static-library", "baseline/ort-static-library"),
    ), phases=("decode",))  # fmt: skip


@pytest.fixture(scope="session")
def twins(tmp_path_factory):
    """(static, dynamic) exports of the tiny UniAttn model from one set of weights (the preset
    run's dynamic pair was refilled with other random weights)."""
    make_config, targets = preset_targets("tiny", tmp_path_factory.mktemp("twins"), capacity_needed=64)
    chosen = {name: targets[name] for name in ("artifact", "artifact-static")}
    built, _ = build_pair(make_config, chosen, "float32", logits="last", seed=11, log=lambda _: None)
    return built["artifact-static"], built["artifact"]


@pytest.mark.parametrize("backend", ["ort-static-library", "ort-static-bodies"])
def test_static_decode_matches_the_dynamic_path_on_the_same_random_cache(twins, backend):
    static_artifact, dynamic_artifact = twins
    dynamic = OrtRuntime(dynamic_artifact, "artifact", "ort-bodies", "cpu", seed=7)
    run = dynamic.start_decode(2, 20, 3)
    dynamic_logits = []
    for _ in range(3):
        run.step()
        dynamic_logits.append(run.last_logits())
    dynamic.close()
    for greedy in (False, True):  # the logits, then the tokens the bench times
        static = OrtStaticRuntime(static_artifact, "artifact", backend, "cpu", seed=7)
        decode = OrtStaticDecode(static, 2, 20, greedy=greedy)
        for step in range(3):
            decode.step()
            if greedy:
                np.testing.assert_array_equal(decode.last_tokens(), dynamic_logits[step][:, -1].argmax(-1))
            else:
                np.testing.assert_allclose(decode.last_logits(), dynamic_logits[step], rtol=1e-4, atol=1e-4)
        static.close()
    assert np.abs(dynamic_logits[0] - dynamic_logits[1]).max() > 1e-3  # the steps differ: the cache grew


def test_static_cells_beyond_the_capacity_are_skipped(static_run):
    _, work = static_run
    runtime = OrtStaticRuntime(load_artifact(work / "base_static"), "baseline", "ort-static-library", "cpu", seed=0)
    assert runtime.unsupported("decode", 1, 250, 6) is None  # exactly full fits
    assert runtime.unsupported("decode", 1, 251, 6) == (
        "needs a cache of 257 tokens, the artifact holds 256 (export with --max-length 257 or more)"
    )
    assert runtime.unsupported("prefill", 4, 256, 0) is None
    runtime.close()


def test_static_rows_refuse_dynamic_artifacts(static_run):
    _, work = static_run
    with pytest.raises(UniAttnError, match="ort-static-library runs static-cache artifacts; .* has dynamic caches"):
        OrtStaticRuntime(load_artifact(work / "uniattn"), "artifact", "ort-static-library", "cpu", seed=0)


def test_genai_greedy_tokens_equal_our_static_base_artifact(static_run):
    """onnxruntime-genai on the model its builder made from the saved base checkpoint, and
    OrtSession on our static export of the same weights: the same greedy tokens."""
    from uniattn_export.targets.ort import OrtSession

    doc, work = static_run
    genai = GenaiRuntime(doc["build"]["genai"]["path"], "baseline", "cpu", seed=0)
    prompt = np.random.default_rng(3).integers(0, 256, (1, 12), dtype=np.int32)
    generator = genai.generator(1, 12 + 16)
    generator.append_tokens(prompt)
    theirs = []
    for _ in range(16):
        generator.generate_next_token()
        theirs.append(int(generator.get_next_tokens()[0]))
    del generator
    genai.close()
    ours = OrtSession(load_artifact(work / "base_static"), custom_ops=False).generate(prompt.astype(np.int64).tolist(), 16)
    assert ours.tokens[0].tolist() == theirs
    assert len(set(theirs)) > 1  # not a degenerate constant sequence
    assert (work / BASE_CHECKPOINT_FOLDER / "tokenizer.json").is_file()  # the builder's placeholder tokenizer


def test_genai_decode_cells_fill_the_cache_by_decoding_where_a_batched_prompt_is_refused(static_run):
    """The onnxruntime-genai row under CUDA graphs at batch > 1 fills its cache by decoding (see
    GenaiRuntime): the CPU takes the same path when forced to, and each row then holds
    `context` tokens of cache before the timed steps, as after a prefill."""
    doc, _ = static_run
    genai = GenaiRuntime(doc["build"]["genai"]["path"], "baseline", "cpu", seed=0)
    assert genai.prompt_batch_limited is False  # CPU, no CUDA graph: the batched prompt path
    lengths = {}
    for limited in (False, True):
        genai.prompt_batch_limited = limited
        run = genai.start_decode(batch=2, context=9, steps=3)
        # tokens so far = the cache after the first timed step's input: context + 1 per row
        lengths[limited] = [len(run.generator.get_sequence(row)) for row in range(2)]
        assert np.isfinite(run.step())
        del run
    genai.close()
    assert lengths == {False: [10, 10], True: [10, 10]}


def test_copies_per_decode_step_from_the_cpu_profiler(static_run):
    """Static caches bound as past and present with the library: no node copies the cache
    (what is left are index-sized Expand/Concat); the dynamic path copies the whole cache
    (concat node or v1 kernel), the static function bodies the whole capacity (scatter into
    a copy)."""
    doc, _ = static_run
    capacity = doc["models"]["artifact"]["capacity"]
    for result in doc["results"]:
        copies = result["decode"].get("cache_copies")
        runtime, batch, context = result["runtime"], result["batch"], result["context"]
        if runtime.endswith("graph") or runtime == "baseline/onnxruntime-genai":
            assert copies is None
            continue
        cache = result["kv_cache_bytes"]  # context tokens
        by_op = copies["copy_bytes_by_op"]
        if runtime.endswith("/ort-static-library"):
            assert copies["copy_bytes"] < cache / 8 and "ScatterElements" not in by_op, (runtime, copies)
            assert copies["caches_bound_in_place"] and sum(copies["uniattn_output_bytes"].values()) > 0
        elif runtime.endswith("/ort-static-bodies"):
            # every cache tensor, at full capacity, comes out of a ScatterElements
            assert by_op["ScatterElements"] == cache * capacity // context, (runtime, copies)
        else:  # dynamic: present = past + new of context + 1 tokens (a Concat node, or inside the v1 kernel)
            assert copies["copy_bytes"] >= cache * (context + 1) // context and not copies["caches_bound_in_place"]
        if runtime.endswith("/ort-bodies"):
            assert by_op["Concat"] >= cache * (context + 1) // context, (runtime, copies)


def test_cli_takes_one_export_per_cache_mode_and_a_base_checkpoint(static_run, tmp_path, capsys):
    from uniattn_export.cli.main import main

    _, work = static_run
    out = tmp_path / "out"
    code = main(["bench", str(work / "uniattn_static"), str(work / "uniattn"), "--baseline", str(work / "base_static"),
                 "--baseline", str(work / "base"), "--base-checkpoint", str(work / BASE_CHECKPOINT_FOLDER),
                 "--device", "cpu", "--batches", "1", "--contexts", "8,16", "--decode-cells", "1x8", "--prefill-cells", "1x16",
                 "--decode-steps", "2", "--prefill-repeats", "1", "--backends", "ort-static-bodies,ort-bodies,onnxruntime-genai",
                 "-o", str(out)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "ua st bodies" in printed and "base genai" in printed and "bytes copied by one decode step" in printed
    doc = json.loads((out / "bench.json").read_text())
    assert [r["id"] for r in doc["runtimes"]] == ["baseline/onnxruntime-genai", "artifact/ort-static-bodies",
                                                  "baseline/ort-static-bodies", "artifact/ort-bodies", "baseline/ort-bodies"]  # fmt: skip
    assert all(r["status"] == "ok" for r in doc["runtimes"]) and doc["build"]["genai"]["status"] == "ok"
    phases = {(r["runtime"], r["context"]): (r["prefill"]["status"], r["decode"]["status"]) for r in doc["results"]}
    for runtime in (r["id"] for r in doc["runtimes"]):
        assert phases[(runtime, 8)] == ("skipped: not a --prefill-cells shape", "ok")
        assert phases[(runtime, 16)] == ("ok", "skipped: not a --decode-cells shape")


def test_two_exports_of_one_cache_mode_are_refused(static_run, tmp_path):
    from uniattn_export.bench import run_bench

    _, work = static_run
    with pytest.raises(UniAttnError, match=r"two static-cache artifacts were given .* Pass at most one artifact per cache mode"):
        run_bench([work / "uniattn_static", work / "base_static"], tmp_path / "out")
