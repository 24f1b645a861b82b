"""Text sources, the calibration / held-out split, and perplexity."""

from __future__ import annotations

import json
import math

import pytest
import torch

from uniattn_export.errors import UniAttnError
from uniattn_export.model.synthetic import byte_tokenizer, random_base_model, tiny_config
from uniattn_export.model.text import calibration_and_heldout, load_documents, perplexity

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def test_txt_documents_are_separated_by_blank_lines(tmp_path):
    source = tmp_path / "docs.txt"
    source.write_text("first line\nstill first\n\n  \nsecond\n\n\n\nthird\n")
    assert load_documents(str(source)) == ["first line\nstill first", "second", "third"]


def test_jsonl_and_json_records(tmp_path):
    records = [
        {"text": "plain text"},
        {"instruction": "Summarize.", "input": "A long story.", "output": "A story."},
        {"instruction": "Say hi.", "input": "", "output": "Hi."},
    ]
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    expected = ["plain text", "Summarize.\n\nA long story.\n\nA story.", "Say hi.\n\nHi."]
    assert load_documents(str(jsonl)) == expected
    as_json = tmp_path / "data.json"
    as_json.write_text(json.dumps(records))
    assert load_documents(str(as_json)) == expected


def test_gensim_corpora():
    background = load_documents("gensim:lee_background")
    lee = load_documents("gensim:lee")
    wikipedia = load_documents("gensim:wikipedia")
    assert (len(background), len(lee), len(wikipedia)) == (300, 50, 106)
    assert background[0].startswith("Hundreds of people have been forced to vacate their homes")
    assert not set(background) & set(lee)
    assert wikipedia[0].startswith("Anarchism is a political philosophy")
    assert not any("'''" in article or article.lower().startswith("#redirect") for article in wikipedia)


@pytest.mark.parametrize(
    "content,name,message",
    [
        (None, "missing.txt", "text file .*missing.txt does not exist"),
        ("{broken", "bad.json", "bad.json is not valid JSON"),
        ('{"text": "a"}', "obj.json", "holds a JSON dict. Store a list of records"),
        ('{"title": "no text"}\n', "bad.jsonl", "record 0 of bad.jsonl has no 'text' field"),
        ("a,b\n", "table.csv", "unsupported text file type table.csv"),
        ("\n\n  \n", "empty.txt", "contains no text"),
    ],
)
def test_bad_text_sources(tmp_path, content, name, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(UniAttnError, match=message):
        load_documents(str(path))


def test_unknown_builtin_corpus():
    with pytest.raises(UniAttnError, match="unknown built-in text gensim:shakespeare. Use one of: gensim:lee_background"):
        load_documents("gensim:shakespeare")


def test_same_source_is_split_into_disjoint_parts(tmp_path):
    source = tmp_path / "docs.txt"
    source.write_text("\n\n".join(f"document {i}" for i in range(10)))
    for heldout_source in (None, str(source), str(tmp_path / "." / "docs.txt")):
        split = calibration_and_heldout(str(source), heldout_source, num_calibration=100, num_heldout=3)
        assert split.heldout == ["document 7", "document 8", "document 9"]
        assert split.calibration == [f"document {i}" for i in range(7)]
        assert "held out the last 3 documents" in split.note
    split = calibration_and_heldout(str(source), None, num_calibration=2, num_heldout=50)
    assert split.heldout == [f"document {i}" for i in range(5, 10)]  # at most half is held out
    assert split.calibration == ["document 0", "document 1"]


def test_overlapping_heldout_documents_are_dropped(tmp_path):
    calibration, heldout = tmp_path / "calibration.txt", tmp_path / "heldout.txt"
    calibration.write_text("alpha\n\nbeta\n\ngamma")
    heldout.write_text("beta\n\ndelta")
    split = calibration_and_heldout(str(calibration), str(heldout), 10, 10)
    assert split.calibration == ["alpha", "beta", "gamma"] and split.heldout == ["delta"]
    assert "1 documents also in the calibration set were dropped" in split.note
    heldout.write_text("beta\n\ngamma")
    with pytest.raises(UniAttnError, match="every document of .*heldout.txt also occurs in the calibration text"):
        calibration_and_heldout(str(calibration), str(heldout), 10, 10)
    single = tmp_path / "single.txt"
    single.write_text("only one")
    with pytest.raises(UniAttnError, match="has a single document: nothing to hold out"):
        calibration_and_heldout(str(single), None, 10, 10)
    with pytest.raises(UniAttnError, match="must be >= 1"):
        calibration_and_heldout(str(calibration), None, 0, 10)


def test_perplexity_equals_a_per_text_computation():
    model = random_base_model(tiny_config("llama", vocab_size=256), seed=6)
    tokenizer = byte_tokenizer()
    texts = ["The quick brown fox.", "Jumps over the lazy dog, twice over.", "Hi"]
    nll, count = 0.0, 0
    for text in texts:  # one unpadded sequence at a time, truncated to 24 tokens
        ids = torch.tensor([list(text.encode())[:24]])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
        nll -= float(log_probs.gather(-1, ids[0, 1:, None]).sum())
        count += ids.shape[1] - 1
    expected = math.exp(nll / count)
    assert perplexity(model, tokenizer, texts, max_length=24, batch_size=2) == pytest.approx(expected, rel=1e-5)
