"""`uniattn-export generate`: generate text from a checkpoint or an exported artifact.

Every runtime goes through the same generation loop (targets/session.py), so a checkpoint
and the artifact exported from it see identical inputs at every step: greedy tokens agree,
and so do sampled ones for the same seed wherever the logits agree.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UniAttnError
from ..model.real import SMOLLM2_NAME

RUNTIMES = ("torch", "ort", "trt")

def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate text from a checkpoint, an ONNX/ORT artifact or a TensorRT engine",
        description=(
            "Generate from a UniAttn checkpoint (ours or the authors' release), a base model, "
            "an exported artifact (ONNX Runtime) or a TensorRT engine folder. The runtime follows "
            "from what MODEL is; --runtime forces one. Several --prompt make a left-padded batch. "
            "Greedy unless --temperature is given. Prompt + new tokens must fit the model's "
            "positions (max_position_embeddings)."
        ),
    )
    p.add_argument("model", metavar="MODEL",
                   help="checkpoint folder (config.json + weights + tokenizer), artifact folder "
                        f"(written by `model`), its TensorRT engine folder (trt/), or {SMOLLM2_NAME}")  # fmt: skip
    p.add_argument("--runtime", choices=RUNTIMES, default=None,
                   help="torch: the PyTorch reference (checkpoints); ort: onnxruntime (artifacts); "
                        "trt: TensorRT (engine folders, or an artifact's trt/). Default: by MODEL")  # fmt: skip
    p.add_argument("--prompt", action="append", required=True,
                   help="prompt text; repeat for a left-padded batch")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=None, help="sample at this temperature")
    p.add_argument("--top-k", type=int, default=None, help="sampling: keep the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="sampling: nucleus probability mass, in (0, 1]")
    p.add_argument("--num-return-sequences", type=int, default=1,
                   help="sampling: continuations per prompt (default 1)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed, >= 0 (default 0)")
    p.add_argument("--dtype", default=None,
                   help="--runtime torch: float32|float16|bfloat16 (default: stored dtype); "
                        "artifacts run in their exported dtype")  # fmt: skip
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="--runtime ort: onnxruntime execution provider (default cpu)")
    p.add_argument("--json", action="store_true", help="print token ids and text as JSON")
    p.set_defaults(run=run)


@dataclass(frozen=True)
class Target:
    runtime: str
    path: Path  # what the runtime opens: checkpoint, artifact or engine folder
    text_folder: Path  # where config.json and the tokenizer are


def _check_arguments(args: argparse.Namespace):
    """Everything decidable from the flags alone; returns the Sampling (None: greedy)."""
    from ..targets.session import Sampling

    if any(prompt == "" for prompt in args.prompt):
        raise UniAttnError("--prompt is empty", "pass some text")
    if args.max_new_tokens < 1:
        raise UniAttnError("--max-new-tokens must be >= 1", "pass a positive number")
    if args.num_return_sequences < 1:
        raise UniAttnError("--num-return-sequences must be >= 1", "pass a positive number")
    if args.temperature is None:
        if args.top_k is not None or args.top_p is not None or args.num_return_sequences != 1:
            raise UniAttnError(
                "--top-k, --top-p and --num-return-sequences apply to sampling",
                "add --temperature (e.g. 0.7) or drop them",
            )
        Sampling(seed=args.seed)  # the settings' own checks: a bad --seed is refused in greedy runs too
        return None
    return Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)


def _target(model: str, runtime: str | None) -> Target:
    """What MODEL is, and the runtime that runs it."""
    from ..export.artifact import MANIFEST_FILE as ARTIFACT_MANIFEST
    from ..model.real import resolve_checkpoint
    from ..targets.trt.cli import TRT_DIR as ENGINE_SUBDIR
    from ..targets.trt.manifest import MANIFEST_NAME as ENGINE_MANIFEST

    folder = Path(model)
    if model != SMOLLM2_NAME and not folder.is_dir():
        raise UniAttnError(f"{model} is not a folder", f"pass a checkpoint or artifact folder, or {SMOLLM2_NAME}")
    if model != SMOLLM2_NAME and (folder / ENGINE_MANIFEST).is_file():
        engine, artifact = folder, folder.parent
        kind = "a TensorRT engine folder"
    elif model != SMOLLM2_NAME and (folder / ARTIFACT_MANIFEST).is_file():
        engine, artifact = folder / ENGINE_SUBDIR, folder
        kind = "an exported artifact"
    else:
        if runtime not in (None, "torch"):
            raise UniAttnError(
                f"{model} is a checkpoint, not an exported artifact (no {ARTIFACT_MANIFEST})",
                f"export it first (uniattn-export model {model} --target {runtime} -o OUT), or use --runtime torch",
            )
        checkpoint = resolve_checkpoint(model)
        return Target("torch", checkpoint, checkpoint)
    runtime = runtime or ("trt" if folder == engine else "ort")
    if runtime == "torch":
        raise UniAttnError(f"{folder} is {kind}: it holds no PyTorch weights",
                           "generate from the checkpoint it was exported from, or use --runtime ort")  # fmt: skip
    if runtime == "ort" and not (artifact / ARTIFACT_MANIFEST).is_file():
        raise UniAttnError(f"the engine folder {folder} is not inside an exported artifact (no ../{ARTIFACT_MANIFEST})",
                           "pass the artifact folder, or use --runtime trt")  # fmt: skip
    if runtime == "trt" and not (engine / ENGINE_MANIFEST).is_file():
        raise UniAttnError(f"{folder} has no TensorRT engine ({ENGINE_SUBDIR}/{ENGINE_MANIFEST})",
                           "build one with `uniattn-export model CHECKPOINT --target trt`, or use --runtime ort")  # fmt: skip
    return Target(runtime, engine if runtime == "trt" else artifact, artifact)


def _max_positions(target: Target) -> int | None:
    config = target.text_folder / "config.json"  # absent: the model loader says so
    return json.loads(config.read_text()).get("max_position_embeddings") if config.is_file() else None


def _session(target: Target, args: argparse.Namespace):
    if target.runtime == "torch":
        from ..model import load_model
        from ..validate.reference import TorchSession

        return TorchSession(load_model(target.path, dtype=args.dtype))
    if args.dtype is not None:
        raise UniAttnError("--dtype applies to checkpoints (--runtime torch)",
                           "drop it: an artifact runs in the dtype it was exported with")  # fmt: skip
    if target.runtime == "ort":
        from ..targets.ort import OrtSession

        return OrtSession(target.path, device=args.device)
    from ..targets.trt.session import TensorRTSession

    return TensorRTSession(target.path)


def _counting_steps(session, advance):
    """The session, advancing a progress bar after every step."""
    step = session.step

    def counted(*inputs):
        logits = step(*inputs)
        advance()
        return logits

    session.step = counted
    return session


def run(args: argparse.Namespace) -> int:
    from ..model.tokenizer import load_tokenizer
    from ..progress import progress_bar
    from ..targets.session import check_capacity, check_prompts

    sampling = _check_arguments(args)
    target = _target(args.model, args.runtime)
    tokenizer = load_tokenizer(target.text_folder)
    prompts = [tokenizer(text)["input_ids"] for text in args.prompt for _ in range(args.num_return_sequences)]
    check_prompts(prompts, args.max_new_tokens, max_positions=_max_positions(target))
    session = _session(target, args)
    # Before the progress bar: a refused run prints only its error line.
    check_capacity(max(map(len, prompts)), args.max_new_tokens, session.capacity)
    with progress_bar() as progress:
        task = progress.add_task(f"generating ({target.runtime})", total=args.max_new_tokens)
        run = _counting_steps(session, lambda: progress.advance(task)).generate(
            prompts, args.max_new_tokens, sampling=sampling,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
    new = run.tokens.tolist()
    texts = tokenizer.batch_decode(new, skip_special_tokens=True)
    shown = [p for p in args.prompt for _ in range(args.num_return_sequences)]
    if args.json:
        print(json.dumps([{"prompt": p, "tokens": t, "text": s} for p, t, s in zip(shown, new, texts)], indent=2))
    else:
        for prompt, text in zip(shown, texts):
            print(f"{prompt}{text}")
    return 0
