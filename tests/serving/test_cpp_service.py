"""examples/cpp_service: built with CMake against the runtime library and its header, run on
the tiny artifact; its JSON must carry the Python runtime's tokens (greedy and seeded
sampling) and logits, and bad input must exit with code 2 and one line on stderr."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from uniattn_export import native
from uniattn_export.targets.ort import OrtSession
from uniattn_export.targets.session import Sampling

PROMPTS = [[5, 17, 99, 3, 250, 41, 8], [200, 1], [64, 64, 12, 7]]
# One prompt per line; commas, comments and blank lines are allowed.
PROMPT_FILE = "# three prompts, one left-padded batch\n5 17 99 3 250 41 8\n\n200, 1\n  64 64 12 7  \n"


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text(PROMPT_FILE)
    return path


@pytest.fixture(scope="module")
def python_runtime(tiny_artifact):
    return OrtSession(tiny_artifact)


def _run(binary, *args):
    return subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, timeout=120)


def _generate(binary, artifact, prompts, *flags):
    done = _run(binary, artifact, prompts, "--onnxruntime", native.onnxruntime_library(), *flags)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_greedy_tokens_and_logits_equal_python_runtime(cpp_service, tiny_artifact, prompt_file, python_runtime):
    out = _generate(cpp_service, tiny_artifact, prompt_file, "--max-new-tokens", 12, "--logits")
    expected = python_runtime.generate(PROMPTS, 12, return_logits=True)
    assert out["tokens"] == expected.tokens.tolist()
    assert out["steps"] == 12 and out["lengths"] == [12, 12, 12]
    last_position = np.stack([step[:, -1, :] for step in expected.step_logits], axis=1)
    np.testing.assert_allclose(np.asarray(out["logits"], dtype=np.float32), last_position, rtol=0, atol=1e-5)
    # Both runtimes found the built custom-op library and used it.
    assert native.ort_custom_op_library() is not None, f"{native.ORT_LIBRARY} is not built: {native.BUILD_FIX}"
    assert python_runtime.uses_custom_ops and out["uses_custom_ops"] is True


@pytest.mark.parametrize(
    "flags, sampling",
    [
        (["--temperature", 0.9, "--seed", 5], Sampling(temperature=0.9, seed=5)),
        (["--temperature", 1.2, "--top-k", 8, "--top-p", 0.8, "--seed", 77], Sampling(temperature=1.2, top_k=8, top_p=0.8, seed=77)),
    ],
)
def test_sampling_with_a_seed_equals_python_runtime(cpp_service, tiny_artifact, prompt_file, python_runtime, flags, sampling):
    out = _generate(cpp_service, tiny_artifact, prompt_file, "--max-new-tokens", 12, *flags)
    expected = python_runtime.generate(PROMPTS, 12, sampling=sampling)
    assert out["tokens"] == expected.tokens.tolist()


def test_eos_and_pad(cpp_service, tiny_artifact, prompt_file, python_runtime):
    eos = int(python_runtime.generate(PROMPTS, 12).tokens[0, 3])
    out = _generate(cpp_service, tiny_artifact, prompt_file, "--max-new-tokens", 12, "--eos", eos, "--pad", 2)
    expected = python_runtime.generate(PROMPTS, 12, eos_token_id=eos, pad_token_id=2)
    assert out["tokens"] == expected.tokens.tolist()
    assert out["lengths"] == [len(s) for s in expected.sequences(eos)]
    assert out["lengths"][0] <= 4


def test_function_bodies_only(cpp_service, tiny_artifact, prompt_file, python_runtime):
    out = _generate(cpp_service, tiny_artifact, prompt_file, "--max-new-tokens", 6, "--custom-ops", "off")
    assert out["uses_custom_ops"] is False and "ONNX function bodies" in out["runtime"]
    assert out["tokens"] == python_runtime.generate(PROMPTS, 6).tokens.tolist()


@pytest.mark.parametrize(
    "prompts, flags, message",
    [
        ("1 2 x\n", [], "needs an integer, got 'x'"),
        ("# nothing\n\n", [], "has no prompts (one line of token ids per prompt)"),
        ("1 2 300\n", [], "prompt 0 has token id 300 outside the vocabulary [0, 256)"),
        ("1 2\n", ["--max-new-tokens", 0], "max_new_tokens must be >= 1, got 0"),
        ("1 2\n", ["--top-k", 3], "--top-k and --top-p apply to sampling: add --temperature"),
        ("1 2\n", ["--device", "tpu"], "--device is cpu or cuda, got 'tpu'"),
    ],
)
def test_bad_input_exits_2_with_one_line(cpp_service, tiny_artifact, tmp_path, prompts, flags, message):
    path = tmp_path / "prompts.txt"
    path.write_text(prompts)
    done = _run(cpp_service, tiny_artifact, path, "--onnxruntime", native.onnxruntime_library(), *flags)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("uniattn_cpp_service: error: ") and message in lines[0]


def test_missing_artifact_exits_2(cpp_service, tmp_path, prompt_file):
    done = _run(cpp_service, tmp_path / "none", prompt_file, "--onnxruntime", native.onnxruntime_library())
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "uniattn_cpp_service: error: loading the artifact (UNIATTN_ARTIFACT_ERROR): artifact folder "
        f"{tmp_path / 'none'} does not exist. Pass the -o folder of `uniattn-export model`"
    )


def test_cuda_without_onnxruntime_gpu_is_an_error_not_a_crash(cpp_service, tiny_artifact, prompt_file):
    done = _run(cpp_service, tiny_artifact, prompt_file, "--onnxruntime", native.onnxruntime_library(), "--device", "cuda")
    assert done.returncode == 1
    assert "(UNIATTN_ORT_ERROR)" in done.stderr and "cannot use the CUDA execution provider" in done.stderr


def test_a_node_failing_inside_onnx_runtime_is_one_line_on_stderr(cpp_service, tiny_artifact, prompt_file, tmp_path,
                                                                  failing_at_run_time):
    """ONNX Runtime logs a failing node to stderr itself (the Python wheel prints it in red); the
    service must still print exactly its one error line, with ORT's message inside it."""
    artifact = failing_at_run_time(tiny_artifact, tmp_path / "artifact")
    done = _run(cpp_service, artifact, prompt_file, "--onnxruntime", native.onnxruntime_library(), "--max-new-tokens", 2)
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("uniattn_cpp_service: error: ") and "(UNIATTN_ORT_ERROR)" in lines[0]
    assert "running Reshape node" in lines[0] and "requested shape" in lines[0]
