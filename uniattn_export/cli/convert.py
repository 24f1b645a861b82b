"""`uniattn-export convert`: turn a base model into a UniAttn model (closed-form Wc)."""

from __future__ import annotations

import argparse
import json

from ..dtypes import DTYPE_NAMES as DTYPES
from ..model.real import SMOLLM2_NAME


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a base model into a UniAttn model (closed-form Wc initialization)",
        description=(
            "Group the layers [begin, end) of a Llama/Mistral/Qwen2 base model into SuperBlocks "
            "of G layers: the first layer of each computes its softmax, the other G-1 reuse it "
            "and get a compensation projection Wc, fitted in closed form on calibration text, "
            "layer by layer; a consumer whose fitted Wc does worse on the held-out text than "
            "Wc = 0 gets Wc = 0 (reported). Writes a checkpoint folder (explicit layer map, tokenizer, "
            "conversion_report.json) and prints the fit and the divergence from the base "
            "model on held-out text. Text sources: a .txt file (documents separated by blank "
            "lines), .jsonl/.json (a 'text' field or instruction/input/output), or a corpus "
            "bundled with gensim: gensim:lee_background, gensim:lee, gensim:wikipedia."
        ),
    )
    p.add_argument("base", help=f"base model folder, or {SMOLLM2_NAME} (SmolLM2-135M-Instruct, built offline)")
    p.add_argument("-o", "--output", required=True,
                   help="output folder (an earlier convert output is replaced; anything else only with --force)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing output folder whatever it holds (never the base model or "
                        "the current directory; docs/cli.md)")  # fmt: skip
    p.add_argument("--superblock", "-G", type=int, required=True, help="SuperBlock size G (>= 2)")
    p.add_argument("--begin", type=int, default=None,
                   help="first layer of the SuperBlock range (default: half the layers)")
    p.add_argument("--end", type=int, default=None,
                   help="end of the range, exclusive; may exceed the layer count (default: all layers)")
    p.add_argument("--producer-rule", default="begin_offset",
                   choices=("begin_offset", "absolute", "gemma2"),
                   help="which layers produce: (l-begin) mod G == 0 (default), l mod G == 0, (l-1) mod G == 0")
    p.add_argument("--calibration", required=True, help="calibration text source")
    p.add_argument("--heldout", default=None,
                   help="held-out text source (default: the last documents of the calibration source)")
    p.add_argument("--num-samples", type=int, default=128,
                   help="calibration documents (default 128; the released scripts use 1000, "
                   "a GPU-sized job)")
    p.add_argument("--heldout-samples", type=int, default=32, help="held-out documents (default 32)")
    p.add_argument("--mode", choices=("paper", "improved"), default="improved",
                   help="improved (default): masked token-level ridge regression; paper: the released "
                   "closed form (per-position means, pads included, pinv), for fidelity to the released code")
    p.add_argument("--no-heldout-fallback", dest="heldout_fallback", action="store_false",
                   help="keep every fitted Wc even where it does worse on the held-out text than Wc = 0 "
                   "(default: such a consumer gets Wc = 0, reported)")
    p.add_argument("--ridge", type=float, default=None,
                   help="improved mode: ridge lambda, relative to the mean diagonal of X^T X (default 0.1)")
    p.add_argument("--max-length", type=int, default=1024, help="tokens per sample (default 1024)")
    p.add_argument("--batch-size", type=int, default=4, help="samples per forward pass (default 4)")
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="dtype of the saved weights (default: the base model's); calibration runs in fp32")
    p.set_defaults(run=run)


def _stored_dtype(base_path) -> str:
    raw = json.loads((base_path / "config.json").read_text())
    stored = str(raw.get("dtype") or raw.get("torch_dtype") or "float32")
    return stored if stored in DTYPES else "float32"


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    from ..errors import UniAttnError
    from ..model import UniAttnConfig, load_model, save_model
    from ..model.convert import DEFAULT_RIDGE, convert_to_uniattn
    from ..model.real import resolve_checkpoint
    from ..model.text import GENSIM_PREFIX, calibration_and_heldout
    from ..model.tokenizer import load_tokenizer
    from ..output import CHECKPOINT, check_destination

    if args.ridge is not None and args.mode != "improved":
        raise UniAttnError("--ridge applies to the improved mode only", "add --mode improved or drop --ridge")
    base_path = resolve_checkpoint(args.base)
    text_files = [s for s in (args.calibration, args.heldout) if s and not s.startswith(GENSIM_PREFIX)]
    check_destination(args.output, CHECKPOINT, inputs=(base_path, *text_files), force=args.force)
    split = calibration_and_heldout(args.calibration, args.heldout, args.num_samples, args.heldout_samples)
    base = load_model(base_path, dtype=torch.float32)
    tokenizer = load_tokenizer(base_path)
    layers = base.config.num_hidden_layers
    layer_map = UniAttnConfig.from_grouping(
        layers,
        args.superblock,
        layers // 2 if args.begin is None else args.begin,
        layers if args.end is None else args.end,
        args.producer_rule,
    )
    ridge = DEFAULT_RIDGE if args.ridge is None else args.ridge
    converted, report = convert_to_uniattn(
        base, layer_map, split.calibration, tokenizer, heldout=split.heldout, mode=args.mode,
        max_length=args.max_length, ridge=ridge, batch_size=args.batch_size,
        heldout_fallback=args.heldout_fallback,
    )  # fmt: skip
    dtype = args.dtype or _stored_dtype(base_path)
    converted.to(getattr(torch, dtype))
    report_json = report.to_json(
        base=str(args.base), calibration_source=args.calibration, heldout_source=args.heldout,
        text_split=split.note, dtype=dtype,
    )  # fmt: skip
    out = save_model(
        converted, args.output, tokenizer, {"conversion_report.json": report_json},
        inputs=(base_path, *text_files), force=args.force,
    )  # fmt: skip
    console = Console()
    console.print(f"{layer_map.describe()}")
    console.print(report.table())
    for warning in report.warnings():
        console.print(f"[bold yellow]warning:[/] {warning}", highlight=False)
    console.print(f"saved {out} ({dtype}); report: {out / 'conversion_report.json'}")
    return 0
