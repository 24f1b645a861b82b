"""What a benchmark run measures: the matrix, the runtimes and the time limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..errors import UniAttnError

# A runtime is a model ("artifact": the UniAttn ARTIFACT, "baseline": the base model of the
# same shape) run by a backend. transformers and onnxruntime-genai have no UniAttn model, so
# their backends always run the base architecture.
# onnxruntime over a dynamic-cache artifact (op contract v1), with the library or the bodies:
DYNAMIC_ORT_BACKENDS = ("ort-library", "ort-bodies")
# onnxruntime over a static-cache artifact (v2) through OrtSession; -graph: with CUDA graphs.
STATIC_ORT_BACKENDS = ("ort-static-library", "ort-static-bodies", "ort-static-graph")
ORT_BACKENDS = DYNAMIC_ORT_BACKENDS + STATIC_ORT_BACKENDS
CUDA_ONLY_BACKENDS = ("ort-static-graph",)
# The base model built by onnxruntime-genai's own model builder, run by onnxruntime-genai.
GENAI_BACKEND = "onnxruntime-genai"
# Our `--target genai` exports (static caches, onnxruntime-genai's cache layout and
# genai_config.json), UniAttn and base, run by onnxruntime-genai as GENAI_BACKEND runs its own.
GENAI_ARTIFACT_BACKEND = "genai-artifact"
# The backends that run our artifacts in ONNX Runtime (directly or inside onnxruntime-genai).
ARTIFACT_BACKENDS = ORT_BACKENDS + (GENAI_ARTIFACT_BACKEND,)
TRANSFORMERS_BACKENDS = ("transformers-dynamic", "transformers-static", "transformers-static-compiled")
BACKENDS = ORT_BACKENDS + (GENAI_BACKEND, GENAI_ARTIFACT_BACKEND) + TRANSFORMERS_BACKENDS
DEFAULT_BACKENDS = (
    "ort-static-library", "ort-static-bodies", "ort-static-graph", "ort-library", "ort-bodies", GENAI_BACKEND,
    GENAI_ARTIFACT_BACKEND, "transformers-dynamic", "transformers-static-compiled",
)  # fmt: skip
# The exports an artifact backend runs: "dynamic" and "static" (caches with optimum's names),
# "genai" (static caches in onnxruntime-genai's layout, with genai_config.json).
EXPORT_KINDS = ("dynamic", "static", "genai")


def export_kind_of(backend: str) -> str | None:
    """The export (EXPORT_KINDS) an artifact backend runs; None for the others."""
    if backend == GENAI_ARTIFACT_BACKEND:
        return "genai"
    return "static" if backend in STATIC_ORT_BACKENDS else "dynamic" if backend in DYNAMIC_ORT_BACKENDS else None


def needs_capacity(backends) -> bool:
    """Whether these backends run static-cache exports (whose capacity the matrix decides)."""
    return any(export_kind_of(b) in ("static", "genai") for b in backends)
COMPILE_BACKENDS = ("inductor", "eager")

Device = Literal["cuda", "cpu"]
Shape = tuple[int, int]  # (batch, context)


def parse_shapes(text: str) -> frozenset[Shape]:
    """"1x2048,32x2048" -> {(1, 2048), (32, 2048)}; "" or "none" -> empty."""
    shapes = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        if item == "none":
            continue
        batch, sep, context = item.partition("x")
        if not sep or not batch.isdigit() or not context.isdigit():
            raise UniAttnError(f"cannot read the shape {item!r}", "write shapes as BATCHxCONTEXT, e.g. 32x2048")
        shapes.add((int(batch), int(context)))
    return frozenset(shapes)


@dataclass(frozen=True)
class BenchSettings:
    """The matrix (batches x contexts), which backends run, and the time limits.

    decode_steps timed decode steps per cell after warmup_steps untimed ones; prefill_repeats
    timed prefills after one untimed. cell_seconds caps one cell (prefill gets the first half,
    decode the rest; at least one timed sample each); time_budget caps the whole run (build
    included in preset mode): cells after it are recorded as skipped. compile_shapes: the
    (batch, context) cells where transformers-static-compiled runs (torch.compile takes about
    a minute per shape on a 1B model). decode_shapes / prefill_shapes: the cells where decode /
    prefill run (empty: every cell); the matrix is then only the cells either names.
    row_processes: each runtime (row) loaded and measured in a fresh process, so what one row
    holds on the device, or a CUDA error that ends its context, cannot fail the rows after it;
    None: on CUDA only (a process costs a few seconds of imports).
    """

    batches: tuple[int, ...] = (1, 8, 32)
    contexts: tuple[int, ...] = (512, 2048, 8192)
    backends: tuple[str, ...] = DEFAULT_BACKENDS
    device: Device = "cuda"
    decode_steps: int = 20
    warmup_steps: int = 3
    prefill: bool = True
    prefill_repeats: int = 3
    cell_seconds: float = 10.0
    time_budget: float = 420.0
    compile_shapes: frozenset[Shape] = field(default_factory=frozenset)
    compile_backend: str = "inductor"
    decode_shapes: frozenset[Shape] = field(default_factory=frozenset)
    prefill_shapes: frozenset[Shape] = field(default_factory=frozenset)
    seed: int = 0
    row_processes: bool | None = None

    def __post_init__(self):
        for name in ("batches", "contexts"):
            values = getattr(self, name)
            if not values or any(not isinstance(v, int) or v < 1 for v in values):
                raise UniAttnError(f"{name} must be positive integers, got {list(values)}", f"pass e.g. --{name} 1,8,32")
        unknown = sorted(set(self.backends) - set(BACKENDS))
        if unknown or not self.backends:
            raise UniAttnError(f"unknown backend(s) {unknown or '(none given)'}", f"choose from {', '.join(BACKENDS)}")
        if self.device not in ("cuda", "cpu"):
            raise UniAttnError(f"unknown device {self.device!r}", "use cuda or cpu")
        for name in ("decode_steps", "prefill_repeats"):
            if getattr(self, name) < 1:
                raise UniAttnError(f"{name} must be >= 1, got {getattr(self, name)}", "pass a positive number")
        if self.warmup_steps < 0:
            raise UniAttnError(f"warmup_steps must be >= 0, got {self.warmup_steps}", "pass 0 or more")
        for name in ("cell_seconds", "time_budget"):
            if not getattr(self, name) > 0:
                raise UniAttnError(f"{name} must be > 0, got {getattr(self, name)}", "pass a positive number of seconds")
        matrix = {(b, c) for b in self.batches for c in self.contexts}
        for name, flag in (("decode_shapes", "--decode-cells"), ("prefill_shapes", "--prefill-cells")):
            outside = sorted(set(getattr(self, name)) - matrix)
            if outside:
                raise UniAttnError(
                    f"{flag} shape {outside[0][0]}x{outside[0][1]} is not in the matrix",
                    "pick shapes from --batches x --contexts",
                )
        outside = sorted(set(self.compile_shapes) - set(self.cells()))
        if outside:
            raise UniAttnError(
                f"compile shape {outside[0][0]}x{outside[0][1]} is not in the matrix",
                "pick shapes from --batches x --contexts, or pass --compile all",
            )
        if self.compile_backend not in COMPILE_BACKENDS:
            raise UniAttnError(f"unknown compile backend {self.compile_backend!r}", f"use one of {COMPILE_BACKENDS}")

    def cells(self) -> list[Shape]:
        """Every (batch, context), smallest KV cache first: memory then grows monotonically,
        so ONNX Runtime's arena (which never shrinks) reports each cell's own high-water mark.
        Only the cells of decode_shapes and prefill_shapes when either is given."""
        chosen = self.decode_shapes | self.prefill_shapes
        cells = [(b, c) for b in self.batches for c in self.contexts if not chosen or (b, c) in chosen]
        return sorted(cells, key=lambda s: (s[0] * s[1], s))

    def rows_in_processes(self) -> bool:
        return self.device == "cuda" if self.row_processes is None else self.row_processes

    def runs(self, phase: str, batch: int, context: int) -> bool:
        """Whether `phase` ("decode" | "prefill") is measured on this cell."""
        shapes = self.decode_shapes if phase == "decode" else self.prefill_shapes
        return not shapes or (batch, context) in shapes

    def decode_length(self) -> int:
        """Tokens a decode cell's cache must hold beyond its context (warm-up + timed steps);
        torch.compile's warm-up of 3 is transformers-only, it never touches an artifact."""
        return self.warmup_steps + self.decode_steps

    def positions_needed(self) -> int:
        """The most positions one cell uses: its context, plus decode_length where it decodes."""
        return max(c + (self.decode_length() if self.runs("decode", b, c) else 0) for b, c in self.cells())

    def to_dict(self) -> dict:
        return {
            "batches": list(self.batches), "contexts": list(self.contexts), "backends": list(self.backends),
            "device": self.device, "decode_steps": self.decode_steps, "warmup_steps": self.warmup_steps,
            "prefill": self.prefill, "prefill_repeats": self.prefill_repeats, "cell_seconds": self.cell_seconds,
            "time_budget": self.time_budget, "compile_shapes": [f"{b}x{c}" for b, c in sorted(self.compile_shapes)],
            "compile_backend": self.compile_backend,
            "decode_shapes": [f"{b}x{c}" for b, c in sorted(self.decode_shapes)],
            "prefill_shapes": [f"{b}x{c}" for b, c in sorted(self.prefill_shapes)], "seed": self.seed,
            "row_processes": self.rows_in_processes(),
        }  # fmt: skip
