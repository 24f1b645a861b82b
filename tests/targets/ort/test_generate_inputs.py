"""GenerationSession.generate rejects what the C runtime rejects, with one UniAttnError line:
ids outside the vocabulary (negative ones too), floats, bools, the wrong rank, prompts that
do not fit the model's positions, and sampling settings that are not finite."""

from __future__ import annotations

import math

import numpy as np
import pytest

from uniattn_export.errors import UniAttnError
from uniattn_export.targets.ort import OrtSession
from uniattn_export.targets.session import Sampling

VOCAB, POSITIONS = 128, 256  # tiny_config's


@pytest.fixture(scope="module")
def session(tiny):
    _, artifact = tiny("llama")
    assert (artifact.vocab_size, artifact.max_positions) == (VOCAB, POSITIONS)
    return OrtSession(artifact, custom_ops=False)


@pytest.mark.parametrize(
    "prompts, max_new_tokens, message",
    [
        ([[-1]], 2, "prompt 0 has token id -1 outside the vocabulary [0, 128). Fix the token ids."),
        ([[3], [1, 128]], 2, "prompt 1 has token id 128 outside the vocabulary [0, 128). Fix the token ids."),
        ([[1.0, 2.0]], 2, "prompt 0 holds 1.0, not an integer token id. Pass integer token ids."),
        ([[True, False]], 2, "prompt 0 holds True, not an integer token id. Pass integer token ids."),
        ([1, 2, 3], 2, "prompts must be a batch of token id lists (rank 2), e.g. [[1, 2, 3]]; prompt 0 is 1. "
                       "Wrap a single prompt in a list."),
        ([[[1, 2]]], 2, "prompt 0 holds a nested list (prompts must be rank 2), not an integer token id. "
                        "Pass integer token ids."),
        (np.zeros((2, 2, 2), np.int64), 2, "prompts must be a batch of token id lists (rank 2), e.g. [[1, 2, 3]]. "
                                           "Wrap a single prompt in a list."),
        ("hello", 2, "prompts must be a batch of token id lists (rank 2), e.g. [[1, 2, 3]]. Wrap a single prompt in a list."),
        ([], 2, "no prompts given. Pass at least one prompt."),
        ([[1], []], 2, "prompt 1 is empty: every prompt needs at least one token. Drop empty prompts."),
        ([[1] * 250], 7, "prompt tokens (250) + max_new_tokens (7) exceed the model's 256 positions. "
                         "Shorten the prompt or lower max_new_tokens."),
        ([[1]], 100000, "prompt tokens (1) + max_new_tokens (100000) exceed the model's 256 positions. "
                        "Shorten the prompt or lower max_new_tokens."),
        ([[1]], 2.0, "max_new_tokens must be >= 1 (an integer), got 2.0. Pass a positive number."),
        ([[1]], True, "max_new_tokens must be >= 1 (an integer), got True. Pass a positive number."),
    ],
    ids=["negative", "vocab", "floats", "bools", "rank1", "rank3", "rank3_array", "string", "none", "empty",
         "beyond_positions", "max_new_tokens_huge", "max_new_tokens_float", "max_new_tokens_bool"],
)  # fmt: skip
def test_bad_prompts_are_one_line(session, prompts, max_new_tokens, message):
    with pytest.raises(UniAttnError) as error:
        session.generate(prompts, max_new_tokens)
    assert str(error.value) == message


def test_special_token_ids_must_be_in_the_vocabulary(session):
    with pytest.raises(UniAttnError, match=r"^pad_token_id -1 is outside the vocabulary \[0, 128\)"):
        session.generate([[1]], 2, pad_token_id=-1)
    with pytest.raises(UniAttnError, match=r"^eos_token_id 300 is outside the vocabulary \[0, 128\)"):
        session.generate([[1]], 2, eos_token_id=300)


def test_numpy_ids_of_any_integer_width_generate_what_lists_do(session):
    prompts = [[5, 17, 99], [3, 4, 8]]
    expected = session.generate(prompts, 4).tokens
    for dtype in (np.int32, np.int64, np.uint8):
        assert np.array_equal(session.generate(np.asarray(prompts, dtype), 4).tokens, expected)


def test_the_longest_prompt_that_fits_runs(session):
    run = session.generate([[1] * 254], 2)  # 254 + 2 == the model's 256 positions
    assert run.tokens.shape == (1, 2)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(temperature=math.inf), "temperature must be > 0 and finite, got inf"),
        (dict(temperature=math.nan), "temperature must be > 0 and finite, got nan"),
        (dict(top_p=math.nan), "top_p must be in (0, 1], got nan"),
        (dict(top_k=2.5), "top_k must be >= 1 (an integer), got 2.5"),
        (dict(top_k=True), "top_k must be >= 1 (an integer), got True"),
        (dict(seed=-1), "seed must be an integer in [0, 2**64), got -1"),
    ],
    ids=["temperature_inf", "temperature_nan", "top_p_nan", "top_k_float", "top_k_bool", "seed_negative"],
)
def test_sampling_settings_must_be_finite_and_typed(settings, message):
    with pytest.raises(UniAttnError) as error:
        Sampling(**settings)
    assert str(error.value).startswith(message + ". ")
