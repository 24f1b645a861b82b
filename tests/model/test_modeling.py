"""The reference model against an independent implementation, transformers, and itself."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from uniattn_export.model import load_model
from uniattn_export.model.cache import UniAttnCache
from uniattn_export.model.synthetic import random_base_model, released_checkpoint, tiny_config

pytestmark = pytest.mark.usefixtures("single_torch_thread")

# (family, tied embeddings, config overrides): GQA (4 query / 2 KV heads) unless overridden.
FAMILIES = [
    ("llama", False, {}),
    ("llama", True, {"attention_bias": True, "num_key_value_heads": 1}),
    ("mistral", True, {}),
    ("qwen2", False, {}),
    ("qwen2", True, {}),
]
SLIDING = [
    ("mistral", False, {"sliding_window": 6}),
    ("qwen2", False, {"use_sliding_window": True, "sliding_window": 6, "max_window_layers": 2}),
]
LENGTHS = [11, 7, 20]  # left padding in two rows; 20 > 16 takes the prefill recompute branch


def _released(tmp_path, family, tied, overrides, superblock=3, begin=1, end=6):
    base = random_base_model(tiny_config(family, tie_word_embeddings=tied, **overrides), seed=1)
    folder = tmp_path / f"{family}-released"
    uniattn = released_checkpoint(base, folder, superblock, begin, end, seed=2, compensation_scale=0.1)
    return folder, uniattn


def _state_of(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("family,tied,overrides", FAMILIES + SLIDING)
def test_reference_matches_independent_released_semantics(
    tmp_path, family, tied, overrides, released_reference, left_padded_batch
):
    folder, uniattn = _released(tmp_path, family, tied, overrides)
    assert uniattn.consumers, "the case must exercise consumers"
    model = load_model(folder)
    ids, mask, positions = left_padded_batch(model.config.vocab_size, LENGTHS)
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    producer_of = {c: uniattn.producer_of(c) for c in uniattn.consumers}
    expected = released_reference(_state_of(folder), model.config, producer_of, ids, mask, positions)
    real = mask.bool()
    assert expected[real].abs().max() > 1.0  # logits far from uniform: semantics are visible
    # float32 vs float64 on logits of magnitude ~6: measured 0.98e-5 to 1.42e-5 over these
    # cases (CPU, torch 2.13); a semantic error (e.g. a lost window) moves them by > 1e-2.
    torch.testing.assert_close(ours[real].double(), expected[real], rtol=0, atol=3e-5)


def test_wrong_semantics_would_be_caught(tmp_path, released_reference, left_padded_batch):
    """The comparison above has teeth: consumers using their own softmax differ clearly."""
    folder, uniattn = _released(tmp_path, "llama", False, {})
    model = load_model(folder)
    ids, mask, positions = left_padded_batch(model.config.vocab_size, LENGTHS)
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    own_softmax = released_reference(_state_of(folder), model.config, {}, ids, mask, positions)
    assert (ours.double() - own_softmax)[mask.bool()].abs().max() > 1e-2


@pytest.mark.parametrize("family,tied,overrides", FAMILIES + SLIDING)
def test_superblock_of_one_equals_transformers_eager_exactly(tmp_path, family, tied, overrides, left_padded_batch):
    base = random_base_model(tiny_config(family, tie_word_embeddings=tied, **overrides), seed=3)
    base.save_pretrained(tmp_path)
    model = load_model(tmp_path)
    assert not model.uniattn_config.layer_map
    eager = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids, mask, positions = left_padded_batch(model.config.vocab_size, LENGTHS)
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        theirs = eager(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    real = mask.bool()
    assert torch.equal(ours[real], theirs[real])
    # Score only tokens predicted from a real token (padding rows differ by design: ours are 0).
    predicted_from_real = torch.cat([torch.zeros_like(real[:, :1]), real[:, :-1]], dim=1)
    labels = ids.masked_fill(~(real & predicted_from_real), -100)
    with torch.no_grad():
        our_loss = model(input_ids=ids, attention_mask=mask, position_ids=positions, labels=labels).loss
        their_loss = eager(input_ids=ids, attention_mask=mask, position_ids=positions, labels=labels).loss
    assert torch.equal(our_loss, their_loss)


def _full_logits(model, ids, mask, positions):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits


@pytest.mark.parametrize("family,overrides", [("llama", {}), ("qwen2", {}), *[(f, o) for f, _, o in SLIDING]])
def test_incremental_decoding_equals_full_forward(tmp_path, family, overrides, left_padded_batch):
    folder, uniattn = _released(tmp_path, family, False, overrides, superblock=2, begin=0, end=6)
    model = load_model(folder)
    ids, mask, positions = left_padded_batch(model.config.vocab_size, [30, 24], seed=5)
    full = _full_logits(model, ids, mask, positions)
    # Prefill 20 tokens (recompute branch), one chunk of 3 (probs branch), then single tokens.
    cuts = [0, 20, 23, *range(24, 31)]
    cache = UniAttnCache(uniattn)
    with torch.no_grad():
        for start, stop in zip(cuts, cuts[1:]):
            out = model(
                input_ids=ids[:, start:stop], attention_mask=mask[:, :stop],
                position_ids=positions[:, start:stop], past_key_values=cache,
            )  # fmt: skip
            assert out.past_key_values is cache
            real = mask[:, start:stop].bool()
            torch.testing.assert_close(out.logits[real], full[:, start:stop][real], rtol=0, atol=5e-5)
    assert cache.get_seq_length() == 30


def test_cache_keeps_no_keys_for_consumers(tmp_path):
    folder, uniattn = _released(tmp_path, "llama", False, {}, superblock=3, begin=1, end=6)
    model = load_model(folder)
    with torch.no_grad():
        cache = model(input_ids=torch.ones(2, 9, dtype=torch.long)).past_key_values
    g = model.geometry(0)
    per_tensor = 2 * g.kv_num_heads * 9 * g.head_dim * 4
    for layer, entry in enumerate(cache.layers):
        assert entry.values.shape == (2, g.kv_num_heads, 9, g.head_dim)
        expected_keys = 0 if uniattn.role(layer) == "consumer" else 9
        assert entry.keys.shape == (2, g.kv_num_heads, expected_keys, g.head_dim)
    layers, consumers = uniattn.num_layers, len(uniattn.consumers)
    assert cache.nbytes() == per_tensor * (2 * layers - consumers)


@pytest.fixture
def unified_model(tmp_path):
    folder, _ = _released(tmp_path, "llama", False, {}, superblock=2, begin=1, end=6)
    return load_model(folder)


def test_greedy_generate_equals_manual_loop(unified_model, left_padded_batch):
    model = unified_model
    ids, mask, _ = left_padded_batch(model.config.vocab_size, [6, 9], seed=7)
    with torch.no_grad():
        generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    tokens, current_mask = ids, mask
    for _ in range(8):
        positions = (current_mask.cumsum(-1) - 1).clamp(min=0)
        logits = _full_logits(model, tokens, current_mask, positions)
        next_token = logits[:, -1].argmax(-1, keepdim=True)
        tokens = torch.cat([tokens, next_token], dim=1)
        current_mask = torch.cat([current_mask, torch.ones_like(next_token)], dim=1)
    assert torch.equal(generated, tokens)


def test_left_padded_batch_generates_like_single_prompts(unified_model, left_padded_batch):
    model = unified_model
    ids, mask, _ = left_padded_batch(model.config.vocab_size, [5, 12, 8], seed=8)
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        batched = model.generate(input_ids=ids, attention_mask=mask, **kwargs)[:, ids.shape[1] :]
        for row in range(ids.shape[0]):
            prompt = ids[row : row + 1, mask[row].bool()]
            alone = model.generate(input_ids=prompt, **kwargs)[:, prompt.shape[1] :]
            assert torch.equal(batched[row], alone[0])


def test_generate_without_cache_equals_with_cache(unified_model, left_padded_batch):
    ids, mask, _ = left_padded_batch(unified_model.config.vocab_size, [7, 4], seed=9)
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=6, pad_token_id=0)
    with torch.no_grad():
        cached = unified_model.generate(**kwargs, do_sample=False)
        uncached = unified_model.generate(**kwargs, do_sample=False, use_cache=False)
        beams_cached = unified_model.generate(**kwargs, num_beams=3)
        beams_uncached = unified_model.generate(**kwargs, num_beams=3, use_cache=False)
    assert torch.equal(cached, uncached)
    assert torch.equal(beams_cached, beams_uncached)


def _sample(model, ids, mask, seed, **kwargs):
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=True, pad_token_id=0, **kwargs
        )


def test_seeded_sampling_is_reproducible_and_samples(unified_model, left_padded_batch):
    model = unified_model
    ids, mask, _ = left_padded_batch(model.config.vocab_size, [6, 3], seed=10)
    first = _sample(model, ids, mask, seed=0, num_return_sequences=3)
    again = _sample(model, ids, mask, seed=0, num_return_sequences=3)
    other = _sample(model, ids, mask, seed=1, num_return_sequences=3)
    assert first.shape == (6, ids.shape[1] + 10)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    # Rows 0-2 continue prompt 0, rows 3-5 prompt 1; the three samples of a prompt differ.
    assert torch.equal(first[:3, : ids.shape[1]], ids[[0, 0, 0]])
    assert len({tuple(row.tolist()) for row in first[:3]}) > 1


def test_sampling_with_top_k_one_is_greedy(unified_model, left_padded_batch):
    ids, mask, _ = left_padded_batch(unified_model.config.vocab_size, [6, 9], seed=11)
    sampled = _sample(unified_model, ids, mask, seed=3, top_k=1)
    with torch.no_grad():
        greedy = unified_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert torch.equal(sampled, greedy)


def test_bad_forward_inputs(unified_model):
    from uniattn_export.errors import UniAttnError
    from transformers import DynamicCache

    ids = torch.ones(1, 4, dtype=torch.long)
    with pytest.raises(UniAttnError, match="attention_mask has shape"):
        unified_model(input_ids=ids, attention_mask=torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(UniAttnError, match="pass the UniAttnCache"):
        unified_model(input_ids=ids, past_key_values=DynamicCache())
    with pytest.raises(UniAttnError, match="exactly one of input_ids and inputs_embeds"):
        unified_model()
    with pytest.raises(UniAttnError, match="cache_implementation"):
        unified_model.generate(input_ids=ids, max_new_tokens=2, cache_implementation="static")


def test_cache_is_read_under_either_name_and_returned_under_this_versions_name(unified_model):
    """transformers 5.24 renamed generate()'s cache keyword to `cache=`; both names work."""
    from uniattn_export.model.modeling import CACHE_KEYWORD

    ids = torch.arange(1, 9).view(1, 8)
    with torch.no_grad():
        full = unified_model(input_ids=ids, use_cache=False).logits
        for name in ("cache", "past_key_values"):
            cache = UniAttnCache(unified_model.uniattn_config)
            first = unified_model(input_ids=ids[:, :5], **{name: cache})
            assert getattr(first, CACHE_KEYWORD) is cache and cache.get_seq_length() == 5
            rest = unified_model(input_ids=ids[:, 5:], attention_mask=torch.ones(1, 8, dtype=torch.long), **{name: cache})
            torch.testing.assert_close(rest.logits, full[:, 5:], rtol=0, atol=5e-5)


def test_a_step_without_its_past_is_refused(unified_model):
    from uniattn_export.errors import UniAttnError

    token, cache = torch.tensor([[7]]), UniAttnCache(unified_model.uniattn_config)
    missing = "this step's 9 earlier token\\(s\\) are in no cache \\(cache holds 0, 1 new\\)"
    with pytest.raises(UniAttnError, match=missing):  # a decode step's mask, no cache
        unified_model(input_ids=token, attention_mask=torch.ones(1, 10, dtype=torch.long))
    with pytest.raises(UniAttnError, match=missing):  # an empty cache is no better
        unified_model(input_ids=token, attention_mask=torch.ones(1, 10, dtype=torch.long), cache=cache)
    with pytest.raises(UniAttnError, match=missing):  # positions 9.. with nothing cached
        unified_model(input_ids=token, position_ids=torch.tensor([[9]]))
    with torch.no_grad():
        unified_model(input_ids=torch.ones(1, 9, dtype=torch.long), cache=cache)
        unified_model(input_ids=token, position_ids=torch.tensor([[9]]), cache=cache)  # cached: fine
    assert cache.get_seq_length() == 10
