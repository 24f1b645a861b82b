"""The producer rule pinned by configs written literally in the authors' published format.

The configs below are what a released UniAttn checkpoint ships (a transformers-4.46 config.json
of Llama-3.1-8B / Mistral-7B with grouping_idx, grouping_begin_idx, grouping_end_idx), shrunk
in width only: 32 layers stay. The weights are written by hand in the released layout
(`v2_proj` for the consumers). The expected producers and consumers are written out by hand
from the released modeling files' rules, not computed with the package's rule function.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from uniattn_export.model import load_model

pytestmark = pytest.mark.usefixtures("single_torch_thread")

LLAMA_CONFIG = """{
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": 128001,
  "grouping_begin_idx": %(begin)d,
  "grouping_end_idx": %(end)d,
  "grouping_idx": %(G)d,
  "head_dim": 8,
  "hidden_act": "silu",
  "hidden_size": 32,
  "initializer_range": 0.02,
  "intermediate_size": 64,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 4,
  "num_hidden_layers": 32,
  "num_key_value_heads": 2,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "factor": 8.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3"
  },
  "rope_theta": 500000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.46.0",
  "use_cache": true,
  "vocab_size": 128256
}"""

MISTRAL_CONFIG = """{
  "architectures": ["MistralForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 1,
  "eos_token_id": 2,
  "grouping_begin_idx": %(begin)d,
  "grouping_end_idx": %(end)d,
  "grouping_idx": %(G)d,
  "head_dim": 8,
  "hidden_act": "silu",
  "hidden_size": 32,
  "initializer_range": 0.02,
  "intermediate_size": 64,
  "max_position_embeddings": 32768,
  "model_type": "mistral",
  "num_attention_heads": 4,
  "num_hidden_layers": 32,
  "num_key_value_heads": 2,
  "rms_norm_eps": 1e-05,
  "rope_theta": 1000000.0,
  "sliding_window": null,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.46.0",
  "use_cache": true,
  "vocab_size": 32768
}"""

# Vocabulary shrunk too (the embedding is the only vocab-sized tensor; ids stay below it).
VOCAB = 256


def _write_release(folder, config_text: str, consumers: list[int]):
    """config.json as published (vocab shrunk) + Llama/Mistral weights + v2_proj per consumer."""
    config = json.loads(config_text)
    config["vocab_size"] = VOCAB
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    d, inter, dim = config["hidden_size"], config["intermediate_size"], config["head_dim"]
    q, kv = config["num_attention_heads"] * dim, config["num_key_value_heads"] * dim
    generator = torch.Generator().manual_seed(0)

    def rand(*shape):
        return (torch.randn(*shape, generator=generator) * 0.2).to(torch.bfloat16)

    state = {"model.embed_tokens.weight": rand(VOCAB, d), "model.norm.weight": torch.ones(d, dtype=torch.bfloat16),
             "lm_head.weight": rand(VOCAB, d)}  # fmt: skip
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        state |= {
            f"{p}.input_layernorm.weight": torch.ones(d, dtype=torch.bfloat16),
            f"{p}.post_attention_layernorm.weight": torch.ones(d, dtype=torch.bfloat16),
            f"{p}.self_attn.q_proj.weight": rand(q, d), f"{p}.self_attn.k_proj.weight": rand(kv, d),
            f"{p}.self_attn.v_proj.weight": rand(kv, d), f"{p}.self_attn.o_proj.weight": rand(d, q),
            f"{p}.mlp.gate_proj.weight": rand(inter, d), f"{p}.mlp.up_proj.weight": rand(inter, d),
            f"{p}.mlp.down_proj.weight": rand(d, inter),
        }  # fmt: skip
    for layer in consumers:
        state[f"model.layers.{layer}.v2_proj.weight"] = rand(d, d)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return state


CASES = [
    # Llama rule (l - b) mod G == 0, b = 16 aligned with G = 4; e = 33 runs past the 32 layers.
    ("llama", LLAMA_CONFIG, dict(G=4, begin=16, end=33),
     {16: [17, 18, 19], 20: [21, 22, 23], 24: [25, 26, 27], 28: [29, 30, 31]}),
    # Non-aligned b = 18: the Llama rule counts from b ...
    ("llama", LLAMA_CONFIG, dict(G=4, begin=18, end=30),
     {18: [19, 20, 21], 22: [23, 24, 25], 26: [27, 28, 29]}),
    # ... the Mistral rule l mod G == 0 does not: layers 18 and 19 reuse layer 17's softmax
    # (the last layer that computed its own), 29 reuses 28's, and 30 is outside the range.
    ("mistral", MISTRAL_CONFIG, dict(G=4, begin=18, end=30),
     {17: [18, 19], 20: [21, 22, 23], 24: [25, 26, 27], 28: [29]}),
]  # fmt: skip


@pytest.mark.parametrize("family,config_text,grouping,expected", CASES, ids=["llama-b16-e33", "llama-b18", "mistral-b18"])
def test_published_config_resolves_to_the_hand_written_layer_map(tmp_path, family, config_text, grouping, expected):
    consumers = sorted(c for cs in expected.values() for c in cs)
    state = _write_release(tmp_path / family, config_text % grouping, consumers)
    model = load_model(tmp_path / family, dtype="float32")
    uniattn = model.uniattn_config
    assert uniattn.producers == sorted(expected)
    assert uniattn.consumers == consumers
    assert {p: list(c) for p, c in uniattn.layer_map.items()} == expected
    for layer in range(32):
        role = "producer" if layer in expected else "consumer" if layer in consumers else "ordinary"
        assert uniattn.role(layer) == role, layer
    for layer in consumers:  # each v2_proj became that consumer's Wc, unchanged
        weight = model.model.layers[layer].compensation.weight
        assert torch.equal(weight, state[f"model.layers.{layer}.v2_proj.weight"].float())
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 5, 9, 200]])).logits
    assert logits.shape == (1, 4, VOCAB) and torch.isfinite(logits).all()
