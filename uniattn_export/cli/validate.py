"""`uniattn-export validate ARTIFACT`: re-run validation on an exported artifact.

Exit codes: 0 passed, 1 validation failed (numbers outside tolerance), 2 bad input, 3 internal
error (docs/cli.md).
The validation options are shared with `uniattn-export model`, which validates what it built.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPORT_NAME = "validation.json"


def add_validation_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("validation")
    g.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="onnxruntime execution provider for the artifact (default: cpu)")
    g.add_argument("--custom-ops", choices=("auto", "on", "off"), default="auto",
                   help="use the uniattn custom-op library: auto = when built (default), "
                        "off = ONNX function bodies only")  # fmt: skip
    g.add_argument("--prompt", action="append", default=None,
                   help="prompt text (repeat for a left-padded batch; default: built-in prompts, "
                        "or random token ids when the artifact has no tokenizer)")  # fmt: skip
    g.add_argument("--max-new-tokens", type=int, default=12, help="generation steps compared (default: 12)")
    g.add_argument("--perplexity-text", type=Path, default=None, help="also compare perplexity on this text file (static artifacts: one decode step per token)")
    g.add_argument("--perplexity-tokens", type=int, default=512, help="tokens of the text used, at most the model's positions and the cache capacity (default: 512)")
    g.add_argument("--golden", type=Path, default=None,
                   help="folder of reference outputs: checked against when it holds them, "
                        "stored there (from the PyTorch reference) when it does not")  # fmt: skip
    g.add_argument("--update-golden", action="store_true", help="store the golden outputs again")
    g.add_argument("--force", action="store_true",
                   help="replace an existing output folder whatever it holds (never an input or the "
                        "current directory; docs/cli.md)")  # fmt: skip
    g.add_argument("--report", type=Path, default=None,
                   help=f"JSON report path (default: ARTIFACT/reports/{REPORT_NAME})")
    g.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    g.add_argument("--junit", type=Path, default=None,
                   help="also write the checks as JUnit XML to this path (for CI test reports)")  # fmt: skip


def _is_validation_report(path: Path) -> bool:
    from ..validate.run import REPORT_FORMAT

    try:
        return json.loads(path.read_text()).get("format") == REPORT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _is_our_junit(path: Path) -> bool:
    import xml.etree.ElementTree as ET

    from ..validate.junit import SUITE

    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return False
    return root.tag == "testsuites" and root.get("name") == SUITE


def _check_device(args: argparse.Namespace) -> None:
    """The runtime the validation needs is there (checked before an export, not after)."""
    from .. import native
    from ..errors import UniAttnError

    if args.custom_ops == "on" and native.ort_custom_op_library() is None:
        raise UniAttnError(
            "--custom-ops on but the custom-op library (libuniattn_ort.so) is not built",
            "build the package with its native libraries, or pass --custom-ops auto",
        )
    if args.device != "cuda":
        return
    import onnxruntime as ort
    import torch

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise UniAttnError(
            f"--device cuda: onnxruntime {ort.__version__} here has no CUDA execution provider",
            "install onnxruntime-gpu (same version) or pass --device cpu",
        )
    if not torch.cuda.is_available():
        raise UniAttnError("--device cuda: no CUDA device is visible", "run on a GPU machine or pass --device cpu")


def check_validation_arguments(args: argparse.Namespace, artifact_dir: Path, checkpoint: Path | None) -> None:
    """Reject bad validation flags before any work (an export takes a while): values,
    every path the validation will write, the device."""
    from ..errors import UniAttnError
    from ..output import GOLDEN, check_destination, check_file_destination
    from ..validate.golden import golden_exists

    if args.max_new_tokens < 1:
        raise UniAttnError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}", "pass a positive number")
    if args.perplexity_tokens < 2:
        raise UniAttnError(f"--perplexity-tokens must be >= 2, got {args.perplexity_tokens}", "pass a larger number")
    if args.update_golden and args.golden is None:
        raise UniAttnError("--update-golden needs --golden DIR", "pass the folder to store the outputs in")
    if args.golden is not None and (args.update_golden or not golden_exists(args.golden)):
        check_destination(args.golden, GOLDEN, inputs=(artifact_dir, checkpoint), force=args.force)
    if args.perplexity_text is not None:
        try:
            text = args.perplexity_text.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UniAttnError(f"cannot read {args.perplexity_text} ({exc})", "pass a UTF-8 text file") from None
        if not text.strip():
            raise UniAttnError(f"the perplexity text {args.perplexity_text} is empty", "pass a file with text")
    report = args.report or artifact_dir / "reports" / REPORT_NAME
    fix = "pick a writable location" if args.report else "pass --report PATH in a writable folder"
    check_file_destination(report, "a validation report", _is_validation_report, force=args.force, unwritable_fix=fix)
    if args.junit is not None:
        check_file_destination(args.junit, "a JUnit file of uniattn-export", _is_our_junit, force=args.force)
    _check_device(args)


def run_validation(args: argparse.Namespace, artifact_dir: Path, checkpoint: Path | None,
                   engine_dir: Path | None = None) -> int:  # fmt: skip
    """Validate, write the report, print the summary; returns the exit code (0 / 1).
    `engine_dir`: validate that TensorRT engine (the artifact's trt/) instead of onnxruntime."""
    from rich.console import Console

    from ..export import load_artifact
    from ..targets.ort import OrtSession
    from ..validate import validate_artifact
    from ..validate.report import print_summary, write_report

    check_validation_arguments(args, artifact_dir, checkpoint)
    text = args.perplexity_text.read_text() if args.perplexity_text is not None else None
    artifact = load_artifact(artifact_dir)
    custom_ops = {"auto": None, "on": True, "off": False}[args.custom_ops]
    if engine_dir is not None:
        from ..targets.trt.session import TensorRTSession

        session = TensorRTSession(engine_dir)
    else:
        session = OrtSession(artifact, device=args.device, custom_ops=custom_ops)
    report = validate_artifact(
        artifact, session=session, checkpoint=checkpoint, prompts=args.prompt,
        max_new_tokens=args.max_new_tokens, perplexity_text=text,
        perplexity_tokens=args.perplexity_tokens, golden=args.golden,
        update_golden=args.update_golden, force=args.force,
    )  # fmt: skip
    path = write_report(report, args.report or artifact.path / "reports" / REPORT_NAME)
    if args.junit is not None:
        from ..validate.junit import write_junit

        write_junit(report, args.junit)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        console = Console()
        print_summary(report, console)
        console.print(f"report: {path}")
    return 0 if report["passed"] else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate",
        help="compare an exported artifact with the PyTorch reference or golden outputs",
        description=(
            "Run a multi-step generation with the artifact (onnxruntime), or with its TensorRT "
            "engine when given the engine folder (ARTIFACT/trt), and compare it step by "
            "step with the PyTorch reference (the checkpoint it was exported from, or "
            "--checkpoint), or with stored --golden outputs. Exit code 0 = passed, 1 = failed."
        ),
    )
    p.add_argument("artifact", type=Path,
                   help="artifact folder written by `uniattn-export model`, or its TensorRT engine folder (trt/)")
    p.add_argument("--checkpoint", default=None,
                   help="reference checkpoint folder (default: the one recorded in the manifest)")
    add_validation_arguments(p)
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from ..export.artifact import require_artifact_folder
    from ..model.real import resolve_checkpoint
    from ..targets.trt.manifest import MANIFEST_NAME as ENGINE_MANIFEST

    require_artifact_folder(args.artifact)  # before any path below it is derived or checked
    checkpoint = resolve_checkpoint(args.checkpoint) if args.checkpoint else None
    if (args.artifact / ENGINE_MANIFEST).is_file():  # an engine folder: its artifact is the parent
        args.report = args.report or args.artifact / "reports" / REPORT_NAME
        return run_validation(args, args.artifact.parent, checkpoint, engine_dir=args.artifact)
    return run_validation(args, args.artifact, checkpoint)
