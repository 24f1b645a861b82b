"""Wc-only healing (model/heal.py) on tiny models: what trains, what stays frozen, the
schedule, resuming, and the checks on its inputs."""

from __future__ import annotations

import math

import pytest
import torch

from uniattn_export.errors import UniAttnError
from uniattn_export.model import UniAttnConfig, load_model
from uniattn_export.model.convert import unify
from uniattn_export.model.heal import (
    HealSettings,
    both_logits,
    check_pair,
    heal_compensation,
    heldout_score,
    learning_rate_factor,
    pack_windows,
)
from uniattn_export.model.synthetic import byte_tokenizer, random_base_model, tiny_config

pytestmark = pytest.mark.usefixtures("single_torch_thread")

LAYER_MAP = UniAttnConfig.from_grouping(6, 3, 1, 6, "begin_offset")  # 1 -> 2, 3; 4 -> 5


def base_model(folder, seed: int, **config):
    random_base_model(tiny_config("llama", **config), seed=seed).save_pretrained(folder)
    return load_model(folder, dtype=torch.float32)


@pytest.fixture
def pair(tmp_path):
    base = base_model(tmp_path / "base", seed=3, vocab_size=256)
    return unify(base, LAYER_MAP), base


def windows(count: int, length: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (count, length), generator=torch.Generator().manual_seed(seed))


def independent_kl(base, model, batch) -> float:
    """Mean per-token KL(base || model), written out from the definition."""
    with torch.no_grad():
        p = torch.softmax(base(input_ids=batch, use_cache=False).logits.double(), -1)
        q = torch.softmax(model(input_ids=batch, use_cache=False).logits.double(), -1)
    return float((p * (p.log() - q.log())).sum(-1).mean())


def test_training_moves_only_wc_and_lowers_heldout_kl(pair):
    model, base = pair
    frozen = {n: t.clone() for n, t in model.state_dict().items() if "compensation" not in n}
    train = windows(8)
    # Random tokens on a random model leave nothing to generalize from: score on training
    # windows, which shows that the optimization itself works.
    heldout = train[:4]
    report = heal_compensation(model, base, train, heldout, HealSettings(steps=30, learning_rate=1e-2, eval_every=10))
    for name, tensor in model.state_dict().items():
        if "compensation" not in name:
            assert torch.equal(tensor, frozen[name]), name
    assert [c.layer for c in report.consumers] == [2, 3, 5]
    assert all(c.norm_before == 0.0 and c.norm_after > 0 and c.relative_change == math.inf for c in report.consumers)
    assert [p.step for p in report.curve] == [10, 20, 30]
    # The reported scores are the definition's, measured independently here.
    assert report.after.kl == pytest.approx(independent_kl(base, model, heldout), rel=1e-4)
    assert report.after.kl < 0.5 * report.before.kl
    assert report.after.perplexity_base == report.before.perplexity_base


def test_heldout_score_matches_definitions(pair):
    model, base = pair
    batch = windows(3, seed=5)
    score = heldout_score(base, model, batch, batch_size=2, step=7)
    with torch.no_grad():
        logits = model(input_ids=batch, use_cache=False).logits.double()
        base_logits = base(input_ids=batch, use_cache=False).logits.double()
    nll = -torch.log_softmax(logits[:, :-1], -1).gather(-1, batch[:, 1:, None]).mean()
    agree = (logits.argmax(-1) == base_logits.argmax(-1)).double().mean()
    assert score.step == 7 and score.tokens == 48
    assert score.kl == pytest.approx(independent_kl(base, model, batch), rel=1e-5)
    assert score.perplexity == pytest.approx(float(nll.exp()), rel=1e-5)
    assert score.top1_agreement == pytest.approx(float(agree))


def test_schedule_warms_up_then_decays_to_zero():
    # 100 steps: 3 warm-up steps (3%), then cosine over the remaining 97.
    assert [learning_rate_factor(s, 100) for s in range(3)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert learning_rate_factor(3 + 97 // 2, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi * 48 / 97)))
    assert learning_rate_factor(100, 100) == pytest.approx(0.0, abs=1e-12)


def test_resume_continues_to_the_same_weights(pair, tmp_path):
    model, base = pair
    settings = HealSettings(steps=12, learning_rate=3e-3, eval_every=4, save_every=4)
    train, heldout = windows(12), windows(2, seed=1)
    straight = unify(base, LAYER_MAP)
    heal_compensation(straight, base, train, heldout, settings)

    resume = tmp_path / "state.pt"

    def interrupt(done, loss):
        if done == 10:  # the state was last saved after step 8
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        heal_compensation(model, base, train, heldout, settings, resume_file=resume, on_step=interrupt)
    assert resume.is_file()
    resumed = unify(base, LAYER_MAP)
    report = heal_compensation(resumed, base, train, heldout, settings, resume_file=resume)
    assert report.resumed_from_step == 8
    for layer in (2, 3, 5):
        assert torch.allclose(
            resumed.model.layers[layer].compensation.weight, straight.model.layers[layer].compensation.weight, atol=1e-6
        )
    # A resume file written for other settings is not used.
    other = heal_compensation(unify(base, LAYER_MAP), base, train, heldout,
                              HealSettings(steps=12, learning_rate=1e-3, eval_every=4), resume_file=resume)  # fmt: skip
    assert other.resumed_from_step == 0


def test_pack_windows_joins_documents_with_eos():
    tokenizer = byte_tokenizer()
    docs = ["abc", "defgh"]
    ids = [tokenizer(d, add_special_tokens=False)["input_ids"] for d in docs]
    stream = ids[0] + [tokenizer.eos_token_id] + ids[1] + [tokenizer.eos_token_id]
    packed = pack_windows(tokenizer, docs, 4)
    assert packed.tolist() == [stream[0:4], stream[4:8]]


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(steps=0), "steps must be >= 1, got 0"),
        (dict(steps=5, learning_rate=float("nan")), "learning rate must be a positive number"),
        (dict(steps=5, loss="mse"), "unknown loss 'mse'"),
        (dict(steps=5, batch_size=0), "batch_size must be >= 1"),
    ],
)
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(UniAttnError, match=message):
        HealSettings(**settings)


def test_refuses_data_shorter_than_one_batch(pair):
    model, base = pair
    with pytest.raises(UniAttnError, match="makes 3 windows of 128 tokens, fewer than one batch of 4"):
        heal_compensation(model, base, windows(3, 128), windows(2), HealSettings(steps=2))


def test_refuses_checkpoints_without_consumers_and_mismatched_bases(pair, tmp_path):
    model, base = pair
    with pytest.raises(UniAttnError, match="no consumer layers"):
        check_pair(base, base)
    other = base_model(tmp_path / "other", seed=4, vocab_size=256)
    with pytest.raises(UniAttnError, match="base model's model.embed_tokens.weight differs"):
        check_pair(model, other)
    wider = base_model(tmp_path / "wider", seed=3, vocab_size=300)
    with pytest.raises(UniAttnError, match="does not match the checkpoint \\(vocab_size 300 vs 256\\)"):
        check_pair(model, wider)


def test_shared_prefix_gives_each_models_own_logits(pair):
    model, base = pair
    with torch.no_grad():
        model.model.layers[2].compensation.weight.normal_(0, 0.1)  # a model that differs from its base
        batch = windows(2, seed=9)
        base_logits, logits = both_logits(model, base, batch)
        assert torch.allclose(base_logits, base(input_ids=batch, use_cache=False).logits, atol=1e-5)
        assert torch.allclose(logits, model(input_ids=batch, use_cache=False).logits, atol=1e-5)
        assert not torch.allclose(base_logits, logits, atol=1e-2)
