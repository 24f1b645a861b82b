"""validate_artifact: report content, derived tolerances, detection of a wrong model, golden
store/check and its regression detection, perplexity."""

from __future__ import annotations

import pytest
import torch
from rich.console import Console

from uniattn_export.errors import UniAttnError
from uniattn_export.export import export_model, load_artifact
from uniattn_export.model import load_model
from uniattn_export.model.tokenizer import load_tokenizer
from uniattn_export.targets.ort import OrtSession
from uniattn_export.validate import run as run_module
from uniattn_export.validate import validate_artifact
from uniattn_export.validate.golden import GOLDEN_FILE, LOGITS_FILE
from uniattn_export.validate.report import summary_table
from uniattn_export.validate.run import DEFAULT_PROMPTS


def _plain(artifact):
    return OrtSession(artifact, custom_ops=False)


def test_float32_report(artifact):
    art = artifact()
    report = validate_artifact(art, session=_plain(art))
    assert report["passed"] and report["failures"] == []
    assert report["reference_source"] == "pytorch" and "float32 from" in report["reference"]
    assert report["runtime"].endswith("ONNX function bodies (no custom-op library), float32")
    tol = report["tolerance"]
    assert tol["noise_source"] == "PyTorch reference float32 vs float64 on the same tokens"
    assert tol["logits_abs"] >= 4 * tol["noise_abs"] > 0
    assert tol["smallest_passing"] == report["logits"]["max_abs"] < 1e-4  # the fp32 contract
    tokenizer = load_tokenizer(art.path)
    assert report["prompts"] == [tokenizer(p)["input_ids"] for p in DEFAULT_PROMPTS]
    assert 0 not in (t for p in report["prompts"] for t in p)  # no <unk>: real words
    assert report["max_new_tokens"] == 12 and len(report["logits"]["per_step"]) == 12
    assert report["tokens"]["agreement"] == 1.0 and report["tokens"]["first_divergence_step"] == [None] * 3
    assert report["tokens"]["artifact"] == report["tokens"]["reference"]
    assert report["topk"]["k"] == 5 and report["topk"]["min"] == 1.0
    worst = report["logits"]["worst"]
    assert abs(worst["artifact"] - worst["reference"]) == pytest.approx(report["logits"]["max_abs"])
    text = _render(report)
    assert "verdict" in text and "FAIL" not in text and f"{report['logits']['max_abs']:.3g}" in text


def _render(report):
    console = Console(record=True, width=160)
    console.print(summary_table(report))
    return console.export_text()


def test_float16_tolerance_comes_from_float16_noise(artifact):
    art = artifact("float16")
    report = validate_artifact(art, session=_plain(art), max_new_tokens=6)
    tol = report["tolerance"]
    assert tol["noise_source"] == "PyTorch reference float16 vs float32 on the same tokens"
    assert report["passed"], report["failures"]
    assert 1e-3 < tol["noise_abs"] < 0.5  # float16 rounding of logits of magnitude ~5
    assert report["logits"]["max_abs"] <= tol["logits_abs"]


def test_a_different_model_fails_with_its_first_divergence(artifact, checkpoint):
    art = artifact()
    report = validate_artifact(art, session=_plain(art), checkpoint=checkpoint(seed=4))
    assert not report["passed"]
    assert report["failures"][0].startswith("logits differ by")
    assert report["tokens"]["divergences"] and 0 in report["tokens"]["first_divergence_step"]
    assert report["tolerance"]["smallest_passing"] > report["tolerance"]["logits_abs"]
    assert "FAIL" in _render(report)


def test_golden_store_check_and_regression(artifact, checkpoint, tmp_path, monkeypatch):
    art = artifact()
    golden = tmp_path / "golden"
    stored = validate_artifact(art, session=_plain(art), golden=golden)
    assert stored["reference_source"] == "pytorch" and stored["passed"]
    assert (golden / GOLDEN_FILE).is_file() and (golden / LOGITS_FILE).is_file()

    def no_pytorch(*args, **kwargs):
        raise AssertionError("a golden check must not load the PyTorch model")

    monkeypatch.setattr(run_module, "_pytorch_reference", no_pytorch)
    checked = validate_artifact(art, session=_plain(art), golden=golden)
    assert checked["reference_source"] == "golden" and checked["passed"]
    assert checked["logits"]["max_abs"] == stored["logits"]["max_abs"]
    assert checked["tolerance"]["logits_abs"] == stored["tolerance"]["logits_abs"]

    # A later build whose weights drifted: one o_proj perturbed by 1e-2 noise.
    model = load_model(checkpoint())
    with torch.no_grad():
        weight = model.model.layers[2].self_attn.o_proj.weight
        weight += 1e-2 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0))
    drifted = load_artifact(export_model(model, tmp_path / "drifted", source_dir=checkpoint()))
    regressed = validate_artifact(drifted, session=_plain(drifted), golden=golden)
    assert not regressed["passed"] and regressed["failures"][0].startswith("logits differ by")


def test_golden_for_another_dtype_is_refused(artifact, tmp_path):
    art = artifact()
    validate_artifact(art, session=_plain(art), golden=tmp_path / "golden", max_new_tokens=2)
    half = artifact("float16")
    with pytest.raises(UniAttnError, match="golden outputs in .* are for dtype='float32' but the artifact has 'float16'"):
        validate_artifact(half, session=_plain(half), golden=tmp_path / "golden")


def test_golden_never_replaces_a_folder_that_is_not_golden(artifact, tmp_path):
    art = artifact()
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "keep.txt").write_text("x")
    with pytest.raises(UniAttnError, match="results exists and is not a golden folder"):
        validate_artifact(art, session=_plain(art), golden=tmp_path / "results")
    assert (tmp_path / "results" / "keep.txt").read_text() == "x"


def test_perplexity_matches_the_reference(artifact, text):
    art = artifact()
    report = validate_artifact(art, session=_plain(art), max_new_tokens=2, perplexity_text=text)
    ppl = report["perplexity"]
    assert ppl["tokens"] == 36 and ppl["abs_diff"] <= ppl["tolerance_abs"]
    # Independent check: exp(cross-entropy) of the PyTorch reference over the same tokens.
    ids = torch.tensor([load_tokenizer(art.path)(text)["input_ids"]])
    with torch.no_grad():
        logits = load_model(art.source_checkpoint)(input_ids=ids).logits
    expected = torch.exp(torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])).item()
    assert ppl["reference"] == pytest.approx(expected, rel=1e-5)
    assert report["passed"]


def test_perplexity_of_a_static_artifact_comes_from_decode_steps(artifact, text):
    """A static artifact returns only the last position's logits: its perplexity is measured by
    feeding the text one decode step at a time, and agrees with the reference's prefill and with
    the dynamic artifact's all-position logits."""
    static = artifact(cache="static", max_length=64)
    assert static.manifest["logits"] == "last"
    dynamic = validate_artifact(artifact(), session=_plain(artifact()), max_new_tokens=2, perplexity_text=text)
    assert dynamic["perplexity"]["artifact_method"] == "prefill"
    for session in (_plain(static), OrtSession(static, custom_ops=True)):  # function bodies, then our kernels
        report = validate_artifact(static, session=session, max_new_tokens=2, perplexity_text=text)
        ppl = report["perplexity"]
        assert ppl["tokens"] == 36 and ppl["abs_diff"] <= ppl["tolerance_abs"] and report["passed"]
        assert ppl["artifact_method"] == "decode steps" and "artifact by decode steps" in _render(report)
        assert ppl["reference"] == dynamic["perplexity"]["reference"]
        assert ppl["artifact"] == pytest.approx(dynamic["perplexity"]["artifact"], rel=1e-5)


def test_static_perplexity_detects_a_wrong_decode_step(artifact, text, monkeypatch):
    """Mutation check: logits of a decode step that saw the wrong token move the perplexity."""
    static = artifact(cache="static", max_length=64)
    session = _plain(static)
    step = session.step

    def shifted(input_ids, attention_mask, position_ids):
        if input_ids.shape[1] == 1 and attention_mask.shape[1] == 20:  # one decode step mid-text
            input_ids = (input_ids + 1) % static.vocab_size
        return step(input_ids, attention_mask, position_ids)

    monkeypatch.setattr(session, "step", shifted)
    report = validate_artifact(static, session=session, max_new_tokens=2, perplexity_text=text)
    assert report["perplexity"]["abs_diff"] > report["perplexity"]["tolerance_abs"] and not report["passed"]
    assert any(f.startswith("perplexity ") for f in report["failures"])


def test_perplexity_text_is_clipped_to_the_capacity(artifact, text):
    static = artifact(cache="static", max_length=16)
    report = validate_artifact(static, session=_plain(static), max_new_tokens=2, perplexity_text=text)
    assert report["perplexity"]["tokens"] == 16 and report["passed"]


def test_missing_reference_is_a_clear_error(artifact, tmp_path):
    art = artifact()
    with pytest.raises(UniAttnError, match=r"no PyTorch reference .*Pass --checkpoint FOLDER, or --golden DIR"):
        validate_artifact(art, session=_plain(art), checkpoint=tmp_path / "gone")
    with pytest.raises(UniAttnError, match=r"prompt 0 has token id 999 outside the vocabulary \[0, 128\)"):
        validate_artifact(art, session=_plain(art), prompts=[[1, 999]])
