"""The graph fusion pass (export/fuse.py): exact node kinds per layer, checker, numerics.

Each case traces a tiny seeded checkpoint once and keeps the graph before and after
`fuse_graph`; both run on plain onnxruntime CPU (function bodies, no custom-op library)
through the shared generation loop, left-padded rows of different lengths, several steps.
"""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from uniattn_export.export import exporter, io_names, load_artifact
from uniattn_export.export.fuse import fuse_graph, nodes_by_layer
from uniattn_export.model import load_model
from uniattn_export.targets.ort import OrtSession
from uniattn_export.targets.session import GenerationSession
from uniattn_export.validate.reference import TorchSession
from uniattn_export.validate.run import SAFETY_FACTOR

PROMPTS = [[5, 17, 3, 99, 42, 7, 12], [8, 61, 23], [77, 2, 31, 9, 100]]
STEPS = 6
FP32_TOLERANCE = 1e-4

# Nodes of one decoder layer after fusion (derived from modeling.py):
# norm, [q|k|v] MatMul + Split, 2 RotaryEmbedding, attention, o_proj, residual Add,
# norm, [gate|up] MatMul + Split, Sigmoid + Mul (SiLU), Mul, down_proj, residual Add.
PRODUCER_LAYER = {
    "RMSNormalization": 2, "MatMul": 4, "Split": 2, "RotaryEmbedding": 2,
    "UniAttnProducer": 1, "Add": 2, "Sigmoid": 1, "Mul": 2,
}  # fmt: skip
# norm, [v|Wc] MatMul + Split, attention, o_proj, Add of Wc's term, residual Add, MLP as above.
CONSUMER_LAYER = {
    "RMSNormalization": 2, "MatMul": 4, "Split": 2, "UniAttnConsumer": 1, "Add": 3, "Sigmoid": 1, "Mul": 2,
}  # fmt: skip
# Qwen2: the q/k/v biases become one Add on the fused projection; a consumer's v bias
# stays an Add of its own (Wc has no bias, so the group's biases are not fused).
QWEN2_EXTRA_ADD = 1
# With ONNX Runtime's contrib ops (the ort and genai targets): both residual Adds of a layer go
# into the norms reading them (the MLP's into the next layer's input norm, the last one's into
# the final norm); layer 0's input norm reads the embedding and stays an RMSNormalization; the
# SiLU's Sigmoid + Mul become one QuickGelu, which with the gate/up Split and the Mul by up becomes
# our GatedSilu; every MatMul by a constant weight (the four projections, the lm_head) becomes our
# Linear with the weight stored (N, K).
SKIP_NORM, SILU, GATED_SILU, LINEAR = "SkipSimplifiedLayerNormalization", "QuickGelu", "GatedSilu", "Linear"


class _RawOrtSession(GenerationSession):
    """A plain onnxruntime CPU session over a bare .onnx file (no artifact folder)."""

    def __init__(self, path, dtype: str):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.dtype = np.dtype(dtype)
        self.caches = [(i.name, i.shape) for i in self.session.get_inputs() if io_names.is_past(i.name)]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def reset(self, batch_size: int) -> None:
        self.past = {name: np.zeros((batch_size, shape[1], 0, shape[3]), self.dtype) for name, shape in self.caches}

    def step(self, input_ids, attention_mask, position_ids):
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids, **self.past}
        results = dict(zip(self.output_names, self.session.run(None, feeds)))
        self.past = {name: results[io_names.parse_cache_name(name).present] for name, _ in self.caches}
        return results["logits"]


def _save(model: ir.Model, path):
    ir.save(model, path)
    exporter._mark_absent_shared_state(path)  # as export_model does after saving
    return path


@pytest.fixture(scope="module")
def traced(checkpoint, tmp_path_factory):
    """traced(family, dtype, base) -> (unfused .onnx, fused .onnx, FusionReport, model)."""
    made = {}

    def make(family: str, dtype: str, base: bool = False):
        key = (family, dtype, base)
        if key not in made:
            source = checkpoint(family, base)
            model = load_model(source, dtype=dtype)
            uniattn = model.uniattn_config
            has_key = [uniattn.has_key_cache(i) for i in range(uniattn.num_layers)]
            inputs, outputs = io_names.input_names(has_key), io_names.output_names(has_key)
            graph = exporter._trace(model, "all", "dynamic", None, inputs, outputs, "optimum").model
            exporter._finish_graph(graph, uniattn.num_layers, 1)
            folder = tmp_path_factory.mktemp(f"fuse_{family}_{dtype}_{base}")
            unfused = _save(graph, folder / "unfused.onnx")
            report = fuse_graph(graph)
            fused = _save(graph, folder / "fused.onnx")
            made[key] = (unfused, fused, report, model, source)
        return made[key]

    return make


@pytest.fixture(scope="module")
def skip_fused(traced):
    """skip_fused(family, dtype, base) -> (.onnx fused with ort_contrib_ops=True, FusionReport)."""
    made = {}

    def make(family: str, dtype: str, base: bool = False):
        key = (family, dtype, base)
        if key not in made:
            unfused, *_ = traced(family, dtype, base)
            graph = ir.load(unfused)
            report = fuse_graph(graph, ort_contrib_ops=True)
            made[key] = (_save(graph, unfused.with_name("fused_skip_norms.onnx")), report)
        return made[key]

    return make


def _expected_layer(role: str, family: str, contrib: bool = False, layer: int = 1) -> dict[str, int]:
    expected = dict(CONSUMER_LAYER if role == "consumer" else PRODUCER_LAYER)
    if family == "qwen2":
        expected["Add"] += QWEN2_EXTRA_ADD
    if contrib:
        expected["Add"] -= 2
        expected[SKIP_NORM] = 2 if layer else 1
        expected["RMSNormalization"] = 0 if layer else 1
        expected["Sigmoid"] -= 1
        expected["Mul"] -= 2
        expected["Split"] -= 1
        expected[GATED_SILU] = 1
        expected[LINEAR] = expected.pop("MatMul")
    return {kind: count for kind, count in expected.items() if count}


CASES = [
    ("llama", False), ("mistral", False), ("qwen2", False), ("llama", True),
]  # fmt: skip


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("family,base", CASES, ids=[f"{f}{'_base' if b else ''}" for f, b in CASES])
def test_fused_graph_has_the_derived_nodes_per_layer(traced, family, base, dtype):
    unfused, fused, report, model, _ = traced(family, dtype, base)
    onnx.checker.check_model(str(fused), full_check=True)
    uniattn = model.uniattn_config
    assert bool(uniattn.consumers) != base
    by_layer = nodes_by_layer(ir.load(fused).graph)
    for layer in range(uniattn.num_layers):
        assert dict(by_layer[layer]) == _expected_layer(uniattn.role(layer), family), layer
    # Outside the layers: embedding Gather; positions Unsqueeze, Cast, Mul by inv_freq,
    # Concat, Cos, Sin (+ their Casts to float16), one first-half Slice each; final norm;
    # lm_head; float16 logits cast to float32.
    outside = {
        "Gather": 1, "Unsqueeze": 1, "Cast": 1, "Mul": 1, "Concat": 1, "Cos": 1, "Sin": 1,
        "Slice": 2, "RMSNormalization": 1, "MatMul": 1,
    }  # fmt: skip
    if dtype == "float16":
        outside["Cast"] += 3
    assert dict(by_layer[None]) == outside
    rotary_layers = sum(uniattn.role(i) != "consumer" for i in range(uniattn.num_layers))
    assert report.matched["rotary"] == 2 * rotary_layers
    assert report.matched["projection_groups"] == 2 * uniattn.num_layers
    consumers = uniattn.num_layers - rotary_layers
    # [q|k|v] and [gate|up] per producer/ordinary layer, [v|Wc] and [gate|up] per consumer.
    assert report.matched["projection_matmuls"] == 5 * rotary_layers + 4 * consumers
    assert report.matched["projection_biases"] == (3 * rotary_layers if family == "qwen2" else 0)
    assert report.kinds_after["RMSNormalization"] == 2 * uniattn.num_layers + 1
    expected_nodes = [sum(_expected_layer(uniattn.role(i), family).values()) for i in range(uniattn.num_layers)]
    assert report.per_layer_after == pytest.approx(sum(expected_nodes) / uniattn.num_layers)
    assert report.per_layer_after < report.per_layer_before
    assert report.nodes_after == sum(sum(c.values()) for c in by_layer.values())
    # No decomposed norm or rotary is left anywhere.
    kinds = collections.Counter(n.op_type for n in onnx.load(str(fused)).graph.node)
    assert not {"Pow", "ReduceMean", "Sqrt", "Reciprocal", "Neg", "Reshape"} & set(kinds)


@pytest.mark.parametrize("family,base", CASES, ids=[f"{f}{'_base' if b else ''}" for f, b in CASES])
def test_fused_graph_matches_unfused_graph_and_pytorch_in_float32(traced, family, base, single_torch_thread):
    unfused, fused, _, model, _ = traced(family, "float32", base)
    runs = {
        "unfused": _RawOrtSession(unfused, "float32"),
        "fused": _RawOrtSession(fused, "float32"),
        "pytorch": TorchSession(model),
    }
    results = {name: s.generate(PROMPTS, STEPS, return_logits=True) for name, s in runs.items()}
    for name in ("unfused", "pytorch"):
        np.testing.assert_array_equal(results["fused"].tokens, results[name].tokens)
        for step, (got, want) in enumerate(zip(results["fused"].step_logits, results[name].step_logits)):
            # Left-padded positions of the prompt step carry no meaning (no key is visible).
            rows = results["fused"].prompt_mask.astype(bool) if step == 0 else np.ones((len(PROMPTS), 1), bool)
            assert np.abs(got - want)[rows].max() <= FP32_TOLERANCE, (name, step)


@pytest.mark.parametrize("family,skip_norms", [("llama", False), ("qwen2", False), ("llama", True)],
                         ids=["llama", "qwen2", "llama_skip_norms"])
def test_fused_graph_matches_unfused_graph_in_float16(traced, skip_fused, family, skip_norms, single_torch_thread):
    """float16: onnxruntime's fused kernels round once where the decomposed graph rounds per
    op (its SkipSimplifiedLayerNormalization: the sum and normalized x gamma in float32); the
    difference must stay inside the validation tolerance of a float16 artifact (SAFETY_FACTOR x
    the float16 reference's own distance to float32), and the tokens equal."""
    unfused, fused, _, _, source = traced(family, "float16")
    if skip_norms:
        fused, _ = skip_fused(family, "float16")
    got = _RawOrtSession(fused, "float16").generate(PROMPTS, STEPS, return_logits=True)
    want = _RawOrtSession(unfused, "float16").generate(PROMPTS, STEPS, return_logits=True)
    precise = TorchSession(load_model(source, dtype="float32")).generate(
        PROMPTS, STEPS, return_logits=True, forced_tokens=want.tokens
    )
    reference = TorchSession(load_model(source, dtype="float16")).generate(
        PROMPTS, STEPS, return_logits=True, forced_tokens=want.tokens
    )
    np.testing.assert_array_equal(got.tokens, want.tokens)
    for step in range(STEPS):
        rows = want.prompt_mask.astype(bool) if step == 0 else np.ones((len(PROMPTS), 1), bool)
        noise = np.abs(reference.step_logits[step] - precise.step_logits[step])[rows].max()
        assert np.abs(got.step_logits[step] - want.step_logits[step])[rows].max() <= SAFETY_FACTOR * noise, step


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("family,base", CASES, ids=[f"{f}{'_base' if b else ''}" for f, b in CASES])
def test_skip_norms_take_every_residual_add(traced, skip_fused, family, base, dtype):
    _, fused, report, model, _ = traced(family, dtype, base)
    skip_path, skip_report = skip_fused(family, dtype, base)
    onnx.checker.check_model(str(skip_path), full_check=True)
    uniattn = model.uniattn_config
    by_layer = nodes_by_layer(ir.load(skip_path).graph)
    for layer in range(uniattn.num_layers):
        assert dict(by_layer[layer]) == _expected_layer(uniattn.role(layer), family, True, layer), layer
    assert by_layer[None][SKIP_NORM] == 1 and "RMSNormalization" not in by_layer[None]  # the final norm
    assert skip_report.matched["skip_norms"] == 2 * uniattn.num_layers
    assert skip_report.matched["silu"] == skip_report.matched["gated_silu"] == uniattn.num_layers
    # the residual Adds, and per MLP the gate/up Split, the SiLU's Sigmoid and Mul, the Mul by up
    # for one GatedSilu
    assert skip_report.nodes_after == report.nodes_after - 5 * uniattn.num_layers
    proto = onnx.load(str(skip_path))
    assert {(i.domain, i.version) for i in proto.opset_import} >= {("com.microsoft", 1)}
    assert sorted((f.domain, f.name) for f in proto.functions if f.domain != "uniattn" or f.name in (GATED_SILU, LINEAR)) == [
        ("com.microsoft", SKIP_NORM), ("uniattn", GATED_SILU), ("uniattn", LINEAR)]  # fmt: skip
    assert skip_report.matched["linear"] == 4 * uniattn.num_layers + 1  # and the lm_head
    assert not [n for n in proto.graph.node if n.op_type == "MatMul"]
    assert not [n for n in proto.graph.node if n.op_type == SILU]
    for node in (n for n in proto.graph.node if n.op_type == GATED_SILU):
        assert node.domain == "uniattn" and not node.attribute and len(node.input) == len(node.output) == 1
    for node in (n for n in proto.graph.node if n.op_type == SKIP_NORM):
        # outputs 1 and 2 absent (TensorRT's importer of the op accepts no others)
        assert len(node.output) == 4 and node.output[1] == node.output[2] == "" and node.output[3]


@pytest.mark.parametrize("family,base", [("llama", False), ("qwen2", False)], ids=["llama", "qwen2"])
def test_skip_norms_match_the_unfused_graph_and_pytorch_in_float32(traced, skip_fused, family, base,
                                                                  single_torch_thread):
    unfused, _, _, model, _ = traced(family, "float32", base)
    skip_path, _ = skip_fused(family, "float32", base)
    got = _RawOrtSession(skip_path, "float32").generate(PROMPTS, STEPS, return_logits=True)
    for want in (_RawOrtSession(unfused, "float32").generate(PROMPTS, STEPS, return_logits=True),
                 TorchSession(model).generate(PROMPTS, STEPS, return_logits=True)):  # fmt: skip
        np.testing.assert_array_equal(got.tokens, want.tokens)
        for step in range(STEPS):
            rows = got.prompt_mask.astype(bool) if step == 0 else np.ones((len(PROMPTS), 1), bool)
            assert np.abs(got.step_logits[step] - want.step_logits[step])[rows].max() <= FP32_TOLERANCE, step


def _skip_norm_graph(shapes: tuple[list, list], dtype: int, constant_skip: bool = False) -> onnx.ModelProto:
    """norm = RMSNormalization(x + r) * gamma, sum also an output of its own (a residual's next
    reader); optionally r a constant."""
    hidden = 8
    gamma = numpy_helper.from_array(np.linspace(0.5, 1.5, hidden).astype(helper.tensor_dtype_to_np_dtype(dtype)), "gamma")
    inits = [gamma]
    inputs = [helper.make_tensor_value_info("x", dtype, shapes[0])]
    if constant_skip:
        inits.append(numpy_helper.from_array(np.ones(shapes[1], helper.tensor_dtype_to_np_dtype(dtype)), "r"))
    else:
        inputs.append(helper.make_tensor_value_info("r", dtype, shapes[1]))
    nodes = [
        helper.make_node("Add", ["x", "r"], ["sum"]),
        helper.make_node("RMSNormalization", ["sum", "gamma"], ["norm"], axis=-1, epsilon=1e-5, stash_type=1),
        helper.make_node("Mul", ["norm", "norm"], ["out"]),
        helper.make_node("Add", ["sum", "out"], ["next"]),
    ]
    outputs = [helper.make_tensor_value_info(n, dtype, None) for n in ("out", "next")]
    graph = helper.make_graph(nodes, "skip", inputs, outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10)
    return onnx.shape_inference.infer_shapes(proto, strict_mode=True)


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.FLOAT16])
def test_skip_norm_runs_as_onnxruntime_kernel_and_as_its_function_body(dtype):
    """onnxruntime runs its contrib kernel; onnx.reference (which knows no com.microsoft op)
    runs the model-local body; both against the unfused graph (float16: one rounding apart)."""
    from onnx.reference import ReferenceEvaluator

    proto = _skip_norm_graph((["B", "L", 8], ["B", "L", 8]), dtype)
    model = ir.serde.deserialize_model(proto)
    assert fuse_graph(model, ort_contrib_ops=True).matched["skip_norms"] == 1
    fused = ir.serde.serialize_model(model)
    onnx.checker.check_model(fused, full_check=True)
    assert [n.op_type for n in fused.graph.node] == [SKIP_NORM, "Mul", "Add"]
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    rng = np.random.default_rng(3)
    feeds = {name: rng.standard_normal((2, 3, 8)).astype(np_dtype) for name in ("x", "r")}
    want = [o.astype(np.float64) for o in ReferenceEvaluator(proto).run(None, feeds)]
    tolerance = 1e-6 if dtype == TensorProto.FLOAT else 4e-3  # float16: ~1 ulp of values near 1-4
    session = ort.InferenceSession(fused.SerializeToString(), providers=["CPUExecutionProvider"])
    for got in (session.run(None, feeds), ReferenceEvaluator(fused).run(None, feeds)):
        for g, w in zip(got, want):
            assert np.abs(g.astype(np.float64) - w).max() <= tolerance * max(1.0, np.abs(w).max())


@pytest.mark.parametrize(
    "shapes,constant_skip",
    [((["B", "L", 8], ["L", 8]), False), (([2, 3, 8], [2, 3, 8]), True), ((["N", 8], ["N", 8]), False)],
    ids=["broadcast", "constant", "rank2"],
)
def test_skip_norms_leave_adds_they_cannot_take(shapes, constant_skip):
    model = ir.serde.deserialize_model(_skip_norm_graph(shapes, TensorProto.FLOAT, constant_skip))
    assert fuse_graph(model, ort_contrib_ops=True).matched["skip_norms"] == 0
    kinds = [n.op_type for n in ir.serde.serialize_model(model).graph.node]
    assert kinds == ["Add", "RMSNormalization", "Mul", "Add"]
    assert "com.microsoft" not in model.opset_imports and not model.functions


def test_exported_artifact_records_the_fused_graph_and_validates(exported, single_torch_thread):
    artifact = exported("mistral")
    graph = artifact.manifest["graph"]
    assert graph["nodes"] == len(onnx.load(str(artifact.onnx_path), load_external_data=False).graph.node)
    assert graph["nodes_per_layer"] < graph["nodes_per_layer_unfused"]
    session = OrtSession(artifact, custom_ops=False)
    reference = TorchSession(load_model(artifact.source_checkpoint, dtype="float32"))
    got = session.generate(PROMPTS, STEPS, return_logits=True)
    want = reference.generate(PROMPTS, STEPS, return_logits=True)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    assert max(np.abs(g[:, -1] - w[:, -1]).max() for g, w in zip(got.step_logits, want.step_logits)) <= FP32_TOLERANCE
    assert load_artifact(artifact.path).manifest["graph"] == graph


def _tiny_graph(matching: bool, positions: str = "float") -> onnx.ModelProto:
    """out = rope(x Wa) + x Wb over 2 heads of 4, HF-style. Not matching: the cos/sin angles
    are cat(f, g) (unequal halves, so no RotaryEmbedding computes it) and Wb reads another
    input than Wa (nothing to share). positions: "float" (B, L, 1) input `pos`; "int64": (B, L)
    input `position_ids`, unsqueezed and cast as the exporter's graphs do; "int64+float": that,
    with the angles also scaled by the float input `scale` (not a function of positions alone)."""
    rng = np.random.default_rng(0)
    ints = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w_a"),
        numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w_b"),
        numpy_helper.from_array(rng.standard_normal(2).astype(np.float32), "inv_freq"),
        numpy_helper.from_array(rng.standard_normal(2).astype(np.float32), "other_freq"),
        ints("heads_shape", [0, 0, 2, 4]), ints("packed_shape", [0, 0, 8]), ints("zero", [0]),
        ints("mid", [2]), ints("end", [2**62]), ints("last", [-1]), ints("one", [1]), ints("axis2", [2]),
    ]  # fmt: skip
    nodes = []
    if positions != "float":
        nodes += [
            helper.make_node("Unsqueeze", ["position_ids", "last"], ["pos_int"]),
            helper.make_node("Cast", ["pos_int"], ["pos" if positions == "int64" else "pos_unscaled"], to=TensorProto.FLOAT),
        ]  # fmt: skip
    if positions == "int64+float":
        nodes.append(helper.make_node("Mul", ["pos_unscaled", "scale"], ["pos"]))
    nodes += [
        helper.make_node("MatMul", ["x", "w_a"], ["a"]),
        helper.make_node("MatMul", ["x" if matching else "y", "w_b"], ["b"]),
        helper.make_node("Mul", ["pos", "inv_freq"], ["freqs"]),
        helper.make_node("Mul", ["pos", "inv_freq" if matching else "other_freq"], ["freqs2"]),
        helper.make_node("Concat", ["freqs", "freqs" if matching else "freqs2"], ["emb"], axis=-1),
        helper.make_node("Cos", ["emb"], ["cos"]),
        helper.make_node("Sin", ["emb"], ["sin"]),
        helper.make_node("Reshape", ["a", "heads_shape"], ["a4"]),
        helper.make_node("Slice", ["a4", "mid", "end", "last", "one"], ["hi"]),
        helper.make_node("Neg", ["hi"], ["neg"]),
        helper.make_node("Slice", ["a4", "zero", "mid", "last", "one"], ["lo"]),
        helper.make_node("Concat", ["neg", "lo"], ["rot"], axis=-1),
        helper.make_node("Unsqueeze", ["cos", "axis2"], ["cos4"]),
        helper.make_node("Unsqueeze", ["sin", "axis2"], ["sin4"]),
        helper.make_node("Mul", ["a4", "cos4"], ["plain"]),
        helper.make_node("Mul", ["rot", "sin4"], ["turned"]),
        helper.make_node("Add", ["plain", "turned"], ["roped4"]),
        helper.make_node("Reshape", ["roped4", "packed_shape"], ["roped"]),
        helper.make_node("Add", ["roped", "b"], ["out"]),
    ]  # fmt: skip
    widths = (("x", 8), ("y", 8)) + ((("pos", 1),) if positions == "float" else ())
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B", "L", w]) for n, w in widths]
    if positions != "float":
        inputs.append(helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["B", "L"]))
    if positions == "int64+float":
        inputs.append(helper.make_tensor_value_info("scale", TensorProto.FLOAT, ["B", "L", 1]))
    graph = helper.make_graph(
        nodes, "tiny", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10)
    return onnx.shape_inference.infer_shapes(proto, strict_mode=True)


def _run(proto: onnx.ModelProto, feeds: dict) -> np.ndarray:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


@pytest.mark.parametrize("matching", [True, False], ids=["matching", "not_matching"])
def test_patterns_are_fused_only_where_they_match_exactly(matching):
    proto = _tiny_graph(matching)
    model = ir.serde.deserialize_model(proto)
    report = fuse_graph(model)
    fused = ir.serde.serialize_model(model)
    onnx.checker.check_model(fused, full_check=True)
    kinds = [n.op_type for n in fused.graph.node]
    if matching:
        assert report.matched["rotary"] == 1 and report.matched["projection_groups"] == 1
        assert report.matched["rotary_tables"] == 0  # no capacity given: tables per step
        assert collections.Counter(kinds) == {"MatMul": 1, "Split": 1, "RotaryEmbedding": 1, "Mul": 1, "Concat": 1,
                                              "Cos": 1, "Sin": 1, "Slice": 2, "Add": 1}  # fmt: skip
    else:
        assert report.matched == {"rotary": 0, "rotary_tables": 0, "projection_groups": 0, "projection_matmuls": 0,
                                  "projection_biases": 0}  # fmt: skip
        assert kinds == [n.op_type for n in proto.graph.node]
    rng = np.random.default_rng(1)
    feeds = {name: rng.standard_normal((2, 3, 8)).astype(np.float32) for name in ("x", "y")}
    feeds["pos"] = np.arange(6, dtype=np.float32).reshape(2, 3, 1)
    np.testing.assert_allclose(_run(fused, feeds), _run(proto, feeds), rtol=0, atol=1e-5)


def test_rotary_tables_of_a_capacity_replace_the_per_step_head():
    """With rotary_positions=C the cos/sin subgraph becomes (C, D/2) constants indexed by the
    clipped positions: same output for every position below C; a position at or above C (or
    below 0) reads the last (first) row, never outside the tables."""
    capacity = 16
    proto = _tiny_graph(True, positions="int64")
    model = ir.serde.deserialize_model(proto)
    report = fuse_graph(model, rotary_positions=capacity)
    fused = ir.serde.serialize_model(model)
    onnx.checker.check_model(fused, full_check=True)
    assert report.matched["rotary"] == 1 and report.matched["rotary_tables"] == 1
    assert collections.Counter(n.op_type for n in fused.graph.node) == {
        "Clip": 1, "MatMul": 1, "Split": 1, "RotaryEmbedding": 1, "Add": 1}  # fmt: skip
    rotary = next(n for n in fused.graph.node if n.op_type == "RotaryEmbedding")
    clip = next(n for n in fused.graph.node if n.op_type == "Clip")
    assert rotary.input[3] == clip.output[0] and clip.input[0] == "position_ids"
    tables = {t.name: numpy_helper.to_array(t) for t in fused.graph.initializer}
    inv_freq = next(numpy_helper.to_array(t) for t in proto.graph.initializer if t.name == "inv_freq")
    assert "inv_freq" not in tables  # the head that read it is gone
    angles = np.arange(capacity, dtype=np.float32)[:, None] * inv_freq[None, :]  # the (C, D/2) first halves
    np.testing.assert_allclose(tables[rotary.input[1]], np.cos(angles), rtol=0, atol=1e-6)
    np.testing.assert_allclose(tables[rotary.input[2]], np.sin(angles), rtol=0, atol=1e-6)

    rng = np.random.default_rng(1)
    feeds = {name: rng.standard_normal((2, 3, 8)).astype(np.float32) for name in ("x", "y")}
    feeds["position_ids"] = np.array([[0, 1, 2], [13, 14, 15]], np.int64)
    np.testing.assert_allclose(_run(fused, feeds), _run(proto, feeds), rtol=0, atol=1e-5)
    outside = dict(feeds, position_ids=np.array([[-5, -1, 0], [15, 16, 10**9]], np.int64))
    clipped = dict(feeds, position_ids=np.array([[0, 0, 0], [15, 15, 15]], np.int64))
    np.testing.assert_allclose(_run(fused, outside), _run(proto, clipped), rtol=0, atol=1e-5)


def test_rotary_tables_need_angles_of_the_positions_alone():
    """Angles that also depend on another input cannot be tabulated: the per-step head stays."""
    proto = _tiny_graph(True, positions="int64+float")
    model = ir.serde.deserialize_model(proto)
    report = fuse_graph(model, rotary_positions=16)
    fused = ir.serde.serialize_model(model)
    assert report.matched["rotary"] == 1 and report.matched["rotary_tables"] == 0
    assert {"Cos", "Sin", "Slice"} <= {n.op_type for n in fused.graph.node}
    assert "Clip" not in {n.op_type for n in fused.graph.node}
    rng = np.random.default_rng(1)
    feeds = {name: rng.standard_normal((2, 3, 8)).astype(np.float32) for name in ("x", "y")}
    feeds["position_ids"] = np.array([[0, 1, 2], [3, 4, 5]], np.int64)
    feeds["scale"] = rng.standard_normal((2, 3, 1)).astype(np.float32)
    np.testing.assert_allclose(_run(fused, feeds), _run(proto, feeds), rtol=0, atol=1e-5)


def _silu_graph(dtype: int, same_input: bool = True) -> onnx.ModelProto:
    """out = silu(g) * u as a gated MLP computes it: Sigmoid(g), Mul(g, .), Mul(., u);
    not the same input: Mul(g, Sigmoid(u)), which is no SiLU."""
    nodes = [
        helper.make_node("Sigmoid", ["g" if same_input else "u"], ["gate"]),
        helper.make_node("Mul", ["g", "gate"], ["silu"]),
        helper.make_node("Mul", ["silu", "u"], ["out"]),
    ]
    inputs = [helper.make_tensor_value_info(n, dtype, ["B", "L", 8]) for n in ("g", "u")]
    graph = helper.make_graph(nodes, "silu", inputs, [helper.make_tensor_value_info("out", dtype, ["B", "L", 8])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10)


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.FLOAT16])
def test_silu_runs_as_onnxruntime_quickgelu_and_as_its_function_body(dtype):
    """onnxruntime runs its QuickGelu kernel (alpha 1); onnx.reference runs the model-local
    body; both against x * sigmoid(x) in float64 (float16: within one rounding of the result)."""
    from onnx.reference import ReferenceEvaluator

    model = ir.serde.deserialize_model(_silu_graph(dtype))
    assert fuse_graph(model, ort_contrib_ops=True).matched["silu"] == 1
    fused = ir.serde.serialize_model(model)
    onnx.checker.check_model(fused, full_check=True)
    assert [(n.domain, n.op_type) for n in fused.graph.node] == [("com.microsoft", SILU), ("", "Mul")]
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    rng = np.random.default_rng(4)
    feeds = {name: (4 * rng.standard_normal((2, 3, 8))).astype(np_dtype) for name in ("g", "u")}
    g, u = (feeds[n].astype(np.float64) for n in ("g", "u"))
    want = g / (1 + np.exp(-g)) * u
    tolerance = 1e-6 if dtype == TensorProto.FLOAT else 2e-3  # float16: ~2 roundings of values up to ~8
    session = ort.InferenceSession(fused.SerializeToString(), providers=["CPUExecutionProvider"])
    for got in (session.run(None, feeds)[0], ReferenceEvaluator(fused).run(None, feeds)[0]):
        assert np.abs(got.astype(np.float64) - want).max() <= tolerance * max(1.0, np.abs(want).max())


def test_silu_needs_the_sigmoid_of_the_same_input():
    model = ir.serde.deserialize_model(_silu_graph(TensorProto.FLOAT, same_input=False))
    assert fuse_graph(model, ort_contrib_ops=True).matched["silu"] == 0
    assert [n.op_type for n in ir.serde.serialize_model(model).graph.node] == ["Sigmoid", "Mul", "Mul"]
    assert "com.microsoft" not in model.opset_imports and not model.functions


def _gated_mlp_graph(gate_first: bool = True) -> onnx.ModelProto:
    """h = silu(x Wg) * (x Wu), then a Relu (a reader that is not the graph output): the MLP the
    projection and SiLU fusions turn into one MatMul, Split, QuickGelu and Mul. gate_first False:
    the up projection is traced first, so the gate is the Split's second half."""
    rng = np.random.default_rng(5)
    weights = [numpy_helper.from_array(rng.standard_normal((8, 6)).astype(np.float32), name) for name in ("wg", "wu")]
    projections = [helper.make_node("MatMul", ["x", "wg"], ["g"]), helper.make_node("MatMul", ["x", "wu"], ["u"])]
    nodes = [
        *(projections if gate_first else projections[::-1]),
        helper.make_node("Sigmoid", ["g"], ["gate"]),
        helper.make_node("Mul", ["g", "gate"], ["silu"]),
        helper.make_node("Mul", ["silu", "u"], ["h"]),
        helper.make_node("Relu", ["h"], ["out"]),
    ]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "L", 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], weights)  # fmt: skip
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)],
                                                               ir_version=10))  # fmt: skip


def test_gated_mlp_becomes_one_gated_silu_run_by_the_library_and_as_its_body():
    """Split + QuickGelu + Mul -> our GatedSilu (uniattn domain, model-local body attached, no
    QuickGelu body left): ONNX Runtime with the custom-op library, ONNX Runtime and
    onnx.reference on the body, all against the unfused graph."""
    from onnx.reference import ReferenceEvaluator

    from uniattn_export import native

    unfused = _gated_mlp_graph()
    model = ir.serde.deserialize_model(unfused)
    report = fuse_graph(model, ort_contrib_ops=True)
    assert (report.matched["projection_groups"], report.matched["silu"], report.matched["gated_silu"]) == (1, 1, 1)
    fused = ir.serde.serialize_model(model)
    onnx.checker.check_model(fused, full_check=True)
    assert [(n.domain, n.op_type) for n in fused.graph.node] == [("uniattn", "Linear"), ("uniattn", "GatedSilu"),
                                                                 ("", "Relu")]  # fmt: skip
    assert sorted((f.domain, f.name) for f in fused.functions) == [("uniattn", "GatedSilu"), ("uniattn", "Linear")]
    assert {(i.domain, i.version) for i in fused.opset_import} == {("", 23), ("uniattn", 1)}
    feeds = {"x": (2 * np.random.default_rng(6).standard_normal((2, 3, 8))).astype(np.float32)}
    (want,) = ReferenceEvaluator(unfused).run(None, feeds)
    library = ort.SessionOptions()
    library.register_custom_ops_library(native.ort_custom_op_library())
    runs = [ort.InferenceSession(fused.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
            for options in (library, ort.SessionOptions())]  # fmt: skip
    for got in (*runs, ReferenceEvaluator(fused).run(None, feeds)[0]):
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_gated_silu_needs_the_gate_in_the_first_half():
    model = ir.serde.deserialize_model(_gated_mlp_graph(gate_first=False))
    report = fuse_graph(model, ort_contrib_ops=True)
    assert (report.matched["silu"], report.matched["gated_silu"]) == (1, 0)
    assert [n.op_type for n in ir.serde.serialize_model(model).graph.node] == ["Linear", "Split", "QuickGelu", "Mul", "Relu"]
    assert sorted((f.domain, f.name) for f in model.functions.values()) == [("com.microsoft", "QuickGelu"),
                                                                            ("uniattn", "Linear")]  # fmt: skip


def _projection_graph(dtype: int) -> onnx.ModelProto:
    """x (B, L, 8) -> h = x W (W a (8, 6) constant) -> Relu -> logits = r Transpose(E) (E a (5, 6)
    constant, as a tied lm_head reads its embedding table: a graph output), and y = x z (z a graph
    input: not a projection, left alone)."""
    rng = np.random.default_rng(7)
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np_dtype), name)
               for name, shape in (("w", (8, 6)), ("table", (5, 6)))]  # fmt: skip
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Transpose", ["table"], ["table_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["r", "table_t"], ["logits"]),
        helper.make_node("MatMul", ["x", "z"], ["y"]),
    ]
    inputs = [helper.make_tensor_value_info("x", dtype, ["B", "L", 8]), helper.make_tensor_value_info("z", dtype, [8, 3])]
    outputs = [helper.make_tensor_value_info(name, dtype, None) for name in ("logits", "y")]
    graph = helper.make_graph(nodes, "projections", inputs, outputs, weights)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)],
                                                               ir_version=10))  # fmt: skip


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.FLOAT16])
def test_projections_become_linear_run_by_onnxruntime_and_as_its_body(dtype):
    """MatMul by a constant -> Linear with the transposed weight; MatMul by Transpose(constant)
    (a graph output) -> Linear reading that constant itself, the output keeping its name; a
    MatMul by a graph input stays. ONNX Runtime on the CPU (with the custom-op library, which
    registers Linear for CUDA only, and without it) and onnx.reference run the body, against
    the unfused graph."""
    from onnx.reference import ReferenceEvaluator

    from uniattn_export import native

    unfused = _projection_graph(dtype)
    model = ir.serde.deserialize_model(unfused)
    assert fuse_graph(model, ort_contrib_ops=True).matched["linear"] == 2
    fused = ir.serde.serialize_model(model)
    onnx.checker.check_model(fused, full_check=True)
    assert [(n.domain, n.op_type) for n in fused.graph.node] == [
        ("uniattn", "Linear"), ("", "Relu"), ("uniattn", "Linear"), ("", "MatMul")]  # fmt: skip
    linears = [n for n in fused.graph.node if n.op_type == "Linear"]
    initializers = {i.name: numpy_helper.to_array(i) for i in fused.graph.initializer}
    weights = {i.name: numpy_helper.to_array(i) for i in unfused.graph.initializer}
    np.testing.assert_array_equal(initializers[linears[0].input[1]], weights["w"].T)
    assert linears[1].input[1] == "table" and linears[1].output[0] == "logits"
    assert sorted(initializers) == sorted([linears[0].input[1], "table"])  # the (K, N) copy is gone
    assert [o.name for o in fused.graph.output] == ["logits", "y"]
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    rng = np.random.default_rng(8)
    feeds = {"x": rng.standard_normal((2, 3, 8)).astype(np_dtype), "z": rng.standard_normal((8, 3)).astype(np_dtype)}
    want = ReferenceEvaluator(unfused).run(None, feeds)
    library = ort.SessionOptions()
    library.register_custom_ops_library(native.ort_custom_op_library())
    runs = [ort.InferenceSession(fused.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)
            for options in (library, ort.SessionOptions())]  # fmt: skip
    tolerance = 1e-5 if dtype == TensorProto.FLOAT else 2e-3
    for got in (*runs, ReferenceEvaluator(fused).run(None, feeds)):
        for g, w in zip(got, want):
            assert g.shape == w.shape
            assert np.abs(g.astype(np.float32) - w.astype(np.float32)).max() <= tolerance * np.abs(w).max()
