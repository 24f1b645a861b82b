"""`uniattn-export generate`: run the PyTorch reference model on a prompt."""

from __future__ import annotations

import argparse
import json

from ..model.real import SMOLLM2_NAME


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate text with the PyTorch reference model",
        description=(
            "Generate from a UniAttn checkpoint (ours or the authors' release) or a base model "
            "with the PyTorch reference implementation and its K-less KV cache. Several "
            "--prompt make a left-padded batch. Greedy unless --temperature is given."
        ),
    )
    p.add_argument("checkpoint", help=f"model folder (config.json + weights + tokenizer), or {SMOLLM2_NAME}")
    p.add_argument("--prompt", action="append", required=True,
                   help="prompt text; repeat for a left-padded batch")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=None, help="sample at this temperature")
    p.add_argument("--top-k", type=int, default=None, help="sampling: keep the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="sampling: nucleus probability mass")
    p.add_argument("--num-return-sequences", type=int, default=1,
                   help="sampling: continuations per prompt (default 1)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--dtype", default=None, help="float32|float16|bfloat16 (default: stored dtype)")
    p.add_argument("--json", action="store_true", help="print token ids and text as JSON")
    p.set_defaults(run=run)


class _ProgressStreamer:
    """generate() hands every step's tokens to a streamer: count them on a progress bar."""

    def __init__(self, progress, task):
        self.progress, self.task, self.prompt_seen = progress, task, False

    def put(self, value) -> None:
        if self.prompt_seen:
            self.progress.advance(self.task)
        self.prompt_seen = True  # the first call carries the prompt

    def end(self) -> None:
        pass


def run(args: argparse.Namespace) -> int:
    import torch

    from ..errors import UniAttnError
    from ..model import load_model
    from ..model.real import resolve_checkpoint
    from ..model.tokenizer import load_tokenizer
    from ..progress import progress_bar

    if args.max_new_tokens < 1:
        raise UniAttnError("--max-new-tokens must be >= 1", "pass a positive number")
    sampling = args.temperature is not None
    if not sampling and (args.top_k or args.top_p or args.num_return_sequences != 1):
        raise UniAttnError(
            "--top-k, --top-p and --num-return-sequences apply to sampling",
            "add --temperature (e.g. 0.7) or drop them",
        )
    if sampling and args.temperature <= 0:
        raise UniAttnError(f"--temperature must be > 0, got {args.temperature}", "drop it for greedy decoding")
    if args.num_return_sequences < 1:
        raise UniAttnError("--num-return-sequences must be >= 1", "pass a positive number")
    path = resolve_checkpoint(args.checkpoint)
    model = load_model(path, dtype=args.dtype)
    tokenizer = load_tokenizer(path)
    batch = tokenizer(args.prompt, return_tensors="pt", padding=True)
    torch.manual_seed(args.seed)
    with torch.no_grad(), progress_bar() as progress:
        task = progress.add_task("generating", total=args.max_new_tokens)
        out = model.generate(
            **batch,
            max_new_tokens=args.max_new_tokens,
            do_sample=sampling,
            temperature=args.temperature if sampling else None,
            top_k=args.top_k if sampling else None,
            top_p=args.top_p if sampling else None,
            num_return_sequences=args.num_return_sequences,
            pad_token_id=tokenizer.pad_token_id,
            streamer=_ProgressStreamer(progress, task),
        )
    new = out[:, batch["input_ids"].shape[1]:]
    texts = tokenizer.batch_decode(new, skip_special_tokens=True)
    prompts = [p for p in args.prompt for _ in range(args.num_return_sequences)]
    if args.json:
        print(json.dumps([{"prompt": p, "tokens": t.tolist(), "text": s}
                          for p, t, s in zip(prompts, new, texts)], indent=2))
    else:
        for prompt, text in zip(prompts, texts):
            print(f"{prompt}{text}")
    return 0
