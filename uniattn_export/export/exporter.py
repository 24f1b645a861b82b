"""Stage 2 entry: export a loaded UniAttnForCausalLM (or plain base model) to an ONNX artifact.

One graph serves prefill and decode with the optimum naming (io_names.py): input_ids,
attention_mask, position_ids, past_key_values.{i}.key/.value -> logits (float32),
present.{i}.key/.value, where consumer layers have a value cache only. Attention is one
`uniattn` node per layer (ops.py), backed by model-local functions (functions.py) so plain
runtimes run the file too. Two cache modes:

  dynamic  op contract v1: caches grow (dynamic batch, new tokens and past length); the
           optimum-compatible file.
  static   op contract v2: caches of fixed capacity C = max_length, (B, Hkv, C, D) in and out,
           meant to be bound to one buffer as past and present and updated in place; prompts
           right-padded; logits (B, 1, V) of each row's last real token, found from the mask:
           index = ReduceSum(attention_mask) - 1 - position_ids[:, 0], clamped to [0, L-1]
           (L - 1 = position_ids[:, -1] - position_ids[:, 0]: a step's positions are consecutive),
           and next_tokens (B, 1) int64, their argmax (greedy decoding on the device).

The cache tensors keep optimum's names, or onnxruntime-genai's layout (layout="genai",
io_names.py: consumers' value caches paired into pseudo layers, a dummy key for an odd count);
genai-layout static graphs take row b's positions as position_ids[b, 0] + i, because
onnxruntime-genai gives right-padding tokens position 0.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import Callable, Literal

import onnx
import onnx_ir as ir
import torch
from torch import nn

from ..dtypes import DTYPE_NAMES
from ..errors import UniAttnError
from ..model.checkpoint import RELEASED_GROUPING_KEYS
from ..model.modeling import UniAttnForCausalLM
from ..output import ARTIFACT, SIDE_FILES, atomic_folder, check_destination
from . import artifact as artifact_files
from . import io_names
from .functions import function_protos
from .fuse import fuse_graph
from .ops import CONTRACTS, EXPORT_OPS, ONNX_OPSET, TRANSLATION_TABLES
from .schema import CACHE_MODES, DOMAIN, PRODUCER_OP

# Above this many bytes of weights the graph keeps them in model.onnx_data (protobuf's
# 2 GiB limit must never be near).
EXTERNAL_DATA_THRESHOLD = 1 << 30
LOGITS_MODES = ("all", "last")
# The smallest capacity a static artifact can have (the trace's example rows use 4 slots, and
# a capacity above the example sizes keeps it from coinciding with a dynamic one).
MIN_CAPACITY = 8


class _ExportGraph(nn.Module):
    """The model as a function of flat tensors: what the ONNX graph computes."""

    def __init__(self, model: UniAttnForCausalLM, last_logits_only: bool = False, cache: str = "dynamic",
                 contiguous_positions: bool = False):  # fmt: skip
        super().__init__()
        self.model = model
        self.last_logits_only = last_logits_only
        self.cache = cache
        self.contiguous_positions = contiguous_positions
        self.has_key = [model.uniattn_config.has_key_cache(i) for i in range(len(model.model.layers))]

    def forward(self, input_ids, attention_mask, position_ids, past_key_values: list[torch.Tensor]):
        flat = iter(past_key_values)
        past = [(next(flat) if has_key else None, next(flat)) for has_key in self.has_key]
        if self.contiguous_positions:
            # onnxruntime-genai gives right-padding tokens position 0; with slot = position they
            # would overwrite slot 0. Row b's new tokens are position_ids[b, 0] + i instead
            # (op contract v2's contiguous positions), so padding writes the slots after the
            # row's real tokens, as in our own runtimes.
            ones = torch.ones_like(position_ids)
            position_ids = position_ids[:, :1] + ones.cumsum(dim=1) - ones
        hidden = self.model.model.embed_tokens(input_ids)
        hidden, presents = self.model.model.run_layers(
            hidden, position_ids, attention_mask, past, EXPORT_OPS[self.cache]
        )
        if self.cache == "static":
            # Right padding: row b's last real token is new token n_b - 1 - p_b, where n_b
            # counts its real tokens so far and p_b is the position of its first new token.
            # Every node here must have a CUDA kernel in ORT, or ORT's CUDA EP places it on
            # the CPU and CUDA graphs are impossible: the upper bound L - 1 is read off the
            # (consecutive) positions rather than a Shape node, the mask is summed as int32
            # (ORT's CUDA ReduceSum has no int64 kernel).
            real = attention_mask.to(torch.int32).sum(dim=1, dtype=torch.int32).to(torch.int64)
            last = (real - 1 - position_ids[:, 0]).clamp(min=0)
            last = torch.minimum(last, position_ids[:, -1] - position_ids[:, 0])
            hidden = hidden.gather(1, last[:, None, None].expand(-1, 1, hidden.shape[2]))
        elif self.last_logits_only:
            hidden = hidden[:, -1:, :]
        logits = self.model.lm_head(hidden).float()
        flat_presents = [t for key, value in presents for t in ((key, value) if key is not None else (value,))]
        if self.cache == "static":  # first maximum on ties, as numpy's and ORT's ArgMax
            return (logits, logits.argmax(dim=-1), *flat_presents)
        return (logits, *flat_presents)


def _sample_inputs(model: UniAttnForCausalLM, has_key: list[bool], capacity: int | None):
    """Example tensors for tracing; every dynamic size >= 2 and distinct so nothing
    specializes. Static caches (a capacity): caches (B, Hkv, C, D), rows at different
    positions, the second right-padded."""
    batch, new, past_len = 2, 3, 4
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, model.config.vocab_size, (batch, new), generator=generator)
    if capacity is None:
        attention_mask = torch.ones(batch, past_len + new, dtype=torch.int64)
        position_ids = torch.arange(past_len, past_len + new).expand(batch, -1).contiguous()
        cache_len = past_len
    else:
        attention_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
        position_ids = torch.tensor([[1, 2, 3], [0, 1, 2]])
        cache_len = capacity
    past = []
    dtype = model.model.embed_tokens.weight.dtype
    for layer, layer_has_key in enumerate(has_key):
        g = model.geometry(layer)
        shape = (batch, g.kv_num_heads, cache_len, g.head_dim)
        past += [torch.randn(shape, generator=generator).to(dtype) for _ in range(1 + layer_has_key)]
    return (input_ids, attention_mask, position_ids, past)


def _dynamic_shapes(num_past: int, cache: str):
    batch = torch.export.Dim("batch_size")
    new = torch.export.Dim("sequence_length")
    past_len = torch.export.Dim("past_sequence_length")
    total = torch.export.Dim("total_sequence_length")
    # Static caches keep their capacity (axis 2) fixed: one set of shapes for every step.
    cache_axes = {0: batch, 2: past_len} if cache == "dynamic" else {0: batch}
    return {
        "input_ids": {0: batch, 1: new},
        "attention_mask": {0: batch, 1: total},
        "position_ids": {0: batch, 1: new},
        "past_key_values": [dict(cache_axes) for _ in range(num_past)],
    }


def _trace(model: UniAttnForCausalLM, logits: str, cache: str, capacity: int | None,
           input_names: list[str], output_names: list[str], layout: str):  # fmt: skip
    contiguous = cache == "static" and layout == "genai"
    graph = _ExportGraph(model, last_logits_only=logits == "last", cache=cache, contiguous_positions=contiguous).eval()
    args = _sample_inputs(model, graph.has_key, capacity)
    # The exporter narrates every stage on stdout and warns about unrelated registrations;
    # the CLI prints its own progress. A failure still raises with torch's full message.
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        _quiet_logger("torch.onnx"),
        torch.no_grad(),
    ):
        warnings.simplefilter("ignore")
        return torch.onnx.export(
            graph, args, dynamo=True, opset_version=ONNX_OPSET,
            dynamic_shapes=_dynamic_shapes(len(args[3]), cache),
            input_names=input_names, output_names=output_names,
            custom_translation_table=TRANSLATION_TABLES[CONTRACTS[cache].version], optimize=True, verbose=False,
        )  # fmt: skip


@contextlib.contextmanager
def _quiet_logger(name: str):
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _finish_graph(model: ir.Model, uniattn_layers: int, op_version: int) -> None:
    """Name the attention nodes and attach the op functions of the contract version."""
    attention_nodes = [n for n in model.graph if n.domain == DOMAIN]
    if len(attention_nodes) != uniattn_layers:
        raise RuntimeError(
            f"the exported graph has {len(attention_nodes)} attention nodes for {uniattn_layers} layers"
        )
    for layer, node in enumerate(attention_nodes):  # torch.export keeps program order
        node.name = f"/model/layers.{layer}/self_attn/{node.op_type}"
    model.opset_imports[DOMAIN] = op_version
    for proto in function_protos(op_version):
        function = ir.serde.deserialize_function(proto)
        model.functions[function.identifier()] = function


def _apply_cache_layout(model: ir.Model, has_key: list[bool], layout: str, cache: str, next_tokens: bool) -> None:
    """Rename the traced graph's cache inputs/outputs (optimum layout) into `layout`'s names
    and order, adding the genai layout's dummy for an odd number of consumers (io_names.py)."""
    if layout == "optimum":
        return
    tensors = io_names.cache_tensors(has_key, layout)
    named = {t.source: t.name for t in tensors if t.source is not None}
    for values, attr in ((model.graph.inputs, "past"), (model.graph.outputs, "present")):
        for value in values:
            source = io_names.parse_cache_name(value.name)
            if source is not None:
                value.name = getattr(named[source], attr)
    dummy = next((t.name for t in tensors if t.source is None), None)
    if dummy is not None:
        inputs = {v.name: v for v in model.graph.inputs}
        outputs = {v.name: v for v in model.graph.outputs}
        paired = io_names.CacheName(dummy.layer, "value")
        past = ir.Value(name=dummy.past, shape=inputs[paired.past].shape, type=inputs[paired.past].type)
        model.graph.inputs.append(past)
        # Static: present aliases past (one buffer bound as both): Identity then copies nothing.
        # Dynamic: presents grow by the new tokens, as the paired value cache's present does.
        node = ir.node("Identity", [past if cache == "static" else outputs[paired.present]])
        present = node.outputs[0]
        present.name, present.shape, present.type = dummy.present, outputs[paired.present].shape, outputs[paired.present].type
        model.graph.append(node)
        model.graph.outputs.append(present)
    names = io_names.input_names(has_key, layout) + io_names.output_names(has_key, layout, next_tokens=next_tokens)
    order = {name: i for i, name in enumerate(names)}
    for values in (model.graph.inputs, model.graph.outputs):
        ordered = sorted(values, key=lambda v: order[v.name])
        values.clear()
        values.extend(ordered)


def _mark_absent_shared_state(onnx_file: Path) -> None:
    """Mark the shared state of ordinary layers (nobody consumes it) as absent.

    Their producer nodes keep 5 output slots with outputs 3-4 named "" (ONNX's "optional
    output absent"), so kernels skip that work. Cutting the node to 3 outputs is not an
    option: onnx.checker and onnxruntime then fail the function's shape inference, which
    indexes all 5 function outputs. onnx_ir drops trailing empty names when it serializes,
    hence this pass on the saved proto (external weights stay where they are).
    """
    proto = onnx.load(onnx_file, load_external_data=False)
    graph = proto.graph
    read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    absent = set()
    for node in graph.node:
        if node.domain == DOMAIN and node.op_type == PRODUCER_OP and not read & set(node.output[3:]):
            absent.update(node.output[3:])
            node.output[3:] = ["", ""]
    kept = [info for info in graph.value_info if info.name not in absent]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    onnx.save(proto, onnx_file)


def _artifact_config(model: UniAttnForCausalLM):
    """config.json of the artifact: the model's, with the explicit layer map as the only
    description of the SuperBlocks (the released grouping_* keys would be a second one)."""
    config = copy.deepcopy(model.config)
    config.uniattn = model.uniattn_config.to_dict()
    for key in RELEASED_GROUPING_KEYS:
        if hasattr(config, key):
            delattr(config, key)
    return config


def _copy_side_files(source: Path | None, out: Path) -> list[str]:
    copied = []
    if source is None:
        return copied
    for name in SIDE_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
            copied.append(name)
    return copied


def export_model(
    model: UniAttnForCausalLM,
    out_dir: str | Path,
    *,
    source_dir: str | Path | None = None,
    external_data: bool | None = None,
    logits: Literal["all", "last"] | None = None,
    cache: Literal["dynamic", "static"] = "dynamic",
    max_length: int | None = None,
    layout: str = "optimum",
    extra_files: Callable[[Path], list[str]] | None = None,
    ort_contrib_ops: bool = False,
    force: bool = False,
) -> Path:
    """Export `model` (in its current dtype) to the artifact folder `out_dir`.

    source_dir: the checkpoint folder the model came from; its tokenizer and generation
    config files are copied and its path is recorded in the manifest (validation finds the
    reference there). external_data: None keeps weights inline below 1 GiB. logits: "all"
    positions (optimum's convention), or only the "last" one: a long prefill then never
    materializes (B, L, vocab) floats, which is what generation needs; default "all" for
    dynamic caches. cache: "dynamic" (op contract v1, optimum-compatible) or "static" (v2,
    fixed capacity `max_length`, logits "last" only: each row's last real token).
    layout: the cache tensors' names, "optimum" or "genai" (onnxruntime-genai's, io_names.py).
    extra_files: writes target files into the folder being written (its argument) and returns
    their names, which the manifest then lists with their hashes.
    ort_contrib_ops: fuse each residual Add into the norm that reads it and each SiLU into one
    node (ONNX Runtime's contrib ops SkipSimplifiedLayerNormalization and QuickGelu, each with a
    standard-op body: export/fuse.py); for artifacts that ONNX Runtime runs (ort, genai).
    force: replace `out_dir` whatever it holds (never the checkpoint; uniattn_export/output.py).
    The folder is written beside `out_dir` and renamed into place at the end, after the
    structural check passed, so a failure never leaves a half-written artifact.
    """
    if not isinstance(model, UniAttnForCausalLM):
        raise UniAttnError(
            f"cannot export a {type(model).__name__}",
            "load the checkpoint with uniattn_export.load_model (it also loads plain base models)",
        )
    dtype = str(model.model.embed_tokens.weight.dtype).removeprefix("torch.")
    if cache not in CACHE_MODES:
        raise UniAttnError(f"unknown cache mode {cache!r}", f"use one of {CACHE_MODES}")
    if logits is None:
        logits = "all" if cache == "dynamic" else "last"
    if logits not in LOGITS_MODES:
        raise UniAttnError(f"unknown logits mode {logits!r}", f"use one of {LOGITS_MODES}")
    capacity = None
    if cache == "static":
        if logits != "last":
            raise UniAttnError(
                "a static-cache artifact returns only each row's last logits",
                "export with logits='last' (--logits last), or with --cache dynamic for all positions",
            )
        if max_length is None or int(max_length) < MIN_CAPACITY:
            raise UniAttnError(
                f"a static-cache export needs a capacity (max_length) of at least {MIN_CAPACITY}, got {max_length}",
                "pass --max-length N (prompt + new tokens)",
            )
        capacity = int(max_length)
        positions = model.config.max_position_embeddings
        if capacity > positions:  # generation never fills it (it is bounded by the positions)
            raise UniAttnError(
                f"a cache capacity of {capacity} tokens exceeds the model's {positions} positions",
                f"pass --max-length {positions} or less",
            )
    elif max_length is not None:
        raise UniAttnError("max_length applies to static caches only", "drop --max-length or pass --cache static")
    if layout not in io_names.LAYOUTS:
        raise UniAttnError(f"unknown cache layout {layout!r}", f"use one of {io_names.LAYOUTS}")
    if dtype not in DTYPE_NAMES:
        raise UniAttnError(f"cannot export weights of dtype {dtype}", f"load the model as one of {DTYPE_NAMES}")
    out_dir = Path(out_dir)
    source = Path(source_dir) if source_dir is not None else None
    check_destination(out_dir, ARTIFACT, inputs=(source,), force=force)
    uniattn = model.uniattn_config
    has_key = [uniattn.has_key_cache(i) for i in range(uniattn.num_layers)]
    next_tokens = cache == "static"
    op_version = CONTRACTS[cache].version

    program = _trace(model, logits, cache, capacity, io_names.input_names(has_key), io_names.output_names(has_key, next_tokens=next_tokens), layout)
    onnx_model = program.model
    _finish_graph(onnx_model, uniattn.num_layers, op_version)
    _apply_cache_layout(onnx_model, has_key, layout, cache, next_tokens)
    input_names = io_names.input_names(has_key, layout)
    output_names = io_names.output_names(has_key, layout, next_tokens=next_tokens)
    # export/fuse.py: one node per norm, rotary, projection group; static caches bound every position by the
    # capacity, so the rotary tables become constants of that many rows
    fusion = fuse_graph(onnx_model, ort_contrib_ops=ort_contrib_ops, rotary_positions=capacity)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    if external_data is None:
        external_data = weight_bytes > EXTERNAL_DATA_THRESHOLD

    with atomic_folder(out_dir, ARTIFACT, inputs=(source,), force=force) as tmp:
        ir.save(
            onnx_model, tmp / artifact_files.MODEL_FILE,
            external_data=artifact_files.EXTERNAL_DATA_FILE if external_data else None,
        )  # fmt: skip
        _mark_absent_shared_state(tmp / artifact_files.MODEL_FILE)
        _artifact_config(model).save_pretrained(tmp)
        side_files = _copy_side_files(source, tmp)
        if extra_files is not None:
            side_files += extra_files(tmp)
        (tmp / artifact_files.LAYER_MAP_FILE).write_text(json.dumps(uniattn.to_dict(), indent=2) + "\n")
        manifest = artifact_files.build_manifest(
            tmp, model, input_names=input_names, output_names=output_names,
            source=source, side_files=side_files, logits=logits,
            cache={"mode": cache, "capacity": capacity, "layout": layout},
        )  # fmt: skip
        manifest["graph"] = fusion.manifest_entry()
        artifact_files.write_manifest(tmp, manifest)
        artifact_files.load_artifact(tmp)  # the structural check, on exactly what was written
    return out_dir
