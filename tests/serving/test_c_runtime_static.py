"""libuniattn_runtime.so on static-cache artifacts (op contract v2) against the Python runtime
(OrtSession): caches of a fixed capacity bound as past and present, right-padded prompts,
greedy tokens from the graph's next_tokens, on the CPU with and without the custom-op
library, on the standard-op graph and on the graph `--target ort` writes (skip norms, GatedSilu,
SplitRotary). Same tokens over 40 steps with rows of different lengths (and the PyTorch
reference's on the ort target's graph), same seeded samples, same eos/pad handling, several
generations in a row on one runtime, the capacity error before anything runs, and the
manifest's cache facts checked with the Python loader's words."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from uniattn_export import native
from uniattn_export.errors import UniAttnError
from uniattn_export.export import load_artifact
from uniattn_export.targets.ort import OrtSession
from uniattn_export.targets.session import Sampling

CAPACITY = 64
STEPS = 40
# Rows of different lengths: right padding puts their slots and last tokens in different places.
PROMPTS = [[5, 17, 99, 3, 250, 41, 8, 77, 140], [200, 1, 9], [64, 64, 12, 7, 3, 3, 90, 18, 44, 251, 6, 31, 2, 120], [42]]
LOGITS_ATOL = 1e-5
SAMPLINGS = [Sampling(temperature=0.8, seed=3), Sampling(temperature=1.1, top_k=12, top_p=0.9, seed=2**40 + 7)]


@pytest.fixture(scope="module")
def static_artifact(tiny_checkpoint, tmp_path_factory):
    from uniattn_export.export import export_model
    from uniattn_export.model import load_model

    out = tmp_path_factory.mktemp("serving_static") / "artifact"
    return export_model(load_model(tiny_checkpoint), out, source_dir=tiny_checkpoint, cache="static", max_length=CAPACITY)


@pytest.fixture(scope="module")
def ort_target_artifact(tiny_checkpoint, tmp_path_factory):
    """The graph `--target ort` writes (what a service is given): ONNX Runtime's skip norms, and
    our graph ops GatedSilu and SplitRotary, run by the library or as their model-local bodies."""
    from uniattn_export.export import export_model
    from uniattn_export.model import load_model

    out = tmp_path_factory.mktemp("serving_static_ort") / "artifact"
    artifact = export_model(load_model(tiny_checkpoint), out, source_dir=tiny_checkpoint, cache="static",
                            max_length=CAPACITY, ort_contrib_ops=True)  # fmt: skip
    fused = load_artifact(artifact).manifest["graph"]["fused"]
    assert fused["skip_norms"] and fused["gated_silu"] and fused["split_rotary"], fused
    return artifact


GRAPHS = ["static_artifact", "ort_target_artifact"]  # the fixtures of the two static graphs


@pytest.fixture(scope="module", params=[(library, graph) for graph in GRAPHS for library in (True, False)],
                ids=lambda p: f"{'custom_ops' if p[0] else 'function_bodies'}-{p[1]}")  # fmt: skip
def runtimes(request, c_runtime):
    """(Python OrtSession, C runtime) over a static artifact (the standard-op graph, or the ort
    target's), both with or both without the library."""
    with_library, graph = request.param
    artifact = request.getfixturevalue(graph)
    if with_library:
        library = native.ort_custom_op_library()
        assert library is not None, f"{native.ORT_LIBRARY} is not built: {native.BUILD_FIX}"
        assert native.kernel_abi_version() >= 2, "the built kernels implement op version 1 only"
        c = c_runtime(artifact, custom_ops=1, custom_op_library=library)
    else:
        c = c_runtime(artifact, custom_ops=2)
    python = OrtSession(artifact, custom_ops=with_library)
    assert c.uses_custom_ops == with_library == python.uses_custom_ops
    return python, c


def test_greedy_tokens_equal_python_runtime_over_40_steps(runtimes):
    python, c = runtimes
    expected = python.generate(PROMPTS, STEPS)  # next_tokens on both sides
    got = c.generate(PROMPTS, STEPS)
    assert got.tokens.shape == (len(PROMPTS), STEPS)
    np.testing.assert_array_equal(got.tokens, expected.tokens)
    # Not a degenerate sequence: the rows keep choosing different tokens.
    assert all(len(set(row)) > 5 for row in got.tokens.tolist())


@pytest.mark.parametrize("custom_ops", [1, 2], ids=["library", "function_bodies"])
def test_ort_target_graph_gives_the_pytorch_references_tokens(ort_target_artifact, tiny_checkpoint, c_runtime,
                                                             custom_ops):  # fmt: skip
    """The C runtime on the graph a user serves, against an independent reference (not only
    against OrtSession, which shares the library's kernels)."""
    from uniattn_export.model import load_model
    from uniattn_export.validate.reference import TorchSession

    library = native.ort_custom_op_library() if custom_ops == 1 else None
    c = c_runtime(ort_target_artifact, custom_ops=custom_ops, custom_op_library=library)
    want = TorchSession(load_model(tiny_checkpoint)).generate(PROMPTS, STEPS).tokens
    np.testing.assert_array_equal(c.generate(PROMPTS, STEPS).tokens, want)


def test_logits_of_each_step_equal_python_runtime(runtimes):
    python, c = runtimes
    expected = python.generate(PROMPTS, 12, return_logits=True)
    got = c.generate(PROMPTS, 12, return_logits=True)
    np.testing.assert_array_equal(got.tokens, expected.tokens)
    reference = np.concatenate(expected.step_logits, axis=1)  # static artifacts: (B, 1, V) per step
    assert got.logits.shape == reference.shape == (len(PROMPTS), 12, 256)
    np.testing.assert_allclose(got.logits, reference, rtol=0, atol=LOGITS_ATOL)
    assert float(np.ptp(reference, axis=-1).min()) > 1.0  # far from uniform: equal tokens mean something


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=lambda s: f"T{s.temperature}-k{s.top_k}-p{s.top_p}-s{s.seed}")
def test_sampling_with_a_seed_equals_python_runtime(runtimes, sampling):
    python, c = runtimes
    expected = python.generate(PROMPTS, STEPS, sampling=sampling)
    np.testing.assert_array_equal(c.generate(PROMPTS, STEPS, sampling=sampling).tokens, expected.tokens)
    assert not np.array_equal(expected.tokens, python.generate(PROMPTS, STEPS).tokens), "sampling never left the argmax"


def test_eos_stops_rows_and_pads_like_python(runtimes):
    python, c = runtimes
    greedy = python.generate(PROMPTS, STEPS).tokens
    eos, pad = int(greedy[1, 4]), 9  # row 1 emits it at step 4 (maybe earlier): it finishes early
    expected = python.generate(PROMPTS, STEPS, eos_token_id=eos, pad_token_id=pad)
    got = c.generate(PROMPTS, STEPS, eos_token_id=eos, pad_token_id=pad)
    np.testing.assert_array_equal(got.tokens, expected.tokens)
    lengths = [len(s) for s in expected.sequences(eos)]
    assert got.lengths.tolist() == lengths and lengths[1] <= 5
    assert got.tokens[1, lengths[1] :].tolist() == [pad] * (got.tokens.shape[1] - lengths[1])


def test_several_generations_in_a_row_on_one_runtime(static_artifact, c_runtime):
    """Each generation starts from zeroed caches: batches of other sizes in between and a
    generation that wrote other slots change nothing about the next one's tokens."""
    c, python = c_runtime(static_artifact), OrtSession(static_artifact)
    jobs = [(PROMPTS, None), ([PROMPTS[2]], None), (PROMPTS[:2], SAMPLINGS[0]), (PROMPTS, None), ([PROMPTS[3]] * 3, None)]
    runs = [c.generate(prompts, STEPS, sampling=sampling).tokens for prompts, sampling in jobs]
    for (prompts, sampling), got in zip(jobs, runs):
        np.testing.assert_array_equal(got, python.generate(prompts, STEPS, sampling=sampling).tokens)
    np.testing.assert_array_equal(runs[3], runs[0])  # the same request again, after three others


def test_generation_beyond_the_capacity_fails_before_anything_runs(static_artifact, c_runtime, c_runtime_error):
    c, python = c_runtime(static_artifact), OrtSession(static_artifact)
    assert c.cache_capacity == CAPACITY
    too_many = CAPACITY - 13  # the longest prompt has 14 tokens
    with pytest.raises(UniAttnError) as python_error:
        python.generate(PROMPTS, too_many)
    with pytest.raises(c_runtime_error) as c_error:
        c.generate(PROMPTS, too_many)
    assert c_error.value.status == "INVALID_ARGUMENT"
    assert c_error.value.message == str(python_error.value) == (
        f"the longest prompt (14 tokens) + max_new_tokens ({too_many}) = {CAPACITY + 1} tokens exceeds "
        f"the artifact's cache capacity ({CAPACITY}). Shorten the prompt or generate fewer tokens, or "
        "re-export with a larger --max-length."
    )
    # Exactly full fits, and gives the Python runtime's tokens.
    np.testing.assert_array_equal(c.generate(PROMPTS, too_many - 1).tokens, python.generate(PROMPTS, too_many - 1).tokens)


def test_description_names_the_static_caches(static_artifact, c_runtime):
    c = c_runtime(static_artifact, custom_ops=2)
    assert ", CPUExecutionProvider, static caches of 64 tokens, ONNX function bodies" in c.description


def test_dynamic_artifact_reports_no_capacity(tiny_artifact, c_runtime):
    c = c_runtime(tiny_artifact, custom_ops=2)
    assert c.cache_capacity == 0 and ", CPUExecutionProvider, dynamic caches, " in c.description


# ---- the manifest's cache facts: both loaders refuse a tampered one with the same words ----


def _cache(edit):
    return lambda cache: cache.update(edit)


CASES = [
    ("capacity_smaller", _cache(dict(capacity=32)),
     "past_key_values.0.key has shape [None, 2, 64, 16], expected (batch, 2, 32, 16) for static caches"),
    ("op_version_1", _cache(dict(op_version=1)), "the manifest records op version 1 for static caches, which are version 2"),
    ("mode_paged", _cache(dict(mode="paged")), "the manifest records cache mode 'paged', not one of ('dynamic', 'static')"),
    ("capacity_missing", _cache(dict(capacity=None)), "the manifest records static caches of capacity None"),
    ("capacity_zero", _cache(dict(capacity=0)), "the manifest records static caches of capacity 0"),
]  # fmt: skip


def _tampered(artifact, tmp_path, edit):
    folder = shutil.copytree(artifact, tmp_path / "tampered")
    manifest = json.loads((folder / "uniattn_manifest.json").read_text())
    edit(manifest["cache"])
    (folder / "uniattn_manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.mark.parametrize("edit, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_both_loaders_refuse_a_tampered_cache_record(static_artifact, tmp_path, c_runtime, c_runtime_error, edit, words):
    folder = _tampered(static_artifact, tmp_path, edit)
    with pytest.raises(UniAttnError) as python_error:
        load_artifact(folder)
    with pytest.raises(c_runtime_error) as c_error:
        c_runtime(folder)
    fix = "Re-export the model with `uniattn-export model`; the graph does not match its manifest"
    assert str(python_error.value).startswith(words + ". " + fix)
    assert c_error.value.status == "ARTIFACT_ERROR" and c_error.value.message == words + ". " + fix


def test_a_static_artifact_relabelled_dynamic_is_refused(static_artifact, tmp_path, c_runtime, c_runtime_error):
    """The C runtime reads no graph: it finds the fixed-capacity caches in the manifest's I/O
    list (the Python loader finds the graph's opset imports first)."""
    folder = _tampered(static_artifact, tmp_path, _cache(dict(mode="dynamic", op_version=1, capacity=None)))
    with pytest.raises(UniAttnError):
        load_artifact(folder)
    with pytest.raises(c_runtime_error) as c_error:
        c_runtime(folder)
    assert c_error.value.message.startswith(
        "past_key_values.0.key has shape [None, 2, 64, 16], expected (batch, 2, past, 16) for dynamic caches."
    )


# ---- the C++ service (examples/cpp_service) on a static artifact ----------------------


@pytest.mark.parametrize("graph", GRAPHS)
def test_cpp_service_serves_several_requests_on_one_runtime(cpp_service, request, graph, tmp_path):
    """Two requests of different batch sizes in one prompt file run one after the other on one
    runtime; each gets the Python runtime's greedy tokens (the standard-op graph and the ort
    target's)."""
    import subprocess

    artifact = request.getfixturevalue(graph)

    second = [PROMPTS[2], PROMPTS[0]]
    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text("\n".join(" ".join(map(str, p)) for p in PROMPTS) + "\n---\n"
                           + "\n".join(", ".join(map(str, p)) for p in second) + "\n")  # fmt: skip
    done = subprocess.run([str(cpp_service), str(artifact), str(prompt_file), "--onnxruntime",
                           native.onnxruntime_library(), "--max-new-tokens", str(STEPS), "--cuda-graphs", "off"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["cache_capacity"] == CAPACITY and out["cuda_graphs"] is False
    python = OrtSession(artifact)
    assert [r["tokens"] for r in out["requests"]] == [
        python.generate(PROMPTS, STEPS).tokens.tolist(),
        python.generate(second, STEPS).tokens.tolist(),
    ]
    bad = subprocess.run([str(cpp_service), str(artifact), str(prompt_file), "--onnxruntime",
                          native.onnxruntime_library(), "--cuda-graphs", "yes"], capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr == "uniattn_cpp_service: error: --cuda-graphs is on or off, got 'yes'\n"


def test_concurrent_generations_on_one_runtime_equal_sequential(static_artifact, c_runtime):
    """Without CUDA graphs every generation has caches of its own: calls may overlap."""
    from concurrent.futures import ThreadPoolExecutor

    runtime = c_runtime(static_artifact)
    jobs = [([p], s) for p in PROMPTS for s in (None, SAMPLINGS[1])] + [(PROMPTS, SAMPLINGS[0])]
    sequential = [runtime.generate(p, 12, sampling=s).tokens for p, s in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:  # ctypes releases the GIL while C runs
        results = list(pool.map(lambda job: runtime.generate(job[0], 12, sampling=job[1]).tokens, jobs * 3))
    for i, tokens in enumerate(results):
        np.testing.assert_array_equal(tokens, sequential[i % len(jobs)])


OP_VERSION_1_KERNELS = "int ua_abi_version(void) { return 1; }\nint ua_has_cuda(void) { return 0; }\n"


def test_a_custom_op_library_of_op_version_1_serves_no_static_artifact(static_artifact, tmp_path, c_runtime,
                                                                       c_runtime_error):  # fmt: skip
    """The Python runtime's rule: beside kernels of ABI 1, AUTO runs the function bodies and says
    why, REQUIRE refuses. The folder holds the real custom-op library and a kernel library that
    reports ABI 1 (built here from two lines of C)."""
    import subprocess

    folder = tmp_path / "lib"
    folder.mkdir()
    library = folder / "libuniattn_ort.so"
    shutil.copy(native.ort_custom_op_library(), library)
    (tmp_path / "kernels.c").write_text(OP_VERSION_1_KERNELS)
    subprocess.run(["cc", "-shared", "-fPIC", str(tmp_path / "kernels.c"), "-o", str(folder / "libuniattn_kernels.so")],
                   check=True)  # fmt: skip
    auto = c_runtime(static_artifact, custom_ops=0, custom_op_library=str(library))
    assert not auto.uses_custom_ops
    assert auto.description.endswith(
        "ONNX function bodies (no custom-op library) (the installed custom-op library implements op version 1 only; "
        "this artifact needs 2), float32, 6 layers (2 consumers)"
    )
    np.testing.assert_array_equal(auto.generate(PROMPTS, 8).tokens, OrtSession(static_artifact).generate(PROMPTS, 8).tokens)
    with pytest.raises(c_runtime_error) as caught:
        c_runtime(static_artifact, custom_ops=1, custom_op_library=str(library))
    assert caught.value.status == "LIBRARY_ERROR" and caught.value.message == (
        f"the custom-op library {library} implements op version 1 only (kernel ABI 1), but this static-cache "
        "artifact needs op version 2. Rebuild the native libraries from this checkout, or set custom_ops to OFF"
    )
