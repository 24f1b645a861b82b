"""Conversion of a base model into a UniAttn model: the closed-form initialization of Wc.

The converted model shares the base model's weights, drops the consumers' q/k projections
and gets one compensation matrix Wc per consumer, fitted so that the consumer's
post-attention residual stream h_mid (x + attention output, before the MLP) stays close to
the base model's. Consumers are fitted in layer order; consumer k is fitted with Wc of
consumers 0..k-1 already in place, so each fit also absorbs the error of the earlier ones.

Two modes:
  paper     the released closed form. Calibration samples padded to max_length and run
            without an attention mask (pads included), fp32. Per position, h_mid and the
            normed input n are averaged over samples: Ybase (base model), Yuni and X
            (unified model). Wc = pinv(X) (Ybase - Yuni): minimum-norm least squares via
            SVD with an absolute cutoff of 1e-10.
  improved  attention-masked, token-level: every real token is a row, the target is the
            base model's h_mid for that same token, and the fit is ridge-regularized
            (lambda relative to the mean diagonal of X^T X), solved from streamed normal
            equations.
Statistics are streamed (running sums of size max_length x d or d x d) and every pass stops
at the deepest layer it measures, so memory does not grow with the number of samples.

Held-out fallback (on by default): right after consumer k is fitted, its fit is measured on
the held-out text (token level, real tokens only, earlier consumers as converted). A Wc that
does worse there than Wc = 0 (relative residual > 1: the fit learned the calibration set,
not the model) is set to zero before consumer k+1 is fitted, and the report says so. The
released closed form overfits this way when calibration rows are few (its per-position
means give max_length rows for d unknowns per output).

The report measures the result on held-out text: per consumer, the relative residual of the
fit at token level (0 = exact, 1 = no better than Wc = 0), and for the whole model the mean
per-token KL(base || converted), top-1 agreement and perplexity of both, and of the model
with every Wc = 0; `worse_than_no_compensation` flags a result whose KL exceeds the latter.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Literal, Sequence

import torch

from ..errors import UniAttnError
from ..progress import progress_bar
from .checkpoint import load_model, model_from_state, to_model_keys
from .config import UniAttnConfig
from .modeling import LayerTap, UniAttnForCausalLM
from .text import next_token_nll, tokenize

ConversionMode = Literal["paper", "improved"]
MODES: tuple[str, ...] = ("paper", "improved")
PINV_CUTOFF = 1e-10  # absolute singular-value cutoff of the released pinv
DEFAULT_RIDGE = 0.1


@dataclass(frozen=True)
class ConsumerFit:
    layer: int
    producer: int
    calibration_residual: float  # relative residual of the system this mode solves
    heldout_residual: float  # token-level relative residual on held-out text
    compensation_norm: float  # Frobenius norm of Wc (0 after a fallback)
    # Held-out relative residual of the fitted Wc, measured right after its fit; when it was
    # above 1 (worse than Wc = 0) Wc was set to zero: `fell_back_to_zero`.
    fitted_heldout_residual: float | None = None
    fell_back_to_zero: bool = False


@dataclass(frozen=True)
class HeldoutDivergence:
    tokens: int
    kl_base_converted: float  # mean over real tokens of KL(base || converted), nats
    top1_agreement: float  # fraction of real tokens where both models' argmax agree
    perplexity_base: float
    perplexity_converted: float
    # The same model with Wc = 0 (shared softmax, no compensation), for comparison.
    kl_base_softmax_only: float
    perplexity_softmax_only: float

    @property
    def worse_than_no_compensation(self) -> bool:
        return self.kl_base_converted > self.kl_base_softmax_only


@dataclass(frozen=True)
class ConversionReport:
    mode: str
    uniattn: dict
    max_length: int
    ridge: float | None
    calibration_samples: int
    heldout_samples: int
    consumers: list[ConsumerFit]
    heldout: HeldoutDivergence
    heldout_fallback: bool = True

    @property
    def fallbacks(self) -> list[int]:
        """Consumers whose Wc was set to zero because the fit did worse on held-out text."""
        return [fit.layer for fit in self.consumers if fit.fell_back_to_zero]

    def warnings(self) -> list[str]:
        lines = []
        if self.fallbacks:
            lines.append(
                f"Wc of consumer(s) {', '.join(map(str, self.fallbacks))} set to zero: the fit did worse on "
                "held-out text than no compensation (more or more representative calibration text helps)"
            )
        if self.heldout.worse_than_no_compensation:
            lines.append(
                f"the converted model diverges more from the base on held-out text than with every Wc = 0 "
                f"(KL {self.heldout.kl_base_converted:.4f} > {self.heldout.kl_base_softmax_only:.4f} nats/token)"
            )
        return lines

    def to_dict(self) -> dict:
        report = asdict(self)
        report["heldout"]["worse_than_no_compensation"] = self.heldout.worse_than_no_compensation
        report["fallbacks"] = self.fallbacks
        return report

    def to_json(self, **extra) -> str:
        """The report plus `extra` entries (which must not shadow the report's own)."""
        report = self.to_dict()
        assert not set(extra) & set(report), "extra entries shadow report fields"
        return json.dumps({**report, **extra}, indent=2)

    def table(self):
        from rich.table import Table

        ridge = f", ridge {self.ridge:g}" if self.ridge is not None else ""
        table = Table(
            title=f"Wc fit ({self.mode} mode{ridge}, {self.calibration_samples} calibration "
            f"samples, max length {self.max_length})",
            caption=(
                f"held-out ({self.heldout_samples} samples, {self.heldout.tokens} tokens): "
                f"KL(base||converted) {self.heldout.kl_base_converted:.4f} nats/token, "
                f"top-1 agreement {100 * self.heldout.top1_agreement:.1f}%, perplexity "
                f"{self.heldout.perplexity_base:.3f} -> {self.heldout.perplexity_converted:.3f} "
                f"(without Wc: KL {self.heldout.kl_base_softmax_only:.4f}, perplexity "
                f"{self.heldout.perplexity_softmax_only:.3f})"
            ),
        )
        for column in ("consumer", "producer", "fit residual (calibration)",
                       "fit residual (held-out)", "|Wc|", "Wc used"):  # fmt: skip
            table.add_column(column, justify="right")
        for fit in self.consumers:
            if fit.fell_back_to_zero:
                used = f"0 (fit {fit.fitted_heldout_residual:.2f} > 1)"  # held-out residual of the fit
            else:
                used = "fitted"
            table.add_row(
                str(fit.layer), str(fit.producer), f"{fit.calibration_residual:.4f}",
                f"{fit.heldout_residual:.4f}", f"{fit.compensation_norm:.3g}", used,
            )  # fmt: skip
        return table


def unify(base: UniAttnForCausalLM, layer_map: UniAttnConfig) -> UniAttnForCausalLM:
    """The base model's weights (shared, not copied) in `layer_map`'s structure, Wc = 0."""
    config = copy.deepcopy(base.config)
    state = to_model_keys(dict(base.state_dict()), layer_map, config)
    model = model_from_state(config, layer_map, state)
    model.generation_config = copy.deepcopy(base.generation_config)
    return model


def _run(model: UniAttnForCausalLM, batch: dict, tap: LayerTap | None, last_layer: int | None = None):
    """Forward over a right-padded batch; the final hidden states (after `last_layer`)."""
    input_ids = batch["input_ids"]
    rows, length = input_ids.shape
    hidden = model.model.embed_tokens(input_ids)
    position_ids = torch.arange(length, device=input_ids.device).expand(rows, -1)
    past = model.past_from(None, rows, hidden.dtype, hidden.device)
    hidden, _ = model.model.run_layers(
        hidden, position_ids, batch["attention_mask"], past, model.attention_ops,
        last_layer=last_layer, tap=tap,
    )  # fmt: skip
    return hidden


def _capture(model, batch, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(normed input n, h_mid) of `layer`, running the model only up to that layer."""
    seen = {}

    def tap(at, normed, attended):
        if at == layer:
            seen["n"], seen["h"] = normed, attended

    _run(model, batch, tap, last_layer=layer)
    return seen["n"], seen["h"]


def _batches(texts: Sequence[str], batch_size: int, tokenizer, max_length: int, pad_to_max: bool, device):
    """Tokenized lazily, one mini-batch at a time."""
    for start in range(0, len(texts), batch_size):
        batch = tokenize(tokenizer, list(texts[start : start + batch_size]), max_length, pad_to_max)
        if pad_to_max:
            # The released calibration runs without an attention mask: pads are attended to.
            batch["attention_mask"] = torch.ones_like(batch["attention_mask"])
        yield {name: tensor.to(device) for name, tensor in batch.items()}


def _set_compensation(model: UniAttnForCausalLM, layer: int, solution: torch.Tensor) -> None:
    """solution is (d_in, d_out) with Δ ≈ n @ solution; the Linear weight is its transpose."""
    weight = model.model.layers[layer].compensation.weight
    weight.copy_(solution.T.to(weight.dtype))


def _relative(residual_sq: float, target_sq: float) -> float:
    return (max(residual_sq, 0.0) / target_sq) ** 0.5 if target_sq > 0 else 0.0


def _fit_paper(base, converted, batches: Callable[[], Iterator[dict]], step, settle) -> list[float]:
    consumers = converted.uniattn_config.consumers
    base_sums: dict[int, torch.Tensor] = {}
    samples = 0

    def base_tap(layer, normed, attended):
        if layer in consumers:
            total = attended.sum(0, dtype=torch.float64)
            base_sums[layer] = base_sums[layer] + total if layer in base_sums else total

    for batch in batches():
        _run(base, batch, base_tap, last_layer=consumers[-1])
        samples += batch["input_ids"].shape[0]
        step()
    residuals = []
    for layer in consumers:
        normed_sum = attended_sum = 0
        for batch in batches():
            normed, attended = _capture(converted, batch, layer)
            normed_sum = normed_sum + normed.sum(0, dtype=torch.float64)
            attended_sum = attended_sum + attended.sum(0, dtype=torch.float64)
            step()
        x = normed_sum / samples
        target = (base_sums[layer] - attended_sum) / samples
        solution = torch.linalg.pinv(x, atol=PINV_CUTOFF, rtol=0.0) @ target
        _set_compensation(converted, layer, solution)
        residual = target - x @ solution
        residuals.append(_relative(float(residual.pow(2).sum()), float(target.pow(2).sum())))
        settle(layer)
    return residuals


class _NormalEquations:
    """Running X^T X, X^T Δ and |Δ|^2 over token rows (float64, d x d)."""

    def __init__(self, width: int, device):
        self.xtx = torch.zeros(width, width, dtype=torch.float64, device=device)
        self.xtd = torch.zeros(width, width, dtype=torch.float64, device=device)
        self.dtd = 0.0

    def add(self, x: torch.Tensor, delta: torch.Tensor) -> None:
        x, delta = x.double(), delta.double()
        self.xtx += x.T @ x
        self.xtd += x.T @ delta
        self.dtd += float(delta.pow(2).sum())

    def solve(self, ridge: float) -> tuple[torch.Tensor, float]:
        """Ridge solution and its relative residual on the accumulated rows.

        Through the eigendecomposition of the symmetric X^T X (much faster than an SVD-based
        lstsq); with ridge = 0 directions without data are left out (minimum norm).
        """
        eigenvalues, eigenvectors = torch.linalg.eigh(self.xtx)
        shifted = eigenvalues + ridge * float(eigenvalues.mean())
        floor = float(eigenvalues.max()) * len(eigenvalues) * torch.finfo(torch.float64).eps
        inverse = torch.where(shifted > floor, 1.0 / shifted, 0.0)
        solution = eigenvectors @ (inverse[:, None] * (eigenvectors.T @ self.xtd))
        residual_sq = (
            self.dtd
            - 2 * float((solution * self.xtd).sum())
            + float((solution * (self.xtx @ solution)).sum())
        )
        return solution, _relative(residual_sq, self.dtd)


def _fit_improved(base, converted, batches, step, settle, ridge: float) -> list[float]:
    residuals = []
    for layer in converted.uniattn_config.consumers:
        equations = _NormalEquations(converted.config.hidden_size, converted.device)
        for batch in batches():
            real = batch["attention_mask"].bool()
            _, base_attended = _capture(base, batch, layer)
            normed, attended = _capture(converted, batch, layer)
            equations.add(normed[real], (base_attended - attended)[real])
            step()
        solution, residual = equations.solve(ridge)
        _set_compensation(converted, layer, solution)
        residuals.append(residual)
        settle(layer)
    return residuals


def _heldout_residual(base, converted, layer: int, batches: Iterator[dict], step) -> float:
    """Consumer `layer`'s token-level relative residual on held-out text, Wc as it is now
    (1 = no better than Wc = 0), with the earlier consumers as converted."""
    compensation = converted.model.layers[layer].compensation
    residual_sq = target_sq = 0.0
    for batch in batches:
        real = batch["attention_mask"].bool()
        _, base_attended = _capture(base, batch, layer)
        normed, attended = _capture(converted, batch, layer)
        residual = (base_attended - attended)[real].double()
        target = residual + compensation(normed)[real].double()  # the residual with Wc = 0
        residual_sq += float(residual.pow(2).sum())
        target_sq += float(target.pow(2).sum())
        step()
    return _relative(residual_sq, target_sq)


def _evaluate(
    base, converted, softmax_only, batches: Iterator[dict], step
) -> tuple[list[float], HeldoutDivergence]:
    """Held-out residual per consumer and output divergence, from one pass of each model.

    Consumer k's h_mid does not depend on later consumers' Wc, so in the finished model
    base_h_mid - h_mid is exactly the residual of fit k, and adding back n Wc_k^T gives the
    target that fit k aimed at. `softmax_only` (Wc = 0) shows what the fit is worth.
    """
    consumers = converted.uniattn_config.consumers
    residual_sq = dict.fromkeys(consumers, 0.0)
    target_sq = dict.fromkeys(consumers, 0.0)
    kl = {"converted": 0.0, "softmax_only": 0.0}
    nll = {"base": 0.0, "converted": 0.0, "softmax_only": 0.0}
    agree = tokens = pairs = 0
    for batch in batches:
        real = batch["attention_mask"].bool()
        base_attended: dict[int, torch.Tensor] = {}
        converted_seen: dict[int, tuple] = {}

        def base_tap(layer, normed, attended):
            if layer in residual_sq:
                base_attended[layer] = attended

        def converted_tap(layer, normed, attended):
            if layer in residual_sq:
                converted_seen[layer] = (normed, attended)

        logits = {
            "base": base.lm_head(_run(base, batch, base_tap)),
            "converted": converted.lm_head(_run(converted, batch, converted_tap)),
            "softmax_only": softmax_only.lm_head(_run(softmax_only, batch, tap=None)),
        }
        for layer in consumers:
            normed, attended = converted_seen[layer]
            residual = (base_attended[layer] - attended)[real].double()
            compensation = converted.model.layers[layer].compensation(normed)[real].double()
            residual_sq[layer] += float(residual.pow(2).sum())
            target_sq[layer] += float((residual + compensation).pow(2).sum())
        log_probs = {name: torch.log_softmax(value[real].float(), dim=-1) for name, value in logits.items()}
        for name in kl:
            divergence = log_probs["base"].exp() * (log_probs["base"] - log_probs[name])
            kl[name] += float(divergence.sum(dtype=torch.float64))
        agree += int((log_probs["base"].argmax(-1) == log_probs["converted"].argmax(-1)).sum())
        tokens += int(real.sum())
        for name, value in logits.items():
            total, count = next_token_nll(value, batch["input_ids"], batch["attention_mask"])
            nll[name] += total
        pairs += count  # the same for every model
        step()
    if pairs == 0:
        raise UniAttnError("the held-out text has no token pairs to score", "pass longer held-out text")
    perplexity = {name: float(torch.tensor(total / pairs).exp()) for name, total in nll.items()}
    divergence = HeldoutDivergence(
        tokens=tokens,
        kl_base_converted=kl["converted"] / tokens,
        top1_agreement=agree / tokens,
        perplexity_base=perplexity["base"],
        perplexity_converted=perplexity["converted"],
        kl_base_softmax_only=kl["softmax_only"] / tokens,
        perplexity_softmax_only=perplexity["softmax_only"],
    )
    return [_relative(residual_sq[c], target_sq[c]) for c in consumers], divergence


def _fp32_base(base: UniAttnForCausalLM | str | os.PathLike) -> UniAttnForCausalLM:
    if isinstance(base, (str, os.PathLike)):
        return load_model(base, dtype=torch.float32)
    if base.dtype != torch.float32:
        return copy.deepcopy(base).float()  # calibration runs in fp32; leave the caller's model alone
    return base


def _check_inputs(base, layer_map, calibration, heldout, mode, max_length, ridge, batch_size):
    if mode not in MODES:
        raise UniAttnError(f"unknown conversion mode {mode!r}", f"use one of: {', '.join(MODES)}")
    if base.uniattn_config.layer_map:
        raise UniAttnError(
            "the base model already shares softmax between layers (it has SuperBlocks)",
            "convert the original base model instead",
        )
    if layer_map.num_layers != base.config.num_hidden_layers:
        raise UniAttnError(
            f"the layer map describes {layer_map.num_layers} layers but the base model has "
            f"{base.config.num_hidden_layers}",
            "build the layer map for this model",
        )
    if not layer_map.consumers:
        raise UniAttnError(
            "the layer map has no consumer layers: nothing to fit", "use a SuperBlock size of 2 or more"
        )
    if not calibration:
        raise UniAttnError("no calibration text", "pass at least one calibration document")
    if not heldout:
        raise UniAttnError("no held-out text", "pass at least one held-out document")
    if max_length < 2:
        raise UniAttnError(f"max_length must be >= 2, got {max_length}", "pass a longer --max-length")
    if batch_size < 1:
        raise UniAttnError(f"batch size must be >= 1, got {batch_size}", "pass a positive batch size")
    if ridge < 0:
        raise UniAttnError(f"ridge must be >= 0, got {ridge}", "pass a non-negative --ridge")


def convert_to_uniattn(
    base: UniAttnForCausalLM | str | os.PathLike,
    layer_map: UniAttnConfig,
    calibration: Sequence[str],
    tokenizer,
    *,
    heldout: Sequence[str],
    mode: ConversionMode = "improved",
    max_length: int = 1024,
    ridge: float = DEFAULT_RIDGE,
    batch_size: int = 4,
    heldout_fallback: bool = True,
) -> tuple[UniAttnForCausalLM, ConversionReport]:
    """Convert `base` to the UniAttn structure `layer_map`, fitting every consumer's Wc.

    base: a plain (no SuperBlocks) model or its folder; it runs in fp32 (a model of another
    dtype is copied first). The returned model, fp32, shares the base's weight tensors.
    calibration / heldout: documents (see text.py); keep them disjoint.
    ridge: improved mode only.
    heldout_fallback: set a consumer's Wc to zero when it does worse on the held-out text
    than Wc = 0 (see the module doc); False keeps every fit as the mode computes it.
    """
    base = _fp32_base(base)
    _check_inputs(base, layer_map, calibration, heldout, mode, max_length, ridge, batch_size)
    converted = unify(base, layer_map)
    consumers = layer_map.consumers
    calibration_batches = -(-len(calibration) // batch_size)
    passes = len(consumers) + (1 if mode == "paper" else 0)
    heldout_batches = -(-len(heldout) // batch_size)
    checks = len(consumers) if heldout_fallback else 0

    def calibration_stream():
        return _batches(calibration, batch_size, tokenizer, max_length, mode == "paper", base.device)

    def heldout_stream():
        return _batches(heldout, batch_size, tokenizer, max_length, False, base.device)

    fitted_heldout: dict[int, float] = {}

    with torch.no_grad(), progress_bar() as progress:
        task = progress.add_task(
            f"fitting Wc of {len(consumers)} consumers ({mode})",
            total=passes * calibration_batches + (checks + 1) * heldout_batches,
        )

        def step():
            progress.advance(task)

        def settle(layer: int) -> None:
            """Before the next consumer is fitted: keep this Wc only if it helps on held-out text."""
            if not heldout_fallback:
                return
            fitted_heldout[layer] = _heldout_residual(base, converted, layer, heldout_stream(), step)
            if fitted_heldout[layer] > 1.0:
                converted.model.layers[layer].compensation.weight.zero_()

        if mode == "paper":
            fit_residuals = _fit_paper(base, converted, calibration_stream, step, settle)
        else:
            fit_residuals = _fit_improved(base, converted, calibration_stream, step, settle, ridge)
        progress.update(task, description="held-out evaluation")
        heldout_residuals, divergence = _evaluate(
            base, converted, unify(base, layer_map), heldout_stream(), step
        )
    fits = [
        ConsumerFit(
            layer=layer,
            producer=layer_map.producer_of(layer),
            calibration_residual=fit_residual,
            heldout_residual=heldout_residual,
            compensation_norm=float(converted.model.layers[layer].compensation.weight.detach().norm()),
            fitted_heldout_residual=fitted_heldout.get(layer),
            fell_back_to_zero=fitted_heldout.get(layer, 0.0) > 1.0,
        )
        for layer, fit_residual, heldout_residual in zip(consumers, fit_residuals, heldout_residuals)
    ]
    report = ConversionReport(
        mode=mode,
        uniattn=layer_map.to_dict(),
        max_length=max_length,
        ridge=ridge if mode == "improved" else None,
        calibration_samples=len(calibration),
        heldout_samples=len(heldout),
        consumers=fits,
        heldout=divergence,
        heldout_fallback=heldout_fallback,
    )
    return converted, report
