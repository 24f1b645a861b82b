"""`uniattn-export generate`: run the PyTorch reference model on a prompt."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate text with the PyTorch reference model",
        description=(
            "Generate from a UniAttn checkpoint (ours or the authors' release) or a base model "
            "with the PyTorch reference implementation. Greedy unless --temperature is given."
        ),
    )
    p.add_argument("checkpoint", help="model folder (config.json + weights + tokenizer)")
    p.add_argument("--prompt", action="append", required=True,
                   help="prompt text; repeat for a left-padded batch")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=None, help="sample at this temperature")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default=None, help="float32|float16|bfloat16 (default: stored dtype)")
    p.add_argument("--json", action="store_true", help="print token ids and text as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..errors import UniAttnError
    from ..model import load_model
    from ..model.tokenizer import load_tokenizer

    if args.max_new_tokens < 1:
        raise UniAttnError("--max-new-tokens must be >= 1", "pass a positive number")
    model = load_model(args.checkpoint, dtype=args.dtype)
    tokenizer = load_tokenizer(args.checkpoint)
    batch = tokenizer(args.prompt, return_tensors="pt", padding=True)
    sampling = args.temperature is not None
    torch.manual_seed(args.seed)
    with torch.no_grad():
        out = model.generate(
            **batch,
            max_new_tokens=args.max_new_tokens,
            do_sample=sampling,
            temperature=args.temperature if sampling else None,
            top_k=args.top_k if sampling else None,
            top_p=args.top_p if sampling else None,
            pad_token_id=tokenizer.pad_token_id,
        )
    new = out[:, batch["input_ids"].shape[1]:]
    texts = tokenizer.batch_decode(new, skip_special_tokens=True)
    if args.json:
        print(json.dumps([{"prompt": p, "tokens": t.tolist(), "text": s}
                          for p, t, s in zip(args.prompt, new, texts)], indent=2))
    else:
        for prompt, text in zip(args.prompt, texts):
            print(f"{prompt}{text}")
    return 0
