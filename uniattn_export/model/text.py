"""Text for calibration and evaluation, and perplexity.

A text source is a file or the name of a corpus that ships inside gensim (so everything
runs offline):
  *.txt              documents separated by blank lines
  *.jsonl / *.json   one object per document: a "text" field, or the instruction format of
                     the released training data (instruction / input / output)
  gensim:lee_background   300 news articles (Lee corpus background set)
  gensim:lee              50 further news articles, disjoint from lee_background
  gensim:wikipedia        106 English Wikipedia articles (markup stripped)
Calibration and held-out text must not overlap: `calibration_and_heldout` splits one source
in two, or drops held-out documents that also occur in the calibration set.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from ..errors import UniAttnError

GENSIM_PREFIX = "gensim:"
GENSIM_FILES = {
    "lee_background": "lee_background.cor",
    "lee": "lee.cor",
    "wikipedia": "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
}
INSTRUCTION_FIELDS = ("instruction", "input", "output")


def _gensim_datapath(name: str) -> str:
    try:
        from gensim.test.utils import datapath
    except ImportError:
        raise UniAttnError(
            f"text source {GENSIM_PREFIX}{name} needs gensim", "install it with: pip install gensim==4.4.0"
        ) from None
    return datapath(GENSIM_FILES[name])


def _wikipedia_articles(path: str) -> list[str]:
    import bz2

    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    with bz2.open(path) as dump:
        pages = [filter_wiki(text) for _title, text, _id in extract_pages(dump)]
    articles = []
    for page in pages:
        if page.lstrip().lower().startswith("#redirect"):
            continue
        # filter_wiki keeps bold/italic quote marks and runs of empty lines.
        page = re.sub(r"'{2,}", "", page)
        articles.append(re.sub(r"\n\s*\n+", "\n\n", page).strip())
    return articles


@lru_cache(maxsize=8)
def _builtin_documents(name: str) -> tuple[str, ...]:
    if name not in GENSIM_FILES:
        known = ", ".join(GENSIM_PREFIX + n for n in GENSIM_FILES)
        raise UniAttnError(f"unknown built-in text {GENSIM_PREFIX}{name}", f"use one of: {known}")
    path = _gensim_datapath(name)
    if name == "wikipedia":
        return tuple(_wikipedia_articles(path))
    # The Lee corpora are one article per line; lee.cor is Latin-1.
    return tuple(Path(path).read_text(encoding="latin-1").splitlines())


def _record_text(record, where: str) -> str:
    if isinstance(record, dict):
        if isinstance(record.get("text"), str):
            return record["text"]
        instruction, extra_input, output = (record.get(k) or "" for k in INSTRUCTION_FIELDS)
        if all(isinstance(f, str) for f in (instruction, extra_input, output)) and (instruction or output):
            return "\n\n".join(f for f in (instruction, extra_input, output) if f)
    raise UniAttnError(
        f"{where} has no 'text' field and no instruction/input/output fields",
        "give every record a 'text' string (or the released instruction format)",
    )


def _file_documents(path: Path) -> list[str]:
    if not path.is_file():
        raise UniAttnError(f"text file {path} does not exist", "check the path")
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UniAttnError(f"{path} is not UTF-8 text ({exc.reason})", "convert it to UTF-8") from None
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return re.split(r"\n[ \t]*\n", content)
    try:
        if suffix == ".jsonl":
            records = [
                json.loads(line) for line in content.splitlines() if line.strip()
            ]
        elif suffix == ".json":
            records = json.loads(content)
        else:
            raise UniAttnError(
                f"unsupported text file type {path.name}", "use a .txt, .jsonl or .json file"
            )
    except json.JSONDecodeError as exc:
        raise UniAttnError(f"{path} is not valid JSON ({exc})", "fix the file") from None
    if not isinstance(records, list):
        raise UniAttnError(f"{path} holds a JSON {type(records).__name__}", "store a list of records")
    return [_record_text(r, f"record {i} of {path.name}") for i, r in enumerate(records)]


def load_documents(source: str) -> list[str]:
    """The non-empty documents of a text source (a file or a gensim: corpus name)."""
    if source.startswith(GENSIM_PREFIX):
        documents = list(_builtin_documents(source[len(GENSIM_PREFIX) :]))
    else:
        documents = _file_documents(Path(source))
    documents = [d.strip() for d in documents if d.strip()]
    if not documents:
        raise UniAttnError(f"text source {source} contains no text", "pass a file with documents")
    return documents


@dataclass(frozen=True)
class TextSplit:
    calibration: list[str]
    heldout: list[str]
    note: str  # how the two sets were made disjoint


def _same_source(a: str, b: str) -> bool:
    if a.startswith(GENSIM_PREFIX) or b.startswith(GENSIM_PREFIX):
        return a == b
    return Path(a).resolve() == Path(b).resolve()


def calibration_and_heldout(
    calibration_source: str,
    heldout_source: str | None,
    num_calibration: int,
    num_heldout: int,
) -> TextSplit:
    """Disjoint calibration and held-out documents.

    Without a separate held-out source (or with the same one) the last `num_heldout`
    documents are held out and calibration takes the first of the rest.
    """
    if num_calibration < 1 or num_heldout < 1:
        raise UniAttnError(
            "the number of calibration and held-out samples must be >= 1", "pass positive counts"
        )
    documents = load_documents(calibration_source)
    if heldout_source is None or _same_source(calibration_source, heldout_source):
        if len(documents) < 2:
            raise UniAttnError(
                f"{calibration_source} has a single document: nothing to hold out",
                "pass --heldout with a separate text source",
            )
        num_heldout = min(num_heldout, len(documents) // 2)
        heldout = documents[-num_heldout:]
        calibration = documents[: len(documents) - num_heldout][:num_calibration]
        note = f"held out the last {num_heldout} documents of {calibration_source}"
        return TextSplit(calibration, heldout, note)
    calibration = documents[:num_calibration]
    seen = set(calibration)
    candidates = load_documents(heldout_source)
    heldout = [d for d in candidates if d not in seen][:num_heldout]
    if not heldout:
        raise UniAttnError(
            f"every document of {heldout_source} also occurs in the calibration text",
            "pass held-out text that is not part of the calibration set",
        )
    dropped = len(candidates) - len([d for d in candidates if d not in seen])
    note = f"held-out text from {heldout_source}" + (
        f" ({dropped} documents also in the calibration set were dropped)" if dropped else ""
    )
    return TextSplit(calibration, heldout, note)


def next_token_nll(
    logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[float, int]:
    """(sum of -log p(next token), number of predicted tokens) over real token pairs."""
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = input_ids[:, 1:]
    nll = -log_probs.gather(-1, targets[..., None])[..., 0]
    pairs = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
    return float(nll[pairs].double().sum()), int(pairs.sum())


def perplexity(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 4) -> float:
    """exp(mean next-token NLL) over `texts`, each truncated to `max_length` tokens."""
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenize(tokenizer, texts[start : start + batch_size], max_length, pad_to_max=False)
            batch = {name: tensor.to(model.device) for name, tensor in batch.items()}
            logits = model(**batch, use_cache=False).logits
            nll, n = next_token_nll(logits, batch["input_ids"], batch["attention_mask"])
            total, count = total + nll, count + n
    if count == 0:
        raise UniAttnError("the texts hold no token pairs to score", "pass longer texts")
    return float(torch.tensor(total / count).exp())


def tokenize(tokenizer, texts: list[str], max_length: int, pad_to_max: bool) -> dict[str, torch.Tensor]:
    """Right-padded, truncated batch (positions 0.. of every row are its real tokens)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    encoded = tokenizer(
        texts,
        padding="max_length" if pad_to_max else "longest",
        truncation=True,
        max_length=max_length,
        padding_side="right",
        return_tensors="pt",
    )
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
