"""The benchmark's output folder (`bench -o OUT`) under uniattn_export/output.py's rule.

An earlier benchmark output is recognised by its bench.json (format "uniattn-export/bench"),
and holds nothing but what a run writes there: the report (bench.json, bench.png) and the
models it built for re-use. A run writes a temporary sibling `.OUT.XXXXXXXX` (bench.json is
rewritten there after every cell) that replaces OUT at the end; the built models of an
earlier output move into it first, so a second run re-uses them without copying, and move
back when the run fails or is interrupted (OUT is then left as it was).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from ..output import OutputKind, atomic_folder, json_field
from ..validate.report import write_report
from .report import JSON_FILE, PLOT_FILE, REPORT_FORMAT

# What run.py builds inside OUT: run_preset's default --work folder; run_bench's
# onnxruntime-genai model (with its builder's cache beside it) and --baseline build exports
# (baseline_artifact, baseline_artifact_static).
BUILT = ("work", "genai", ".genai.cache", "baseline_artifact", "baseline_artifact_*")

BENCH_OUTPUT = OutputKind(
    "an earlier output of uniattn-export bench (its bench.json)",
    lambda folder: json_field(folder / JSON_FILE, "format") == REPORT_FORMAT,
    (JSON_FILE, PLOT_FILE, *BUILT, *(f"{name}/*" for name in BUILT)),
    forcible=False,
)


@contextmanager
def bench_folder(out_dir: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = ()) -> Iterator[Path]:
    """The temporary folder a run writes; it becomes `out_dir` when the block succeeds.
    Refuses (UniAttnError) an `out_dir` that is a file, holds or is inside one of `inputs`,
    or is a non-empty folder other than an earlier benchmark output holding only its files."""
    with atomic_folder(out_dir, BENCH_OUTPUT, inputs=inputs, carried=BUILT) as tmp:
        yield tmp


def relocate(doc: dict, tmp: Path, out_dir: str | os.PathLike) -> dict:
    """`doc` with the paths it records inside the temporary folder (built models) moved to
    where they will be, `out_dir`; rewritten into tmp's bench.json, and returned."""
    old, new = str(tmp), str(out_dir)

    def moved(value):
        if isinstance(value, str):
            return value.replace(old, new)  # tmp's name is random: it occurs nowhere else
        if isinstance(value, dict):
            return {key: moved(item) for key, item in value.items()}
        if isinstance(value, list):
            return [moved(item) for item in value]
        return value

    doc = moved(doc)
    write_report(doc, tmp / JSON_FILE)
    return doc
