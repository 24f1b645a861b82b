"""Optimization profiles: min / opt / max of batch, new tokens and past length, turned into
the shapes of every graph input (optimum-style names, see export).

Dynamic caches (op contract v1): one profile over batch, new tokens and past length.
Static caches (v2, capacity C fixed by the graph): two profiles, so that decode gets
kernels tuned for one token and fixed shapes (what a CUDA graph captures):
  0 "prefill"  input_ids / position_ids (B, 1..L), attention_mask (B, 1..C)
  1 "decode"   input_ids / position_ids (B, 1),    attention_mask (B, C): the session binds
               the mask zero-padded to the capacity, so every decode step has one shape
and the caches (B, Hkv, C, D) in both. `past` does not apply (the capacity replaces it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from ...errors import UniAttnError

if TYPE_CHECKING:  # graph.py imports onnx; `model --target trt --help` reads only the defaults here
    from .graph import TensorInfo

Shape = list[int]


@dataclass(frozen=True)
class DimRange:
    min: int
    opt: int
    max: int

    @classmethod
    def parse(cls, text: str, what: str, lowest: int) -> "DimRange":
        """"MIN:OPT:MAX", or one number for a fixed size."""
        parts = text.split(":")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            values = []
        if len(values) == 1:
            values *= 3
        if len(values) != 3:
            raise UniAttnError(f"{what} range {text!r} is not MIN:OPT:MAX", f"write e.g. {lowest}:{lowest}:64")
        return cls(*values).checked(what, lowest)

    def checked(self, what: str, lowest: int) -> "DimRange":
        if not lowest <= self.min <= self.opt <= self.max:
            raise UniAttnError(
                f"{what} range {self.min}:{self.opt}:{self.max} must satisfy "
                f"{lowest} <= min <= opt <= max",
                "fix the MIN:OPT:MAX flag",
            )
        return self

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"


@dataclass(frozen=True)
class ProfileSpec:
    """Sizes one engine accepts: `sequence` is the new tokens of a call (1 in decode), `past`
    the cached tokens before it (0 in prefill)."""

    batch: DimRange = DimRange(1, 1, 8)
    sequence: DimRange = DimRange(1, 1, 512)
    past: DimRange = DimRange(0, 256, 2048)

    def __post_init__(self):
        self.batch.checked("batch", 1)
        self.sequence.checked("sequence", 1)
        self.past.checked("past", 0)

    def to_dict(self) -> dict:
        return {k: [v["min"], v["opt"], v["max"]] for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "ProfileSpec":
        return cls(**{k: DimRange(*data[k]) for k in ("batch", "sequence", "past")})

    def input_shapes(self, inputs: list[TensorInfo]) -> dict[str, list[Shape]]:
        """[min, opt, max] shape of every graph input of a dynamic-cache graph (JSON-ready)."""
        total = DimRange(
            self.past.min + self.sequence.min,
            self.past.opt + self.sequence.opt,
            self.past.max + self.sequence.max,
        )
        return _shapes(inputs, tokens=self.sequence, mask=total, batch=self.batch, past=self.past)

    def static_profiles(self, inputs: list[TensorInfo], capacity: int) -> list[dict]:
        """The prefill and decode profiles of a static-cache graph of `capacity` slots:
        [{"name", "dims", "inputs": {name: [min, opt, max]}}] (module doc)."""
        if self.sequence.max > capacity:
            raise UniAttnError(
                f"the prefill range {self.sequence} reaches beyond the artifact's cache capacity "
                f"({capacity} tokens)",
                f"pass --trt-seq with a maximum of at most {capacity}, or re-export with a larger --max-length",
            )
        one, full = DimRange(1, 1, 1), DimRange(capacity, capacity, capacity)
        prefill_mask = DimRange(1, self.sequence.opt, capacity)
        profiles = []
        for name, tokens, mask in (("prefill", self.sequence, prefill_mask), ("decode", one, full)):
            dims = {"batch": asdict(self.batch), "sequence": asdict(tokens), "capacity": capacity}
            dims = {k: [v["min"], v["opt"], v["max"]] if isinstance(v, dict) else v for k, v in dims.items()}
            shapes = _shapes(inputs, tokens=tokens, mask=mask, batch=self.batch, past=None)
            profiles.append({"name": name, "dims": dims, "inputs": shapes})
        return profiles


def _shapes(inputs: list[TensorInfo], *, tokens: DimRange, mask: DimRange, batch: DimRange,
            past: DimRange | None) -> dict[str, list[Shape]]:  # fmt: skip
    """[min, opt, max] of every input; `past` None: the caches' dim 2 is the graph's capacity."""
    shapes = {}
    for info in inputs:
        if info.name in ("input_ids", "position_ids") and len(info.dims) == 2:
            axes = {0: batch, 1: tokens}
        elif info.name == "attention_mask" and len(info.dims) == 2:
            axes = {0: batch, 1: mask}
        elif info.name.startswith("past_key_values.") and len(info.dims) == 4:
            axes = {0: batch, 2: past} if past is not None else {0: batch}
        else:
            raise UniAttnError(
                f"graph input {info.name!r} {list(info.dims)} is not one this builder can "
                "bound (expected input_ids, attention_mask, position_ids (B, L) and "
                "past_key_values.* (B, Hkv, P or C, D))",
                "build from a model exported by uniattn-export",
            )
        static = {i: d for i, d in enumerate(info.dims) if i not in axes}
        unbounded = [i for i, d in static.items() if not isinstance(d, int) or d < 0]
        if unbounded:
            raise UniAttnError(
                f"graph input {info.name!r} has dynamic axis {unbounded[0]} {list(info.dims)}",
                "export with static head counts and head dim",
            )
        shapes[info.name] = [
            [getattr(axes[i], which) if i in axes else static[i] for i in range(len(info.dims))]
            for which in ("min", "opt", "max")
        ]
    return shapes
