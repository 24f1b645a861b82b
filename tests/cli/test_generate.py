"""`uniattn-export generate` on a tiny checkpoint in the authors' layout."""

from __future__ import annotations

import json

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


@pytest.mark.parametrize(
    "args,message",
    [
        (["--top-k", "5"], "--top-k, --top-p and --num-return-sequences apply to sampling"),
        (["--temperature", "0"], "--temperature must be > 0"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
        (["--dtype", "float7"], "unknown dtype 'float7'"),
    ],
)
def test_generate_errors(checkpoint, capsys, args, message):
    assert main(["generate", str(checkpoint), "--prompt", "x", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("uniattn-export generate: error: ") and message in err and "\n" not in err


def test_generate_without_tokenizer(tmp_path, capsys):
    random_base_model(tiny_config("llama"), seed=1).save_pretrained(tmp_path)
    assert main(["generate", str(tmp_path), "--prompt", "x"]) == 2
    assert f"no usable tokenizer in {tmp_path}" in capsys.readouterr().err
