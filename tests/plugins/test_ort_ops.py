"""The custom-op library inside the pinned onnxruntime wheel (CPUExecutionProvider): ONNX
graphs holding single UniAttnProducer / UniAttnConsumer nodes, run with the library
registered, against model/attention.py; and the errors ORT reports for bad nodes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uniattn_export.export.functions import function_protos
from uniattn_export.model import attention as reference


def _load_device_script():
    """tests/plugins/ort_on_device.py (the GPU run) builds the single-node graphs for both."""
    spec = importlib.util.spec_from_file_location("uniattn_ort_on_device", Path(__file__).with_name("ort_on_device.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


graphs = _load_device_script()
PRODUCER_INPUTS, PRODUCER_OUTPUTS = graphs.PRODUCER_INPUTS, graphs.PRODUCER_OUTPUTS
CONSUMER_INPUTS, CONSUMER_OUTPUTS = graphs.CONSUMER_INPUTS, graphs.CONSUMER_OUTPUTS


def run(model: bytes, inputs: dict, library: str | None) -> list[torch.Tensor]:
    options = ort.SessionOptions()
    if library:
        options.register_custom_ops_library(library)
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    feeds = {name: ort.OrtValue.from_dlpack(tensor.contiguous()) for name, tensor in inputs.items()}
    return [torch.from_dlpack(value).clone() for value in session.run_with_ort_values(None, feeds)]


def node_attributes(case) -> dict:
    return case.attributes | dict(is_causal=int(case.is_causal), probs_max_query_len=case.probs_max_query_len)


def producer_model(case, outputs=PRODUCER_OUTPUTS, **kwargs):
    inputs = dict(zip(PRODUCER_INPUTS, case.producer_args))
    return graphs.producer_node(case.torch_dtype, node_attributes(case), outputs, inputs, **kwargs)


def consumer_inputs(case, reuse_probs):
    """The consumer's inputs from a producer that emits P (decode branch) or not (recompute)."""
    expected = reference.producer_attention(*case.producer_args, **case.attributes,
                                            probs_max_query_len=case.query_len if reuse_probs else -1)  # fmt: skip
    return dict(zip(CONSUMER_INPUTS, case.consumer_args(expected[3], expected[4], expected[1])))


def consumer_model(case, inputs, **kwargs):
    return graphs.consumer_node(case.torch_dtype, node_attributes(case), inputs, **kwargs)


def check_producer_outputs(case, outputs, actual, assert_close):
    expected = dict(zip(PRODUCER_OUTPUTS, reference.producer_attention(
        *case.producer_args, **case.attributes, probs_max_query_len=case.probs_max_query_len)))  # fmt: skip
    assert len(actual) == len([name for name in outputs if name])
    for name, value in zip([name for name in outputs if name], actual):
        assert_close(value, expected[name], 2e-5 if name == "shared_lse" else case.tolerance, name)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # examples: the profile's (tests/conftest.py)
@given(
    dtype=st.sampled_from(["float32", "float16", "bfloat16"]),
    batch=st.integers(1, 2), query_len=st.integers(1, 9), past_len=st.integers(0, 9),
    kv_num_heads=st.integers(1, 2), group=st.sampled_from([1, 3]), head_dim=st.sampled_from([4, 40, 80]),
    is_causal=st.booleans(), sliding_window=st.sampled_from([0, 2]), probs_max_query_len=st.sampled_from([1, 16]),
    pad=st.integers(0, 4), seed=st.integers(0, 1000),
)  # fmt: skip
def test_ops_in_onnxruntime_match_reference(dtype, batch, query_len, past_len, kv_num_heads, group, head_dim,
                                            is_causal, sliding_window, probs_max_query_len, pad, seed, make_case,
                                            assert_close, ort_library):  # fmt: skip
    case = make_case(batch=batch, query_len=query_len, past_len=past_len, num_heads=kv_num_heads * group,
                     kv_num_heads=kv_num_heads, head_dim=head_dim, dtype=dtype, is_causal=is_causal,
                     sliding_window=sliding_window, probs_max_query_len=probs_max_query_len,
                     padded_rows=(pad,) * batch, seed=seed)  # fmt: skip
    actual = run(producer_model(case), dict(zip(PRODUCER_INPUTS, case.producer_args)), ort_library)
    check_producer_outputs(case, PRODUCER_OUTPUTS, actual, assert_close)
    # The probs_max_query_len rule: the last dim of shared_probs is S or 0.
    assert actual[3].shape[-1] == (past_len + query_len if query_len <= probs_max_query_len else 0)
    for reuse_probs in (True, False):
        inputs = consumer_inputs(case, reuse_probs)
        expected = reference.consumer_attention(*inputs.values(), **case.attributes)
        output, present_value = run(consumer_model(case, inputs), inputs, ort_library)
        assert_close(output, expected[0], case.tolerance, "consumer output")
        assert torch.equal(present_value, expected[1])


@pytest.mark.parametrize(
    "outputs",
    [PRODUCER_OUTPUTS[:3], (*PRODUCER_OUTPUTS[:3], "", ""), (*PRODUCER_OUTPUTS[:3], "", "shared_lse"),
     PRODUCER_OUTPUTS[:4]],
    ids=["3 outputs", "outputs 3-4 empty", "lse only", "probs only"],
)  # fmt: skip
def test_producer_with_optional_outputs_left_out(outputs, make_case, assert_close, ort_library):
    case = make_case(batch=2, query_len=3, past_len=4, num_heads=4, kv_num_heads=2, head_dim=8, dtype="float16",
                     padded_rows=(0, 5))  # fmt: skip
    actual = run(producer_model(case, outputs), dict(zip(PRODUCER_INPUTS, case.producer_args)), ort_library)
    check_producer_outputs(case, outputs, actual, assert_close)


def test_registered_kernel_wins_over_the_model_function(make_case, assert_close, ort_library):
    """The exporter attaches a model-local function to every node. Decode-branch inputs whose
    shared_probs disagree with shared_lse tell the two apart: the kernel applies P as given,
    the function (always the recompute branch) ignores it."""
    case = make_case(batch=1, query_len=1, past_len=6, num_heads=2, kv_num_heads=1, head_dim=8, dtype="float32")
    inputs = consumer_inputs(case, reuse_probs=True)
    inputs["shared_probs"] = torch.softmax(torch.randn(inputs["shared_probs"].shape), dim=-1)
    model = consumer_model(case, inputs, functions=function_protos())
    with_library = run(model, inputs, ort_library)[0]
    without_library = run(model, inputs, None)[0]
    assert_close(with_library, reference.consumer_attention(*inputs.values(), **case.attributes)[0], 2e-5, "kernel")
    recomputed = consumer_inputs(case, reuse_probs=False)
    recomputed["shared_probs"] = inputs["shared_probs"][..., :0]
    assert_close(without_library, reference.consumer_attention(*recomputed.values(), **case.attributes)[0], 2e-5,
                 "function")  # fmt: skip
    assert not torch.allclose(with_library, without_library)


def test_library_serves_sessions_side_by_side(make_case, ort_library):
    """Each SessionOptions registers the library; the ops and the domain are shared statics."""
    case = make_case(batch=1, query_len=2, past_len=1, num_heads=2, kv_num_heads=2, head_dim=4, dtype="float32")
    model = producer_model(case)
    feeds = {name: tensor.numpy() for name, tensor in zip(PRODUCER_INPUTS, case.producer_args)}
    sessions = []
    for _ in range(3):
        options = ort.SessionOptions()
        options.register_custom_ops_library(ort_library)
        sessions.append(ort.InferenceSession(model, options, providers=["CPUExecutionProvider"]))
    results = [session.run(None, feeds) for session in sessions]
    expected = reference.producer_attention(*case.producer_args, **case.attributes)
    for result in results[1:]:
        assert all((a == b).all() for a, b in zip(result, results[0]))
    for actual, want in zip(results[0], expected):
        assert torch.allclose(torch.from_numpy(actual), want, rtol=2e-5, atol=2e-6)


def error_of(model: bytes, inputs: dict, library: str) -> str:
    with pytest.raises(Exception) as caught:
        run(model, inputs, library)
    return str(caught.value)


def test_bad_key_shape_is_an_ort_error_naming_the_shapes(make_case, ort_library):
    case = make_case(batch=2, query_len=3, past_len=4, num_heads=4, kv_num_heads=2, head_dim=8, dtype="float32")
    inputs = dict(zip(PRODUCER_INPUTS, case.producer_args))
    inputs["key"] = inputs["key"][..., :12]
    message = error_of(producer_model(case), inputs, ort_library)
    assert ("UniAttnProducer node 'attn': key has shape [2, 3, 12] but [2, 3, 16] (B, L, kv_num_heads*D) is "
            "expected (query [2, 3, 32] with num_heads=4, kv_num_heads=2, so D=8; past_key [2, 2, 4, 8])") in message


def test_bad_mask_length_is_an_ort_error(make_case, ort_library):
    case = make_case(batch=1, query_len=2, past_len=3, num_heads=2, kv_num_heads=1, head_dim=4, dtype="float16")
    inputs = dict(zip(PRODUCER_INPUTS, case.producer_args))
    inputs["attention_mask"] = torch.ones(1, 4, dtype=torch.int64)
    message = error_of(producer_model(case), inputs, ort_library)
    assert "attention_mask has shape [1, 4] but [1, 5] (B, P + L) is expected" in message


def test_bad_shared_probs_is_an_ort_error(make_case, ort_library):
    case = make_case(batch=1, query_len=1, past_len=3, num_heads=2, kv_num_heads=1, head_dim=4, dtype="float32")
    inputs = consumer_inputs(case, reuse_probs=True)
    inputs["shared_probs"] = inputs["shared_probs"][..., :3]
    message = error_of(consumer_model(case, inputs), inputs, ort_library)
    assert ("UniAttnConsumer node 'attn': shared_probs has shape [1, 2, 1, 3] but [1, 2, 1, 0] "
            "(B, num_heads, L, P + L or 0) is expected") in message


def test_heads_that_do_not_divide_are_refused_at_session_creation(make_case, ort_library):
    case = make_case(batch=1, query_len=2, past_len=0, num_heads=2, kv_num_heads=1, head_dim=4, dtype="float32")
    inputs = dict(zip(PRODUCER_INPUTS, case.producer_args))
    model = graphs.node_model("UniAttnProducer", inputs, ["output", "present_key", "present_value"],
                              dict.fromkeys(PRODUCER_OUTPUTS, torch.float32), num_heads=3, kv_num_heads=2,
                              scale=0.5)  # fmt: skip
    assert "num_heads=3 must be a positive multiple of kv_num_heads=2" in error_of(model, inputs, ort_library)


def test_missing_scale_is_refused(make_case, ort_library):
    case = make_case(batch=1, query_len=2, past_len=0, num_heads=2, kv_num_heads=1, head_dim=4, dtype="float32")
    inputs = dict(zip(PRODUCER_INPUTS, case.producer_args))
    model = graphs.node_model("UniAttnProducer", inputs, ["output", "present_key", "present_value"],
                              dict.fromkeys(PRODUCER_OUTPUTS, torch.float32), num_heads=2, kv_num_heads=1)  # fmt: skip
    assert "UniAttnProducer node 'attn': the float attribute 'scale' is missing or not a float" in error_of(model, inputs, ort_library)


# ---- op version 2 (model opset import uniattn = 2) ----------------------------------------

V2_PRODUCER_INPUTS = ("query", "key", "value", "past_key", "past_value", "position_ids")
V2_CONSUMER_INPUTS = ("value", "past_value", "position_ids", "shared_probs", "shared_lse", "producer_query",
                      "producer_key")  # fmt: skip


def v2_model(op_type: str, inputs: dict, outputs: dict, **attributes) -> bytes:
    """One `op_type` node of a model importing uniattn = 2; `outputs` maps names to dtypes."""
    node = onnx.helper.make_node(op_type, list(inputs), list(outputs), domain="uniattn", name="attn", **attributes)
    graph = onnx.helper.make_graph(
        [node], "single_node",
        [onnx.helper.make_tensor_value_info(name, graphs.ELEMENT[t.dtype], None) for name, t in inputs.items()],
        [onnx.helper.make_tensor_value_info(name, graphs.ELEMENT[t], None) for name, t in outputs.items()],
    )  # fmt: skip
    opsets = [onnx.helper.make_opsetid("", 18), onnx.helper.make_opsetid("uniattn", 2)]
    return onnx.helper.make_model(graph, opset_imports=opsets, ir_version=10).SerializeToString()


def v2_producer_model(case, plugin_version: bool = True):
    outputs = {name: case.torch_dtype for name in PRODUCER_OUTPUTS} | {"shared_lse": torch.float32}
    extra = dict(plugin_version="2", plugin_namespace="uniattn") if plugin_version else {}
    return v2_model("UniAttnProducer", dict(zip(V2_PRODUCER_INPUTS, case.producer_args)), outputs,
                    **case.attributes, probs_max_query_len=case.probs_max_query_len, **extra)  # fmt: skip


def v2_consumer_model(case, inputs: dict, plugin_version: bool = True):
    extra = dict(plugin_version="2") if plugin_version else {}
    return v2_model("UniAttnConsumer", inputs, dict.fromkeys(CONSUMER_OUTPUTS, case.torch_dtype), **case.attributes,
                    **extra)  # fmt: skip


def run_session(model: bytes, inputs: dict, library: str, threads: int = 1) -> list[torch.Tensor]:
    options = ort.SessionOptions()
    options.register_custom_ops_library(library)
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    feeds = {name: ort.OrtValue.from_dlpack(tensor.contiguous()) for name, tensor in inputs.items()}
    return [torch.from_dlpack(value).clone() for value in session.run_with_ort_values(None, feeds)]


V2_CASES = {
    "decode": dict(starts=(6, 40), query_len=1, capacity=48, num_heads=6, kv_num_heads=2, head_dim=64),
    "prefill": dict(starts=(0, 0), query_len=37, capacity=40, num_heads=4, kv_num_heads=2, head_dim=16,
                    probs_max_query_len=4),
    "window": dict(starts=(20,), query_len=3, capacity=24, num_heads=2, kv_num_heads=1, head_dim=8,
                   sliding_window=5),
}


@pytest.mark.parametrize("plugin_version", [True, False], ids=["plugin_version 2", "told by shapes"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("name", list(V2_CASES))
def test_v2_ops_in_onnxruntime_match_reference(name, dtype, plugin_version, make_static_case, assert_close,
                                               static_reference, ort_library):  # fmt: skip
    case = make_static_case(**V2_CASES[name], dtype=dtype)
    expected = static_reference[0](*case.producer_args, **case.attributes,
                                   probs_max_query_len=case.probs_max_query_len)  # fmt: skip
    actual = run_session(v2_producer_model(case, plugin_version), dict(zip(V2_PRODUCER_INPUTS, case.producer_args)),
                         ort_library)  # fmt: skip
    assert_close(actual[0], expected[0], case.tolerance, "output")
    assert torch.equal(actual[1].nan_to_num(), expected[1].nan_to_num()), "present_key"
    assert torch.equal(actual[2].nan_to_num(), expected[2].nan_to_num()), "present_value"
    assert actual[3].shape == expected[3].shape
    for b, last in enumerate(case.last_positions()):
        assert_close(actual[3][b, ..., : last + 1], expected[3][b, ..., : last + 1], case.tolerance, "shared_probs")
    assert_close(actual[4], expected[4], 2e-5, "shared_lse")

    emitted = expected[3].shape[-1] == case.capacity
    for probs in (expected[3], expected[3][..., :0]) if emitted else (expected[3],):
        inputs = dict(zip(V2_CONSUMER_INPUTS, (case.consumer_value, case.consumer_past_value, case.position_ids,
                                               probs, expected[4], case.query, expected[1])))  # fmt: skip
        want = static_reference[1](*inputs.values(), **case.attributes)
        output, present_value = run_session(v2_consumer_model(case, inputs, plugin_version), inputs, ort_library)
        assert_close(output, want[0], case.tolerance, "consumer output")
        assert torch.equal(present_value.nan_to_num(), want[1].nan_to_num()), "consumer present_value"


def test_v2_caches_bound_to_one_buffer_are_updated_in_place(make_static_case, assert_close, static_reference,
                                                           ort_library):  # fmt: skip
    """The runtime binds past and present to the same OrtValue (IOBinding): the kernel writes the
    new slots into it and leaves every other slot as it was."""
    case = make_static_case(starts=(9, 2), query_len=1, capacity=16, num_heads=4, kv_num_heads=2, head_dim=8,
                            dtype="float32")  # fmt: skip
    expected = static_reference[0](*case.producer_args, **case.attributes)
    options = ort.SessionOptions()
    options.register_custom_ops_library(ort_library)
    session = ort.InferenceSession(v2_producer_model(case), options, providers=["CPUExecutionProvider"])
    caches = {"key": case.past_key.clone(), "value": case.past_value.clone()}
    binding = session.io_binding()
    for name, tensor in zip(V2_PRODUCER_INPUTS, case.producer_args):
        if not name.startswith("past_"):
            binding.bind_ortvalue_input(name, ort.OrtValue.from_dlpack(tensor.contiguous()))
    binding.bind_output("output")  # get_outputs() follows the binding order
    for which, tensor in caches.items():
        value = ort.OrtValue.from_dlpack(tensor)
        binding.bind_ortvalue_input(f"past_{which}", value)
        binding.bind_ortvalue_output(f"present_{which}", value)
    for name in ("shared_probs", "shared_lse"):
        binding.bind_output(name)
    session.run_with_iobinding(binding)
    assert torch.equal(caches["key"].nan_to_num(), expected[1].nan_to_num())
    assert torch.equal(caches["value"].nan_to_num(), expected[2].nan_to_num())
    output = torch.from_dlpack(binding.get_outputs()[0])
    assert_close(output, expected[0], case.tolerance, "output")


@pytest.mark.parametrize("name", ["decode", "prefill"])
def test_results_do_not_depend_on_ort_threads(name, make_static_case, ort_library):
    """The kernels run on ORT's intra-op pool (KernelContext_ParallelFor): 2 threads give the
    bits of 1."""
    case = make_static_case(**V2_CASES[name], dtype="float32")
    model, inputs = v2_producer_model(case), dict(zip(V2_PRODUCER_INPUTS, case.producer_args))
    single, pooled = (run_session(model, inputs, ort_library, threads) for threads in (1, 2))
    for output, a, b in zip(PRODUCER_OUTPUTS, single, pooled, strict=True):
        if output == "shared_probs":  # written up to each batch row's last position (kernels.h), the rest is the buffer's
            for row, last in enumerate(case.last_positions()):
                assert torch.equal(a[row, ..., : last + 1], b[row, ..., : last + 1])
        else:
            assert torch.equal(a.nan_to_num(), b.nan_to_num())


def test_v1_ops_still_served_next_to_v2(make_case, assert_close, ort_library):
    """A model importing uniattn = 1 keeps version 1's semantics (mask, growing caches)."""
    case = make_case(batch=2, query_len=3, past_len=5, num_heads=4, kv_num_heads=2, head_dim=8, dtype="float32",
                     padded_rows=(0, 2))  # fmt: skip
    actual = run(producer_model(case), dict(zip(PRODUCER_INPUTS, case.producer_args)), ort_library)
    check_producer_outputs(case, PRODUCER_OUTPUTS, actual, assert_close)
    single = run_session(producer_model(case), dict(zip(PRODUCER_INPUTS, case.producer_args)), ort_library, 1)
    pooled = run_session(producer_model(case), dict(zip(PRODUCER_INPUTS, case.producer_args)), ort_library, 2)
    assert all(torch.equal(a, b) for a, b in zip(single, pooled))


def test_v2_bad_positions_shape_is_an_ort_error(make_static_case, ort_library):
    case = make_static_case(starts=(3,), query_len=2, capacity=8, num_heads=2, kv_num_heads=1, head_dim=4,
                            dtype="float32")  # fmt: skip
    inputs = dict(zip(V2_PRODUCER_INPUTS, case.producer_args))
    inputs["position_ids"] = inputs["position_ids"][:, :1]
    message = error_of_v2(v2_producer_model(case), inputs, ort_library)
    assert ("UniAttnProducer node 'attn': position_ids has shape [1, 1] but [1, 2] (B, L) is expected (query "
            "[1, 2, 8] with num_heads=2, kv_num_heads=1, so D=4; past_key [1, 1, 8, 4])") in message


def error_of_v2(model: bytes, inputs: dict, library: str) -> str:
    with pytest.raises(Exception) as caught:
        run_session(model, inputs, library)
    return str(caught.value)


@pytest.mark.parametrize(("positions", "token", "position"), [([[3, 4], [7, 8]], (1, 1), 8), ([[-2, -1], [0, 1]], (0, 0), -2)],
                         ids=["beyond-capacity", "negative"])  # fmt: skip
def test_v2_position_outside_the_caches_is_an_ort_error(make_static_case, ort_library, positions, token, position):
    """The CPU kernels read positions on the host: one outside [0, C) is refused before any
    write (docs/ops.md, version 2), by the producer and the consumer alike."""
    case = make_static_case(starts=(0, 0), query_len=2, capacity=8, num_heads=2, kv_num_heads=1, head_dim=4,
                            dtype="float32")  # fmt: skip
    case.position_ids = torch.tensor(positions, dtype=torch.int64)
    expected = (f"node 'attn': {{op}} (static layout): position_ids[{token[0]}, {token[1]}] = {position} is outside "
                "the cache slots 0..7 (capacity 8): the sequence does not fit the caches")  # fmt: skip
    message = error_of_v2(v2_producer_model(case), dict(zip(V2_PRODUCER_INPUTS, case.producer_args)), ort_library)
    assert f"UniAttnProducer {expected.format(op='producer')}" in message
    (batch, length), heads = case.position_ids.shape, case.num_heads
    shared = torch.zeros(batch, heads, length, case.capacity, dtype=case.torch_dtype), torch.zeros(batch, heads, length)
    inputs = dict(zip(V2_CONSUMER_INPUTS, (case.consumer_value, case.consumer_past_value, case.position_ids, *shared,
                                           case.query, case.past_key)))  # fmt: skip
    message = error_of_v2(v2_consumer_model(case, inputs), inputs, ort_library)
    assert f"UniAttnConsumer {expected.format(op='consumer')}" in message


# ---- GatedSilu (graph op) -------------------------------------------------------------------


def _load_kernel_script():
    """tests/plugins/gpu_kernels.py: the GatedSilu check's inputs, tolerances and floors, one source
    for the CUDA kernel (emulated and on the GPU) and the CPU kernel here."""
    spec = importlib.util.spec_from_file_location("uniattn_gpu_kernels_for_ort", Path(__file__).with_name("gpu_kernels.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


kernel_script = _load_kernel_script()
ONNX_TYPES = {torch.float32: onnx.TensorProto.FLOAT, torch.float16: onnx.TensorProto.FLOAT16,
              torch.bfloat16: onnx.TensorProto.BFLOAT16}  # fmt: skip


def gated_silu_model(dtype: torch.dtype, functions=()) -> bytes:
    """One GatedSilu node over a (B, L, 2*I) input, importing uniattn at version 2 (the static
    artifacts'); `functions`: its model-local body."""
    from onnx import helper

    node = helper.make_node("GatedSilu", ["gate_up"], ["output"], domain="uniattn", name="mlp")
    graph = helper.make_graph([node], "gated", [helper.make_tensor_value_info("gate_up", ONNX_TYPES[dtype], None)],
                              [helper.make_tensor_value_info("output", ONNX_TYPES[dtype], None)])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23), helper.make_opsetid("uniattn", 2)],
                              ir_version=10, functions=list(functions))  # fmt: skip
    return model.SerializeToString()


def gated_silu_input(shape, dtype, seed=0) -> torch.Tensor:
    return kernel_script.gated_silu_values(shape, seed).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 2), (2, 3, 14), (1, 1, 16), (3, 2, 2 * 4100)])
def test_gated_silu_in_onnxruntime_matches_float64(dtype, shape, ort_library):
    """The CPU kernel (vectorized exp for float32, several column blocks at width 4100) against
    silu(gate) * up in float64, with the GPU check's tolerances."""
    gate_up = gated_silu_input(shape, dtype)
    (got,) = run_session(gated_silu_model(dtype), {"gate_up": gate_up}, ort_library, 2)
    assert got.dtype == dtype and got.shape == (*shape[:-1], shape[-1] // 2)
    assert kernel_script.gated_silu_error(gate_up, got) <= kernel_script.GATED_SILU_TOLERANCE[dtype]


def run_profiled(model: bytes, feeds: dict, library: str | None, tmp_path) -> tuple[list, set[str]]:
    """(outputs, the op types of the nodes that ran) of one CPU run, with the library or without."""
    options = ort.SessionOptions()
    options.enable_profiling, options.profile_file_prefix = True, str(tmp_path / f"profile_{library is None}")
    if library:
        options.register_custom_ops_library(library)
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    results = session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    return results, {e["args"]["op_name"] for e in events if e.get("cat") == "Node" and "op_name" in e.get("args", {})}


def test_gated_silu_kernel_wins_over_its_function_body(ort_library, tmp_path):
    """With the library, ONNX Runtime runs the GatedSilu kernel; without it, the model-local body
    (Split, Sigmoid, Mul, Mul): the profiles name the nodes that ran; the results agree."""
    from uniattn_export.export.functions import local_function

    model = gated_silu_model(torch.float32, [local_function("uniattn", "GatedSilu")])
    feeds = {"gate_up": gated_silu_input((2, 1, 64), torch.float32).numpy()}
    (kernel,), kernel_ops = run_profiled(model, feeds, ort_library, tmp_path)
    (body,), body_ops = run_profiled(model, feeds, None, tmp_path)
    assert kernel_ops == {"GatedSilu"}
    # (ONNX Runtime's own optimizer turns the body's Sigmoid + Mul into its QuickGelu)
    assert {"Split", "Mul"} <= body_ops and "GatedSilu" not in body_ops
    assert abs(kernel - body).max() <= 1e-5 * abs(body).max()


def test_gated_silu_odd_width_is_an_ort_error(ort_library):
    message = error_of_v2(gated_silu_model(torch.float32), {"gate_up": torch.zeros(1, 2, 7)}, ort_library)
    assert ("GatedSilu node 'mlp': gate_up has shape [1, 2, 7] but (..., 2*I) is expected: the gate and up "
            "projections side by side in an even last dimension") in message


def test_gated_silu_results_do_not_depend_on_ort_threads(ort_library):
    gate_up = gated_silu_input((4, 2, 2 * 5000), torch.float32)
    single, pooled = (run_session(gated_silu_model(torch.float32), {"gate_up": gate_up}, ort_library, threads)[0]
                      for threads in (1, 2))  # fmt: skip
    assert torch.equal(single, pooled)


# ---- SplitRotary (graph op) -----------------------------------------------------------------


def split_rotary_model(dtype: torch.dtype, num_heads: int, kv_num_heads: int, functions=()) -> bytes:
    """One SplitRotary node, importing uniattn at version 2; `functions`: its model-local body."""
    from onnx import helper

    node = helper.make_node("SplitRotary", ["qkv", "cos_cache", "sin_cache", "position_ids"],
                            ["query", "key", "value"], domain="uniattn", name="qkv_rotary",
                            num_heads=num_heads, kv_num_heads=kv_num_heads)  # fmt: skip
    inputs = [helper.make_tensor_value_info(name, ONNX_TYPES[dtype], None) for name in ("qkv", "cos_cache", "sin_cache")]
    inputs.append(helper.make_tensor_value_info("position_ids", onnx.TensorProto.INT64, None))
    outputs = [helper.make_tensor_value_info(name, ONNX_TYPES[dtype], None) for name in ("query", "key", "value")]
    graph = helper.make_graph([node], "split_rotary", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23), helper.make_opsetid("uniattn", 2)],
                              ir_version=10, functions=list(functions))  # fmt: skip
    return model.SerializeToString()


def split_rotary_inputs(batch: int, length: int, heads: int, kv_heads: int, dim: int, rows: int, dtype: torch.dtype,
                        clamped: bool = True) -> dict:
    """The GPU check's values as (B, L, ...) inputs; clamped=False keeps every position inside
    the tables (ONNX Runtime's RotaryEmbedding, the body, refuses others)."""
    qkv, cos, sin, positions = kernel_script.split_rotary_values(batch * length, heads, kv_heads, dim, rows, seed=dim)
    if not clamped:
        positions = positions.clamp(0, rows - 1)
    return {"qkv": qkv.to(dtype).view(batch, length, -1), "cos_cache": cos.to(dtype), "sin_cache": sin.to(dtype),
            "position_ids": positions.view(batch, length)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", kernel_script.SPLIT_ROTARY_SHAPES, ids=str)
def test_split_rotary_in_onnxruntime_matches_float64(dtype, shape, ort_library):
    """The CPU kernel against docs/ops.md's formula in float64 with the GPU check's tolerances,
    positions outside the tables clamped."""
    tokens, heads, kv_heads, dim, rows = shape
    batch = 2 if tokens % 2 == 0 else 1
    feeds = split_rotary_inputs(batch, tokens // batch, heads, kv_heads, dim, rows, dtype)
    got = run_session(split_rotary_model(dtype, heads, kv_heads), feeds, ort_library, 2)
    assert [t.shape for t in got] == [(batch, tokens // batch, h * dim) for h in (heads, kv_heads, kv_heads)]
    want = kernel_script.split_rotary_reference(feeds["qkv"].view(tokens, -1), feeds["cos_cache"], feeds["sin_cache"],
                                                feeds["position_ids"].view(-1), heads, kv_heads)  # fmt: skip
    flat = tuple(t.view(tokens, -1) for t in got)
    assert kernel_script.split_rotary_error(flat, want) <= kernel_script.SPLIT_ROTARY_TOLERANCE[dtype]


def test_split_rotary_kernel_wins_over_its_function_body(ort_library, tmp_path):
    """With the library, ONNX Runtime runs the SplitRotary kernel; without it, the model-local
    body (Split and two RotaryEmbedding): the profiles name the nodes that ran; results agree."""
    from uniattn_export.export.functions import local_function

    model = split_rotary_model(torch.float32, 6, 2, [local_function("uniattn", "SplitRotary")])
    feeds = {k: v.numpy() for k, v in split_rotary_inputs(2, 3, 6, 2, 16, 12, torch.float32, clamped=False).items()}
    kernel, kernel_ops = run_profiled(model, feeds, ort_library, tmp_path)
    body, body_ops = run_profiled(model, feeds, None, tmp_path)
    assert kernel_ops == {"SplitRotary"}
    # (plus the Shape/Mul/Concat of the split sizes: the tables are graph inputs here, constants in a model)
    assert {"Split", "RotaryEmbedding"} <= body_ops and "SplitRotary" not in body_ops
    for got, want in zip(kernel, body):
        assert abs(got - want).max() <= 1e-5 * abs(want).max()


def test_split_rotary_width_mismatch_is_an_ort_error(ort_library):
    feeds = split_rotary_inputs(1, 2, 4, 2, 8, 5, torch.float32)
    message = error_of_v2(split_rotary_model(torch.float32, 4, 1), feeds, ort_library)
    assert ("SplitRotary node 'qkv_rotary': qkv has shape [1, 2, 64] but (B, L, (num_heads + 2*kv_num_heads)*D) = "
            "(B, L, 48) is expected (num_heads=4, kv_num_heads=1, cos_cache [5, 4]: D=8)") in message


def test_split_rotary_results_do_not_depend_on_ort_threads(ort_library):
    feeds = split_rotary_inputs(2, 40, 6, 2, 64, 48, torch.float32)
    single, pooled = (run_session(split_rotary_model(torch.float32, 6, 2), feeds, ort_library, threads)
                      for threads in (1, 2))  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(single, pooled))


# ---- Linear (graph op, CUDA only) -----------------------------------------------------------


def _linear_cpu_session(library: str, entry: str | None):
    """A CPU session over one Linear node (with its model-local body), the config entry that asks
    for Linear's CUDA kernel set to `entry` (None: absent)."""
    from onnx import helper

    from uniattn_export.export.functions import local_function
    from uniattn_export.export.schema import CUDA_LINEAR_CONFIG_KEY, DOMAIN, LINEAR_OP

    node = helper.make_node(LINEAR_OP, ["input", "weight"], ["output"], domain=DOMAIN, name="projection")
    graph = helper.make_graph([node], "linear", [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                                                 for n in ("input", "weight")],
                              [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, None)])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23), helper.make_opsetid(DOMAIN, 2)],
                              ir_version=10, functions=[local_function(DOMAIN, LINEAR_OP)])  # fmt: skip
    options = ort.SessionOptions()
    if entry is not None:
        options.add_session_config_entry(CUDA_LINEAR_CONFIG_KEY, entry)
    options.register_custom_ops_library(library)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("entry", [None, "0"])
def test_linear_runs_its_body_on_the_cpu_unless_a_session_asks_for_its_cuda_kernel(entry, ort_library):
    """Linear has no CPU kernel and, without the config entry (docs/ops.md), is not registered:
    ONNX Runtime on the CPU inlines the model-local body, with a CPU-only or a CUDA build."""
    session = _linear_cpu_session(ort_library, entry)
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 3, 8)).astype(np.float32), rng.standard_normal((5, 8)).astype(np.float32)
    (got,) = session.run(None, {"input": x, "weight": w})
    np.testing.assert_allclose(got, x @ w.T, rtol=1e-5, atol=1e-5)


def test_linear_config_entry_registers_the_cuda_kernel(ort_library):
    """With the entry set, a library built with CUDA registers Linear (for CUDA only), so a CPU
    session can no longer run the node: the entry is for CUDA sessions alone (OrtSession and the C
    runtime set it there). A CPU-only build has nothing to register and runs the body."""
    from uniattn_export import native

    if native.kernels().ua_has_cuda():
        with pytest.raises(Exception, match="Could not find an implementation for Linear"):
            _linear_cpu_session(ort_library, "1")
    else:
        (got,) = _linear_cpu_session(ort_library, "1").run(None, {"input": np.ones((1, 1, 8), np.float32),
                                                                  "weight": np.ones((2, 8), np.float32)})  # fmt: skip
        np.testing.assert_array_equal(got, np.full((1, 1, 2), 8.0, np.float32))


def test_linear_config_entry_other_than_1_or_0_is_refused(ort_library):
    from uniattn_export.export.schema import CUDA_LINEAR_CONFIG_KEY

    options = ort.SessionOptions()
    options.add_session_config_entry(CUDA_LINEAR_CONFIG_KEY, "yes")
    with pytest.raises(Exception, match=f"session config entry {CUDA_LINEAR_CONFIG_KEY} must be 1 or 0"):
        options.register_custom_ops_library(ort_library)
