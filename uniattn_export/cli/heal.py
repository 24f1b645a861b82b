"""`uniattn-export heal`: train only the compensation projections of a converted model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..model.real import SMOLLM2_NAME

REPORT_FILE = "heal_report.json"
CURVE_FILE = "heal_curve.png"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "heal",
        help="make a converted model usable: train only Wc towards the base model",
        description=(
            "Distil the base model into a converted UniAttn checkpoint by training only the "
            "consumers' compensation projections Wc (every other weight frozen), minimizing "
            "KL(base || UniAttn) of the next-token distributions on packed text windows. "
            "Prints the held-out KL / top-1 / perplexity before and after, writes the healed "
            "checkpoint (same layout as `convert`) with heal_report.json and heal_curve.png. "
            "Progress is kept in OUT.heal-resume.pt every --save-every steps: an interrupted "
            "run started again with the same arguments continues from there."
        ),
    )
    p.add_argument("checkpoint", help="converted UniAttn checkpoint folder (from `uniattn-export convert`)")
    p.add_argument("--base", required=True, help=f"the base model it was converted from (folder or {SMOLLM2_NAME})")
    p.add_argument("--data", required=True, help="training text: .txt/.jsonl/.json file or gensim:NAME")
    p.add_argument("--heldout", default=None,
                   help="held-out text source (default: the last documents of --data)")  # fmt: skip
    p.add_argument("--num-samples", type=int, default=1000, help="training documents (default 1000)")
    p.add_argument("--heldout-samples", type=int, default=16, help="held-out documents (default 16)")
    p.add_argument("--steps", type=int, required=True, help="optimizer steps")
    p.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (default 2e-4)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per step (default 4)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per window (default 128)")
    p.add_argument("--loss", choices=("kl", "lm"), default="kl",
                   help="kl: match the base model's distribution (default); lm: next-token cross-entropy")  # fmt: skip
    p.add_argument("--eval-every", type=int, default=20, help="held-out evaluation interval in steps (default 20)")
    p.add_argument("--save-every", type=int, default=20, help="resume-state interval in steps (default 20)")
    p.add_argument("--seed", type=int, default=0, help="data order seed (default 0)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="folder for the healed checkpoint (an earlier healed or converted checkpoint is replaced)")  # fmt: skip
    p.add_argument("--force", action="store_true",
                   help="replace the output folder whatever it holds (never an input; docs/cli.md)")  # fmt: skip
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    from ..errors import UniAttnError
    from ..model import load_model, save_model
    from ..model.heal import HealSettings, check_data, heal_compensation, pack_windows
    from ..model.real import resolve_checkpoint
    from ..model.text import GENSIM_PREFIX, calibration_and_heldout
    from ..model.tokenizer import load_tokenizer
    from ..output import CHECKPOINT, check_destination
    from ..progress import progress_bar

    settings = HealSettings(
        steps=args.steps, learning_rate=args.lr, batch_size=args.batch_size, max_length=args.max_length,
        loss=args.loss, eval_every=args.eval_every, save_every=args.save_every, seed=args.seed,
    )  # fmt: skip
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UniAttnError("--device cuda, but torch sees no CUDA device here", "run with --device cpu")
    checkpoint = resolve_checkpoint(args.checkpoint)
    base_path = resolve_checkpoint(args.base)
    text_files = [s for s in (args.data, args.heldout) if s and not s.startswith(GENSIM_PREFIX)]
    inputs = (checkpoint, base_path, *text_files)
    check_destination(args.output, CHECKPOINT, inputs=inputs, force=args.force)
    split = calibration_and_heldout(args.data, args.heldout, args.num_samples, args.heldout_samples)
    tokenizer = load_tokenizer(checkpoint)
    train = pack_windows(tokenizer, split.calibration, settings.max_length)
    heldout = pack_windows(tokenizer, split.heldout, settings.max_length)
    check_data(train, heldout, settings)

    model = load_model(checkpoint)
    stored_dtype = model.dtype  # the healed checkpoint is saved in it; training runs in float32
    model = model.to(args.device, torch.float32)
    base = load_model(base_path, dtype=torch.float32).to(args.device)
    console = Console(stderr=True, soft_wrap=True)
    resume_file = args.output.with_name(f"{args.output.name}.heal-resume.pt")
    console.print(f"[bold]heal[/] {checkpoint}: {model.uniattn_config.describe()}; training text: {split.note}")
    with progress_bar() as progress:
        task = progress.add_task("training Wc", total=settings.steps)
        shown = [0]  # steps already on the bar (a resumed run starts later)

        def on_step(done: int, loss: float) -> None:
            progress.advance(task, done - shown[0])
            shown[0] = done

        report = heal_compensation(model, base, train, heldout, settings, resume_file=resume_file, on_step=on_step)
    if report.resumed_from_step:
        console.print(f"resumed from step {report.resumed_from_step} ({resume_file})")
    model.to("cpu", stored_dtype)
    report_json = json.dumps({**report.to_dict(), "checkpoint": str(checkpoint), "base": str(args.base),
                              "data": args.data, "text_split": split.note}, indent=2)  # fmt: skip
    out = save_model(
        model, args.output, tokenizer, {REPORT_FILE: report_json, CURVE_FILE: report.curve_png()},
        inputs=inputs, force=args.force,
    )  # fmt: skip
    resume_file.unlink(missing_ok=True)  # this run wrote it; the healed checkpoint supersedes it
    Console().print(report.table())
    console.print(f"saved {out} ({str(stored_dtype).removeprefix('torch.')}); report: {out / REPORT_FILE}, curve: {out / CURVE_FILE}")
    return 0
