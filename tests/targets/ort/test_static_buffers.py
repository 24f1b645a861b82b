"""The persistent-binding path of static-cache artifacts (the one CUDA graphs replay), run on
the CPU: every batch size's buffers are allocated once and bound once, decode steps update
ids and positions in place, later generations reuse the buffers without clearing them. A
reused session must answer exactly what a fresh one answers. Also the placement check's
decision on onnxruntime's node assignment (tests/gpu/ort_cuda_graph_check.py runs the CUDA side)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from uniattn_export.errors import UniAttnError
from uniattn_export.targets.ort import OrtSession
from uniattn_export.targets.ort.session import (
    RECORD_ASSIGNMENT,
    assigned_nodes,
    open_with_cuda_graphs,
    placement_problems,
)
from uniattn_export.targets.session import Sampling

CAPACITY = 64
STEPS = 24


def _prompts(vocab_size: int, lengths, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab_size, n).tolist() for n in lengths]


@pytest.fixture(scope="module")
def static_artifact(tiny):
    return tiny("llama", capacity=CAPACITY)[1]


def _fresh(artifact, prompts, custom_ops=False, **kwargs):
    return OrtSession(artifact, custom_ops=custom_ops).generate(prompts, STEPS, **kwargs)


# The function bodies read every slot (hidden ones times probability 0), the library's
# kernels only the slots up to each row's position.
KERNELS = pytest.mark.parametrize("custom_ops", [False, True], ids=["function_bodies", "library"])


@KERNELS
def test_generations_in_a_row_reuse_the_buffers_and_equal_a_fresh_session(static_artifact, custom_ops):
    vocab = static_artifact.vocab_size
    # Long rows first, then short ones: the second generation runs over slots the first
    # filled far beyond its own positions.
    long_rows, short_rows = _prompts(vocab, (14, 3, 9, 1), 1), _prompts(vocab, (2, 5, 1, 4), 2)
    session = OrtSession(static_artifact, custom_ops=custom_ops)

    first = session.generate(long_rows, STEPS, return_logits=True)
    expected = _fresh(static_artifact, long_rows, custom_ops, return_logits=True)
    np.testing.assert_array_equal(first.tokens, expected.tokens)
    buffers = session._buffers[4]
    addresses = {name: value.data_ptr() for name, value in buffers.caches.items()}

    second = session.generate(short_rows, STEPS, return_logits=True)
    expected_second = _fresh(static_artifact, short_rows, custom_ops, return_logits=True)
    np.testing.assert_array_equal(second.tokens, expected_second.tokens)
    # Bitwise: the library never reads hidden slots, the bodies multiply them by exactly 0.
    for got, want in zip(second.step_logits, expected_second.step_logits):
        np.testing.assert_array_equal(got, want)
    assert session._buffers[4] is buffers
    assert {name: value.data_ptr() for name, value in buffers.caches.items()} == addresses
    assert buffers.decode is session._buffers[4].decode  # bound once

    # Another batch size; without CUDA graphs nothing refers to the batch of 4's buffers.
    single = _prompts(vocab, (6,), 3)
    np.testing.assert_array_equal(session.generate(single, STEPS).tokens, _fresh(static_artifact, single, custom_ops).tokens)
    assert list(session._buffers) == [1]


def test_the_library_runs_the_ort_targets_graph_as_its_function_bodies_do(tiny):
    """The graph `--target ort` makes (SplitRotary, GatedSilu, skip norms around the attention
    ops): the library's kernels give the bodies' tokens and, in float32, their logits within 1e-4,
    and the reference's tokens."""
    from uniattn_export.model import load_model
    from uniattn_export.validate.reference import TorchSession

    checkpoint, artifact = tiny("llama", capacity=CAPACITY, ort_contrib_ops=True)
    assert artifact.manifest["graph"]["fused"]["split_rotary"] > 0
    prompts = _prompts(artifact.vocab_size, (14, 3, 9, 1), 4)
    library = OrtSession(artifact, custom_ops=True)
    assert library.uses_custom_ops
    got = library.generate(prompts, STEPS, return_logits=True)
    bodies = _fresh(artifact, prompts, return_logits=True)
    np.testing.assert_array_equal(got.tokens, bodies.tokens)
    for step, (a, b) in enumerate(zip(got.step_logits, bodies.step_logits)):
        assert np.abs(a[:, -1] - b[:, -1]).max() <= 1e-4, step
    np.testing.assert_array_equal(got.tokens, TorchSession(load_model(checkpoint)).generate(prompts, STEPS).tokens)


@KERNELS
def test_values_left_in_the_caches_are_never_visible(static_artifact, custom_ops):
    """Random finite values in every slot (load_caches, as benchmarks do) change nothing."""
    prompts = _prompts(static_artifact.vocab_size, (14, 3, 9, 1), 4)
    session = OrtSession(static_artifact, custom_ops=custom_ops)
    session.reset(4)
    rng = np.random.default_rng(5)
    session.load_caches(
        {name: (10 * rng.standard_normal(value.shape())).astype(np.float32) for name, value in session._cache.items()}
    )
    loaded = session._cache["past_key_values.0.key"].numpy().copy()
    run = session.generate(prompts, STEPS)
    np.testing.assert_array_equal(run.tokens, _fresh(static_artifact, prompts, custom_ops).tokens)
    # Each row wrote slots 0..13 (the padded prompt) and its length..length+STEPS-2, and
    # kept the loaded values above: the short rows generated next to them.
    after = session._cache["past_key_values.0.key"].numpy()
    for row, length in enumerate((14, 3, 9, 1)):
        written = max(14, length + STEPS - 1)
        assert (after[row, :, :written] != loaded[row, :, :written]).all()
        np.testing.assert_array_equal(after[row, :, written:], loaded[row, :, written:])


def test_seeded_samples_equal_a_fresh_session(static_artifact):
    prompts = _prompts(static_artifact.vocab_size, (14, 3, 9, 1), 6)
    sampling = Sampling(temperature=1.3, top_k=40, top_p=0.95, seed=7)
    session = OrtSession(static_artifact, custom_ops=False)
    greedy = session.generate(prompts, STEPS)
    sampled = session.generate(prompts, STEPS, sampling=sampling)
    again = session.generate(prompts, STEPS, sampling=sampling)
    np.testing.assert_array_equal(sampled.tokens, _fresh(static_artifact, prompts, sampling=sampling).tokens)
    np.testing.assert_array_equal(again.tokens, sampled.tokens)
    assert (sampled.tokens != greedy.tokens).any()  # the draws are not the argmax


def test_steps_must_match_the_batch_reset_started(static_artifact):
    session = OrtSession(static_artifact, custom_ops=False)
    session.reset(2)
    with pytest.raises(UniAttnError) as error:
        session.step_greedy(np.zeros((3, 1), np.int64), np.ones((3, 1), np.int64), np.zeros((3, 1), np.int64))
    assert str(error.value) == (
        "input_ids (3, 1) and position_ids (3, 1) do not match the batch of 2 rows reset() started. "
        "Pass (batch, new tokens) arrays for the batch size given to reset()."
    )
    with pytest.raises(UniAttnError, match=r"step_greedy\(\) called before reset\(\)"):
        OrtSession(static_artifact, custom_ops=False).step_greedy(
            np.zeros((1, 1), np.int64), np.ones((1, 1), np.int64), np.zeros((1, 1), np.int64)
        )


def test_cuda_graphs_on_the_cpu_or_with_dynamic_caches_are_refused(tiny, static_artifact):
    plain = OrtSession(static_artifact, custom_ops=False)
    assert plain.cuda_graph is False and plain.graph_placement == []
    assert "CUDA graphs" not in plain.description  # only CUDA sessions can have them
    with pytest.raises(UniAttnError) as error:
        OrtSession(static_artifact, custom_ops=False, cuda_graph=True)
    assert str(error.value) == (
        "CUDA graphs need a static-cache artifact on CUDA; this is a CPU session. Export with --cache "
        "static and run with --device cuda, or leave CUDA graphs off."
    )
    dynamic = tiny("llama")[1]
    with pytest.raises(UniAttnError) as error:
        OrtSession(dynamic, custom_ops=False, cuda_graph=True)
    assert str(error.value) == (
        f"CUDA graphs need a static-cache artifact on CUDA; this is {dynamic.path}, which has dynamic caches. "
        "Export with --cache static and run with --device cuda, or leave CUDA graphs off."
    )


def _small_graph() -> bytes:
    """x -> Add -> Shape (a dynamic length keeps the Shape node from being folded away)."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"], name="double"), helper.make_node("Shape", ["y"], ["n"], name="size")],
        "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["length"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["length"]), helper.make_tensor_value_info("n", TensorProto.INT64, [1])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_placement_check_reads_onnxruntimes_node_assignment():
    options = ort.SessionOptions()
    options.add_session_config_entry(RECORD_ASSIGNMENT, "1")
    nodes = assigned_nodes(ort.InferenceSession(_small_graph(), options, providers=["CPUExecutionProvider"]))
    assert nodes == [("CPUExecutionProvider", "double", "Add"), ("CPUExecutionProvider", "size", "Shape")]
    # Accepted by onnxruntime: CPU nodes are copy-free shape computations, nothing in the way.
    assert placement_problems(nodes) == []
    # Refused: the CPU nodes are where data crosses to the host; they are named.
    refusal = "This session cannot use the graph capture feature as requested by the user"
    assert placement_problems(nodes, refusal) == [
        "double (Add) on CPUExecutionProvider",
        "size (Shape) on CPUExecutionProvider",
    ]


def test_a_session_onnxruntime_accepts_is_kept():
    """open_with_cuda_graphs on a session onnxruntime creates (here on the CPU, where nothing
    refuses): one creation, with the providers for graphs, the assignment recorded."""
    asked = []

    def providers(graphs):
        asked.append(graphs)
        return ["CPUExecutionProvider"]

    session, problems = open_with_cuda_graphs(_small_graph(), ort.SessionOptions(), providers)
    assert problems == [] and asked == [True]
    assert session.run(None, {"x": np.array([1.0, 2.0], np.float32)})[1].tolist() == [2]
    assert [node[1] for node in assigned_nodes(session)] == ["double", "size"]


def test_placement_check_names_memcpy_and_foreign_nodes():
    cuda = "CUDAExecutionProvider"
    assert placement_problems([(cuda, "proj", "MatMul"), (cuda, "norm", "RMSNormalization")]) == []
    nodes = [
        (cuda, "proj", "MatMul"),
        (cuda, "Memcpy_token_3", "MemcpyToHost"),
        ("TensorrtExecutionProvider", "TRTKernel_0", "TRTKernel_graph_0"),
        ("CPUExecutionProvider", "", "Shape"),
    ]
    assert placement_problems(nodes) == [
        "Memcpy_token_3 (MemcpyToHost) on CUDAExecutionProvider",
        "TRTKernel_0 (TRTKernel_graph_0) on TensorrtExecutionProvider",
    ]
    # A refusal with no node to name still stands in the way, in onnxruntime's words.
    refusal = "This session cannot use the graph capture feature as the model has control flow nodes"
    assert placement_problems([(cuda, "proj", "MatMul")], refusal) == [refusal]


def test_the_python_service_serves_a_static_artifact_on_this_path(static_artifact):
    """examples/python_service: requests in a row on one worker (its buffers reused) answer
    what a fresh session generates."""
    import importlib.util
    import sys
    from pathlib import Path

    from fastapi.testclient import TestClient

    path = Path(__file__).resolve().parents[3] / "examples" / "python_service" / "app.py"
    spec = importlib.util.spec_from_file_location("python_service_static", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the request model's annotations there
    spec.loader.exec_module(module)
    client = TestClient(module.create_app(static_artifact.path, workers=1))
    assert f"static caches of {CAPACITY} tokens" in client.get("/health").json()["runtime"]
    eos, pad = module._special_tokens(static_artifact, None)
    for prompt in _prompts(static_artifact.vocab_size, (12, 2, 7), 8):
        answer = client.post("/generate", json={"prompt_ids": prompt, "max_new_tokens": STEPS})
        assert answer.status_code == 200, answer.text
        fresh = OrtSession(static_artifact).generate([prompt], STEPS, eos_token_id=eos, pad_token_id=pad)  # same kernels
        assert answer.json()["tokens"] == fresh.sequences(eos)[0]
