"""Conversion: both modes against an independent numpy computation of their closed forms."""

from __future__ import annotations

import json
import math
import weakref

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import AutoModelForCausalLM

from uniattn_export.errors import UniAttnError
from uniattn_export.model import UniAttnConfig, load_model, save_model
from uniattn_export.model.convert import convert_to_uniattn
from uniattn_export.model.synthetic import byte_tokenizer, random_base_model, tiny_config
from uniattn_export.model.text import load_documents

pytestmark = pytest.mark.usefixtures("single_torch_thread")

LAYER_MAP = UniAttnConfig.from_grouping(6, 3, 1, 6, "begin_offset")  # consumers 2, 3, 5


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base")
    random_base_model(tiny_config("llama", vocab_size=256), seed=11).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def texts():
    return load_documents("gensim:lee_background")[:40], load_documents("gensim:lee")[:6]


def _byte_ids(text: str, length: int) -> list[int]:
    return list(text.encode("utf-8"))[:length]


def _base_state(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _with_compensation(state, compensation: dict[int, np.ndarray]):
    out = dict(state)
    for layer, weight in compensation.items():
        out[f"model.layers.{layer}.v2_proj.weight"] = torch.from_numpy(weight)
    return out


def _streams(reference, state, config, producer_of, ids, mask, layers):
    """{layer: (n, h_mid)} as float64 numpy arrays from the independent implementation."""
    seen = {}

    def tap(layer, n, h):
        if layer in layers:
            seen[layer] = (n.numpy(), h.numpy())

    positions = torch.arange(ids.shape[1]).expand(ids.shape[0], -1)
    reference(state, config, producer_of, ids, mask, positions, tap)
    return seen


def _pinv_absolute(x: np.ndarray, cutoff: float = 1e-10) -> np.ndarray:
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    keep = s > cutoff
    return (vt[keep].T / s[keep]) @ u[:, keep].T


def test_paper_mode_equals_independent_closed_form(base_folder, texts, released_reference):
    calibration, heldout = texts[0][:6], texts[1][:2]
    length = 16
    model, report = convert_to_uniattn(
        base_folder, LAYER_MAP, calibration, byte_tokenizer(), heldout=heldout, mode="paper", heldout_fallback=False,
        max_length=length, batch_size=4,
    )  # fmt: skip
    config = model.config
    state = _base_state(base_folder)
    # Every sample padded (right, pad id 0) to max_length and run without a mask.
    ids = torch.tensor([_byte_ids(t, length) + [0] * (length - len(_byte_ids(t, length))) for t in calibration])
    ones = torch.ones_like(ids)
    consumers = LAYER_MAP.consumers
    base = _streams(released_reference, state, config, {}, ids, ones, set(consumers))
    producer_of = {c: LAYER_MAP.producer_of(c) for c in consumers}
    solved = {c: np.zeros((64, 64)) for c in consumers}
    for layer in consumers:
        n, h = _streams(released_reference, _with_compensation(state, solved), config, producer_of, ids, ones, {layer})[layer]
        x = n.mean(0)
        delta = base[layer][1].mean(0) - h.mean(0)
        solution = _pinv_absolute(x) @ delta
        solved[layer] = solution.T
        residual = np.linalg.norm(delta - x @ solution) / np.linalg.norm(delta)
        fit = next(f for f in report.consumers if f.layer == layer)
        assert fit.calibration_residual == pytest.approx(residual, abs=1e-6)
        ours = model.model.layers[layer].compensation.weight.detach().double().numpy()
        assert np.linalg.norm(ours - solved[layer]) <= 1e-4 * np.linalg.norm(solved[layer])
    assert report.mode == "paper" and report.ridge is None and report.uniattn == LAYER_MAP.to_dict()


@pytest.mark.parametrize("ridge", [0.05, 0.0])
def test_improved_mode_equals_independent_ridge_solution(base_folder, texts, released_reference, ridge):
    calibration, heldout = texts[0][:5], texts[1][:2]
    length = 40  # 200 token rows > d = 64: ridge 0 is plain least squares
    model, report = convert_to_uniattn(
        base_folder, LAYER_MAP, calibration, byte_tokenizer(), heldout=heldout, mode="improved", heldout_fallback=False,
        max_length=length, ridge=ridge, batch_size=2,
    )  # fmt: skip
    config = model.config
    state = _base_state(base_folder)
    consumers = LAYER_MAP.consumers
    producer_of = {c: LAYER_MAP.producer_of(c) for c in consumers}
    solved = {c: np.zeros((64, 64)) for c in consumers}
    # One unpadded sample at a time: every real token is a row, the target is that token's
    # base h_mid.
    samples = [torch.tensor([_byte_ids(t, length)]) for t in calibration]
    for layer in consumers:
        xtx, xtd, dtd = np.zeros((64, 64)), np.zeros((64, 64)), 0.0
        for ids in samples:
            ones = torch.ones_like(ids)
            _, target = _streams(released_reference, state, config, {}, ids, ones, {layer})[layer]
            n, h = _streams(released_reference, _with_compensation(state, solved), config, producer_of, ids, ones, {layer})[layer]
            x, delta = n[0], target[0] - h[0]
            xtx, xtd, dtd = xtx + x.T @ x, xtd + x.T @ delta, dtd + (delta**2).sum()
        solution = np.linalg.solve(xtx + ridge * np.trace(xtx) / 64 * np.eye(64), xtd)
        solved[layer] = solution.T
        fit = next(f for f in report.consumers if f.layer == layer)
        residual_sq = dtd - 2 * (solution * xtd).sum() + (solution * (xtx @ solution)).sum()
        assert fit.calibration_residual == pytest.approx(math.sqrt(residual_sq / dtd), abs=1e-5)
        ours = model.model.layers[layer].compensation.weight.detach().double().numpy()
        assert np.linalg.norm(ours - solved[layer]) <= 1e-4 * np.linalg.norm(solved[layer])
    assert report.ridge == ridge


def test_heldout_report_equals_an_independent_evaluation(base_folder, texts, tmp_path, released_reference):
    calibration, heldout = texts[0][:8], texts[1][:3]
    length = 32
    converted, report = convert_to_uniattn(
        base_folder, LAYER_MAP, calibration, byte_tokenizer(), heldout=heldout, mode="improved", max_length=length,
    )  # fmt: skip
    reloaded = load_model(save_model(converted, tmp_path / "converted"))
    base = AutoModelForCausalLM.from_pretrained(base_folder).eval()
    producer_of = {c: LAYER_MAP.producer_of(c) for c in LAYER_MAP.consumers}
    state = _base_state(base_folder)
    compensation = {c: reloaded.model.layers[c].compensation.weight.detach().double().numpy() for c in LAYER_MAP.consumers}
    converted_state = _with_compensation(state, compensation)
    softmax_only_state = _with_compensation(state, {c: np.zeros((64, 64)) for c in LAYER_MAP.consumers})
    kl = agree = tokens = nll_base = nll_converted = pairs = 0.0
    kl_softmax_only = nll_softmax_only = 0.0
    residual_sq = dict.fromkeys(LAYER_MAP.consumers, 0.0)
    target_sq = dict.fromkeys(LAYER_MAP.consumers, 0.0)
    for text in heldout:  # one unpadded sequence at a time
        ids = torch.tensor([_byte_ids(text, length)])
        with torch.no_grad():
            log_base = torch.log_softmax(base(input_ids=ids).logits[0].double(), -1)
            log_conv = torch.log_softmax(reloaded(input_ids=ids).logits[0].double(), -1)
        positions = torch.arange(ids.shape[1])[None]
        log_shared = torch.log_softmax(
            released_reference(softmax_only_state, reloaded.config, producer_of, ids, torch.ones_like(ids), positions)[0], -1
        )
        kl += float((log_base.exp() * (log_base - log_conv)).sum())
        kl_softmax_only += float((log_base.exp() * (log_base - log_shared)).sum())
        nll_softmax_only -= float(log_shared[:-1].gather(-1, ids[0, 1:, None]).sum())
        agree += float((log_base.argmax(-1) == log_conv.argmax(-1)).sum())
        tokens += ids.shape[1]
        nll_base -= float(log_base[:-1].gather(-1, ids[0, 1:, None]).sum())
        nll_converted -= float(log_conv[:-1].gather(-1, ids[0, 1:, None]).sum())
        pairs += ids.shape[1] - 1
        ones = torch.ones_like(ids)
        base_streams = _streams(released_reference, state, reloaded.config, {}, ids, ones, set(producer_of))
        conv_streams = _streams(released_reference, converted_state, reloaded.config, producer_of, ids, ones, set(producer_of))
        for layer in producer_of:
            n, h = conv_streams[layer]
            residual = base_streams[layer][1] - h
            residual_sq[layer] += (residual**2).sum()
            target_sq[layer] += ((residual + n @ compensation[layer].T) ** 2).sum()
    div = report.heldout
    assert div.tokens == tokens and report.heldout_samples == 3 and report.calibration_samples == 8
    assert div.kl_base_converted == pytest.approx(kl / tokens, rel=1e-4)
    assert div.top1_agreement == pytest.approx(agree / tokens)
    assert div.perplexity_base == pytest.approx(math.exp(nll_base / pairs), rel=1e-5)
    assert div.perplexity_converted == pytest.approx(math.exp(nll_converted / pairs), rel=1e-4)
    assert div.kl_base_softmax_only == pytest.approx(kl_softmax_only / tokens, rel=1e-4)
    assert div.perplexity_softmax_only == pytest.approx(math.exp(nll_softmax_only / pairs), rel=1e-4)
    for fit in report.consumers:
        expected = math.sqrt(residual_sq[fit.layer] / target_sq[fit.layer])
        assert fit.heldout_residual == pytest.approx(expected, rel=1e-4)
        assert fit.producer == LAYER_MAP.producer_of(fit.layer)


def test_improved_mode_fits_heldout_at_least_as_well_as_paper(base_folder, texts):
    calibration, heldout = texts
    kwargs = dict(heldout=heldout, max_length=48, batch_size=8, heldout_fallback=False)  # the fits as computed
    _, paper = convert_to_uniattn(base_folder, LAYER_MAP, calibration, byte_tokenizer(), mode="paper", **kwargs)
    _, improved = convert_to_uniattn(base_folder, LAYER_MAP, calibration, byte_tokenizer(), mode="improved", **kwargs)
    for p, i in zip(paper.consumers, improved.consumers):
        assert i.heldout_residual <= p.heldout_residual
        assert i.heldout_residual < 1.0  # better than no compensation at all
    assert improved.heldout.kl_base_converted <= paper.heldout.kl_base_converted
    assert improved.heldout.perplexity_base == paper.heldout.perplexity_base


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of tensor storage created inside the mode and still referenced."""

    def __init__(self):
        super().__init__()
        self.refs: dict[int, list] = {}  # data_ptr -> [live tensors, bytes]
        self.current = self.peak = 0

    def _release(self, key):
        entry = self.refs[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.current -= entry[1]
            del self.refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor) or tensor.untyped_storage().nbytes() == 0:
                continue
            key = tensor.untyped_storage().data_ptr()
            if key not in self.refs:
                self.refs[key] = [0, tensor.untyped_storage().nbytes()]
                self.current += self.refs[key][1]
                self.peak = max(self.peak, self.current)
            self.refs[key][0] += 1
            weakref.finalize(tensor, self._release, key)
        return out


@pytest.mark.parametrize("mode", ["paper", "improved"])
def test_memory_does_not_grow_with_the_number_of_samples(base_folder, texts, mode):
    calibration, heldout = texts
    base = load_model(base_folder, dtype="float32")
    peaks = []
    for count in (8, 32):  # 2 and 8 mini-batches
        with LiveTensorBytes() as tracker:
            convert_to_uniattn(
                base, LAYER_MAP, calibration[:count], byte_tokenizer(), heldout=heldout[:2], mode=mode,
                max_length=64, batch_size=4,
            )  # fmt: skip
        peaks.append(tracker.peak)
    one_batch_stream = 4 * 64 * 64 * 4  # (batch, tokens, d) fp32: the tracker does see activations
    assert peaks[0] > one_batch_stream
    # 4x the samples: storing every sample's hidden states would add 6 batches' worth.
    assert peaks[1] <= peaks[0] + one_batch_stream // 4


def test_conversion_leaves_the_base_model_unchanged(base_folder, texts):
    base = load_model(base_folder)
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = base(input_ids=ids).logits
        converted, _ = convert_to_uniattn(base, LAYER_MAP, texts[0][:4], byte_tokenizer(), heldout=texts[1][:1], max_length=16)
        assert torch.equal(base(input_ids=ids).logits, before)
        assert not torch.equal(converted(input_ids=ids).logits, before)
    assert converted.uniattn_config == LAYER_MAP


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(mode="best"), "unknown conversion mode 'best'"),
        (dict(layer_map=UniAttnConfig.none(6)), "the layer map has no consumer layers"),
        (dict(layer_map=UniAttnConfig.from_grouping(8, 2, 0, 8, "begin_offset")), "describes 8 layers but the base model has 6"),
        (dict(calibration=[]), "no calibration text"),
        (dict(heldout=[]), "no held-out text"),
        (dict(max_length=1), "max_length must be >= 2"),
        (dict(ridge=-1.0), "ridge must be >= 0"),
        (dict(batch_size=0), "batch size must be >= 1"),
    ],
)
def test_bad_conversion_inputs(base_folder, texts, change, message):
    args = dict(layer_map=LAYER_MAP, calibration=texts[0][:2], heldout=texts[1][:1], max_length=16)
    args.update(change)
    with pytest.raises(UniAttnError, match=message):
        convert_to_uniattn(base_folder, args.pop("layer_map"), args.pop("calibration"), byte_tokenizer(), **args)


def test_an_already_converted_model_is_refused(base_folder, texts, tmp_path):
    converted, _ = convert_to_uniattn(base_folder, LAYER_MAP, texts[0][:2], byte_tokenizer(), heldout=texts[1][:1], max_length=16)
    with pytest.raises(UniAttnError, match="already shares softmax between layers"):
        convert_to_uniattn(converted, LAYER_MAP, texts[0][:2], byte_tokenizer(), heldout=texts[1][:1], max_length=16)


def test_a_fit_worse_than_no_compensation_on_heldout_falls_back_to_zero(base_folder, texts):
    """Paper mode on 3 short samples: 16 averaged rows for d = 64 unknowns per output
    interpolate the calibration set, and the fit does worse on held-out text than Wc = 0."""
    calibration, heldout = texts[0][:3], texts[1][:3]
    kwargs = dict(heldout=heldout, mode="paper", max_length=16, batch_size=4)
    kept, kept_report = convert_to_uniattn(base_folder, LAYER_MAP, calibration, byte_tokenizer(), heldout_fallback=False, **kwargs)
    model, report = convert_to_uniattn(base_folder, LAYER_MAP, calibration, byte_tokenizer(), **kwargs)
    first = LAYER_MAP.consumers[0]
    # The first consumer's fit depends on no other consumer: the run that keeps every fit
    # measures the same held-out residual the fallback decided on, independently.
    assert report.consumers[0].fitted_heldout_residual == pytest.approx(kept_report.consumers[0].heldout_residual, rel=1e-6)
    assert kept_report.consumers[0].heldout_residual > 1 and first in report.fallbacks
    for fit in report.consumers:
        assert fit.fell_back_to_zero == (fit.fitted_heldout_residual > 1)
        zero = not model.model.layers[fit.layer].compensation.weight.any()
        assert zero == fit.fell_back_to_zero == (fit.layer in report.fallbacks)
    for layer in report.fallbacks:  # Wc = 0 is, by definition, residual 1 on held-out text
        assert report.consumers[LAYER_MAP.consumers.index(layer)].heldout_residual == pytest.approx(1.0)
    assert report.heldout.kl_base_converted < kept_report.heldout.kl_base_converted
    assert kept_report.heldout.worse_than_no_compensation and kept_report.fallbacks == []
    saved = json.loads(report.to_json())
    assert saved["fallbacks"] == report.fallbacks and saved["heldout_fallback"] is True
    assert saved["heldout"]["worse_than_no_compensation"] == report.heldout.worse_than_no_compensation
    assert report.warnings()[0].startswith(f"Wc of consumer(s) {', '.join(map(str, report.fallbacks))} set to zero")
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(report.table())
    rows = [line for line in console.export_text().splitlines() if " > 1)" in line]
    assert [int(row.split()[1]) for row in rows] == report.fallbacks  # "│ 2 │ 1 │ ... │ 0 (fit 1.31 > 1) │"
