"""Stage 2 entry: export a loaded UniAttnForCausalLM (or plain base model) to an ONNX artifact.

One graph serves prefill and decode (dynamic batch, new tokens and past length) with the
optimum naming: input_ids, attention_mask, position_ids, past_key_values.{i}.key/.value ->
logits (float32), present.{i}.key/.value, where consumer layers have a value cache only.
Attention is one `uniattn` node per layer (ops.py), backed by model-local functions
(functions.py) so plain runtimes run the file too.
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
from typing import Literal

import onnx
import onnx_ir as ir
import torch
from torch import nn

from ..errors import UniAttnError
from ..model.checkpoint import RELEASED_GROUPING_KEYS
from ..model.modeling import UniAttnForCausalLM
from ..output import ARTIFACT, SIDE_FILES, atomic_folder, check_destination
from . import artifact as artifact_files
from .functions import function_protos
from .ops import DOMAIN, DOMAIN_VERSION, EXPORT_OPS, ONNX_OPSET, PRODUCER_OP, TRANSLATION_TABLE

# Above this many bytes of weights the graph keeps them in model.onnx_data (protobuf's
# 2 GiB limit must never be near).
EXTERNAL_DATA_THRESHOLD = 1 << 30
EXPORT_DTYPES = ("float32", "float16", "bfloat16")
LOGITS_MODES = ("all", "last")


def past_names(layer: int, has_key: bool) -> list[str]:
    prefix = f"past_key_values.{layer}"
    return [f"{prefix}.key", f"{prefix}.value"] if has_key else [f"{prefix}.value"]


def present_names(layer: int, has_key: bool) -> list[str]:
    return [f"present.{layer}.key", f"present.{layer}.value"] if has_key else [f"present.{layer}.value"]


class _ExportGraph(nn.Module):
    """The model as a function of flat tensors: what the ONNX graph computes."""

    def __init__(self, model: UniAttnForCausalLM, last_logits_only: bool = False):
        super().__init__()
        self.model = model
        self.last_logits_only = last_logits_only
        self.has_key = [model.uniattn_config.has_key_cache(i) for i in range(len(model.model.layers))]

    def forward(self, input_ids, attention_mask, position_ids, past_key_values: list[torch.Tensor]):
        flat = iter(past_key_values)
        past = [(next(flat) if has_key else None, next(flat)) for has_key in self.has_key]
        hidden = self.model.model.embed_tokens(input_ids)
        hidden, presents = self.model.model.run_layers(
            hidden, position_ids, attention_mask, past, EXPORT_OPS
        )
        if self.last_logits_only:
            hidden = hidden[:, -1:, :]
        logits = self.model.lm_head(hidden).float()
        flat_presents = [t for key, value in presents for t in ((key, value) if key is not None else (value,))]
        return (logits, *flat_presents)


def _sample_inputs(model: UniAttnForCausalLM, has_key: list[bool]):
    """Example tensors for tracing; every dynamic size >= 2 so nothing specializes."""
    batch, new, past_len = 2, 3, 4
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, model.config.vocab_size, (batch, new), generator=generator)
    attention_mask = torch.ones(batch, past_len + new, dtype=torch.int64)
    position_ids = torch.arange(past_len, past_len + new).expand(batch, -1).contiguous()
    past = []
    dtype = model.model.embed_tokens.weight.dtype
    for layer, layer_has_key in enumerate(has_key):
        g = model.geometry(layer)
        shape = (batch, g.kv_num_heads, past_len, g.head_dim)
        past += [torch.randn(shape, generator=generator).to(dtype) for _ in range(1 + layer_has_key)]
    return (input_ids, attention_mask, position_ids, past)


def _dynamic_shapes(num_past: int):
    batch = torch.export.Dim("batch_size")
    new = torch.export.Dim("sequence_length")
    past_len = torch.export.Dim("past_sequence_length")
    total = torch.export.Dim("total_sequence_length")
    return {
        "input_ids": {0: batch, 1: new},
        "attention_mask": {0: batch, 1: total},
        "position_ids": {0: batch, 1: new},
        "past_key_values": [{0: batch, 2: past_len} for _ in range(num_past)],
    }


def _trace(model: UniAttnForCausalLM, logits: str, input_names: list[str], output_names: list[str]):
    graph = _ExportGraph(model, last_logits_only=logits == "last").eval()
    args = _sample_inputs(model, graph.has_key)
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
            dynamic_shapes=_dynamic_shapes(len(args[3])),
            input_names=input_names, output_names=output_names,
            custom_translation_table=TRANSLATION_TABLE, optimize=True, verbose=False,
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


def _finish_graph(model: ir.Model, uniattn_layers: int) -> None:
    """Name the attention nodes and attach the op functions."""
    attention_nodes = [n for n in model.graph if n.domain == DOMAIN]
    if len(attention_nodes) != uniattn_layers:
        raise RuntimeError(
            f"the exported graph has {len(attention_nodes)} attention nodes for {uniattn_layers} layers"
        )
    for layer, node in enumerate(attention_nodes):  # torch.export keeps program order
        node.name = f"/model/layers.{layer}/self_attn/{node.op_type}"
    model.opset_imports[DOMAIN] = DOMAIN_VERSION
    for proto in function_protos():
        function = ir.serde.deserialize_function(proto)
        model.functions[function.identifier()] = function


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
    logits: Literal["all", "last"] = "all",
    force: bool = False,
) -> Path:
    """Export `model` (in its current dtype) to the artifact folder `out_dir`.

    source_dir: the checkpoint folder the model came from; its tokenizer and generation
    config files are copied and its path is recorded in the manifest (validation finds the
    reference there). external_data: None keeps weights inline below 1 GiB. logits: "all"
    positions (optimum's convention), or only the "last" one: a long prefill then never
    materializes (B, L, vocab) floats, which is what generation needs. force: replace
    `out_dir` whatever it holds (never the checkpoint; uniattn_export/output.py).
    The folder is written beside `out_dir` and renamed into place at the end, after the
    structural check passed, so a failure never leaves a half-written artifact.
    """
    if not isinstance(model, UniAttnForCausalLM):
        raise UniAttnError(
            f"cannot export a {type(model).__name__}",
            "load the checkpoint with uniattn_export.load_model (it also loads plain base models)",
        )
    dtype = str(model.model.embed_tokens.weight.dtype).removeprefix("torch.")
    if logits not in LOGITS_MODES:
        raise UniAttnError(f"unknown logits mode {logits!r}", f"use one of {LOGITS_MODES}")
    if dtype not in EXPORT_DTYPES:
        raise UniAttnError(f"cannot export weights of dtype {dtype}", f"load the model as one of {EXPORT_DTYPES}")
    out_dir = Path(out_dir)
    source = Path(source_dir) if source_dir is not None else None
    check_destination(out_dir, ARTIFACT, inputs=(source,), force=force)
    uniattn = model.uniattn_config
    layers = range(uniattn.num_layers)
    input_names = ["input_ids", "attention_mask", "position_ids"] + [
        n for i in layers for n in past_names(i, uniattn.has_key_cache(i))
    ]
    output_names = ["logits"] + [n for i in layers for n in present_names(i, uniattn.has_key_cache(i))]

    program = _trace(model, logits, input_names, output_names)
    onnx_model = program.model
    _finish_graph(onnx_model, uniattn.num_layers)
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
        (tmp / artifact_files.LAYER_MAP_FILE).write_text(json.dumps(uniattn.to_dict(), indent=2) + "\n")
        manifest = artifact_files.build_manifest(
            tmp, model, input_names=input_names, output_names=output_names,
            source=source, side_files=side_files, logits=logits,
        )  # fmt: skip
        artifact_files.write_manifest(tmp, manifest)
        artifact_files.load_artifact(tmp)  # the structural check, on exactly what was written
    return out_dir
