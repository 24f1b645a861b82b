"""The artifact's input and output names (optimum's convention), built and parsed here only.

Inputs: input_ids, attention_mask, position_ids, past_key_values.{i}.key / .value;
outputs: logits, [next_tokens,] present.{i}.key / .value. next_tokens (static-cache artifacts
only) is the argmax of the logits, so greedy decoding never copies logits off the device. Consumer layers keep no K cache, so they have
`.value` names only. Every module that builds or reads these names (exporter, artifact,
structural check, runtimes, TensorRT graph reading, bench) goes through this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
POSITION_IDS = "position_ids"
LOGITS = "logits"
NEXT_TOKENS = "next_tokens"
TOKEN_INPUTS = (INPUT_IDS, ATTENTION_MASK, POSITION_IDS)
PAST_PREFIX = "past_key_values"
PRESENT_PREFIX = "present"
KINDS = ("key", "value")


def past_name(layer: int, kind: str) -> str:
    return f"{PAST_PREFIX}.{layer}.{kind}"


def present_name(layer: int, kind: str) -> str:
    return f"{PRESENT_PREFIX}.{layer}.{kind}"


def _kinds(has_key: bool) -> tuple[str, ...]:
    return KINDS if has_key else ("value",)


def past_names(layer: int, has_key: bool) -> list[str]:
    return [past_name(layer, kind) for kind in _kinds(has_key)]


def present_names(layer: int, has_key: bool) -> list[str]:
    return [present_name(layer, kind) for kind in _kinds(has_key)]


def input_names(has_key: Iterable[bool]) -> list[str]:
    return [*TOKEN_INPUTS, *(n for layer, k in enumerate(has_key) for n in past_names(layer, k))]


def output_names(has_key: Iterable[bool], next_tokens: bool = False) -> list[str]:
    head = [LOGITS, NEXT_TOKENS] if next_tokens else [LOGITS]
    return [*head, *(n for layer, k in enumerate(has_key) for n in present_names(layer, k))]


@dataclass(frozen=True)
class CacheName:
    """One cache tensor: its layer, "key" or "value", and its input and output names."""

    layer: int
    kind: str

    @property
    def past(self) -> str:
        return past_name(self.layer, self.kind)

    @property
    def present(self) -> str:
        return present_name(self.layer, self.kind)


def parse_cache_name(name: str) -> CacheName | None:
    """The cache tensor a past_key_values.* or present.* name denotes; None for other names."""
    parts = name.split(".")
    if len(parts) != 3 or parts[0] not in (PAST_PREFIX, PRESENT_PREFIX) or parts[2] not in KINDS:
        return None
    if not parts[1].isdigit():
        return None
    return CacheName(int(parts[1]), parts[2])


def is_past(name: str) -> bool:
    return name.startswith(PAST_PREFIX + ".") and parse_cache_name(name) is not None


def cache_pairs(names: Iterable[str]) -> list[CacheName]:
    """The cache tensors among graph input names, in their order."""
    return [parse_cache_name(n) for n in names if is_past(n)]
