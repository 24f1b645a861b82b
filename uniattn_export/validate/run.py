"""Stage 3 entry: validate an artifact against the PyTorch reference (or stored golden outputs).

What runs:
  1. the reference at the artifact's precision generates greedily from the prompts,
     keeping every step's logits;
  2. the reference one precision higher (float16/bfloat16 -> float32, float32 -> float64)
     is fed the same tokens: the gap between the two is the reference's own numerical noise
     at this precision, and the logits tolerance is SAFETY_FACTOR times it;
  3. the artifact is fed the same tokens (teacher forcing) through its runtime session.
Then: per-step logits errors, greedy agreement (a disagreement where the reference's top-2
margin is within tolerance is a near-tie, not a failure), top-k overlap and, with a text,
perplexity. With `golden`, steps 1-2 come from the folder when it exists (no PyTorch), and
are stored there when it does not.

The reference always runs with growing caches and left padding. A static-cache artifact's
session pads on the right and returns only each row's last real token (manifest logits
"last"), so the comparison takes each row's last real token of every step on both sides:
same tokens fed, same tolerances.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..dtypes import DTYPES
from ..errors import UniAttnError
from ..export.artifact import Artifact, load_artifact, package_versions
from ..output import GOLDEN, check_destination
from ..targets.session import GenerationSession, check_prompts, pad_prompts, position_ids_for
from . import compare
from .golden import Golden, golden_exists, load_golden, store_golden

# Two independent implementations at one precision each sit about one "noise" away from the
# exact result, so they can differ by about twice it; 4x leaves room for unlucky rows.
SAFETY_FACTOR = 4.0
DEFAULT_PROMPTS = (
    "The capital of France is",
    "Shared softmax across layers means",
    "def fibonacci(n):",
)
# Without a tokenizer (tiny test models): token-id prompts of these lengths (left padding).
RANDOM_PROMPT_LENGTHS = (7, 3, 12)
TOP_K = 5
REPORT_FORMAT = "uniattn-export/validation"


@dataclass(frozen=True)
class _Reference:
    golden: Golden
    source: str  # "pytorch" or "golden"


def _resolve_prompts(artifact: Artifact, prompts: Sequence[str] | Sequence[Sequence[int]] | None):
    if prompts and all(not isinstance(p, str) for p in prompts):
        token_prompts = prompts  # checked with the others below
    elif artifact.has_tokenizer():
        from ..model.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(artifact.path)
        token_prompts = [tokenizer(text, add_special_tokens=True)["input_ids"] for text in (prompts or DEFAULT_PROMPTS)]
    elif prompts:
        raise UniAttnError(
            f"text prompts need a tokenizer but {artifact.path} has none",
            "export from a checkpoint folder that has tokenizer files, or pass token ids",
        )
    else:
        rng = np.random.default_rng(0)
        token_prompts = [rng.integers(0, artifact.vocab_size, n).tolist() for n in RANDOM_PROMPT_LENGTHS]
    return token_prompts


def _pad_token_id(artifact: Artifact) -> int:
    config = json.loads((artifact.path / "config.json").read_text())
    pad = config.get("pad_token_id")
    if pad is None:
        eos = config.get("eos_token_id")
        pad = eos[0] if isinstance(eos, list) else eos
    return int(pad) if pad is not None and 0 <= int(pad) < artifact.vocab_size else 0


def _text_token_ids(artifact: Artifact, text: str, max_tokens: int) -> list[int]:
    if not artifact.has_tokenizer():
        raise UniAttnError(f"perplexity needs a tokenizer but {artifact.path} has none", "drop --perplexity-text")
    from ..model.tokenizer import load_tokenizer

    limit = min(max_tokens, artifact.max_positions, artifact.capacity or artifact.max_positions)
    ids = load_tokenizer(artifact.path)(text)["input_ids"][:limit]
    if len(ids) < 2:
        raise UniAttnError("the perplexity text has fewer than 2 tokens", "pass a longer text")
    return ids


def _text_predictions(session: GenerationSession, token_ids: list[int], last_only: bool) -> np.ndarray:
    """(L - 1, V) logits predicting token_ids[1:]. All-position logits: one prefill over the text.
    An artifact that returns only the last position's logits (static caches): the first token,
    then each of the others fed as one decode step (teacher forcing), every step's logits
    predicting the next token; slower (one step per token), and it measures the decode path."""
    if not last_only:
        ids, mask = pad_prompts([token_ids], 0, session.padding)
        session.reset(1)
        return session.step(ids, mask, position_ids_for(mask, session.padding))[0][:-1]
    forced = np.asarray([token_ids[1:]], dtype=np.int64)
    run = session.generate([token_ids[:1]], len(token_ids) - 1, return_logits=True, forced_tokens=forced)
    return np.concatenate([logits[0, -1:] for logits in run.step_logits])


def _reference_run(path: Path, dtype: str, prompts, pad_token_id: int, max_new_tokens: int,
                   forced_tokens: np.ndarray | None, text_ids: list[int] | None):
    """(generation with logits, perplexity or None, description) of the PyTorch reference at
    `dtype`; the model is released on return (validation loads two precisions in turn)."""
    from ..model import load_model
    from .reference import TorchSession

    session = TorchSession(load_model(path, dtype=dtype))
    run = session.generate(prompts, max_new_tokens, pad_token_id=pad_token_id, return_logits=True,
                           forced_tokens=forced_tokens)  # fmt: skip
    ppl = None if text_ids is None else compare.perplexity(_text_predictions(session, text_ids, last_only=False), text_ids)
    return run, ppl, session.description


def _pytorch_reference(
    artifact: Artifact, checkpoint: Path | None, prompts: list[list[int]], pad_token_id: int,
    max_new_tokens: int, text_ids: list[int] | None,
) -> _Reference:  # fmt: skip
    path = checkpoint or artifact.source_checkpoint
    if path is None or not Path(path).is_dir():
        raise UniAttnError(
            f"no PyTorch reference for {artifact.path}: the checkpoint it was exported from "
            f"({path}) is not available",
            "pass --checkpoint FOLDER, or --golden DIR with stored outputs",
        )
    dtype = artifact.dtype
    higher = DTYPES[dtype].higher_precision
    ref_run, ppl, description = _reference_run(path, dtype, prompts, pad_token_id, max_new_tokens, None, text_ids)
    precise_run, ppl_precise, _ = _reference_run(
        path, higher, prompts, pad_token_id, max_new_tokens, ref_run.tokens, text_ids
    )
    last_only = artifact.manifest["logits"] == "last"
    noise = compare.max_abs_error(
        compare.comparable_rows(ref_run, last_only), compare.comparable_rows(precise_run, last_only)
    )
    scale = max(float(np.abs(s).max()) for s in ref_run.step_logits)
    tolerance = {
        "logits_abs": max(SAFETY_FACTOR * noise, DTYPES[dtype].epsilon * scale),
        "noise_abs": noise,
        "noise_source": f"PyTorch reference {dtype} vs {higher} on the same tokens",
        "safety_factor": SAFETY_FACTOR,
    }
    text = None
    if text_ids is not None:
        noise_ppl = abs(ppl - ppl_precise)
        text = {
            "token_ids": text_ids, "reference": ppl, "noise_abs": noise_ppl,
            "tolerance_abs": max(SAFETY_FACTOR * noise_ppl, DTYPES[dtype].epsilon * ppl),
        }  # fmt: skip
    golden = Golden(
        prompts=prompts, pad_token_id=pad_token_id, reference=ref_run,
        reference_description=f"{description} from {Path(path).resolve()}",
        tolerance=tolerance, perplexity=text,
    )  # fmt: skip
    return _Reference(golden, "pytorch")


def validate_artifact(
    artifact: Artifact | str | Path,
    *,
    session: GenerationSession | None = None,
    checkpoint: str | Path | None = None,
    prompts: Sequence[str] | Sequence[Sequence[int]] | None = None,
    max_new_tokens: int = 12,
    perplexity_text: str | None = None,
    perplexity_tokens: int = 512,
    golden: str | Path | None = None,
    update_golden: bool = False,
    device: str = "cpu",
    force: bool = False,
) -> dict:
    """Validate and return the JSON-ready report (report["passed"] says the verdict).

    session: the runtime to validate (default: an ONNX Runtime session on `device`).
    golden: a folder of stored reference outputs; checked against when it holds them
    (unless update_golden), else filled from the PyTorch reference. force: replace the
    golden folder whatever it holds (never the artifact or checkpoint; uniattn_export/output.py).
    """
    artifact = artifact if isinstance(artifact, Artifact) else load_artifact(artifact)
    # max_new_tokens alone (a one-token prompt) before any work; the real prompts come later.
    check_prompts([[0]], max_new_tokens, max_positions=artifact.max_positions)
    if perplexity_text is not None and not (isinstance(perplexity_tokens, int) and perplexity_tokens >= 2):
        raise UniAttnError(f"perplexity_tokens must be >= 2, got {perplexity_tokens!r}", "pass a larger number")
    if session is None:
        from ..targets.ort import OrtSession

        session = OrtSession(artifact, device=device)
    golden_dir = Path(golden) if golden is not None else None
    if perplexity_text is not None and not perplexity_text.strip():
        raise UniAttnError("the perplexity text is empty", "pass a text")
    text_ids = _text_token_ids(artifact, perplexity_text, perplexity_tokens) if perplexity_text else None

    if golden_dir is not None and golden_exists(golden_dir) and not update_golden:
        if prompts is not None:
            raise UniAttnError("prompts come from the golden folder when checking against it", "drop --prompt")
        ref = _Reference(load_golden(golden_dir, artifact), "golden")
        if text_ids is not None and (ref.golden.perplexity is None or ref.golden.perplexity["token_ids"] != text_ids):
            raise UniAttnError(
                f"the golden outputs in {golden_dir} hold no perplexity for this text",
                "store them again with --update-golden --perplexity-text FILE",
            )
    else:
        if golden_dir is not None:
            golden_inputs = (artifact.path, checkpoint)
            check_destination(golden_dir, GOLDEN, inputs=golden_inputs, force=force)  # before the slow part
        token_prompts = check_prompts(
            _resolve_prompts(artifact, prompts), max_new_tokens,
            vocab_size=artifact.vocab_size, max_positions=artifact.max_positions,
        )  # fmt: skip
        ref = _pytorch_reference(
            artifact, Path(checkpoint) if checkpoint else None, token_prompts,
            _pad_token_id(artifact), max_new_tokens, text_ids,
        )  # fmt: skip
        if golden_dir is not None:
            store_golden(golden_dir, artifact, ref.golden, inputs=golden_inputs, force=force)

    return _report(artifact, session, ref, text_ids, golden_dir)


def _report(
    artifact: Artifact, session: GenerationSession, ref: _Reference,
    text_ids: list[int] | None, golden_dir: Path | None,
) -> dict:  # fmt: skip
    expected = ref.golden.reference
    tolerance = dict(ref.golden.tolerance)
    run = session.generate(
        ref.golden.prompts, expected.tokens.shape[1], pad_token_id=ref.golden.pad_token_id,
        return_logits=True, forced_tokens=expected.tokens,
    )  # fmt: skip
    last_only = artifact.manifest["logits"] == "last"
    ours, theirs = compare.comparable_rows(run, last_only), compare.comparable_rows(expected, last_only)
    logits = compare.compare_logits(ours, theirs)
    tokens = compare.compare_tokens(run, expected, tolerance["logits_abs"])
    failures = []
    if logits["max_abs"] > tolerance["logits_abs"]:
        w = logits["worst"]
        failures.append(
            f"logits differ by {logits['max_abs']:.3g} > tolerance {tolerance['logits_abs']:.3g} "
            f"(step {w['step']}, row {w['batch_row']}, position {w['position']}, token {w['token_id']})"
        )
    for d in tokens["divergences"]:
        failures.append(
            f"greedy token differs at step {d['step']} of row {d['batch_row']} "
            f"({d['artifact_token']} vs {d['reference_token']}, reference margin {d['reference_margin']:.3g})"
        )
    text = None
    if text_ids is not None:
        stored = ref.golden.perplexity
        ppl = compare.perplexity(_text_predictions(session, text_ids, last_only), text_ids)
        text = {"tokens": len(text_ids), "artifact": ppl, "reference": stored["reference"],
                "abs_diff": abs(ppl - stored["reference"]), "tolerance_abs": stored["tolerance_abs"],
                "artifact_method": "decode steps" if last_only else "prefill"}  # fmt: skip
        if text["abs_diff"] > text["tolerance_abs"]:
            failures.append(f"perplexity {ppl:.4f} vs reference {stored['reference']:.4f} exceeds tolerance {stored['tolerance_abs']:.3g}")
    margins = [d["reference_margin"] for d in tokens["divergences"]]
    tolerance["smallest_passing"] = max([logits["max_abs"], *margins])
    return {
        "format": REPORT_FORMAT,
        "format_version": 1,
        "passed": not failures,
        "failures": failures,
        "artifact": str(artifact.path),
        "dtype": artifact.dtype,
        "runtime": session.description,
        "reference": ref.golden.reference_description,
        "reference_source": ref.source,
        "golden": str(golden_dir) if golden_dir is not None else None,
        "created_with": package_versions(),
        "prompts": ref.golden.prompts,
        "max_new_tokens": int(expected.tokens.shape[1]),
        "tolerance": tolerance,
        "logits": logits,
        "tokens": tokens,
        "topk": compare.topk_overlap(ours, theirs, TOP_K),
        "perplexity": text,
    }
