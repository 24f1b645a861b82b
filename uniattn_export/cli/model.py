"""`uniattn-export model CHECKPOINT --target onnx|ort|genai|trt -o OUT`: the main command.

Loads the checkpoint (UniAttn in our layout or the authors', or a plain base model),
exports the ONNX artifact (graph already optimized by onnxscript's optimizer: constant
folding, dead code and common subexpression elimination), builds what the target needs,
validates against the PyTorch reference and writes the reports into OUT/reports/.

Targets:
  onnx  the portable file; validated with plain onnxruntime running the function bodies
  ort   the file for onnxruntime, validated with the runtime users get: onnxruntime with the
        uniattn custom-op library when it is built and serves the artifact's op version
        (fused kernels), on --device. Each residual Add is fused into the norm reading it
        (onnxruntime's SkipSimplifiedLayerNormalization, with a standard-op body for other
        runtimes). onnxruntime's own graph rewrites depend on the execution provider and
        run when a session starts
  genai the file for onnxruntime-genai (0.18): the graph with onnxruntime-genai's cache
        names (docs/export.md, "onnxruntime-genai"), genai_config.json and, unless
        --custom-ops off, the custom-op library copied into OUT; loads with og.Model(OUT).
        onnxruntime-genai pads batched prompts on the right; fused and validated like ort
  trt   additionally builds a TensorRT engine (targets/trt/cli.py, flags shown with
        `uniattn-export model --target trt --help`); validation runs the ONNX file with
        onnxruntime, the engine's own checks are in the build report

Caches (--cache):
  static   fixed capacity --max-length (prompt + new tokens), updated in place, prompts
           right-padded, logits of each row's last real token only (op contract v2). The
           default for --target ort, genai and trt (TensorRT: prefill and decode profiles,
           caches aliased in place by the plugins)
  dynamic  caches that grow every step (op contract v1), optimum-compatible. The default for
           --target onnx (the portable file)
Exit codes: 0 ok, 1 validation failed, 2 bad input, 3 internal error (docs/cli.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..dtypes import DTYPE_NAMES
from ..model.real import SMOLLM2_NAME
from .outcome import OneLineArgumentParser
from .validate import add_validation_arguments, check_validation_arguments, run_validation

TARGETS = ("onnx", "ort", "genai", "trt")
EXPORT_REPORT_NAME = "export.json"
DEFAULT_CACHE = {"onnx": "dynamic", "ort": "static", "genai": "static", "trt": "static"}
# Targets whose runtime is onnxruntime: their graphs use its contrib ops
# SkipSimplifiedLayerNormalization and QuickGelu (export/fuse.py); the portable file and
# TensorRT's input keep the standard ops.
ORT_CONTRIB_OP_TARGETS = ("ort", "genai")
# Default static capacity: the model's context, but at most this many tokens (the caches are
# allocated whole: B x layers x C x KV width).
MAX_DEFAULT_CAPACITY = 4096


def _asks_for_trt(arg_strings: list[str]) -> bool:
    for i, arg in enumerate(arg_strings):
        if arg == "--target=trt" or (arg == "--target" and arg_strings[i + 1 : i + 2] == ["trt"]):
            return True
    return False


class _ModelParser(OneLineArgumentParser):
    """Adds the TensorRT builder's flags only when --target trt is on the command line, so
    the other targets never import the TensorRT code."""

    def parse_known_args(self, args=None, namespace=None):
        if args is not None and _asks_for_trt(list(args)) and not getattr(self, "_trt_flags_added", False):
            from ..targets.trt.cli import add_arguments

            add_arguments(self)
            self._trt_flags_added = True
        return super().parse_known_args(args, namespace)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "model",
        help="export a checkpoint for a target, validate it and write reports",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.__class__ = _ModelParser  # subparsers are created by argparse; this one extends parsing
    p.add_argument("checkpoint", help=f"model folder (config.json + weights [+ tokenizer]), or {SMOLLM2_NAME}")
    p.add_argument("--target", choices=TARGETS, required=True)
    p.add_argument("-o", "--output", type=Path, required=True, help="artifact folder to write")
    p.add_argument("--dtype", choices=DTYPE_NAMES, default="float32",
                   help="precision of the exported graph (logits are always float32)")  # fmt: skip
    p.add_argument("--producer-rule", choices=("begin_offset", "absolute", "gemma2"), default=None,
                   help="only for checkpoints in the authors' layout (default: their file's rule)")  # fmt: skip
    p.add_argument("--cache", choices=("static", "dynamic"), default=None,
                   help="static: fixed-capacity caches updated in place (default for --target ort, genai and trt); "
                        "dynamic: growing caches, optimum-compatible (default for onnx)")  # fmt: skip
    p.add_argument("--max-length", type=int, default=None,
                   help=f"capacity of static caches in tokens, prompt + generated (default: the model's "
                        f"max_position_embeddings, at most {MAX_DEFAULT_CAPACITY})")  # fmt: skip
    p.add_argument("--logits", choices=("all", "last"), default=None,
                   help="logits of every position (optimum's convention; default for dynamic caches) or "
                        "only the last one (static caches: always)")  # fmt: skip
    p.add_argument("--external-data", action=argparse.BooleanOptionalAction, default=None,
                   help="weights in model.onnx_data (default: when above 1 GiB)")  # fmt: skip
    p.add_argument("--no-validate", action="store_true", help="export only")
    add_validation_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..errors import UniAttnError
    from ..export import export_model, load_artifact
    from ..model import load_model
    from ..model.checkpoint import read_checkpoint_config
    from ..model.real import resolve_checkpoint
    from ..output import ARTIFACT, check_destination
    from ..targets.session import check_prompts
    from ..validate.report import write_report

    console = Console(stderr=True, soft_wrap=True)  # progress lines: never wrapped mid-path
    if args.target == "trt":  # before any work: nothing is exported for a build that cannot happen
        from ..targets.trt.cli import check_ready

        check_ready(args, args.dtype)
    args.checkpoint = resolve_checkpoint(args.checkpoint)
    check_destination(args.output, ARTIFACT, inputs=(args.checkpoint,), force=args.force)
    if not args.no_validate:  # everything the validation needs is known before the export
        check_validation_arguments(args, args.output, args.checkpoint)
        positions = read_checkpoint_config(args.checkpoint).get("max_position_embeddings")
        check_prompts([[0]], args.max_new_tokens, max_positions=positions)
    if args.dtype == "bfloat16" and args.device == "cpu" and not args.no_validate:
        raise UniAttnError(
            "onnxruntime's CPU execution provider has no bfloat16 kernels, so a bfloat16 "
            "artifact cannot be validated on the CPU",
            "validate on the GPU (--device cuda), or pass --no-validate",
        )
    cache = args.cache or DEFAULT_CACHE[args.target]
    if args.target == "genai":
        genai_library = _check_genai(args, cache)
    model = load_model(args.checkpoint, dtype=args.dtype, producer_rule=args.producer_rule)
    console.print(f"[bold]model[/] {args.checkpoint}: {model.uniattn_config.describe()}")
    max_length = args.max_length
    if cache == "static" and max_length is None:
        max_length = min(model.config.max_position_embeddings, MAX_DEFAULT_CAPACITY)
    genai_export = {}
    if args.target == "genai":
        from ..targets.genai import genai_export_options

        genai_export = genai_export_options(model, cache=cache, capacity=max_length, library=genai_library)
    export_model(
        model, args.output, source_dir=args.checkpoint, external_data=args.external_data, logits=args.logits,
        cache=cache, max_length=max_length, ort_contrib_ops=args.target in ORT_CONTRIB_OP_TARGETS, force=args.force,
        **genai_export,
    )  # fmt: skip
    del model
    artifact = load_artifact(args.output)
    capacity = f", capacity {artifact.capacity} tokens" if artifact.capacity is not None else ""
    graph = artifact.manifest["graph"]
    console.print(
        f"[bold]exported[/] {args.output / 'model.onnx'} ({artifact.dtype}, opset {artifact.manifest['onnx']['opset']}, "
        f"{artifact.cache_mode} caches{capacity}, {graph['nodes']} nodes, {graph['nodes_per_layer']:g} per decoder "
        f"layer, {graph['nodes_per_layer_unfused']:g} unfused)"
    )

    if args.target == "genai":
        kernels = f"the custom-op library {genai_library.name} copied in" if genai_library else "the function bodies"
        console.print(f"[bold]onnxruntime-genai[/] og.Model({args.output}) loads it, with {kernels}", highlight=False)
    report = {"target": args.target, "artifact": str(args.output), "manifest": artifact.manifest}
    if args.target == "trt":
        from ..targets.trt.cli import build_from_args, describe_build

        report["trt"] = build_from_args(args, args.output)
        for line in describe_build(report["trt"]):
            console.print(f"[bold]tensorrt[/] {line}", highlight=False)
    if args.target == "onnx" and args.custom_ops == "auto":
        args.custom_ops = "off"  # the portable file is what is delivered: prove it runs alone
    write_report(report, args.output / "reports" / EXPORT_REPORT_NAME)
    if args.no_validate:
        print(json.dumps({"artifact": str(args.output), "validated": False}) if args.json else f"wrote {args.output}")
        return 0
    return run_validation(args, args.output, args.checkpoint)


def _check_genai(args: argparse.Namespace, cache: str):
    """Checks of --target genai's options before any work (the model's: check_genai_model);
    returns the custom-op library to ship (or None)."""
    from ..errors import UniAttnError
    from ..targets.genai import genai_library_for

    if args.logits == "last" and cache == "dynamic":
        raise UniAttnError(
            "--target genai with dynamic caches needs the logits of every position (onnxruntime-genai "
            "picks each right-padded row's last real token itself)",
            "drop --logits last, or pass --cache static",
        )
    return genai_library_for(cache, {"auto": None, "on": True, "off": False}[args.custom_ops])
