"""The artifact's input and output names, built and parsed here only.

Inputs: input_ids, attention_mask, position_ids, past_key_values.{i}.key / .value;
outputs: logits, [next_tokens,] present.{i}.key / .value. next_tokens (static-cache artifacts
only) is the argmax of the logits, so greedy decoding never copies logits off the device.
Every module that builds or reads these names (exporter, artifact, structural check,
runtimes, TensorRT graph reading, bench, the onnxruntime-genai config) goes through this module.

Two cache layouts (how the model's cache tensors are named):

  optimum  name index = model layer; consumer layers keep no K cache, so they have `.value`
           names only (optimum's convention; the default).
  genai    for onnxruntime-genai, which finds cache layers by their `.key` names only and
           feeds `.key` and `.value` for every layer it found. Layers with a K cache keep
           their names. Consumers' value caches are paired, in layer order, into pseudo
           layers numbered from num_layers up: pseudo layer p's `.key` is the first
           consumer's value cache, its `.value` the second's. For an odd number of
           consumers the last pseudo layer's `.key` is a dummy of one value cache's size that
           the graph never reads (its present is an Identity: of the past for static caches,
           so an in-place binding copies nothing; of the paired value cache's present for
           dynamic ones, whose presents grow).
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
LAYOUTS = ("optimum", "genai")


def past_name(layer: int, kind: str) -> str:
    return f"{PAST_PREFIX}.{layer}.{kind}"


def present_name(layer: int, kind: str) -> str:
    return f"{PRESENT_PREFIX}.{layer}.{kind}"


def _kinds(has_key: bool) -> tuple[str, ...]:
    return KINDS if has_key else ("value",)


def input_names(has_key: Iterable[bool], layout: str = "optimum") -> list[str]:
    return [*TOKEN_INPUTS, *(t.name.past for t in cache_tensors(has_key, layout))]


def output_names(has_key: Iterable[bool], layout: str = "optimum", next_tokens: bool = False) -> list[str]:
    head = [LOGITS, NEXT_TOKENS] if next_tokens else [LOGITS]
    return [*head, *(t.name.present for t in cache_tensors(has_key, layout))]


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


@dataclass(frozen=True)
class CacheTensor:
    """One cache tensor of an artifact: its `name` (a CacheName in the layout's numbering)
    and the model cache it holds, `source` = CacheName(model layer, kind), or None for the
    genai layout's dummy."""

    name: CacheName
    source: CacheName | None


def cache_tensors(has_key: Iterable[bool], layout: str = "optimum") -> list[CacheTensor]:
    """The cache tensors of a model whose layer i has a K cache iff has_key[i], in graph
    order: the model's layers in order (optimum: every tensor; genai: those of layers with a K
    cache), then the genai layout's pseudo layers (module docstring)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown cache layout {layout!r}, expected one of {LAYOUTS}")
    has_key = list(has_key)
    tensors, value_only = [], []
    for layer, layer_has_key in enumerate(has_key):
        if layout == "genai" and not layer_has_key:
            value_only.append(CacheName(layer, "value"))
            continue
        tensors += [CacheTensor(CacheName(layer, kind), CacheName(layer, kind)) for kind in _kinds(layer_has_key)]
    for pair in range(0, len(value_only), 2):
        pseudo = len(has_key) + pair // 2
        first, *second = value_only[pair : pair + 2]
        if second:
            tensors += [CacheTensor(CacheName(pseudo, "key"), first), CacheTensor(CacheName(pseudo, "value"), second[0])]
        else:  # odd count: the key is the dummy
            tensors += [CacheTensor(CacheName(pseudo, "key"), None), CacheTensor(CacheName(pseudo, "value"), first)]
    return tensors


def genai_name_templates() -> dict[str, str]:
    """onnxruntime-genai's name templates (genai_config.json decoder inputs/outputs), which
    the genai layout's names follow."""
    return {
        "past_key_names": f"{PAST_PREFIX}.%d.key", "past_value_names": f"{PAST_PREFIX}.%d.value",
        "present_key_names": f"{PRESENT_PREFIX}.%d.key", "present_value_names": f"{PRESENT_PREFIX}.%d.value",
    }  # fmt: skip
