"""Golden reference outputs for CI regression (`uniattn-export validate --golden DIR`).

Format (version 1; stable: later versions only add keys):

    DIR/golden.json
      format             "uniattn-export/golden"
      format_version     1
      created_with       package versions of the run that stored it
      reference          what produced the outputs (PyTorch reference, dtype, checkpoint)
      dtype, logits      the artifact precision and logits mode ("all" | "last") they are for
      prompts            token ids per prompt (unpadded); fed left-padded with pad_token_id
      pad_token_id       int
      max_new_tokens     int
      tokens             the reference's greedy tokens, (B, max_new_tokens)
      tolerance          {"logits_abs", "noise_abs", "noise_source", "safety_factor"}
      perplexity         null, or {"token_ids", "reference", "tolerance_abs", "noise_abs"}
    DIR/logits.npz
      step_000 ... step_NNN   float32 reference logits of each generation step, (B, L_t, V):
                              step 0 covers the padded prompt, later steps one token

A check feeds the stored tokens to the artifact (teacher forcing) and compares its logits
with these within the stored tolerance; no PyTorch model is needed.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UniAttnError
from ..export.artifact import Artifact, package_versions
from ..output import GOLDEN, atomic_folder
from ..targets.session import Generation, pad_prompts

GOLDEN_FILE = "golden.json"
LOGITS_FILE = "logits.npz"
GOLDEN_FORMAT = "uniattn-export/golden"
GOLDEN_VERSION = 1
_RECORD_KEYS = ("dtype", "logits", "prompts", "pad_token_id", "tokens", "tolerance", "reference")


@dataclass(frozen=True)
class Golden:
    prompts: list[list[int]]
    pad_token_id: int
    reference: Generation
    reference_description: str
    tolerance: dict
    perplexity: dict | None


def golden_exists(folder: Path) -> bool:
    return (folder / GOLDEN_FILE).is_file()


def store_golden(folder: Path, artifact: Artifact, golden: Golden, *, inputs: tuple = (), force: bool = False) -> None:
    """Write DIR atomically (a sibling temp folder renamed into place). inputs: what it
    was computed from, never replaced (the artifact always counts)."""
    with atomic_folder(folder, GOLDEN, inputs=(artifact.path, *inputs), force=force) as tmp:
        record = {
            "format": GOLDEN_FORMAT,
            "format_version": GOLDEN_VERSION,
            "created_with": package_versions(),
            "reference": golden.reference_description,
            "dtype": artifact.dtype,
            "logits": artifact.manifest["logits"],
            "prompts": golden.prompts,
            "pad_token_id": golden.pad_token_id,
            "max_new_tokens": int(golden.reference.tokens.shape[1]),
            "tokens": golden.reference.tokens.tolist(),
            "tolerance": golden.tolerance,
            "perplexity": golden.perplexity,
        }
        (tmp / GOLDEN_FILE).write_text(json.dumps(record, indent=2) + "\n")
        steps = {f"step_{t:03d}": logits for t, logits in enumerate(golden.reference.step_logits)}
        np.savez_compressed(tmp / LOGITS_FILE, **steps)


def load_golden(folder: Path, artifact: Artifact) -> Golden:
    folder = Path(folder)
    again = "store them again with --update-golden"
    try:
        record = json.loads((folder / GOLDEN_FILE).read_text())
        with np.load(folder / LOGITS_FILE) as stored:
            step_logits = [stored[name] for name in sorted(stored.files)]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UniAttnError(f"cannot read the golden outputs in {folder} ({detail})", again) from None
    if not isinstance(record, dict) or record.get("format") != GOLDEN_FORMAT:
        raise UniAttnError(f"{folder / GOLDEN_FILE} is not a golden file", again)
    version = record.get("format_version")
    if not isinstance(version, int) or version > GOLDEN_VERSION:
        raise UniAttnError(f"{folder / GOLDEN_FILE} has format_version {version!r}, this version reads 1..{GOLDEN_VERSION}", again)
    missing = [key for key in _RECORD_KEYS if key not in record]
    if missing:
        raise UniAttnError(f"{folder / GOLDEN_FILE} lacks {', '.join(missing)}", again)
    if not (isinstance(record["tolerance"], dict) and isinstance(record["tolerance"].get("logits_abs"), (int, float))):
        raise UniAttnError(f"{folder / GOLDEN_FILE} has no numeric tolerance.logits_abs", again)
    for key in ("dtype", "logits"):
        if record[key] != artifact.manifest[key]:
            raise UniAttnError(
                f"the golden outputs in {folder} are for {key}={record[key]!r} but the artifact has "
                f"{artifact.manifest[key]!r}",
                "use the golden folder of this export configuration, or store a new one with --update-golden",
            )
    try:
        tokens = np.asarray(record["tokens"], dtype=np.int64)
        ids, mask = pad_prompts(record["prompts"], record["pad_token_id"], "left")
    except (TypeError, ValueError, UniAttnError) as exc:
        raise UniAttnError(f"the tokens or prompts in {folder / GOLDEN_FILE} are malformed ({exc})", again) from None
    if (
        tokens.ndim != 2 or tokens.shape[0] != len(ids) or len(step_logits) != tokens.shape[1]
        or any(s.ndim != 3 or s.shape[-1] != artifact.vocab_size for s in step_logits)
    ):  # fmt: skip
        raise UniAttnError(
            f"the golden logits in {folder} do not match its tokens or this artifact's vocabulary",
            "store them again with --update-golden",
        )
    reference = Generation(tokens, ids, mask, step_logits)
    return Golden(
        prompts=record["prompts"],
        pad_token_id=record["pad_token_id"],
        reference=reference,
        reference_description=f"golden outputs in {folder} ({record['reference']})",
        tolerance=record["tolerance"],
        perplexity=record.get("perplexity"),
    )
