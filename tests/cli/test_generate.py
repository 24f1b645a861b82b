"""`uniattn-export generate` on a tiny checkpoint in the authors' layout (transformers and
torch only: CI runs this file at both ends of the allowed transformers range).
Artifacts and engines: test_generate_artifacts.py."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from uniattn_export.cli.main import main
from uniattn_export.model import load_model
from uniattn_export.model.synthetic import byte_tokenizer, random_base_model, released_checkpoint, tiny_config
from uniattn_export.model.tokenizer import load_tokenizer

pytestmark = pytest.mark.usefixtures("single_torch_thread")

PROMPTS = ["Hello", "Once upon a time"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("released")
    base = random_base_model(tiny_config("llama", vocab_size=256), seed=31)
    released_checkpoint(base, folder, 2, 1, 6)
    byte_tokenizer().save_pretrained(folder)
    return folder


def _generate_json(capsys, *args) -> list[dict]:
    assert main(["generate", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_greedy_batch_matches_the_model(checkpoint, capsys):
    args = [str(checkpoint), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--max-new-tokens", "6"]
    result = _generate_json(capsys, *args)
    model, tokenizer = load_model(checkpoint), load_tokenizer(checkpoint)
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    assert batch["attention_mask"][0, 0] == 0  # the short prompt is left-padded
    with torch.no_grad():
        expected = model.generate(**batch, max_new_tokens=6, do_sample=False, pad_token_id=0)
    new = expected[:, batch["input_ids"].shape[1] :]
    assert [r["prompt"] for r in result] == PROMPTS
    assert [r["tokens"] for r in result] == new.tolist()
    assert [r["text"] for r in result] == tokenizer.batch_decode(new, skip_special_tokens=True)
    # Plain output: prompt followed by its continuation, one per line group.
    assert main(["generate", *args]) == 0
    assert capsys.readouterr().out.startswith(PROMPTS[0] + result[0]["text"])


def test_sampling_is_seeded(checkpoint, capsys):
    args = [str(checkpoint), "--prompt", PROMPTS[0], "--max-new-tokens", "8", "--temperature", "1.0",
            "--top-k", "50", "--num-return-sequences", "3"]  # fmt: skip
    first = _generate_json(capsys, *args, "--seed", "4")
    again = _generate_json(capsys, *args, "--seed", "4")
    other = _generate_json(capsys, *args, "--seed", "5")
    assert len(first) == 3 and all(r["prompt"] == PROMPTS[0] for r in first)
    assert first == again and first != other


def _error_line(capsys, *argv) -> str:
    assert main(["generate", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("uniattn-export generate: error: ") and err.count("\n") == 1
    return err


# Checked from the flags alone: the model folder does not even exist.
@pytest.mark.parametrize(
    "args,message",
    [
        (["--prompt", ""], "--prompt is empty"),
        (["--top-k", "5"], "--top-k, --top-p and --num-return-sequences apply to sampling"),
        (["--temperature", "0"], "temperature must be > 0 and finite, got 0.0"),
        (["--temperature", "-1"], "temperature must be > 0 and finite, got -1.0"),
        (["--temperature", "nan"], "temperature must be > 0 and finite, got nan"),
        (["--temperature", "inf"], "temperature must be > 0 and finite, got inf"),
        (["--temperature", "1", "--top-k", "0"], "top_k must be >= 1 (an integer), got 0"),
        (["--temperature", "1", "--top-k", "-3"], "top_k must be >= 1 (an integer), got -3"),
        (["--temperature", "1", "--top-p", "1.5"], "top_p must be in (0, 1], got 1.5"),
        (["--temperature", "1", "--top-p", "0"], "top_p must be in (0, 1], got 0.0"),
        (["--temperature", "1", "--top-p", "nan"], "top_p must be in (0, 1], got nan"),
        (["--seed", "-1"], "seed must be an integer in [0, 2**64), got -1"),
        (["--temperature", "1", "--seed", "-1"], "seed must be an integer in [0, 2**64), got -1"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    ],
)
def test_bad_flags_fail_before_anything_is_read(tmp_path, capsys, args, message):
    assert message in _error_line(capsys, str(tmp_path / "absent"), "--prompt", "x", *args)


@pytest.fixture(scope="module")
def unloadable_checkpoint(checkpoint, tmp_path_factory):
    """The checkpoint with its weights destroyed: whatever is refused here was refused
    before the model was loaded."""
    folder = tmp_path_factory.mktemp("unloadable") / "checkpoint"
    shutil.copytree(checkpoint, folder)
    for weights in folder.glob("*.safetensors"):
        weights.write_bytes(b"not safetensors")
    return folder


@pytest.mark.parametrize(
    "args,message",
    [  # tiny_config: max_position_embeddings 256; the byte tokenizer: one token per character
        (["--prompt", "x" * 256, "--max-new-tokens", "1"],
         "prompt tokens (256) + max_new_tokens (1) exceed the model's 256 positions"),
        (["--prompt", "x" * 10, "--max-new-tokens", "247"],
         "prompt tokens (10) + max_new_tokens (247) exceed the model's 256 positions"),
        (["--prompt", "x", "--runtime", "ort"], "is a checkpoint, not an exported artifact"),
    ],
)  # fmt: skip
def test_context_and_runtime_are_checked_before_loading(unloadable_checkpoint, capsys, args, message):
    assert message in _error_line(capsys, str(unloadable_checkpoint), *args)


def test_unloadable_checkpoint_is_really_unloadable(unloadable_checkpoint, capsys):
    """The fixture above proves ordering only if loading it does fail."""
    assert "safetensors" in _error_line(capsys, str(unloadable_checkpoint), "--prompt", "x").lower()


def test_generate_without_tokenizer(tmp_path, capsys):
    random_base_model(tiny_config("llama"), seed=1).save_pretrained(tmp_path)
    assert main(["generate", str(tmp_path), "--prompt", "x"]) == 2
    assert f"no usable tokenizer in {tmp_path}" in capsys.readouterr().err
