"""The shared generation loop's pieces: left padding, positions, token choice."""

from __future__ import annotations

import numpy as np
import pytest

from uniattn_export.errors import UniAttnError
from uniattn_export.targets.session import GenerationSession, Sampling, choose_tokens, pad_prompts, position_ids_for


def test_left_padding_and_positions_follow_transformers():
    ids, mask = pad_prompts([[5, 6, 7], [8]], pad_token_id=0)
    np.testing.assert_array_equal(ids, [[5, 6, 7], [0, 0, 8]])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [0, 0, 1]])
    np.testing.assert_array_equal(position_ids_for(mask), [[0, 1, 2], [0, 0, 0]])


def _empirical(logits, sampling, draws=20000):
    rng = np.random.default_rng(sampling.seed)
    batch = np.repeat(logits[None], draws, axis=0)
    return np.bincount(choose_tokens(batch, sampling, rng), minlength=len(logits)) / draws


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


LOGITS = np.log(np.array([0.5, 0.2, 0.15, 0.1, 0.05]))


def test_greedy_is_argmax():
    logits = np.array([[0.1, 3.0, -1.0], [2.0, 1.0, 0.0]])
    np.testing.assert_array_equal(choose_tokens(logits, None, np.random.default_rng(0)), [1, 0])


@pytest.mark.parametrize(
    "sampling,expected",
    [
        (Sampling(seed=1), _softmax(LOGITS)),
        (Sampling(temperature=0.5, seed=2), _softmax(LOGITS / 0.5)),
        (Sampling(top_k=2, seed=3), np.array([5 / 7, 2 / 7, 0, 0, 0])),
        # top_p=0.8: 0.5 + 0.2 < 0.8, so the third token (0.15) completes the nucleus.
        (Sampling(top_p=0.8, seed=4), np.array([0.5, 0.2, 0.15, 0, 0]) / 0.85),
    ],
    ids=["plain", "temperature", "top_k", "top_p"],
)
def test_sampling_draws_from_the_filtered_distribution(sampling, expected):
    freq = _empirical(LOGITS, sampling)
    assert np.abs(freq - expected).max() < 0.015
    assert (freq[expected == 0] == 0).all()


def test_invalid_sampling_settings():
    with pytest.raises(UniAttnError, match="temperature must be > 0"):
        Sampling(temperature=0)
    with pytest.raises(UniAttnError, match="top_k must be >= 1"):
        Sampling(top_k=0)
    with pytest.raises(UniAttnError, match=r"top_p must be in \(0, 1\]"):
        Sampling(top_p=1.5)


def test_right_padding_runs_positions_through_the_padding():
    ids, mask = pad_prompts([[5, 6, 7], [8]], pad_token_id=0, side="right")
    np.testing.assert_array_equal(ids, [[5, 6, 7], [8, 0, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [1, 0, 0]])
    np.testing.assert_array_equal(position_ids_for(mask, "right"), [[0, 1, 2], [0, 1, 2]])


class _Recorder(GenerationSession):
    """Records what the loop feeds; always picks token 1."""

    def __init__(self, padding, capacity=None):
        self.padding, self.capacity, self.fed = padding, capacity, []

    def reset(self, batch_size):
        self.fed.append(("reset", batch_size))

    def step(self, input_ids, attention_mask, position_ids):
        self.fed.append((input_ids.tolist(), attention_mask.tolist(), position_ids.tolist()))
        logits = np.zeros((len(input_ids), 1, 4), np.float32)
        logits[:, :, 1] = 1
        return logits


@pytest.mark.parametrize("padding", ["left", "right"])
def test_each_row_decodes_at_its_own_next_position(padding):
    session = _Recorder(padding)
    session.generate([[5, 6, 7], [8]], 3, pad_token_id=0)
    decode = [entry[2] for entry in session.fed[2:]]
    assert decode == [[[3], [1]], [[4], [2]]]  # row lengths 3 and 1, then one more per step
    assert [len(entry[1][0]) for entry in session.fed[1:]] == [3, 4, 5]


def test_generation_beyond_the_capacity_fails_before_anything_runs():
    session = _Recorder("right", capacity=8)
    with pytest.raises(UniAttnError) as error:
        session.generate([[5, 6, 7], [8]], 6, pad_token_id=0)
    assert str(error.value).startswith(
        "the longest prompt (3 tokens) + max_new_tokens (6) = 9 tokens exceeds the artifact's cache capacity (8)"
    )
    assert session.fed == []
    session.generate([[5, 6, 7], [8]], 5, pad_token_id=0)  # exactly the capacity fits
