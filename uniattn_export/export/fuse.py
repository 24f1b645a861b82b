"""Fewer, larger nodes in the exported graph: a post-pass over the traced onnx_ir model.

Every node is a kernel launch (issue 11: ~44 nodes per decoder layer cost more than the
attention itself in decode). `fuse_graph(model)` rewrites, in place and only where a
pattern matches exactly (anything else is left as it is and not counted):

* Rotary: HF's `x*cos + rotate_half(x)*sin` on a packed (B, L, H*D) projection, i.e.
  Reshape -> 2 Slice, Neg, Concat -> 2 Mul, Add -> Reshape (10 nodes), becomes one standard
  `RotaryEmbedding` (opset 23, 3-D input with `num_heads`, non-interleaved). Its caches
  are the first halves of the graph's own cos/sin tensors (B, L, D/2), sliced once per graph,
  not per layer; the match requires cos and sin to be `cat(f, f)` (walked up through
  Cos/Sin/Cast/scalar Mul), which is what makes the two halves of the rotation equal.
  With `rotary_positions=C` (static caches: every position is below the capacity C) the
  tables become constants instead: the graph's own cos/sin subgraph evaluated once, at export,
  on positions 0..C-1, (C, D/2) each, which RotaryEmbedding indexes with the step's positions
  (its optional position_ids input, clipped to [0, C-1] so that no kernel reads outside the
  tables). The per-step head that computed them (Unsqueeze, Cast, Mul, Concat, Cos, Sin, 2
  Slices: 8 kernels of every decode step) becomes one Clip.
* Projections: MatMuls that read the same activation with constant 2-D weights (Q/K/V of an
  ordinary or producer layer; v_proj and the compensation Wc of a consumer; gate/up of the
  MLP) become one MatMul over the concatenated weights + one Split; bias Adds (Qwen2's q/k/v)
  are concatenated as well when every member has one.
* ONNX Runtime's contrib ops (only with `ort_contrib_ops=True`: the ort and genai targets),
  each carried with a model-local body (functions.py) for runtimes without it:
  - skip norms: RMSNormalization(Add(a, b)) over the last axis of same-shape (B, L, hidden)
    activations becomes com.microsoft SkipSimplifiedLayerNormalization(a, b, scale), whose
    output 3 (the sum) serves the Add's other readers (the next residual): both residual Adds
    of every layer disappear;
  - SiLU: Mul(x, Sigmoid(x)) (the gate of a gated MLP) becomes com.microsoft QuickGelu(x,
    alpha=1): one node per layer fewer;
  - gated MLP: the fused gate/up Split, that QuickGelu and the Mul by up become our own
    graph op uniattn GatedSilu (docs/ops.md; the custom-op library's kernel, or its body):
    two nodes per layer fewer, one kernel instead of three;
  - split rotary (static caches, whose rotary reads tables by position): the fused Q/K/V Split
    and the RotaryEmbedding of q and of k become our graph op uniattn SplitRotary (docs/ops.md):
    two nodes per layer fewer, one kernel instead of three.
  - projections: every MatMul by a constant weight (after the projection fusion; the tied
    lm_head's MatMul by Transpose(embedding) included) becomes our graph op uniattn Linear
    (docs/ops.md) with the weight stored (N, K): on CUDA the library's GEMV for decode steps'
    few rows (cuBLAS beyond), on the CPU ONNX Runtime's own GEMM through the body, whose
    Transpose of a constant it folds once. A tied lm_head then reads the embedding table
    itself (no transposed copy in the file).
* What the rewrites leave dead (shape Concats, Reshapes, Unsqueezes of cos/sin) is removed.
The pass never looks at the attention nodes, so it serves every graph layout of ops.py.

RMSNorm needs no rewrite here: at the default-domain opset 23 of ops.ONNX_OPSET, the
exporter's own optimizer (onnxscript's rewriter, run by `torch.onnx.export(optimize=True)`)
already turns HF's decomposed norm (Cast, Pow, ReduceMean, Add, Sqrt, Reciprocal, Mul,
Cast, Mul) into one standard `RMSNormalization` (stash_type 1) per norm; the report counts
them and tests/export/test_fuse.py holds that no decomposed norm is left.

Why the standard opset-23 ops and not com.microsoft's (Skip)SimplifiedLayerNormalization /
RotaryEmbedding (which onnxruntime-genai uses): the file must run anywhere.
* onnxruntime 1.31 CPU runs RMSNormalization-23 and RotaryEmbedding-23 (checked here, fp32
  and fp16, 3-D caches without position_ids and 2-D tables with them); its CUDA EP registers
  both for float, float16 and bfloat16 (core/providers/cuda/nn/rms_norm.cc, cuda/llm/rotary_embedding.cc) and ran
  them on an H100 (onnxruntime-gpu 1.31.1, profiler: every node of a norm -> fused QKV ->
  Split -> 2 rotary graph on CUDAExecutionProvider; CUDA vs CPU within 1.5e-6 in float32,
  one float16 ulp in float16). Not part of this module's CPU tests.
* The TensorRT ONNX parser imports RMSNormalization and RotaryEmbedding from 10.15
  (onnx-tensorrt 10.15 release notes; TensorRT-RTX 1.7's parser, installed here, parses a
  fused graph without plugins into ROTARY_EMBEDDING layers); it has no importer for
  com.microsoft ops.
* onnx.checker full_check rejects SimplifiedLayerNormalization (ORT registers it in the
  default domain, which onnx does not know). The exceptions are the contrib ops above, for
  files ONNX Runtime runs: the skip norm removes a kernel per residual (33 norms + 32 Adds ->
  1 + 32 nodes in Llama-3.2-1B), QuickGelu one per MLP (16), their com.microsoft domain passes
  the checker, and the model-local bodies keep the file runnable elsewhere (ONNX Runtime uses
  its own kernels, never the bodies: tests/export/test_fuse.py runs both ways).
* Rounding: the ONNX definitions are HF's (RMSNormalization: variance in float32, normalized
  cast to the activation dtype, then times the weight). onnxruntime's CPU kernels round once
  instead (normalized x weight, resp. the rotation, in float32, one cast): identical in
  float32, at most one float16 ulp apart per element in float16 (measured), far inside the
  validation tolerance, which is derived from the float16 reference's own noise.
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from .functions import CONTRIB_DOMAIN, LOCAL_FUNCTION_OPS, SILU_OP, SKIP_NORM_OP, local_function
from .schema import DOMAIN, GATED_SILU_OP, LINEAR_OP, SPLIT_ROTARY_OP

ROTARY_MIN_OPSET = 23  # RotaryEmbedding (and RMSNormalization) are opset-23 ops
_SCOPES_KEY = "pkg.torch.onnx.name_scopes"  # where torch.onnx records each node's module path
_LAYER_SCOPE = re.compile(r"layers\.(\d+)")
# Ops a cos/sin tensor may pass through after cat(f, f) without its halves becoming unequal.
_ELEMENTWISE_UNARY = ("Cos", "Sin", "Cast")


@dataclass
class FusionReport:
    """What `fuse_graph` did. Node counts per op type before and after; per decoder layer:
    nodes attributed to a layer by the exporter's module scopes, averaged; matched: patterns
    this pass rewrote (RMSNormalization nodes, made by the exporter, are in kinds_*)."""

    layers: int
    kinds_before: dict[str, int]
    kinds_after: dict[str, int]
    per_layer_before: float
    per_layer_after: float
    matched: dict[str, int] = field(default_factory=dict)

    @property
    def nodes_before(self) -> int:
        return sum(self.kinds_before.values())

    @property
    def nodes_after(self) -> int:
        return sum(self.kinds_after.values())

    def manifest_entry(self) -> dict:
        """The manifest's record of the graph's size (`"graph"` key)."""
        return {
            "nodes": self.nodes_after,
            "nodes_per_layer": round(self.per_layer_after, 2),
            "nodes_unfused": self.nodes_before,
            "nodes_per_layer_unfused": round(self.per_layer_before, 2),
            "fused": dict(self.matched),
        }


def fuse_graph(model: ir.Model, *, ort_contrib_ops: bool = False, rotary_positions: int | None = None) -> FusionReport:
    """Fuse rotary and shared-input projections of `model` in place (see the module doc);
    with `ort_contrib_ops`, also each residual Add into the RMSNormalization reading it and
    each SiLU into one node (ONNX Runtime's SkipSimplifiedLayerNormalization and QuickGelu,
    carried with model-local bodies); with `rotary_positions` (C: every position of the graph
    is below it), rotary tables of C rows computed at export instead of per step."""
    opset = model.opset_imports.get("", 0)
    if opset < ROTARY_MIN_OPSET:
        raise ValueError(f"fuse_graph needs default-domain opset >= {ROTARY_MIN_OPSET}, the graph has {opset}")
    graph = model.graph
    kinds_before, per_layer_before, layers = _census(graph)
    matched = {
        **_fuse_rotary(graph, rotary_positions, opset),
        **_fuse_projections(graph),
    }
    if ort_contrib_ops:
        matched["skip_norms"] = _fuse_skip_norms(graph)
        matched["silu"] = _fuse_silu(graph)
        RemoveUnusedNodesPass()(model)  # the SiLUs' old Sigmoid and Mul still read the gates
        matched["gated_silu"] = _fuse_gated_silu(graph)
        matched["split_rotary"] = _fuse_split_rotary(graph)
        matched["linear"] = _fuse_linear(graph)
    RemoveUnusedNodesPass()(model)
    used = {(node.domain, node.op_type) for node in graph}
    for domain, name in LOCAL_FUNCTION_OPS:
        if (domain, name) in used:
            function = ir.serde.deserialize_function(local_function(domain, name))
            model.functions[function.identifier()] = function
            model.opset_imports.setdefault(domain, 1)
    kinds_after, per_layer_after, _ = _census(graph)
    return FusionReport(layers, kinds_before, kinds_after, per_layer_before, per_layer_after, matched)


def _layer_of(node: ir.Node) -> int | None:
    found = _LAYER_SCOPE.search(node.metadata_props.get(_SCOPES_KEY, ""))
    return int(found.group(1)) if found else None


def nodes_by_layer(graph: ir.Graph) -> dict[int | None, collections.Counter]:
    """Op-type counts per decoder layer (key None: nodes outside the layers: embedding,
    rotary tables, final norm, lm_head), from the module scopes torch.onnx records."""
    layers: dict[int | None, collections.Counter] = collections.defaultdict(collections.Counter)
    for node in graph:
        layers[_layer_of(node)][node.op_type] += 1
    return dict(layers)


def _census(graph: ir.Graph) -> tuple[dict[str, int], float, int]:
    kinds = collections.Counter(node.op_type for node in graph)
    per_layer = {layer: sum(c.values()) for layer, c in nodes_by_layer(graph).items() if layer is not None}
    layers = len(per_layer)
    return dict(sorted(kinds.items())), (sum(per_layer.values()) / layers if layers else 0.0), layers


def _new_node(op_type, inputs, attributes=None, *, like: ir.Node, num_outputs=1, name: str,
              domain: str = "") -> ir.Node:
    """A node that takes the module scope (layer) of the node it replaces; `name` is built from
    a value name, unique in the graph as node names must be."""
    return ir.node(
        op_type, inputs, attributes, domain=domain, num_outputs=num_outputs, name=name,
        metadata_props=dict(like.metadata_props),
    )  # fmt: skip


def _replace_value(old: ir.Value, new: ir.Value, suffix: str) -> None:
    """Every reader of `old` reads `new` instead, which takes old's name + `suffix`, shape and type."""
    new.name, new.shape, new.type = f"{old.name}_{suffix}", old.shape, old.type
    ir.convenience.replace_all_uses_with(old, new)


def _producer(value: ir.Value | None, op_type: str) -> ir.Node | None:
    node = value.producer() if value is not None else None
    return node if node is not None and node.domain == "" and node.op_type == op_type else None


def _ints(value: ir.Value | None) -> list[int] | None:
    tensor = ir.convenience.get_const_tensor(value) if value is not None else None
    if tensor is None or tensor.dtype != ir.DataType.INT64:
        return None
    return [int(v) for v in tensor.numpy().reshape(-1)]


def _static_dims(value: ir.Value) -> list[int | None] | None:
    if value.shape is None:
        return None
    return [d if isinstance(d, int) else None for d in value.shape]


def _is_last_axis(axis: int, rank: int) -> bool:
    return axis in (-1, rank - 1)


# --- rotary -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rotary:
    packed: ir.Value  # (B, L, H*D) projection
    cos: ir.Value  # (B, L, D) = cat(f, f) form
    sin: ir.Value
    num_heads: int
    head_dim: int
    output: ir.Value  # the (B, L, H*D) rotated value the rest of the graph reads
    last: ir.Node  # the Reshape producing `output`


def _fuse_rotary(graph: ir.Graph, positions: int | None, opset: int) -> dict[str, int]:
    halves: dict[int, ir.Value] = {}  # id(cos or sin value) -> its first half, sliced once
    tables: dict[tuple[int, int], tuple[ir.Value, ...] | None] = {}  # (id(cos), id(sin)) -> tables, positions
    fused = 0
    for node in list(graph):
        match = _match_rotary(node)
        if match is None:
            continue
        key = (id(match.cos), id(match.sin))
        if positions is not None and key not in tables:
            tables[key] = _position_tables(graph, match, positions, opset)
        operands = tables.get(key) or (
            _first_half(graph, match.cos, match.head_dim, halves),
            _first_half(graph, match.sin, match.head_dim, halves),
        )
        rotary = _new_node(
            "RotaryEmbedding", [match.packed, *operands],
            {"num_heads": match.num_heads, "interleaved": 0},
            like=match.last, name=f"{match.output.name}/RotaryEmbedding",
        )  # fmt: skip
        graph.insert_before(match.last, rotary)
        rotated = rotary.outputs[0]
        rotated.shape, rotated.type = match.output.shape, match.output.type
        ir.convenience.replace_all_uses_with(match.output, rotated)
        fused += 1
    return {"rotary": fused, "rotary_tables": sum(found is not None for found in tables.values())}


def _match_rotary(reshape_out: ir.Node) -> _Rotary | None:
    """reshape_out = Reshape(Add(Mul(x4, Unsqueeze(cos)), Mul(rotate_half(x4), Unsqueeze(sin))))
    with x4 = Reshape(packed) of shape (B, L, H, D), packed and the result (B, L, H*D)."""
    if reshape_out.domain != "" or reshape_out.op_type != "Reshape" or reshape_out.outputs[0].is_graph_output():
        return None
    add = _producer(reshape_out.inputs[0], "Add")
    if add is None:
        return None
    for plain, rotated in (add.inputs, add.inputs[::-1]):
        mul_cos, mul_sin = _producer(plain, "Mul"), _producer(rotated, "Mul")
        if mul_cos is None or mul_sin is None:
            continue
        for x4, cos_4d in (mul_cos.inputs, mul_cos.inputs[::-1]):
            for rot, sin_4d in (mul_sin.inputs, mul_sin.inputs[::-1]):
                found = _rotary_operands(x4, cos_4d, rot, sin_4d, reshape_out.outputs[0])
                if found is not None:
                    packed, cos, sin, heads, head_dim = found
                    return _Rotary(packed, cos, sin, heads, head_dim, reshape_out.outputs[0], reshape_out)
    return None


def _rotary_operands(x4, cos_4d, rot, sin_4d, output):
    split = _producer(x4, "Reshape")
    dims = _static_dims(x4) if x4 is not None else None
    if split is None or dims is None or len(dims) != 4 or None in dims[2:]:
        return None
    heads, head_dim = dims[2], dims[3]
    packed = split.inputs[0]
    packed_dims = _static_dims(packed)
    if head_dim % 2 or packed_dims is None or len(packed_dims) != 3 or packed_dims[2] != heads * head_dim:
        return None
    # Only the last axis is split into heads and joined again: batch and length dims (named
    # symbolic dims) are the same on the packed input, the 4-D view and the output.
    if output.shape is None or list(output.shape) != list(packed.shape) or list(x4.shape)[:2] != list(packed.shape)[:2]:
        return None
    if not _is_rotate_half(rot, x4, head_dim):
        return None
    cos, sin = _unsqueezed_at_heads(cos_4d), _unsqueezed_at_heads(sin_4d)
    for table in (cos, sin):
        table_dims = _static_dims(table) if table is not None else None
        if table_dims is None or len(table_dims) != 3 or table_dims[2] != head_dim:
            return None
        if list(table.shape)[:2] != list(packed.shape)[:2]:  # RotaryEmbedding takes (B, L, D/2) tables
            return None
        if table.dtype != packed.dtype or not _halves_equal(table):
            return None
    return packed, cos, sin, heads, head_dim


def _is_rotate_half(rot: ir.Value | None, x4: ir.Value, head_dim: int) -> bool:
    """rot = Concat(Neg(x4[..., D/2:]), x4[..., :D/2], axis=-1)."""
    concat = _producer(rot, "Concat")
    if concat is None or len(concat.inputs) != 2 or not _is_last_axis(concat.attributes.get_int("axis", 0), 4):
        return False
    neg = _producer(concat.inputs[0], "Neg")
    half = head_dim // 2
    return (
        neg is not None
        and _is_last_axis_slice(neg.inputs[0], x4, half, head_dim, head_dim)
        and _is_last_axis_slice(concat.inputs[1], x4, 0, half, head_dim)
    )


def _is_last_axis_slice(value: ir.Value | None, source: ir.Value, start: int, end: int, length: int) -> bool:
    """value = source[..., start:end] of a rank-4 source whose last axis has `length`
    (an end past the axis counts as its length)."""
    node = _producer(value, "Slice")
    if node is None or node.inputs[0] is not source or len(node.inputs) < 4:
        return False
    starts, ends, axes = (_ints(node.inputs[i]) for i in (1, 2, 3))
    steps = _ints(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else [1]
    if starts is None or ends is None or axes is None or steps != [1] or len(axes) != 1:
        return False
    ends_at = ends[0] == end or (end == length and ends[0] >= length)
    return len(starts) == len(ends) == 1 and _is_last_axis(axes[0], 4) and starts[0] == start and ends_at


def _unsqueezed_at_heads(value: ir.Value | None) -> ir.Value | None:
    """(B, L, D) table T for value = Unsqueeze(T, axes=[2]) of shape (B, L, 1, D)."""
    node = _producer(value, "Unsqueeze")
    if node is None or _ints(node.inputs[1]) not in ([2], [-2]):
        return None
    return node.inputs[0]


def _halves_equal(table: ir.Value) -> bool:
    """table = u(cat(f, f, axis=-1)) for elementwise unary steps u (Cos/Sin/Cast, or Mul by a
    scalar constant such as HF's attention_scaling): then table[..., :D/2] == table[..., D/2:]."""
    value = table
    while True:
        node = value.producer()
        if node is None or node.domain != "":
            return False
        if node.op_type in _ELEMENTWISE_UNARY:
            value = node.inputs[0]
        elif node.op_type == "Mul" and len(node.inputs) == 2:
            constants = [ir.convenience.get_const_tensor(v) for v in node.inputs]
            scalar = [i for i, c in enumerate(constants) if c is not None and c.size == 1]
            if len(scalar) != 1:
                return False
            value = node.inputs[1 - scalar[0]]
        elif node.op_type == "Concat":
            rank = len(value.shape) if value.shape is not None else 0
            return (
                len(node.inputs) == 2
                and node.inputs[0] is node.inputs[1]
                and rank > 0
                and _is_last_axis(node.attributes.get_int("axis", 0), rank)
            )
        else:
            return False


def _first_half(graph: ir.Graph, table: ir.Value, head_dim: int, halves: dict[int, ir.Value]) -> ir.Value:
    """table[..., :D/2], computed once per table for the whole graph."""
    if id(table) not in halves:
        source = table.producer()
        bounds = [_const(graph, f"{table.name}_half_{name}", np.array(v, np.int64)) for name, v in
                  (("starts", [0]), ("ends", [head_dim // 2]), ("axes", [-1]))]  # fmt: skip
        node = _new_node("Slice", [table, *bounds], like=source, name=f"{table.name}/first_half")
        graph.insert_after(source, node)
        half = node.outputs[0]
        half.name = f"{table.name}_half"
        half.type = table.type
        half.shape = ir.Shape([*table.shape[:-1], head_dim // 2])
        halves[id(table)] = half
    return halves[id(table)]


def _position_tables(graph: ir.Graph, match: _Rotary, capacity: int, opset: int) -> tuple[ir.Value, ...] | None:
    """(cos table, sin table, clipped positions) for RotaryEmbedding's position_ids form: the
    graph's own subgraph from the (B, L) int64 positions to cos and sin, evaluated once on
    positions 0..capacity-1, first halves kept: (capacity, D/2) constants. None (the per-step
    tables stay) when cos and sin depend on anything but one such positions tensor and
    constants."""
    cone = _position_cone(graph, [match.cos, match.sin], list(match.packed.shape)[:2])
    if cone is None:
        return None
    positions, nodes, constants = cone
    evaluated = _evaluate(nodes, constants, positions, [match.cos, match.sin],
                          np.arange(capacity, dtype=np.int64)[None], opset)  # fmt: skip
    half = match.head_dim // 2
    # Names from the cos value: unique per tabulated (cos, sin) pair.
    prefix = f"{match.cos.name}_rotary"
    cos_table, sin_table = (
        _const(graph, f"{prefix}_{name}_table", np.ascontiguousarray(table.reshape(capacity, -1)[:, :half]))
        for name, table in zip(("cos", "sin"), evaluated)
    )
    bounds = [_const(graph, f"{prefix}_positions_{name}", np.array(v, np.int64))
              for name, v in (("min", 0), ("max", capacity - 1))]  # fmt: skip
    source = positions.producer()
    clip = _new_node("Clip", [positions, *bounds], like=source or match.last, name=f"{prefix}_positions/Clip")
    if source is None:  # a graph input: the clip runs first
        graph.insert_before(next(iter(graph)), clip)
    else:
        graph.insert_after(source, clip)
    clipped = clip.outputs[0]
    clipped.name, clipped.type, clipped.shape = f"{prefix}_positions", positions.type, positions.shape
    return cos_table, sin_table, clipped


def _position_cone(graph: ir.Graph, outputs: list[ir.Value],
                   batch_and_length: list) -> tuple[ir.Value, list[ir.Node], list[ir.Value]] | None:  # fmt: skip
    """(positions, the nodes of `graph` computing `outputs` from it in graph order, the
    constants they read) where positions is the one non-constant int64 (B, L) tensor the
    outputs depend on."""
    found: dict[int, ir.Node] = {}
    constants: dict[int, ir.Value] = {}
    sources: dict[int, ir.Value] = {}
    pending = list(outputs)
    while pending:
        value = pending.pop()
        if value is None or id(value) in sources or id(value) in constants:
            continue
        node = value.producer()
        shape = list(value.shape) if value.shape is not None else None
        is_positions = value.dtype == ir.DataType.INT64 and shape == batch_and_length
        if is_positions and ir.convenience.get_const_tensor(value) is None:
            sources[id(value)] = value
        elif node is None:
            if value.const_value is None:
                return None  # another graph input
            constants[id(value)] = value
        elif id(node) not in found:
            if node.domain != "" or node.graph is not graph:
                return None
            found[id(node)] = node
            pending.extend(node.inputs)
    if len(sources) != 1:
        return None
    ordered = [node for node in graph if id(node) in found]
    return next(iter(sources.values())), ordered, list(constants.values())


def _evaluate(nodes: list[ir.Node], constants: list[ir.Value], source: ir.Value, outputs: list[ir.Value],
              feed: np.ndarray, opset: int) -> list[np.ndarray]:  # fmt: skip
    """The values `outputs` take when `nodes` run on source = feed (ONNX's reference evaluator)."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    initializers = []
    for value in constants:
        initializers.append(ir.serde.serialize_tensor(value.const_value))
        initializers[-1].name = value.name
    graph = helper.make_graph(
        [ir.serde.serialize_node(node) for node in nodes], "rotary_tables",
        [helper.make_tensor_value_info(source.name, int(source.dtype), [None, None])],
        [helper.make_tensor_value_info(v.name, int(v.dtype), None) for v in outputs],
        initializer=initializers,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return ReferenceEvaluator(model).run(None, {source.name: feed})


def _const(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                     const_value=ir.tensor(array, name=name))  # fmt: skip
    graph.register_initializer(value)
    return value


# --- projections ------------------------------------------------------------------------------


def _fuse_projections(graph: ir.Graph) -> dict[str, int]:
    """One MatMul + Split per group of constant-weight MatMuls reading the same activation."""
    groups: dict[tuple, list[ir.Node]] = collections.defaultdict(list)
    for node in graph:
        is_matmul = node.domain == "" and node.op_type == "MatMul"
        if is_matmul and _weight(node) is not None and not node.outputs[0].is_graph_output():
            key = (id(node.inputs[0]), _weight(node).shape[0], _weight(node).dtype)
            groups[key].append(node)
    fused_groups = fused_matmuls = fused_biases = 0
    for members in groups.values():
        if len(members) < 2:
            continue
        biases = [_bias_add(m) for m in members]
        with_bias = all(b is not None for b in biases)
        _fuse_group(graph, members, biases if with_bias else None)
        fused_groups += 1
        fused_matmuls += len(members)
        fused_biases += len(members) if with_bias else 0
    return {"projection_groups": fused_groups, "projection_matmuls": fused_matmuls, "projection_biases": fused_biases}


def _weight(matmul: ir.Node) -> ir.TensorProtocol | None:
    """The constant (K, N) weight of x @ W, x itself not constant."""
    if ir.convenience.get_const_tensor(matmul.inputs[0]) is not None:
        return None
    weight = ir.convenience.get_const_tensor(matmul.inputs[1])
    return weight if weight is not None and len(weight.shape) == 2 else None


def _bias_add(matmul: ir.Node) -> tuple[ir.Node, ir.TensorProtocol] | None:
    """(Add node, bias) when the MatMul's only reader adds a constant (N,) bias to it."""
    out = matmul.outputs[0]
    if len(out.uses()) != 1:
        return None
    add = next(iter(out.uses())).node
    if add.domain != "" or add.op_type != "Add" or len(add.inputs) != 2 or add.outputs[0].is_graph_output():
        return None
    other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
    bias = ir.convenience.get_const_tensor(other)
    width = _weight(matmul).shape[1]
    if bias is None or tuple(bias.shape) != (width,) or bias.dtype != _weight(matmul).dtype:
        return None
    return add, bias


def _fuse_group(graph: ir.Graph, members: list[ir.Node], biases: list | None) -> None:
    first = members[0]
    weights = [_weight(m) for m in members]
    widths = [int(w.shape[1]) for w in weights]
    base = first.outputs[0].name
    weight = _const(graph, f"{base}_fused_weight", np.concatenate([w.numpy() for w in weights], axis=1))
    nodes = [_new_node("MatMul", [first.inputs[0], weight], like=first, name=f"{base}/fused_MatMul")]
    replaced = [m.outputs[0] for m in members]
    if biases is not None:
        bias = _const(graph, f"{base}_fused_bias", np.concatenate([b.numpy() for _, b in biases]))
        nodes.append(_new_node("Add", [nodes[-1].outputs[0], bias], like=biases[0][0], name=f"{base}/fused_bias"))
        replaced = [add.outputs[0] for add, _ in biases]
    sizes = _const(graph, f"{base}_fused_split", np.array(widths, np.int64))
    split = _new_node("Split", [nodes[-1].outputs[0], sizes], {"axis": -1}, like=first,
                      num_outputs=len(members), name=f"{base}/fused_Split")  # fmt: skip
    nodes.append(split)
    graph.insert_before(first, nodes)
    for old, new in zip(replaced, split.outputs):
        new.shape, new.type = old.shape, old.type
        ir.convenience.replace_all_uses_with(old, new)


# --- residual Add + RMSNormalization ------------------------------------------------------------

# The element types ONNX Runtime's SkipSimplifiedLayerNormalization schema accepts (its CPU and
# CUDA kernels cover all three in 1.31).
_SKIP_NORM_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


def _fuse_skip_norms(graph: ir.Graph) -> int:
    """RMSNormalization(Add(a, b)) over the last axis of (B, L, hidden) activations, float32
    statistics, becomes SkipSimplifiedLayerNormalization(a, b, scale): output 0 the norm,
    output 3 the sum for the Add's other readers (the next residual Add); outputs 1 and 2 are
    left unnamed (TensorRT's importer of the op accepts no others)."""
    fused = 0
    for norm in list(graph):
        add = _producer(norm.inputs[0], "Add") if norm.domain == "" and norm.op_type == "RMSNormalization" else None
        if add is None or not _skip_norm_operands(add, norm):
            continue
        skip_norm = _new_node(
            SKIP_NORM_OP, [add.inputs[0], add.inputs[1], norm.inputs[1]],
            {"epsilon": norm.attributes.get_float("epsilon", 1e-5)}, domain=CONTRIB_DOMAIN, num_outputs=4,
            name=f"{norm.outputs[0].name}/{SKIP_NORM_OP}", like=norm,
        )  # fmt: skip
        graph.insert_before(norm, skip_norm)
        normalized, mean, inv_std_var, summed = skip_norm.outputs
        mean.name = inv_std_var.name = ""  # absent optional outputs ("" in the node proto)
        for old, new in ((norm.outputs[0], normalized), (add.outputs[0], summed)):
            _replace_value(old, new, "skip_norm")
        fused += 1
    return fused


def _skip_norm_operands(add: ir.Node, norm: ir.Node) -> bool:
    if len(add.inputs) != 2 or len(norm.inputs) != 2 or len(norm.outputs) != 1:
        return False
    if any(v.is_graph_output() for v in (add.outputs[0], norm.outputs[0])):
        return False
    left, right = add.inputs
    if any(v is None or ir.convenience.get_const_tensor(v) is not None for v in (left, right)):
        return False
    # Same (B, L, hidden) shape on both sides: no broadcasting hides in the Add.
    if left.shape is None or right.shape is None or len(left.shape) != 3 or list(left.shape) != list(right.shape):
        return False
    hidden = left.shape[2]
    scale = ir.convenience.get_const_tensor(norm.inputs[1])
    if not isinstance(hidden, int) or scale is None or tuple(scale.shape) != (hidden,):
        return False
    if left.dtype not in _SKIP_NORM_TYPES or left.dtype != right.dtype or scale.dtype != left.dtype:
        return False
    axis, stash = norm.attributes.get_int("axis", -1), norm.attributes.get_int("stash_type", 1)
    return _is_last_axis(axis, 3) and stash == 1


def _fuse_gated_silu(graph: ir.Graph) -> int:
    """Split(x) into two equal halves along the last axis -> QuickGelu(alpha=1) of the first ->
    Mul with the second (the gated MLP after the projection fusion: silu(gate) * up) becomes
    our GatedSilu(x): one kernel instead of three. Only where each intermediate has that one
    reader and the gate is the first half (the op's contract)."""
    fused = 0
    for silu in list(graph):
        if silu.domain != CONTRIB_DOMAIN or silu.op_type != SILU_OP or silu.attributes.get_float("alpha", 1.702) != 1.0:
            continue
        split = _producer(silu.inputs[0], "Split")
        if split is None or len(split.outputs) != 2 or silu.inputs[0] is not split.outputs[0]:
            continue
        packed, (gate, up) = split.inputs[0], split.outputs
        sizes = _ints(split.inputs[1]) if len(split.inputs) > 1 else None
        halves = sizes is not None and len(sizes) == 2 and sizes[0] == sizes[1]
        axis = split.attributes.get_int("axis", 0)
        last_axis = axis == -1 or (packed.shape is not None and _is_last_axis(axis, len(packed.shape)))
        if not halves or not last_axis:
            continue
        if len(gate.uses()) != 1 or len(up.uses()) != 1 or len(silu.outputs[0].uses()) != 1:
            continue
        mul = next(iter(silu.outputs[0].uses())).node
        operands = {id(v) for v in mul.inputs}
        if mul.domain != "" or mul.op_type != "Mul" or operands != {id(silu.outputs[0]), id(up)}:
            continue
        if mul.outputs[0].is_graph_output():
            continue
        node = _new_node(GATED_SILU_OP, [packed], domain=DOMAIN, name=f"{mul.outputs[0].name}/{GATED_SILU_OP}",
                         like=mul)  # fmt: skip
        graph.insert_before(mul, node)
        _replace_value(mul.outputs[0], node.outputs[0], "gated")
        fused += 1
    return fused


def _fuse_split_rotary(graph: ir.Graph) -> int:
    """Split(qkv) into [q | k | v] along the last axis, q and k each read by exactly one
    RotaryEmbedding of the tables form (2-D cos/sin tables indexed by position_ids, the same
    three for both; non-interleaved, the whole head rotated; num_heads Hq resp. Hkv, the
    widths Hq*D, Hkv*D, Hkv*D) becomes our SplitRotary(qkv, cos, sin, positions): one kernel
    instead of three. v keeps its readers. Static-cache graphs only: the per-step tables of the
    dynamic form are (B, L, D/2) and stay as they are."""
    fused = 0
    for split in list(graph):
        if split.domain != "" or split.op_type != "Split" or len(split.outputs) != 3 or len(split.inputs) != 2:
            continue
        packed = split.inputs[0]
        axis = split.attributes.get_int("axis", 0)  # the projection fusion's Splits: -1 (their MatMul has no shape)
        if axis != -1 and (packed.shape is None or len(packed.shape) != 3 or axis != 2):
            continue
        query, key, value = split.outputs
        rotaries = [_table_rotary(v) for v in (query, key)]
        if None in rotaries or any(v.is_graph_output() for v in (query, key)):
            continue
        (rotate_query, heads), (rotate_key, kv_heads) = rotaries
        tables = rotate_query.inputs[1:4]
        if any(a is not b for a, b in zip(tables, rotate_key.inputs[1:4])) or heads % kv_heads:
            continue
        cos_dims = _static_dims(tables[0])
        if cos_dims is None or len(cos_dims) != 2 or cos_dims[1] is None:
            continue
        head_dim = 2 * cos_dims[1]
        if _ints(split.inputs[1]) != [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim]:
            continue
        if any(rotary.outputs[0].is_graph_output() for rotary in (rotate_query, rotate_key)):
            continue
        node = _new_node(SPLIT_ROTARY_OP, [packed, *tables], {"num_heads": heads, "kv_num_heads": kv_heads},
                         domain=DOMAIN, num_outputs=3, name=f"{packed.name}/{SPLIT_ROTARY_OP}", like=split)  # fmt: skip
        graph.insert_before(split, node)
        for old, new in ((rotate_query.outputs[0], node.outputs[0]), (rotate_key.outputs[0], node.outputs[1]),
                         (value, node.outputs[2])):  # fmt: skip
            _replace_value(old, new, "split_rotary")
        fused += 1
    return fused


def _table_rotary(value: ir.Value) -> tuple[ir.Node, int] | None:
    """(node, num_heads) when `value`'s one reader is a RotaryEmbedding of the tables form
    (input, cos (M, D/2), sin, position_ids), non-interleaved over the whole head."""
    uses = list(value.uses())
    if len(uses) != 1:
        return None
    node = uses[0].node
    if node.domain != "" or node.op_type != "RotaryEmbedding" or uses[0].idx != 0 or len(node.inputs) != 4:
        return None
    if any(v is None for v in node.inputs) or len(node.outputs) != 1:
        return None
    attributes = node.attributes
    if attributes.get_int("interleaved", 0) != 0 or attributes.get_int("rotary_embedding_dim", 0) != 0:
        return None
    heads = attributes.get_int("num_heads", 0)
    return (node, heads) if heads > 0 else None


def _fuse_silu(graph: ir.Graph) -> int:
    """Mul(x, Sigmoid(x)) becomes QuickGelu(x, alpha=1) = x * sigmoid(x)."""
    fused = 0
    for mul in list(graph):
        if mul.domain != "" or mul.op_type != "Mul" or len(mul.inputs) != 2 or mul.outputs[0].is_graph_output():
            continue
        x = next((a for a, b in (mul.inputs, mul.inputs[::-1])
                  if _producer(b, "Sigmoid") is not None and b.producer().inputs[0] is a), None)  # fmt: skip
        if x is None:
            continue
        silu = _new_node(SILU_OP, [x], {"alpha": 1.0}, domain=CONTRIB_DOMAIN, name=f"{mul.outputs[0].name}/{SILU_OP}",
                         like=mul)  # fmt: skip
        graph.insert_before(mul, silu)
        _replace_value(mul.outputs[0], silu.outputs[0], "silu")
        fused += 1
    return fused


# --- projections as Linear ----------------------------------------------------------------------

_LINEAR_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


def _fuse_linear(graph: ir.Graph) -> int:
    """MatMul(x, W) by a constant (K, N) W, or by Transpose(E) of a constant (N, K) E, becomes
    Linear(x, W^T) resp. Linear(x, E): the weight stored (N, K) (docs/ops.md). x must not be
    constant and must have W's element type."""
    fused = 0
    for matmul in list(graph):
        if matmul.domain != "" or matmul.op_type != "MatMul" or len(matmul.inputs) != 2:
            continue
        x = matmul.inputs[0]
        if ir.convenience.get_const_tensor(x) is not None:
            continue
        weight = _transposed_constant(matmul.inputs[1])
        if weight is None:
            constant = _weight(matmul)
            if constant is None or constant.dtype not in _LINEAR_TYPES:
                continue
            name = f"{matmul.inputs[1].name}_transposed"
            weight = _const(graph, name, np.ascontiguousarray(constant.numpy().T))
        if x.dtype is not None and x.dtype != weight.dtype:
            continue
        node = _new_node(LINEAR_OP, [x, weight], domain=DOMAIN, name=f"{matmul.outputs[0].name}/{LINEAR_OP}",
                         like=matmul)  # fmt: skip
        graph.insert_before(matmul, node)
        _replace_output(graph, matmul.outputs[0], node.outputs[0])
        fused += 1
    return fused


def _transposed_constant(value: ir.Value | None) -> ir.Value | None:
    """E when `value` is Transpose(E, perm=[1, 0]) of a constant 2-D E of a Linear type."""
    transpose = _producer(value, "Transpose")
    if transpose is None or list(transpose.attributes.get_ints("perm", [1, 0])) != [1, 0]:
        return None
    source = transpose.inputs[0]
    constant = ir.convenience.get_const_tensor(source)
    if constant is None or len(constant.shape) != 2 or constant.dtype not in _LINEAR_TYPES:
        return None
    return source


def _replace_output(graph: ir.Graph, old: ir.Value, new: ir.Value) -> None:
    """Like _replace_value, and where `old` is a graph output, `new` takes its place and name."""
    if not old.is_graph_output():
        _replace_value(old, new, "linear")
        return
    name = old.name
    index = next(i for i, output in enumerate(graph.outputs) if output is old)
    old.name = f"{name}_replaced"
    new.name, new.shape, new.type = name, old.shape, old.type
    graph.outputs[index] = new
    ir.convenience.replace_all_uses_with(old, new)
