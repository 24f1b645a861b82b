"""A tiny UniAttn checkpoint with a real (word-level) tokenizer, and its exports."""

from __future__ import annotations

import functools
import re

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from uniattn_export.export import export_model, load_artifact
from uniattn_export.model import load_model
from uniattn_export.model.synthetic import random_base_model, released_checkpoint, tiny_config
from uniattn_export.validate.run import DEFAULT_PROMPTS

TEXT = (
    "UniAttn keeps one softmax per SuperBlock . The layers that follow reuse it with their own "
    "values , so they need no keys and the cache is smaller . The capital of France is Paris ."
)


def save_word_tokenizer(folder, vocab_size: int) -> None:
    # The same split as the Whitespace pre-tokenizer: words, and runs of punctuation.
    words = sorted({w for line in (*DEFAULT_PROMPTS, TEXT) for w in re.findall(r"\w+|[^\w\s]+", line)})
    vocab = {"<unk>": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    assert len(vocab) <= vocab_size
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", eos_token="<eos>").save_pretrained(folder)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """checkpoint(seed) -> a tiny Llama UniAttn checkpoint (authors' layout) with tokenizer."""

    @functools.cache
    def make(seed: int = 3):
        folder = tmp_path_factory.mktemp(f"checkpoint_{seed}")
        config = tiny_config("llama", eos_token_id=1, pad_token_id=0)
        released_checkpoint(random_base_model(config, seed=seed), folder, 2, 1, 6)
        save_word_tokenizer(folder, config.vocab_size)
        return folder

    return make


@pytest.fixture(scope="session")
def artifact(checkpoint, tmp_path_factory):
    """artifact(dtype="float32", cache="dynamic", max_length=None) -> the exported checkpoint(3)."""

    @functools.cache
    def make(dtype: str = "float32", cache: str = "dynamic", max_length: int | None = None):
        out = tmp_path_factory.mktemp(f"artifact_{dtype}_{cache}") / "artifact"
        model = load_model(checkpoint(), dtype=dtype)
        return load_artifact(export_model(model, out, source_dir=checkpoint(), cache=cache, max_length=max_length))

    return make


@pytest.fixture(scope="session")
def text() -> str:
    """A text all of whose words the tokenizer knows (for perplexity)."""
    return TEXT
