"""An independent, straightforward implementation of the released UniAttn semantics.

Written from uniattn.md, not from the package: float64, every layer computes q/k/v (as the
released code does), the producer's softmax P (causal + padding + sliding-window mask applied
before the softmax) is reused unchanged by its consumers with their own V, and Wc (`v2_proj`)
is applied to the normed input and added after o_proj. It reads the authors' checkpoint layout
(a plain transformers state dict plus `model.layers.{l}.v2_proj.weight`).
"""

from __future__ import annotations

import math

import pytest
import torch


def _rms_norm(x, weight, eps):
    return weight * (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope(x, positions, theta):
    """x: (B, H, L, D); positions: (B, L). Rotates pairs (i, i + D/2)."""
    dim = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = positions[:, None, :, None].double() * inv_freq
    cos, sin = angles.cos(), angles.sin()
    first, second = x[..., : dim // 2], x[..., dim // 2 :]
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)


def layer_window(config, layer: int) -> int | None:
    """Sliding window of `layer` by each family's published rule (None = unlimited): Mistral
    windows every layer; Qwen2 with use_sliding_window windows layers >= max_window_layers."""
    if config.model_type == "mistral":
        return config.sliding_window
    if config.model_type == "qwen2" and config.use_sliding_window and layer >= config.max_window_layers:
        return config.sliding_window
    return None


def released_forward(state, config, producer_of, input_ids, attention_mask, position_ids, tap=None):
    """Logits (float64) of the released UniAttn model; `producer_of`: consumer -> producer.

    tap(layer, n, h_mid) sees every layer's normed input and post-attention residual stream.
    """
    s = {k: v.double() for k, v in state.items()}
    batch, length = input_ids.shape
    hq, hkv = config.num_attention_heads, config.num_key_value_heads
    dim = getattr(config, "head_dim", None) or config.hidden_size // hq
    theta = config.rope_parameters["rope_theta"]
    eps = config.rms_norm_eps
    # distance[i, j] = i - j: key j is visible to query i if 0 <= i - j < window.
    distance = torch.arange(length)[:, None] - torch.arange(length)[None, :]
    padding = attention_mask[:, None, None, :].bool()
    h = s["model.embed_tokens.weight"][input_ids]
    probs_of = {}

    def linear(x, name):
        out = x @ s[f"{name}.weight"].T
        return out + s[f"{name}.bias"] if f"{name}.bias" in s else out

    for layer in range(config.num_hidden_layers):
        p = f"model.layers.{layer}"
        n = _rms_norm(h, s[f"{p}.input_layernorm.weight"], eps)
        q = linear(n, f"{p}.self_attn.q_proj").view(batch, length, hq, dim).transpose(1, 2)
        k = linear(n, f"{p}.self_attn.k_proj").view(batch, length, hkv, dim).transpose(1, 2)
        v = linear(n, f"{p}.self_attn.v_proj").view(batch, length, hkv, dim).transpose(1, 2)
        q, k = _rope(q, position_ids, theta), _rope(k, position_ids, theta)
        k = k.repeat_interleave(hq // hkv, dim=1)
        v = v.repeat_interleave(hq // hkv, dim=1)
        if layer in producer_of:
            probs = probs_of[producer_of[layer]]
        else:
            window = layer_window(config, layer)
            visible = padding & (distance >= 0) & (distance < (window or length + 1))
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(dim)
            probs = torch.softmax(scores.masked_fill(~visible, -1e300), dim=-1)
            probs_of[layer] = probs
        attn = (probs @ v).transpose(1, 2).reshape(batch, length, hq * dim)
        out = linear(attn, f"{p}.self_attn.o_proj")
        if layer in producer_of:
            out = out + n @ s[f"{p}.v2_proj.weight"].T
        h = h + out
        if tap is not None:
            tap(layer, n, h)
        m = _rms_norm(h, s[f"{p}.post_attention_layernorm.weight"], eps)
        gate = linear(m, f"{p}.mlp.gate_proj")
        h = h + linear(torch.nn.functional.silu(gate) * linear(m, f"{p}.mlp.up_proj"), f"{p}.mlp.down_proj")
    h = _rms_norm(h, s["model.norm.weight"], eps)
    head = s.get("lm_head.weight", s["model.embed_tokens.weight"])
    return h @ head.T


@pytest.fixture
def released_reference():
    return released_forward


def left_padded(vocab_size: int, lengths: list[int], seed: int = 0):
    """Random token ids with left padding: (input_ids, attention_mask, position_ids)."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    input_ids = torch.randint(1, vocab_size, (len(lengths), width), generator=generator)
    attention_mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        attention_mask[row, width - n :] = 1
        input_ids[row, : width - n] = 0
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return input_ids, attention_mask, position_ids


@pytest.fixture
def left_padded_batch():
    return left_padded
