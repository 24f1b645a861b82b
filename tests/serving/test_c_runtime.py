"""libuniattn_runtime.so (include/uniattn/runtime.h) against the Python runtime: the same
artifact, prompts and settings must give the same tokens and logits; bad input must come
back as a status code plus one clear message."""

from __future__ import annotations

import json
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from uniattn_export import native
from uniattn_export.targets.ort import OrtSession
from uniattn_export.targets.session import Sampling

PROMPTS = [[5, 17, 99, 3, 250, 41, 8], [200, 1], [64, 64, 12, 7]]  # left padding: 7, 2, 4 tokens
MAX_NEW = 10
# Both runtimes run the same graph with the same onnxruntime build; only float summation
# order inside ORT could differ between its two copies (the pip module and libonnxruntime).
LOGITS_ATOL = 1e-5

SAMPLINGS = [
    Sampling(temperature=0.8, seed=3),
    Sampling(temperature=1.3, top_k=12, seed=11),
    Sampling(temperature=0.7, top_p=0.9, seed=2**40 + 7),  # a seed wider than 32 bits
    Sampling(temperature=1.0, top_k=40, top_p=0.75, seed=0),
]


@pytest.fixture(scope="module", params=["custom_ops", "function_bodies"])
def runtimes(request, tiny_artifact, c_runtime):
    """(Python OrtSession, C runtime) over the same artifact, both with or both without the library."""
    with_library = request.param == "custom_ops"
    if with_library:
        library = native.ort_custom_op_library()
        assert library is not None, f"{native.ORT_LIBRARY} is not built: {native.BUILD_FIX}"
        c = c_runtime(tiny_artifact, custom_ops=1, custom_op_library=library)
    else:
        c = c_runtime(tiny_artifact, custom_ops=2)
    python = OrtSession(tiny_artifact, custom_ops=with_library)
    assert c.uses_custom_ops == with_library == python.uses_custom_ops
    return python, c


def test_greedy_tokens_and_logits_equal_python_runtime(runtimes):
    python, c = runtimes
    expected = python.generate(PROMPTS, MAX_NEW, return_logits=True)
    got = c.generate(PROMPTS, MAX_NEW, return_logits=True)
    np.testing.assert_array_equal(got.tokens, expected.tokens)
    last_position = np.stack([step[:, -1, :] for step in expected.step_logits], axis=1)
    assert got.logits.shape == last_position.shape == (len(PROMPTS), MAX_NEW, 256)
    np.testing.assert_allclose(got.logits, last_position, rtol=0, atol=LOGITS_ATOL)
    # The logits are far from uniform, so equal tokens are a real check of the semantics.
    assert float(np.ptp(last_position, axis=-1).min()) > 1.0


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=lambda s: f"T{s.temperature}-k{s.top_k}-p{s.top_p}-s{s.seed}")
def test_sampling_with_a_seed_equals_python_runtime(runtimes, sampling):
    python, c = runtimes
    expected = python.generate(PROMPTS, MAX_NEW, sampling=sampling)
    got = c.generate(PROMPTS, MAX_NEW, sampling=sampling)
    np.testing.assert_array_equal(got.tokens, expected.tokens)
    greedy = python.generate(PROMPTS, MAX_NEW)
    assert not np.array_equal(expected.tokens, greedy.tokens), "sampling never left the argmax: the check is void"


def test_eos_stops_rows_and_pads_like_python(runtimes):
    python, c = runtimes
    greedy = python.generate(PROMPTS, MAX_NEW).tokens
    eos = int(greedy[1, 2])  # row 1 emits it at step 2 (maybe earlier): it finishes early
    pad = 9
    expected = python.generate(PROMPTS, MAX_NEW, eos_token_id=eos, pad_token_id=pad)
    got = c.generate(PROMPTS, MAX_NEW, eos_token_id=eos, pad_token_id=pad)
    np.testing.assert_array_equal(got.tokens, expected.tokens)
    lengths = [len(s) for s in expected.sequences(eos)]
    assert got.lengths.tolist() == lengths
    assert lengths[1] <= 3 and got.tokens[1, lengths[1]:].tolist() == [pad] * (got.tokens.shape[1] - lengths[1])


def test_all_rows_finishing_stops_generation(runtimes):
    python, c = runtimes
    first = python.generate([PROMPTS[0]], 1).tokens[0, 0]
    got = c.generate([PROMPTS[0]], MAX_NEW, eos_token_id=int(first))
    assert got.tokens.tolist() == [[first]] and got.lengths.tolist() == [1]


def test_artifact_with_last_position_logits_only(tiny_checkpoint, tmp_path, c_runtime):
    """An export that keeps only the last position's logits (what serving wants) generates the same."""
    from uniattn_export.export import export_model
    from uniattn_export.model import load_model

    artifact = export_model(load_model(tiny_checkpoint), tmp_path / "last", source_dir=tiny_checkpoint, logits="last")
    python, c = OrtSession(artifact), c_runtime(artifact)
    sampling = SAMPLINGS[3]
    expected = python.generate(PROMPTS, MAX_NEW, return_logits=True)
    assert expected.step_logits[0].shape[1] == 1
    got = c.generate(PROMPTS, MAX_NEW, return_logits=True)
    np.testing.assert_array_equal(got.tokens, expected.tokens)
    np.testing.assert_allclose(got.logits, np.concatenate(expected.step_logits, axis=1), rtol=0, atol=LOGITS_ATOL)
    np.testing.assert_array_equal(c.generate(PROMPTS, MAX_NEW, sampling=sampling).tokens,
                                  python.generate(PROMPTS, MAX_NEW, sampling=sampling).tokens)  # fmt: skip


def test_concurrent_generations_on_one_runtime_equal_sequential(tiny_artifact, c_runtime):
    runtime = c_runtime(tiny_artifact)
    jobs = [dict(prompts=[p], sampling=s) for p in PROMPTS for s in (None, SAMPLINGS[1])]
    jobs.append(dict(prompts=PROMPTS, sampling=SAMPLINGS[2]))
    sequential = [runtime.generate(j["prompts"], MAX_NEW, sampling=j["sampling"]).tokens for j in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        # Four rounds so calls really overlap (ctypes releases the GIL while C runs).
        results = list(pool.map(lambda j: runtime.generate(j["prompts"], MAX_NEW, sampling=j["sampling"]).tokens, jobs * 4))
    for i, tokens in enumerate(results):
        np.testing.assert_array_equal(tokens, sequential[i % len(jobs)])


@pytest.mark.parametrize("seed", [0, 1, 42, 2**32 - 1, 2**32, 2**63 + 12345, 2**64 - 1])
def test_random_draws_are_numpys(c_api, seed):
    import ctypes

    out = (ctypes.c_double * 1000)()
    c_api.uniattn_random_uniform(seed, out, 1000)
    np.testing.assert_array_equal(np.frombuffer(out, dtype=np.float64), np.random.default_rng(seed).random(1000))


def test_description_names_what_runs(tiny_artifact, c_runtime):
    runtime = c_runtime(tiny_artifact, custom_ops=2)
    assert runtime.description.startswith("onnxruntime 1.31")
    assert "CPUExecutionProvider" in runtime.description
    assert "ONNX function bodies" in runtime.description
    assert "6 layers (2 consumers)" in runtime.description


# ---- errors: status codes and one clear message ---------------------------------------


def test_missing_artifact(tmp_path, c_runtime, c_runtime_error):
    with pytest.raises(c_runtime_error) as caught:
        c_runtime(tmp_path / "nowhere")
    assert caught.value.status == "ARTIFACT_ERROR"
    assert caught.value.message == (
        f"artifact folder {tmp_path / 'nowhere'} does not exist. Pass the -o folder of `uniattn-export model`"
    )


def test_onnxruntime_library_that_is_not_there(tiny_artifact, tmp_path, c_runtime, c_runtime_error):
    with pytest.raises(c_runtime_error) as caught:
        c_runtime(tiny_artifact, onnxruntime=str(tmp_path / "libonnxruntime.so.1.31.1"))
    assert caught.value.status == "LIBRARY_ERROR"
    assert "cannot load ONNX Runtime from" in caught.value.message
    assert "uniattn-export runtime-paths onnxruntime" in caught.value.message


def test_library_that_is_not_onnxruntime(tiny_artifact, runtime_library, c_runtime, c_runtime_error):
    with pytest.raises(c_runtime_error) as caught:
        c_runtime(tiny_artifact, onnxruntime=runtime_library)
    assert caught.value.status == "LIBRARY_ERROR"
    assert "exports no OrtGetApiBase" in caught.value.message


def test_required_custom_op_library_missing(tiny_artifact, tmp_path, c_runtime, c_runtime_error):
    with pytest.raises(c_runtime_error) as caught:
        c_runtime(tiny_artifact, custom_ops=1, custom_op_library=str(tmp_path / "libuniattn_ort.so"))
    assert caught.value.status == "LIBRARY_ERROR"
    assert "does not exist" in caught.value.message and "custom_ops to OFF" in caught.value.message


def test_custom_op_library_that_onnxruntime_refuses(tiny_artifact, c_runtime, c_runtime_error):
    not_ops = native.kernels_library()  # a shared library without RegisterCustomOps
    with pytest.raises(c_runtime_error) as caught:
        c_runtime(tiny_artifact, custom_ops=1, custom_op_library=not_ops)
    assert caught.value.status == "LIBRARY_ERROR"
    assert caught.value.message.startswith(f"ONNX Runtime cannot register the custom-op library {not_ops} (")


def test_uninitialized_options(tiny_artifact, c_runtime, c_runtime_error):
    with pytest.raises(c_runtime_error) as caught:
        c_runtime(tiny_artifact, struct_size=0)
    assert caught.value.status == "INVALID_ARGUMENT"
    assert "uniattn_runtime_options_init" in caught.value.message


def _copy(artifact, tmp_path):
    copy = tmp_path / "artifact"
    shutil.copytree(artifact, copy)
    return copy


def test_truncated_graph_file(tiny_artifact, tmp_path, c_runtime, c_runtime_error):
    artifact = _copy(tiny_artifact, tmp_path)
    data = (artifact / "model.onnx").read_bytes()
    (artifact / "model.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(c_runtime_error) as caught:
        c_runtime(artifact)
    assert caught.value.status == "ARTIFACT_ERROR"
    assert f"has {len(data) // 2} bytes, the manifest says {len(data)}" in caught.value.message


def test_manifest_whose_layer_map_contradicts_the_graph(tiny_artifact, tmp_path, c_runtime, c_runtime_error):
    artifact = _copy(tiny_artifact, tmp_path)
    manifest = json.loads((artifact / "uniattn_manifest.json").read_text())
    layer = manifest["layers"][3]
    assert layer["role"] == "consumer"
    layer["role"], layer["key_cache"], layer["producer"] = "producer", True, None
    (artifact / "uniattn_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(c_runtime_error) as caught:
        c_runtime(artifact)
    assert caught.value.status == "ARTIFACT_ERROR"
    assert "lack past_key_values.3.key" in caught.value.message and "layer 3 (producer)" in caught.value.message


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(prompts=[[1, 256]]), "prompt 0 has token id 256 outside the vocabulary [0, 256)"),
        (dict(prompts=[[1, 2], []]), "prompt 1 is empty: every prompt needs a token"),
        (dict(max_new_tokens=0), "max_new_tokens must be >= 1, got 0"),
        (dict(pad_token_id=-3), "pad_token_id -3 is outside the vocabulary [0, 256)"),
        (dict(eos_token_id=999), "eos_token_id 999 is outside the vocabulary (use -1 for none)"),
        (dict(prompts=[[3], [-1, 4]]), "prompt 1 has token id -1 outside the vocabulary [0, 256)"),
    ],
)
def test_bad_requests(tiny_artifact, c_runtime, c_runtime_error, change, message):
    runtime = c_runtime(tiny_artifact)
    args = dict(prompts=[[1, 2, 3]], max_new_tokens=3) | change
    prompts, max_new = args.pop("prompts"), args.pop("max_new_tokens")
    with pytest.raises(c_runtime_error) as caught:
        runtime.generate(prompts, max_new, **args)
    assert caught.value.status == "INVALID_ARGUMENT" and caught.value.message == message


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("temperature", 0.0, "temperature must be > 0, got 0.000000"),
        ("top_p", 0.0, "top_p must be in (0, 1], got 0.000000"),
        ("top_k", -1, "top_k must be >= 0 (0: off), got -1"),
        ("struct_size", 8, "uniattn_generate_request.struct_size is 8. Initialize the request with uniattn_generate_request_init"),
    ],
)
def test_bad_sampling_fields(tiny_artifact, c_runtime, c_runtime_error, field, value, message):
    runtime = c_runtime(tiny_artifact)
    request = runtime.request([[1, 2, 3]], 3, sampling=Sampling(temperature=1.0))
    setattr(request, field, value)
    with pytest.raises(c_runtime_error) as caught:
        runtime.run(request)
    assert caught.value.status == "INVALID_ARGUMENT" and caught.value.message == message


def test_error_message_is_per_call(tiny_artifact, c_api, c_runtime, c_runtime_error):
    runtime = c_runtime(tiny_artifact)
    with pytest.raises(c_runtime_error):
        runtime.generate([[1]], 0)
    assert c_api.uniattn_last_error().decode().startswith("max_new_tokens")
    runtime.generate([[1]], 1)
    assert c_api.uniattn_last_error() == b""


C_PROGRAM = r"""
#include "uniattn/runtime.h"
#include <stdio.h>
int main(int argc, char** argv) {
  uniattn_runtime_options options;
  uniattn_runtime_options_init(&options);
  options.artifact_dir = argv[1];
  options.onnxruntime_library = argv[2];
  uniattn_runtime* runtime = NULL;
  if (uniattn_runtime_create(&options, &runtime) != UNIATTN_OK) { fprintf(stderr, "%s\n", uniattn_last_error()); return 1; }
  int64_t ids[] = {5, 17, 99}, lengths[] = {3};
  uniattn_generate_request request;
  uniattn_generate_request_init(&request);
  request.prompt_ids = ids; request.prompt_lengths = lengths; request.batch_size = 1; request.max_new_tokens = 4;
  uniattn_generation* generation = NULL;
  if (uniattn_generate(runtime, &request, &generation) != UNIATTN_OK) { fprintf(stderr, "%s\n", uniattn_last_error()); return 1; }
  for (int64_t t = 0; t < uniattn_generation_num_steps(generation); ++t) printf("%lld ", (long long)uniattn_generation_tokens(generation)[t]);
  uniattn_generation_destroy(generation);
  uniattn_runtime_destroy(runtime);
  return argc == 3 ? 0 : 1;
}
"""


def test_the_header_is_plain_c(tiny_artifact, runtime_library, tmp_path):
    """A C99 program (strict, warnings as errors) builds against the header and generates."""
    (tmp_path / "main.c").write_text(C_PROGRAM)
    folder = str(Path(runtime_library).parent)
    compile_ = subprocess.run(
        ["cc", "-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror", f"-I{native.runtime_include_dir()}",
         str(tmp_path / "main.c"), f"-L{folder}", "-luniattn_runtime", f"-Wl,-rpath,{folder}", "-o", str(tmp_path / "main")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert compile_.returncode == 0, compile_.stderr
    done = subprocess.run([str(tmp_path / "main"), str(tiny_artifact), native.onnxruntime_library()],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    expected = OrtSession(tiny_artifact).generate([[5, 17, 99]], 4).tokens[0].tolist()
    assert [int(t) for t in done.stdout.split()] == expected
