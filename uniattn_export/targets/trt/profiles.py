"""Optimization profiles: min / opt / max of batch, new tokens and past length, turned into
the shapes of every graph input (optimum-style names, see export)."""

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
        """[min, opt, max] shape of every graph input (JSON-ready lists)."""
        total = DimRange(
            self.past.min + self.sequence.min,
            self.past.opt + self.sequence.opt,
            self.past.max + self.sequence.max,
        )
        shapes = {}
        for info in inputs:
            if info.name in ("input_ids", "position_ids") and len(info.dims) == 2:
                axes = {0: self.batch, 1: self.sequence}
            elif info.name == "attention_mask" and len(info.dims) == 2:
                axes = {0: self.batch, 1: total}
            elif info.name.startswith("past_key_values.") and len(info.dims) == 4:
                axes = {0: self.batch, 2: self.past}
            else:
                raise UniAttnError(
                    f"graph input {info.name!r} {list(info.dims)} is not one this builder can "
                    "bound (expected input_ids, attention_mask, position_ids (B, L) and "
                    "past_key_values.* (B, Hkv, P, D))",
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
