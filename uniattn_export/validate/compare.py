"""Step-by-step comparison of two runs of the shared generation loop on identical inputs.

Both runs were fed the same tokens (the reference's greedy choices, by teacher forcing), so
their logits are comparable at every step even after the argmax of one of them differs.
Only real positions count: left-padding slots of the prompt step are skipped.

Relative error is scale-normalized: |a - r| / max|r| over the same vocabulary row, so it
stays meaningful for logits near zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..targets.session import Generation


@dataclass(frozen=True)
class Rows:
    """The comparable logits rows of a run: (N, V) float32, and where each row came from."""

    logits: np.ndarray
    step: np.ndarray  # generation step of each row
    batch: np.ndarray  # batch row
    position: np.ndarray  # position within that step's new tokens


def comparable_rows(run: Generation, keep_last_only: bool) -> Rows:
    """Real (non-padding) positions of every step, in step order."""
    logits, step, batch, position = [], [], [], []
    for t, step_logits in enumerate(run.step_logits or []):
        if keep_last_only:
            step_logits = step_logits[:, -1:, :]
        width = step_logits.shape[1]
        real = np.ones(step_logits.shape[:2], dtype=bool)
        # The one position kept per row is its last real token (the last slot under left
        # padding; a static artifact picks it out of right-padded rows itself).
        if t == 0 and not keep_last_only:
            real = run.prompt_mask[:, -width:].astype(bool)
        b, p = np.nonzero(real)
        logits.append(step_logits[b, p])
        step.append(np.full(len(b), t))
        batch.append(b)
        position.append(p)
    return Rows(np.concatenate(logits), np.concatenate(step), np.concatenate(batch), np.concatenate(position))


def max_abs_error(a: Rows, b: Rows) -> float:
    return float(np.abs(a.logits - b.logits).max())


def compare_logits(artifact: Rows, reference: Rows) -> dict:
    diff = np.abs(artifact.logits - reference.logits)
    row_scale = np.maximum(np.abs(reference.logits).max(axis=-1, keepdims=True), np.finfo(np.float32).tiny)
    rel = diff / row_scale
    worst_row, worst_token = np.unravel_index(int(diff.argmax()), diff.shape)
    per_step = []
    for t in np.unique(reference.step):
        rows = reference.step == t
        per_step.append({
            "step": int(t),
            "max_abs": float(diff[rows].max()),
            "mean_abs": float(diff[rows].mean()),
            "max_rel": float(rel[rows].max()),
        })  # fmt: skip
    return {
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "max_rel": float(rel.max()),
        "mean_rel": float(rel.mean()),
        "worst": {
            "step": int(reference.step[worst_row]),
            "batch_row": int(reference.batch[worst_row]),
            "position": int(reference.position[worst_row]),
            "token_id": int(worst_token),
            "artifact": float(artifact.logits[worst_row, worst_token]),
            "reference": float(reference.logits[worst_row, worst_token]),
        },
        "per_step": per_step,
    }


def topk_overlap(artifact: Rows, reference: Rows, k: int) -> dict:
    k = min(k, reference.logits.shape[-1])
    top_a = np.argpartition(-artifact.logits, k - 1, axis=-1)[:, :k]
    top_r = np.argpartition(-reference.logits, k - 1, axis=-1)[:, :k]
    overlap = np.array([len(np.intersect1d(x, y)) / k for x, y in zip(top_a, top_r)])
    return {"k": k, "mean": float(overlap.mean()), "min": float(overlap.min())}


def compare_tokens(artifact: Generation, reference: Generation, tolerance: float) -> dict:
    """Greedy agreement under teacher forcing: the argmax each run picks after the same prefix.

    A disagreement where the reference's top-2 margin is within `tolerance` is a near-tie
    (either choice is within numerical noise) and reported apart from real divergences.
    """
    agree = artifact.tokens == reference.tokens
    first_divergence: list[int | None] = []
    divergences, near_ties = [], []
    for row in range(agree.shape[0]):
        steps = np.flatnonzero(~agree[row])
        first_divergence.append(int(steps[0]) if len(steps) else None)
        for t in steps:
            last = reference.step_logits[t][row, -1]
            top2 = np.sort(last)[-2:]
            entry = {
                "batch_row": row, "step": int(t),
                "reference_token": int(reference.tokens[row, t]), "artifact_token": int(artifact.tokens[row, t]),
                "reference_margin": float(top2[1] - top2[0]),
            }  # fmt: skip
            (near_ties if entry["reference_margin"] <= tolerance else divergences).append(entry)
    return {
        "agreement": float(agree.mean()),
        "first_divergence_step": first_divergence,
        "divergences": divergences,
        "near_tie_divergences": near_ties,
        "reference": reference.tokens.tolist(),
        "artifact": artifact.tokens.tolist(),
    }


def perplexity(predictions: np.ndarray, token_ids) -> float:
    """exp(mean NLL) of token_ids[1:] (L of them in all) under predictions (L - 1, V): row i the
    logits predicting token i + 1."""
    shifted = predictions.astype(np.float64)
    targets = np.asarray(token_ids)[1:]
    top = shifted.max(axis=-1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(shifted - top).sum(axis=-1))
    nll = log_norm - shifted[np.arange(len(targets)), targets]
    return float(np.exp(nll.mean()))
