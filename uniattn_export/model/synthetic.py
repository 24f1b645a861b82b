"""Random-weight checkpoints built in code: tiny models for tests, full-size shapes for timing.

`released_checkpoint` writes the authors' release layout (a transformers base checkpoint
plus grouping_* keys and `v2_proj` weights; consumers keep their unused q/k projections),
which is the layout real UniAttn checkpoints arrive in, so everything downstream is
exercised through the same loader users hit.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, PreTrainedConfig, Qwen2Config

from .config import UniAttnConfig
from .checkpoint import DEFAULT_RULE_BY_MODEL_TYPE

FAMILIES = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}


def _llama3_rope(factor: float) -> dict:
    """Llama 3's rope scaling as the released Llama-3.x configs write it; the 1B and 8B
    releases differ only in the factor."""
    return {"rope_type": "llama3", "rope_theta": 500000.0, "factor": factor, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


# Shape presets for timing (weights are random; only the shapes matter).
PRESETS = {
    # Llama-3.2-1B: 16 layers, d=2048, 32 query / 8 KV heads, head_dim 64, tied embeddings.
    "llama-3.2-1b": dict(
        family="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
        tie_word_embeddings=True, max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_parameters=_llama3_rope(factor=32.0),
        initializer_range=0.02,
    ),
    # Llama-3.1-8B (issue 12's stretch, the paper's model class): 32 layers, d=4096, 32 query /
    # 8 KV heads, head_dim 128, untied embeddings; 8,030,261,248 parameters.
    "llama-3.1-8b": dict(
        family="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256,
        tie_word_embeddings=False, max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_parameters=_llama3_rope(factor=8.0),
        initializer_range=0.02,
    ),
    # A small default for smoke runs and the README's first command.
    "tiny": dict(
        family="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
        max_position_embeddings=512, initializer_range=0.2,
    ),
}


def tiny_config(family: str = "llama", **overrides) -> PreTrainedConfig:
    """A small config of `family`. A large initializer_range (0.2) keeps logits far from
    uniform, so tests can tell correct attention semantics from wrong ones."""
    fields = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, max_position_embeddings=256,
        initializer_range=0.2, tie_word_embeddings=False,
    )
    fields.update(overrides)
    return FAMILIES[family](**fields)


def byte_tokenizer():
    """A tokenizer with one token per byte (ids 0-255) for tiny models in tests and demos.

    Byte 0 never occurs in text, so it doubles as end-of-text and padding: the vocabulary
    stays exactly 256, the size of the "tiny" preset.
    """
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    # An empty BPE vocabulary with byte fallback turns every character into its UTF-8 bytes.
    bpe = models.BPE(vocab={f"<0x{b:02X}>": b for b in range(256)}, merges=[], byte_fallback=True)
    backend = Tokenizer(bpe)
    backend.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<0x00>", pad_token="<0x00>", padding_side="left"
    )


def preset_config(name: str) -> PreTrainedConfig:
    fields = dict(PRESETS[name])
    return FAMILIES[fields.pop("family")](**fields)


def random_base_model(config: PreTrainedConfig, seed: int = 0, dtype=torch.float32):
    """A transformers causal LM with seeded random weights (eval mode)."""
    torch.manual_seed(seed)
    with torch.device("cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def released_checkpoint(
    base_model,
    out_dir: str | Path,
    superblock_size: int,
    begin: int,
    end: int,
    seed: int = 0,
    compensation_scale: float = 0.05,
) -> UniAttnConfig:
    """Save `base_model` in the authors' release layout with random Wc (`v2_proj`) weights.

    The producer rule is the one the released modeling file of that family uses.
    Returns the layer map the checkpoint means.
    """
    from safetensors.torch import save_file

    config = base_model.config
    rule = DEFAULT_RULE_BY_MODEL_TYPE[config.model_type]
    uniattn = UniAttnConfig.from_grouping(config.num_hidden_layers, superblock_size, begin, end, rule)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base_model.save_pretrained(out_dir)
    state = {k: v.contiguous() for k, v in base_model.state_dict().items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    generator = torch.Generator().manual_seed(seed)
    d = config.hidden_size
    dtype = state["model.embed_tokens.weight"].dtype
    for layer in uniattn.consumers:
        wc = torch.randn(d, d, generator=generator) * compensation_scale
        state[f"model.layers.{layer}.v2_proj.weight"] = wc.to(dtype)
    for stale in out_dir.glob("model*.safetensors*"):
        stale.unlink()
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    raw = json.loads((out_dir / "config.json").read_text())
    raw.update(grouping_idx=superblock_size, grouping_begin_idx=begin, grouping_end_idx=end)
    (out_dir / "config.json").write_text(json.dumps(raw, indent=2))
    return uniattn
