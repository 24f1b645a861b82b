"""UniAttnConfig: which layer produces the shared softmax and which layers consume it.

The released checkpoints describe SuperBlocks with three numbers (grouping_idx = G,
grouping_begin_idx = b, grouping_end_idx = e) and a producer rule that lives only in the
modeling file that trained them: the Llama files use (l - b) mod G == 0, the Mistral and
"softmax-only" files l mod G == 0, the Gemma2 files (l - 1) mod G == 0. Those agree only
when b is aligned, so the rule is part of the checkpoint's meaning. We resolve it once into
an explicit layer map (producer -> consumers) and store that map in every artifact; nothing
downstream re-derives it.

In the released code a consumer reuses the attention probabilities of the nearest preceding
layer that computed its own softmax, so that is how a rule resolves to a map.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..errors import UniAttnError

ProducerRule = Literal["begin_offset", "absolute", "gemma2"]

PRODUCER_RULES: dict[str, str] = {
    "begin_offset": "(l - begin) mod G == 0  (released Llama UniAttn files)",
    "absolute": "l mod G == 0  (released Mistral and softmax-only files)",
    "gemma2": "(l - 1) mod G == 0  (released Gemma2 files)",
}

# The rule each architecture's released modeling file uses; used only when a checkpoint
# in the authors' layout does not say which rule it was trained with.
DEFAULT_RULE_BY_MODEL_TYPE: dict[str, ProducerRule] = {
    "llama": "begin_offset",
    "mistral": "absolute",
    "qwen2": "begin_offset",  # no released Qwen2 file: we follow the Llama one
}

LayerRole = Literal["ordinary", "producer", "consumer"]

FORMAT_VERSION = 1


def _is_rule_producer(rule: str, layer: int, superblock_size: int, begin: int) -> bool:
    if rule == "begin_offset":
        return (layer - begin) % superblock_size == 0
    if rule == "absolute":
        return layer % superblock_size == 0
    if rule == "gemma2":
        return (layer - 1) % superblock_size == 0
    raise UniAttnError(
        f"unknown producer rule {rule!r}", f"use one of: {', '.join(PRODUCER_RULES)}"
    )


@dataclass(frozen=True)
class UniAttnConfig:
    """The resolved SuperBlock structure of a model with `num_layers` layers.

    `layer_map` maps each producer layer to the tuple of layers that consume its shared
    probabilities. Layers that appear in neither role are ordinary attention layers.
    The grouping fields record where the map came from (None for explicit maps).
    """

    num_layers: int
    layer_map: dict[int, tuple[int, ...]]
    superblock_size: int | None = None
    begin: int | None = None
    end: int | None = None
    producer_rule: str | None = None
    _producer_of: dict[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        producer_of: dict[int, int] = {}
        for producer, consumers in self.layer_map.items():
            if not 0 <= producer < self.num_layers:
                raise UniAttnError(
                    f"layer map names producer layer {producer} but the model has "
                    f"{self.num_layers} layers",
                    "fix the layer map in config.json",
                )
            for consumer in consumers:
                if not 0 <= consumer < self.num_layers:
                    raise UniAttnError(
                        f"layer map names consumer layer {consumer} but the model has "
                        f"{self.num_layers} layers",
                        "fix the layer map in config.json",
                    )
                if consumer <= producer:
                    raise UniAttnError(
                        f"consumer layer {consumer} comes before (or is) its producer {producer}",
                        "a consumer must come after the layer whose softmax it reuses",
                    )
                if consumer in producer_of:
                    raise UniAttnError(
                        f"layer {consumer} consumes two producers "
                        f"({producer_of[consumer]} and {producer})",
                        "give every consumer exactly one producer",
                    )
                producer_of[consumer] = producer
        both = sorted(set(producer_of) & set(self.layer_map))
        if both:
            raise UniAttnError(
                f"layer {both[0]} is both a producer and a consumer",
                "a producer computes its own softmax; remove it from the consumer lists",
            )
        object.__setattr__(self, "_producer_of", producer_of)

    # --- construction -------------------------------------------------------------------

    @classmethod
    def from_grouping(
        cls, num_layers: int, superblock_size: int, begin: int, end: int, producer_rule: str
    ) -> "UniAttnConfig":
        """Resolve the released code's (G, b, e, rule) description into an explicit map."""
        if producer_rule not in PRODUCER_RULES:
            raise UniAttnError(
                f"unknown producer rule {producer_rule!r}",
                f"use one of: {', '.join(PRODUCER_RULES)}",
            )
        if superblock_size < 1:
            raise UniAttnError(
                f"SuperBlock size must be >= 1, got {superblock_size}", "pass --superblock 2 or more"
            )
        if not 0 <= begin < num_layers:
            raise UniAttnError(
                f"SuperBlock begin {begin} is outside the model's {num_layers} layers",
                f"pass a begin between 0 and {num_layers - 1}",
            )
        if end <= begin:
            raise UniAttnError(
                f"SuperBlock end {end} must be greater than begin {begin}", "pass --end > --begin"
            )
        layer_map: dict[int, list[int]] = {}
        last_own_softmax: int | None = None
        for layer in range(num_layers):
            in_range = begin <= layer < end
            if in_range and not _is_rule_producer(producer_rule, layer, superblock_size, begin):
                if last_own_softmax is None:
                    raise UniAttnError(
                        f"layer {layer} would be a consumer with no earlier layer to share from "
                        f"(rule {producer_rule}, G={superblock_size}, begin={begin})",
                        "choose a begin/rule whose first layer in range is a producer",
                    )
                layer_map.setdefault(last_own_softmax, []).append(layer)
            else:
                last_own_softmax = layer
        return cls(
            num_layers=num_layers,
            layer_map={p: tuple(c) for p, c in layer_map.items()},
            superblock_size=superblock_size,
            begin=begin,
            end=end,
            producer_rule=producer_rule,
        )

    @classmethod
    def none(cls, num_layers: int) -> "UniAttnConfig":
        """The plain base model: every layer computes its own softmax."""
        return cls(num_layers=num_layers, layer_map={})

    # --- queries --------------------------------------------------------------------------

    def role(self, layer: int) -> LayerRole:
        if layer in self._producer_of:
            return "consumer"
        if layer in self.layer_map:
            return "producer"
        return "ordinary"

    def producer_of(self, layer: int) -> int:
        """The producer whose shared probabilities `layer` (a consumer) reuses."""
        return self._producer_of[layer]

    @property
    def consumers(self) -> list[int]:
        return sorted(self._producer_of)

    @property
    def producers(self) -> list[int]:
        return sorted(self.layer_map)

    def has_key_cache(self, layer: int) -> bool:
        """Consumers need no keys: they never compute Q K^T of their own."""
        return self.role(layer) != "consumer"

    @property
    def kv_cache_saving(self) -> float:
        """Fraction of the KV cache a UniAttn model does not store (no K for consumers)."""
        return len(self.consumers) / (2 * self.num_layers) if self.num_layers else 0.0

    def describe(self) -> str:
        if not self.layer_map:
            return f"{self.num_layers} layers, no SuperBlocks (plain attention everywhere)"
        blocks = ", ".join(
            f"{p}->{c[0]}-{c[-1]}" if len(c) > 1 else f"{p}->{c[0]}"
            for p, c in sorted(self.layer_map.items())
        )
        return (
            f"{self.num_layers} layers, {len(self.producers)} SuperBlocks ({blocks}), "
            f"{len(self.consumers)} consumers, KV cache -{100 * self.kv_cache_saving:.2f}%"
        )

    # --- serialization (the "uniattn" entry of config.json and of every manifest) ----------

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "num_layers": self.num_layers,
            "layer_map": {str(p): list(c) for p, c in sorted(self.layer_map.items())},
            "superblock_size": self.superblock_size,
            "begin": self.begin,
            "end": self.end,
            "producer_rule": self.producer_rule,
        }

    @classmethod
    def from_dict(cls, data: dict, num_layers: int | None = None) -> "UniAttnConfig":
        try:
            version = int(data.get("format_version", FORMAT_VERSION))
            stored_layers = int(data["num_layers"])
            layer_map = {int(p): tuple(int(c) for c in cs) for p, cs in data["layer_map"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UniAttnError(
                f"the 'uniattn' entry of config.json is malformed ({exc!r})",
                "re-save the model with `uniattn-export convert` or fix the entry by hand",
            ) from None
        if version > FORMAT_VERSION:
            raise UniAttnError(
                f"the layer map was written by a newer uniattn-export (format {version})",
                "upgrade uniattn-export",
            )
        if num_layers is not None and stored_layers != num_layers:
            raise UniAttnError(
                f"the layer map describes {stored_layers} layers but the model has {num_layers}",
                "the config.json does not belong to these weights",
            )
        return cls(
            num_layers=stored_layers,
            layer_map=layer_map,
            superblock_size=data.get("superblock_size"),
            begin=data.get("begin"),
            end=data.get("end"),
            producer_rule=data.get("producer_rule"),
        )
