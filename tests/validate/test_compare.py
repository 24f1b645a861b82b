"""The comparison metrics on hand-made runs whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uniattn_export.targets.session import Generation
from uniattn_export.validate import compare


def _run(tokens, step_logits, prompt_mask):
    prompt_mask = np.asarray(prompt_mask)
    return Generation(np.asarray(tokens), np.zeros_like(prompt_mask), prompt_mask, [np.asarray(s, np.float32) for s in step_logits])


def test_padding_positions_are_not_compared():
    prefill = np.zeros((2, 3, 4))
    prefill[1, 0] = 100.0  # a padding slot: whatever it holds must not count
    run = _run([[0, 0], [0, 0]], [prefill, np.zeros((2, 1, 4))], [[1, 1, 1], [0, 1, 1]])
    rows = compare.comparable_rows(run, keep_last_only=False)
    assert len(rows.logits) == 3 + 2 + 2  # real prompt positions, then one row per decode step
    assert list(rows.step) == [0] * 5 + [1] * 2
    reference = _run([[0, 0], [0, 0]], [np.zeros((2, 3, 4)), np.zeros((2, 1, 4))], [[1, 1, 1], [0, 1, 1]])
    assert compare.max_abs_error(rows, compare.comparable_rows(reference, False)) == 0.0
    assert len(compare.comparable_rows(run, keep_last_only=True).logits) == 4


def test_worst_logit_location_and_relative_error():
    ref_steps = [np.full((1, 2, 3), 2.0), np.full((1, 1, 3), 2.0)]
    art_steps = [s.copy() for s in ref_steps]
    art_steps[1][0, 0, 2] += 0.5
    ours = compare.comparable_rows(_run([[0, 0]], art_steps, [[1, 1]]), False)
    theirs = compare.comparable_rows(_run([[0, 0]], ref_steps, [[1, 1]]), False)
    result = compare.compare_logits(ours, theirs)
    assert result["max_abs"] == pytest.approx(0.5) and result["max_rel"] == pytest.approx(0.25)
    assert result["worst"] == {"step": 1, "batch_row": 0, "position": 0, "token_id": 2,
                               "artifact": 2.5, "reference": 2.0}  # fmt: skip
    assert [s["max_abs"] for s in result["per_step"]] == [0.0, pytest.approx(0.5)]


@pytest.mark.parametrize("tolerance,near_tie", [(0.01, True), (1e-4, False)])
def test_a_disagreement_within_tolerance_of_a_tie_is_a_near_tie(tolerance, near_tie):
    step0 = np.array([[[0.0, 1.0, 1.001, -3.0]]])  # reference prefers token 2 by 0.001
    step1 = np.array([[[5.0, 0.0, 0.0, 0.0]]])
    reference = _run([[2, 0]], [step0, step1], [[1]])
    artifact = _run([[1, 0]], [step0, step1], [[1]])
    result = compare.compare_tokens(artifact, reference, tolerance)
    assert result["first_divergence_step"] == [0] and result["agreement"] == 0.5
    assert bool(result["near_tie_divergences"]) == near_tie and bool(result["divergences"]) != near_tie
    entry = (result["near_tie_divergences"] or result["divergences"])[0]
    assert entry["reference_margin"] == pytest.approx(0.001, abs=1e-6)


def test_topk_overlap_counts_shared_candidates():
    a = compare.Rows(np.array([[5.0, 4, 3, 2, 1, 0]]), np.zeros(1), np.zeros(1), np.zeros(1))
    b = compare.Rows(np.array([[5.0, 4, 0, 2, 1, 3]]), np.zeros(1), np.zeros(1), np.zeros(1))
    assert compare.topk_overlap(a, b, 3) == {"k": 3, "mean": pytest.approx(2 / 3), "min": pytest.approx(2 / 3)}


def test_perplexity_is_exp_cross_entropy():
    predictions = np.random.default_rng(0).normal(size=(5, 10)).astype(np.float32)
    ids = [3, 1, 4, 1, 5, 9]
    expected = torch.exp(torch.nn.functional.cross_entropy(torch.from_numpy(predictions), torch.tensor(ids[1:])))
    assert compare.perplexity(predictions, ids) == pytest.approx(expected.item(), rel=1e-6)
