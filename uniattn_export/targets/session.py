"""The generation loop every runtime shares (ONNX Runtime, TensorRT, the PyTorch reference).

A runtime implements `reset(batch)` (empty caches) and `step(...)` (one forward call over
new tokens, its caches kept inside); `generate` does the rest the same way for all of
them: padded batches, position ids, greedy or sampled choice, eos/pad handling and,
optionally, the logits of every step. Because the loop is shared, two runtimes fed the same
prompts see the same tokens at every step, which is what validation compares.

Conventions (those of transformers' generate): prompts are padded with `pad_token_id` and
attention_mask 0; a row that emitted eos gets `pad_token_id` afterwards and stays in the
batch with mask 1. The padding side is the session's (`padding`):
  left   (dynamic caches) position ids count real tokens only (a padding slot gets 0);
  right  (static caches, slot = position) positions run 0..width-1 in every row, padding
         included, and each row's next token takes position = its number of real tokens,
         overwriting the slot its first padding token wrote (docs/ops.md, version 2).
Either way a row's real tokens get positions 0, 1, 2, ... and users see the same tokens.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import UniAttnError


@dataclass(frozen=True)
class Sampling:
    """Sampling settings; generation without one is greedy."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0

    def __post_init__(self):
        if not (_is_number(self.temperature) and 0 < self.temperature < math.inf):
            raise UniAttnError(f"temperature must be > 0 and finite, got {self.temperature!r}", "omit it for greedy decoding")
        if self.top_k is not None and not (_is_int(self.top_k) and self.top_k >= 1):
            raise UniAttnError(f"top_k must be >= 1 (an integer), got {self.top_k!r}", "pass a positive top-k")
        if self.top_p is not None and not (_is_number(self.top_p) and 0 < self.top_p <= 1):
            raise UniAttnError(f"top_p must be in (0, 1], got {self.top_p!r}", "pass e.g. --top-p 0.9")
        if not (_is_int(self.seed) and 0 <= self.seed < 2**64):
            raise UniAttnError(f"seed must be an integer in [0, 2**64), got {self.seed!r}", "pass e.g. --seed 0")


def _is_int(value) -> bool:
    """An integer, and not a bool (True would silently be token 1)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value) -> bool:
    return (_is_int(value) or isinstance(value, (float, np.floating))) and not math.isnan(value)


def check_capacity(longest_prompt: int, max_new_tokens: int, capacity: int | None) -> None:
    """A static artifact's caches hold `capacity` tokens (None: they grow): refuse a generation
    that would outgrow them before anything runs."""
    if capacity is not None and longest_prompt + max_new_tokens > capacity:
        raise UniAttnError(
            f"the longest prompt ({longest_prompt} tokens) + max_new_tokens ({max_new_tokens}) = "
            f"{longest_prompt + max_new_tokens} tokens exceeds the artifact's cache capacity ({capacity})",
            "shorten the prompt or generate fewer tokens, or re-export with a larger --max-length",
        )


def check_prompts(
    prompts, max_new_tokens, *, vocab_size: int | None = None, max_positions: int | None = None
) -> list[list[int]]:
    """The prompts as lists of Python ints, or one line saying what is wrong with them.

    prompts: a batch (rank 2) of token ids: non-empty rows of integers (not bools or floats)
    in [0, vocab_size). max_new_tokens: an integer >= 1; the longest prompt plus it must fit
    max_positions. None skips a limit a runtime does not know.
    """
    if not (_is_int(max_new_tokens) and max_new_tokens >= 1):
        raise UniAttnError(f"max_new_tokens must be >= 1 (an integer), got {max_new_tokens!r}", "pass a positive number")
    shape = "a batch of token id lists (rank 2), e.g. [[1, 2, 3]]"
    if isinstance(prompts, np.ndarray) and prompts.ndim != 2 or isinstance(prompts, (str, bytes, dict)):
        raise UniAttnError(f"prompts must be {shape}", "wrap a single prompt in a list")
    if not hasattr(prompts, "__iter__"):
        raise UniAttnError(f"prompts must be {shape}, got {type(prompts).__name__}", "wrap a single prompt in a list")
    rows = []
    for index, row in enumerate(prompts):
        if isinstance(row, (str, bytes, dict)) or not hasattr(row, "__iter__"):
            raise UniAttnError(f"prompts must be {shape}; prompt {index} is {row!r:.40}", "wrap a single prompt in a list")
        rows.append(list(row))
    if not rows:
        raise UniAttnError("no prompts given", "pass at least one prompt")
    for index, row in enumerate(rows):
        if not row:
            raise UniAttnError(f"prompt {index} is empty: every prompt needs at least one token", "drop empty prompts")
        bad = next((t for t in row if not _is_int(t)), None)
        if bad is not None:
            what = "a nested list (prompts must be rank 2)" if isinstance(bad, (list, tuple, np.ndarray)) else repr(bad)
            raise UniAttnError(f"prompt {index} holds {what}, not an integer token id", "pass integer token ids")
        if vocab_size is not None:
            outside = next((t for t in row if not 0 <= t < vocab_size), None)
            if outside is not None:
                raise UniAttnError(
                    f"prompt {index} has token id {outside} outside the vocabulary [0, {vocab_size})", "fix the token ids"
                )
    longest = max(map(len, rows))
    if max_positions is not None and longest + max_new_tokens > max_positions:
        raise UniAttnError(
            f"prompt tokens ({longest}) + max_new_tokens ({max_new_tokens}) exceed the model's {max_positions} positions",
            "shorten the prompt or lower max_new_tokens",
        )
    return [[int(t) for t in row] for row in rows]


@dataclass
class Generation:
    """What `generate` returns.

    tokens[b, t]: the token chosen at step t (pad after the row's eos), shape (B, steps).
    prompt_ids / prompt_mask: the padded prompt batch that was fed at step 0 (padded on the
    session's side).
    step_logits[t]: float32 logits of step t, (B, L_t, V) where step 0 covers the padded
    prompt (L_0 = prompt length, or 1 for artifacts that keep only each row's last real
    token) and later steps one token; None unless requested.
    """

    tokens: np.ndarray
    prompt_ids: np.ndarray
    prompt_mask: np.ndarray
    step_logits: list[np.ndarray] | None = None
    finished: np.ndarray | None = None  # (B,) rows that emitted eos

    def sequences(self, eos_token_id: int | None) -> list[list[int]]:
        """Each row's generated tokens up to and including its first eos (no padding)."""
        rows = []
        for row in self.tokens.tolist():
            if eos_token_id is not None and eos_token_id in row:
                row = row[: row.index(eos_token_id) + 1]
            rows.append(row)
        return rows


PADDING_SIDES = ("left", "right")


def pad_prompts(
    prompts: Sequence[Sequence[int]], pad_token_id: int, side: str = "left"
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, attention_mask) of the prompts padded on `side` to the longest one."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise UniAttnError("every prompt needs at least one token", "drop empty prompts")
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad_token_id, dtype=np.int64)
    mask = np.zeros((len(prompts), width), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        real = slice(width - len(prompt), width) if side == "left" else slice(0, len(prompt))
        ids[row, real] = prompt
        mask[row, real] = 1
    return ids, mask


def position_ids_for(mask: np.ndarray, side: str = "left") -> np.ndarray:
    """Position ids of a padded prompt batch (see the module docstring)."""
    if side == "right":
        return np.broadcast_to(np.arange(mask.shape[1], dtype=np.int64), mask.shape).copy()
    return np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int64)


def choose_tokens(logits: np.ndarray, sampling: Sampling | None, rng: np.random.Generator) -> np.ndarray:
    """Next token per row from (B, V) logits: argmax, or a draw after temperature/top-k/top-p."""
    if sampling is None:
        return logits.argmax(axis=-1)
    scores = logits.astype(np.float64) / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < scores.shape[-1]:
        kth = np.partition(scores, -sampling.top_k, axis=-1)[:, -sampling.top_k][:, None]
        scores = np.where(scores < kth, -np.inf, scores)
    if sampling.top_p is not None and sampling.top_p < 1:
        order = np.argsort(-scores, axis=-1)
        ranked = np.take_along_axis(scores, order, axis=-1)
        probs = np.exp(ranked - ranked[:, :1])
        probs /= probs.sum(axis=-1, keepdims=True)
        mass_before = np.cumsum(probs, axis=-1) - probs
        # Keep the smallest prefix whose mass reaches top_p (at least the top token).
        ranked = np.where(mass_before < sampling.top_p, ranked, -np.inf)
        scores = np.full_like(scores, -np.inf)
        np.put_along_axis(scores, order, ranked, axis=-1)
    probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    draws = rng.random(len(probs))[:, None]
    return np.minimum((np.cumsum(probs, axis=-1) < draws).sum(axis=-1), probs.shape[-1] - 1)


class GenerationSession(ABC):
    """A runtime that can run the exported graph step by step."""

    #: one line saying what runs (library, execution provider, kernels or function bodies)
    description: str = ""
    #: which side prompts are padded on: "left" (growing caches) or "right" (slot = position)
    padding: str = "left"
    #: tokens per row the caches hold (prompt + generated); None when they grow without limit
    capacity: int | None = None
    #: limits `generate` checks its inputs against; runtimes that know them set them
    vocab_size: int | None = None
    max_positions: int | None = None

    @abstractmethod
    def reset(self, batch_size: int) -> None:
        """Drop the caches; the next step starts a new batch of `batch_size` rows."""

    @abstractmethod
    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
        """Run new tokens (B, L) over the cached ones; returns float32 logits (B, L or 1, V).

        attention_mask covers cached + new tokens (B, S). The caches grow by L.
        """

    def step_greedy(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
        """Like `step`, but returns only each row's argmax token (B,) int64 of its last
        logits. Runtimes that can pick it on the device (the graph's next_tokens output)
        override this so greedy decoding never copies the (B, V) logits to the host."""
        return self.step(input_ids, attention_mask, position_ids)[:, -1, :].argmax(axis=-1)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        *,
        sampling: Sampling | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int = 0,
        return_logits: bool = False,
        forced_tokens: np.ndarray | None = None,
    ) -> Generation:
        """Generate up to `max_new_tokens` tokens per prompt.

        forced_tokens (B, max_new_tokens): feed these instead of the chosen tokens (teacher
        forcing), so two runtimes can be compared step by step on identical inputs; the
        returned tokens are still the ones this runtime chose.
        """
        prompts = check_prompts(prompts, max_new_tokens, vocab_size=self.vocab_size, max_positions=self.max_positions)
        vocab = self.vocab_size if self.vocab_size is not None else np.iinfo(np.int64).max
        for name, token in (("pad_token_id", pad_token_id), ("eos_token_id", eos_token_id)):
            if token is not None and not (_is_int(token) and 0 <= token < vocab):
                raise UniAttnError(f"{name} {token!r} is outside the vocabulary [0, {vocab})", f"pass a valid {name}")
        if sampling is not None and not isinstance(sampling, Sampling):
            raise UniAttnError(f"sampling must be a Sampling or None, got {type(sampling).__name__}", "pass Sampling(...)")
        ids, mask = pad_prompts(prompts, pad_token_id, self.padding)
        batch = len(ids)
        check_capacity(ids.shape[1], max_new_tokens, self.capacity)
        if forced_tokens is not None and (
            forced_tokens.shape[0] != batch or forced_tokens.shape[1] < max_new_tokens
        ):
            raise UniAttnError(
                f"forced_tokens has shape {forced_tokens.shape}, need ({batch}, >= {max_new_tokens})",
                "pass one forced token per row and step",
            )
        rng = np.random.default_rng(sampling.seed if sampling else 0)
        self.reset(batch)
        chosen = np.full((batch, max_new_tokens), pad_token_id, dtype=np.int64)
        finished = np.zeros(batch, dtype=bool)
        step_logits = [] if return_logits else None
        step_ids, step_mask, positions = ids, mask, position_ids_for(mask, self.padding)
        on_device_argmax = sampling is None and step_logits is None
        for t in range(max_new_tokens):
            if on_device_argmax:
                tokens = self.step_greedy(step_ids, step_mask, positions)
            else:
                logits = self.step(step_ids, step_mask, positions)
                if step_logits is not None:
                    step_logits.append(logits)
                tokens = choose_tokens(logits[:, -1, :], sampling, rng)
            tokens = np.where(finished, pad_token_id, tokens)
            chosen[:, t] = tokens
            if eos_token_id is not None:
                finished |= tokens == eos_token_id
            if t + 1 == max_new_tokens or (finished.all() and forced_tokens is None):
                chosen = chosen[:, : t + 1]
                break
            fed = forced_tokens[:, t] if forced_tokens is not None else tokens
            step_ids = fed[:, None].astype(np.int64)
            # The next token's position is the number of real tokens so far (either padding).
            positions = step_mask.sum(axis=1, keepdims=True).astype(np.int64)
            step_mask = np.concatenate([step_mask, np.ones((batch, 1), np.int64)], axis=1)
        return Generation(chosen, ids, mask, step_logits, finished)
