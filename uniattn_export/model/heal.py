"""Healing a converted model: train only the compensation projections (Wc).

The paper's first post-training stage trains Wc with every other weight frozen. Here the
teacher is the base model itself: each step runs the base model (no gradient) and the
UniAttn model on the same packed text windows and minimizes the mean per-token
KL(base || UniAttn) of the next-token distributions (or, with loss="lm", the plain
next-token cross-entropy). Only the consumers' `compensation` weights receive gradients, so
the optimizer state is 2 x (consumers x d x d) floats and memory does not grow with the data.

Text is packed: documents are tokenized, joined with the end-of-text token and cut into
windows of `max_length` tokens, so every position is a real token (no padding, no mask).
Training windows and held-out windows come from disjoint documents.

Schedule: AdamW without weight decay, linear warm-up over the first 3% of the steps, then
cosine decay to 0 (the released recipe's shape). Every `eval_every` steps the held-out KL,
top-1 agreement and perplexity are measured; the curve goes into the report.

Resumable: every `save_every` steps the trainable state (Wc, optimizer, schedule, step,
curve, data order) is written atomically to a resume file; a new run with the same
checkpoint, base, data and settings continues from it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

import torch

from ..errors import UniAttnError
from .modeling import LayerState, UniAttnForCausalLM

HealLoss = Literal["kl", "lm"]
LOSSES: tuple[str, ...] = ("kl", "lm")
WARMUP_FRACTION = 0.03
RESUME_FORMAT = 1


@dataclass(frozen=True)
class HealSettings:
    steps: int
    learning_rate: float = 2e-4
    batch_size: int = 4
    max_length: int = 128
    loss: HealLoss = "kl"
    eval_every: int = 20
    save_every: int = 20
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1:
            raise UniAttnError(f"steps must be >= 1, got {self.steps}", "pass a positive --steps")
        if self.loss not in LOSSES:
            raise UniAttnError(f"unknown loss {self.loss!r}", f"use one of: {', '.join(LOSSES)}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise UniAttnError(f"the learning rate must be a positive number, got {self.learning_rate}", "pass e.g. --lr 2e-4")
        for name in ("batch_size", "eval_every", "save_every"):
            if getattr(self, name) < 1:
                raise UniAttnError(f"{name} must be >= 1, got {getattr(self, name)}", "pass a positive number")
        if self.max_length < 2:
            raise UniAttnError(f"max_length must be >= 2, got {self.max_length}", "pass a longer --max-length")


@dataclass(frozen=True)
class HeldoutScore:
    """Held-out quality of the UniAttn model against its base model."""

    step: int
    tokens: int
    kl: float  # mean KL(base || model) per predicted token, nats
    top1_agreement: float  # fraction of tokens where both argmaxes agree
    perplexity: float  # of the UniAttn model
    perplexity_base: float


@dataclass(frozen=True)
class CurvePoint:
    step: int
    train_loss: float  # mean training loss since the previous point
    heldout: HeldoutScore


@dataclass(frozen=True)
class CompensationChange:
    layer: int
    norm_before: float
    norm_after: float
    relative_change: float  # |Wc_after - Wc_before| / |Wc_before| (inf when Wc_before = 0)


@dataclass
class HealReport:
    settings: HealSettings
    train_windows: int
    heldout_windows: int
    before: HeldoutScore
    after: HeldoutScore
    curve: list[CurvePoint] = field(default_factory=list)
    consumers: list[CompensationChange] = field(default_factory=list)
    resumed_from_step: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self):
        from rich.table import Table

        s, b, a = self.settings, self.before, self.after
        table = Table(
            title=(
                f"heal: {s.steps} steps of Wc-only training ({s.loss} loss, lr {s.learning_rate:g}, "
                f"{s.batch_size} x {s.max_length} tokens, {self.train_windows} training windows)"
            ),
            caption=(
                f"held-out ({self.heldout_windows} windows, {a.tokens} tokens): KL(base||model) "
                f"{b.kl:.4f} -> {a.kl:.4f} nats/token, top-1 agreement {100 * b.top1_agreement:.1f}% -> "
                f"{100 * a.top1_agreement:.1f}%, perplexity {b.perplexity:.3f} -> {a.perplexity:.3f} "
                f"(base {a.perplexity_base:.3f}; ratio {b.perplexity / a.perplexity_base:.2f}x -> "
                f"{a.perplexity / a.perplexity_base:.2f}x)"
            ),
        )
        for column in ("consumer", "|Wc| before", "|Wc| after", "relative change"):
            table.add_column(column, justify="right")
        for change in self.consumers:
            table.add_row(
                str(change.layer), f"{change.norm_before:.3g}", f"{change.norm_after:.3g}",
                f"{change.relative_change:.3f}",
            )  # fmt: skip
        return table

    def curve_png(self) -> bytes:
        """The held-out curve (KL and perplexity ratio against the step) as PNG bytes."""
        import io

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        points = [self.before, *(p.heldout for p in self.curve)]
        steps = [p.step for p in points]
        figure, (kl_axis, ppl_axis) = plt.subplots(1, 2, figsize=(10, 4))
        kl_axis.plot(steps, [p.kl for p in points], marker="o")
        kl_axis.set(xlabel="step", ylabel="KL(base || model), nats/token", title="held-out KL")
        ppl_axis.plot(steps, [p.perplexity / p.perplexity_base for p in points], marker="o")
        ppl_axis.axhline(1.5, linestyle="--", color="gray", label="1.5x base")
        ppl_axis.set(xlabel="step", ylabel="perplexity / base perplexity", title="held-out perplexity ratio")
        ppl_axis.legend()
        figure.tight_layout()
        png = io.BytesIO()
        figure.savefig(png, format="png", dpi=100)
        plt.close(figure)
        return png.getvalue()


def pack_windows(tokenizer, documents: Sequence[str], max_length: int) -> torch.Tensor:
    """(N, max_length) token windows cut from the documents joined by the end-of-text token."""
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    for document in documents:
        stream += tokenizer(document, add_special_tokens=False)["input_ids"] + separator
    count = len(stream) // max_length
    return torch.tensor(stream[: count * max_length], dtype=torch.long).view(count, max_length)


def _next_token_kl(base_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(base || model), float32 (both (B, L, V))."""
    base_log_probs = torch.log_softmax(base_logits.float(), dim=-1)
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return (base_log_probs.exp() * (base_log_probs - log_probs)).sum(-1).mean()


def _next_token_nll(logits: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """Mean -log p(next token) over every position that has a next token."""
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return -log_probs.gather(-1, windows[:, 1:, None]).mean()


def both_logits(
    model: UniAttnForCausalLM, base: UniAttnForCausalLM, windows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(base logits, UniAttn logits) of full windows (no padding, no cache).

    The layers before the first consumer are the same computation in both models (same
    weights; a producer's output is its ordinary layer's), so they run once, without a
    gradient; only the rest of the UniAttn model is differentiated (Wc lives there).
    """
    rows, length = windows.shape
    first_consumer = model.uniattn_config.consumers[0]
    everything = range(first_consumer, model.config.num_hidden_layers)
    with torch.no_grad():
        hidden = model.model.embed_tokens(windows)
        positions = torch.arange(length, device=windows.device).expand(rows, -1)
        mask = torch.ones_like(windows)
        state = LayerState(hidden, *model.model.rotary_emb(hidden, positions), mask, {})
        past = model.past_from(None, rows, hidden.dtype, hidden.device)
        model.model.run_layer_range(state, range(first_consumer), past, model.attention_ops)
        base_state = LayerState(state.hidden, state.cos, state.sin, mask, {})
        base.model.run_layer_range(base_state, everything, past, base.attention_ops)
        base_logits = base.lm_head(base.model.norm(base_state.hidden))
    model.model.run_layer_range(state, everything, past, model.attention_ops)
    return base_logits, model.lm_head(model.model.norm(state.hidden))


def heldout_score(
    base: UniAttnForCausalLM, model: UniAttnForCausalLM, windows: torch.Tensor, batch_size: int, step: int
) -> HeldoutScore:
    kl = nll = base_nll = 0.0
    agree = tokens = 0
    with torch.no_grad():
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size]
            base_logits, logits = both_logits(model, base, batch)
            count = batch.numel()
            kl += float(_next_token_kl(base_logits, logits)) * count
            agree += int((base_logits.argmax(-1) == logits.argmax(-1)).sum())
            pairs = batch[:, 1:].numel()
            nll += float(_next_token_nll(logits, batch)) * pairs
            base_nll += float(_next_token_nll(base_logits, batch)) * pairs
            tokens += count
    pairs = windows[:, 1:].numel()
    return HeldoutScore(
        step=step, tokens=tokens, kl=kl / tokens, top1_agreement=agree / tokens,
        perplexity=math.exp(nll / pairs), perplexity_base=math.exp(base_nll / pairs),
    )  # fmt: skip


def learning_rate_factor(step: int, steps: int) -> float:
    """Linear warm-up over the first 3% of the steps, then cosine decay to 0."""
    warmup = max(1, round(WARMUP_FRACTION * steps))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def check_data(train_windows: torch.Tensor, heldout_windows: torch.Tensor, settings: HealSettings) -> None:
    """Enough text for one training batch and one held-out window."""
    if len(train_windows) < settings.batch_size:
        raise UniAttnError(
            f"the training text makes {len(train_windows)} windows of {settings.max_length} tokens, "
            f"fewer than one batch of {settings.batch_size}",
            "pass more training text, or a smaller --batch-size or --max-length",
        )
    if len(heldout_windows) == 0:
        raise UniAttnError(
            f"the held-out text is shorter than one window of {settings.max_length} tokens",
            "pass more held-out text or a smaller --max-length",
        )


def check_pair(model: UniAttnForCausalLM, base: UniAttnForCausalLM) -> None:
    """The UniAttn model must have consumers and be a conversion of exactly this base model."""
    if not model.uniattn_config.consumers:
        raise UniAttnError(
            "the checkpoint has no consumer layers: there is no Wc to train",
            "heal a checkpoint written by `uniattn-export convert`",
        )
    if base.uniattn_config.layer_map:
        raise UniAttnError("the base model has SuperBlocks itself", "pass the original base model with --base")
    geometry = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    for key in geometry:
        ours, theirs = getattr(model.config, key, None), getattr(base.config, key, None)
        if ours != theirs:
            raise UniAttnError(
                f"the base model does not match the checkpoint ({key} {theirs} vs {ours})",
                "pass the base model the checkpoint was converted from",
            )
    # Weights both models share (embeddings, every layer's v_proj, o_proj and MLP) must be the
    # base's, up to the rounding of the checkpoint's storage dtype.
    shared = {name: t for name, t in model.state_dict().items() if "compensation" not in name}
    base_state = base.state_dict()
    for name in ("model.embed_tokens.weight", *(n for n in shared if n.endswith("mlp.down_proj.weight"))):
        ours, theirs = shared[name].float(), base_state[name].float()
        tolerance = 1e-2 * float(theirs.abs().max()) + 1e-6
        if ours.shape != theirs.shape or float((ours - theirs).abs().max()) > tolerance:
            raise UniAttnError(
                f"the base model's {name} differs from the checkpoint's",
                "pass the base model the checkpoint was converted from",
            )


def _fingerprint(model: UniAttnForCausalLM, settings: HealSettings, windows: torch.Tensor) -> str:
    """What a resume file must have been written for: same Wc start, data and settings."""
    digest = hashlib.sha256(json.dumps(asdict(settings), sort_keys=True).encode())
    digest.update(windows.numpy().tobytes())
    for layer in model.uniattn_config.consumers:
        digest.update(model.model.layers[layer].compensation.weight.detach().float().numpy().tobytes())
    return digest.hexdigest()


def _save_resume(path: Path, state: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def heal_compensation(
    model: UniAttnForCausalLM,
    base: UniAttnForCausalLM,
    train_windows: torch.Tensor,
    heldout_windows: torch.Tensor,
    settings: HealSettings,
    *,
    resume_file: Path | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> HealReport:
    """Train the consumers' Wc of `model` (in place) towards `base`; returns the report.

    Both models must be float32 on the same device. `resume_file`: where the resumable
    state is kept (read when it matches this run, rewritten every `save_every` steps).
    """
    check_data(train_windows, heldout_windows, settings)
    check_pair(model, base)
    consumers = model.uniattn_config.consumers
    weights = [model.model.layers[layer].compensation.weight for layer in consumers]
    model.requires_grad_(False)
    base.requires_grad_(False)
    for weight in weights:
        weight.requires_grad_(True)
    initial = [w.detach().clone() for w in weights]
    optimizer = torch.optim.AdamW(weights, lr=settings.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: learning_rate_factor(s, settings.steps))
    generator = torch.Generator().manual_seed(settings.seed)
    fingerprint = _fingerprint(model, settings, train_windows)

    start, curve, order, position = 0, [], torch.randperm(len(train_windows), generator=generator), 0
    state = torch.load(resume_file, weights_only=False) if resume_file is not None and resume_file.is_file() else {}
    if state.get("format") == RESUME_FORMAT and state.get("fingerprint") == fingerprint:
        with torch.no_grad():
            for weight, saved in zip(weights, state["compensation"]):
                weight.copy_(saved)
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"])
        start, order, position = state["step"], state["order"], state["position"]
        curve = [CurvePoint(c["step"], c["train_loss"], HeldoutScore(**c["heldout"])) for c in state["curve"]]
        before = HeldoutScore(**state["before"])
    else:
        before = heldout_score(base, model, heldout_windows, settings.batch_size, step=0)

    device = weights[0].device
    losses: list[float] = []
    model.train(False)
    for step in range(start, settings.steps):
        if position + settings.batch_size > len(order):
            order, position = torch.randperm(len(train_windows), generator=generator), 0
        batch = train_windows[order[position : position + settings.batch_size]].to(device)
        position += settings.batch_size
        base_logits, logits = both_logits(model, base, batch)
        if settings.loss == "kl":
            loss = _next_token_kl(base_logits, logits)
        else:
            loss = _next_token_nll(logits, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        done = step + 1
        if on_step is not None:
            on_step(done, losses[-1])
        if done % settings.eval_every == 0 or done == settings.steps:
            score = heldout_score(base, model, heldout_windows, settings.batch_size, step=done)
            curve.append(CurvePoint(done, sum(losses) / len(losses), score))
            losses = []
        if resume_file is not None and (done % settings.save_every == 0) and done < settings.steps:
            _save_resume(resume_file, {
                "format": RESUME_FORMAT, "fingerprint": fingerprint, "step": done,
                "compensation": [w.detach().clone() for w in weights],
                "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "generator": generator.get_state(), "order": order, "position": position,
                "curve": [asdict(c) for c in curve], "before": asdict(before),
            })  # fmt: skip
    for weight in weights:
        weight.requires_grad_(False)
    changes = []
    for layer, old, weight in zip(consumers, initial, weights):
        before_norm, after_norm = float(old.norm()), float(weight.detach().norm())
        delta = float((weight.detach() - old).norm())
        changes.append(CompensationChange(layer, before_norm, after_norm, delta / before_norm if before_norm else math.inf))
    return HealReport(
        settings=settings, train_windows=len(train_windows), heldout_windows=len(heldout_windows),
        before=before, after=curve[-1].heldout, curve=curve, consumers=changes, resumed_from_step=start,
    )  # fmt: skip
