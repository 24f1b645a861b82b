"""Tokenizer loading with the conventions batched generation needs (left padding)."""

from __future__ import annotations

from pathlib import Path

from ..errors import UniAttnError


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as exc:
        raise UniAttnError(
            f"no usable tokenizer in {path} ({str(exc).splitlines()[0]})",
            "copy the base model's tokenizer files into the folder",
        ) from None
    tokenizer.padding_side = "left"  # decoder-only batches pad on the left
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
