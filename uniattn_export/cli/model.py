"""`uniattn-export model CHECKPOINT --target onnx|ort|trt -o OUT`: the main command.

Loads the checkpoint (UniAttn in our layout or the authors', or a plain base model),
exports the ONNX artifact (graph already optimized by onnxscript's optimizer: constant
folding, dead code and common subexpression elimination), builds what the target needs,
validates against the PyTorch reference and writes the reports into OUT/reports/.

Targets:
  onnx  the portable file; validated with plain onnxruntime running the function bodies
  ort   the same file, validated with the runtime users get: onnxruntime with the uniattn
        custom-op library when it is built (fused kernels), on --device. onnxruntime's own
        graph rewrites depend on the execution provider and run when a session starts
  trt   additionally builds a TensorRT engine (targets/trt/cli.py, flags shown with
        `uniattn-export model --target trt --help`); validation runs the ONNX file with
        onnxruntime, the engine's own checks are in the build report
Exit codes: 0 ok, 1 validation failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..model.real import SMOLLM2_NAME
from .validate import add_validation_arguments, check_validation_arguments, run_validation

TARGETS = ("onnx", "ort", "trt")
EXPORT_REPORT_NAME = "export.json"


def _asks_for_trt(arg_strings: list[str]) -> bool:
    for i, arg in enumerate(arg_strings):
        if arg == "--target=trt" or (arg == "--target" and arg_strings[i + 1 : i + 2] == ["trt"]):
            return True
    return False


class _ModelParser(argparse.ArgumentParser):
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
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                   help="precision of the exported graph (logits are always float32)")  # fmt: skip
    p.add_argument("--producer-rule", choices=("begin_offset", "absolute", "gemma2"), default=None,
                   help="only for checkpoints in the authors' layout (default: their file's rule)")  # fmt: skip
    p.add_argument("--logits", choices=("all", "last"), default="all",
                   help="logits of every position (optimum's convention) or only the last one")  # fmt: skip
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
    from ..model.real import resolve_checkpoint
    from ..validate.report import write_report

    console = Console(stderr=True, soft_wrap=True)  # progress lines: never wrapped mid-path
    check_validation_arguments(args)
    if args.target == "trt":  # before any work: nothing is exported for a build that cannot happen
        from ..targets.trt.cli import check_ready

        check_ready(args, args.dtype)
    args.checkpoint = resolve_checkpoint(args.checkpoint)
    if args.output.resolve() == args.checkpoint.resolve():
        raise UniAttnError("the output folder is the checkpoint folder", "pass a different -o")
    if args.dtype == "bfloat16" and args.device == "cpu" and not args.no_validate:
        raise UniAttnError(
            "onnxruntime's CPU execution provider has no bfloat16 kernels, so a bfloat16 "
            "artifact cannot be validated on the CPU",
            "validate on the GPU (--device cuda), or pass --no-validate",
        )
    model = load_model(args.checkpoint, dtype=args.dtype, producer_rule=args.producer_rule)
    console.print(f"[bold]model[/] {args.checkpoint}: {model.uniattn_config.describe()}")
    export_model(
        model, args.output, source_dir=args.checkpoint, external_data=args.external_data, logits=args.logits
    )
    del model
    artifact = load_artifact(args.output)
    console.print(f"[bold]exported[/] {args.output / 'model.onnx'} ({artifact.dtype}, opset {artifact.manifest['onnx']['opset']})")

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
