"""The UniAttn reference model (Llama, Mistral and Qwen2 families) in PyTorch.

Inference form of the released UniAttn code, with its exact simplifications:
  producer / ordinary layer:  out = Wo · attention(RoPE(n Wq), RoPE(n Wk), n Wv)
  consumer layer:             out = Wo · (P_shared · V_l) + n Wc      (Wc: `compensation`)
Consumers hold no q_proj / k_proj, apply no RoPE and keep no K cache. P_shared is the
producer's softmax, unchanged. All attention goes through the two functions of
`attention.py` (or, for export, the custom ops that wrap them), so what is exported is
exactly what is validated here.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, NamedTuple

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from ..errors import UniAttnError
from . import attention
from .cache import UniAttnCache
from .config import UniAttnConfig

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")

# transformers 5.24 renamed the cache wherever generate() handles it (forward's keyword, the
# generation model_kwargs key, the output field) from `past_key_values` to `cache`. The output
# class's field tells which name this version uses; forward accepts both names.
CACHE_KEYWORD = "cache" if "cache" in {f.name for f in fields(CausalLMOutputWithPast)} else "past_key_values"


@dataclass(frozen=True)
class AttentionOps:
    """The two shared-softmax primitives; export swaps in the custom-op versions.

    cache "dynamic" (op contract v1): caches grow, visibility comes from attention_mask.
    cache "static" (v2): fixed-capacity caches written at slot = position, visibility from
    position_ids; the layers hand the ops position_ids where v1 takes the mask.
    """

    producer: Callable = attention.producer_attention
    consumer: Callable = attention.consumer_attention
    cache: str = "dynamic"


REFERENCE_OPS = AttentionOps()
STATIC_REFERENCE_OPS = AttentionOps(
    attention.producer_attention_static, attention.consumer_attention_static, cache="static"
)


class SharedState(NamedTuple):
    """What a producer hands to its consumers (see docs/ops.md)."""

    probs: torch.Tensor  # (B, Hq, L, S) in decode, (B, Hq, L, 0) in long prefill
    lse: torch.Tensor  # (B, Hq, L) float32
    query: torch.Tensor  # producer's post-RoPE queries (B, L, Hq*D)
    key: torch.Tensor  # producer's present key cache (B, Hkv, S, D)


# tap(layer, normed, attended): a layer's normed input n and its post-attention residual
# stream h_mid = x + attention output (before the MLP), the two quantities Wc is fitted on.
LayerTap = Callable[[int, torch.Tensor, torch.Tensor], None]


@dataclass(frozen=True)
class AttentionGeometry:
    num_heads: int
    kv_num_heads: int
    head_dim: int
    scale: float
    sliding_window: int  # 0 = unlimited


def geometry(config: PreTrainedConfig, layer: int) -> AttentionGeometry:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return AttentionGeometry(
        num_heads=config.num_attention_heads,
        kv_num_heads=config.num_key_value_heads or config.num_attention_heads,
        head_dim=head_dim,
        scale=head_dim**-0.5,
        sliding_window=sliding_window_of(config, layer),
    )


def sliding_window_of(config: PreTrainedConfig, layer: int) -> int:
    window = getattr(config, "sliding_window", None)
    if not window:
        return 0
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return int(window) if layer_types[layer] == "sliding_attention" else 0
    if config.model_type == "qwen2" and not getattr(config, "use_sliding_window", False):
        return 0
    return int(window)


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Variance in float32, as every HF Llama-family model does.
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


class MLP(nn.Module):
    def __init__(self, config: PreTrainedConfig):
        super().__init__()
        bias = getattr(config, "mlp_bias", False)
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def apply_rope(packed: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int):
    """RoPE on a packed (B, L, H*D) projection; cos/sin are (B, L, D)."""
    batch, length, width = packed.shape
    x = packed.view(batch, length, num_heads, width // num_heads)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos[:, :, None, :] + rotated * sin[:, :, None, :]).view(batch, length, width)


def projection_biases(config: PreTrainedConfig) -> tuple[bool, bool]:
    """(q/k/v bias, o_proj bias): Qwen2 always biases q/k/v and never o_proj; Llama's
    attention_bias covers all four."""
    attention_bias = bool(getattr(config, "attention_bias", False))
    return attention_bias or config.model_type == "qwen2", attention_bias and config.model_type != "qwen2"


class SelfAttention(nn.Module):
    """Attention of an ordinary or producer layer: Q/K/V projections, RoPE, softmax."""

    def __init__(self, config: PreTrainedConfig, layer: int):
        super().__init__()
        self.geo = geometry(config, layer)
        g = self.geo
        qkv_bias, o_bias = projection_biases(config)
        self.q_proj = nn.Linear(config.hidden_size, g.num_heads * g.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, g.kv_num_heads * g.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, g.kv_num_heads * g.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(g.num_heads * g.head_dim, config.hidden_size, bias=o_bias)

    def forward(self, normed, cos, sin, visibility, past_key, past_value, ops: AttentionOps):
        g = self.geo
        query = apply_rope(self.q_proj(normed), cos, sin, g.num_heads)
        key = apply_rope(self.k_proj(normed), cos, sin, g.kv_num_heads)
        output, present_key, present_value, probs, lse = ops.producer(
            query, key, self.v_proj(normed), past_key, past_value, visibility,
            num_heads=g.num_heads, kv_num_heads=g.kv_num_heads, scale=g.scale,
            sliding_window=g.sliding_window,
        )  # fmt: skip
        shared = SharedState(probs, lse, query, present_key)
        return self.o_proj(output), present_key, present_value, shared


class ConsumerAttention(nn.Module):
    """Attention of a consumer layer: its own V applied to the producer's probabilities."""

    def __init__(self, config: PreTrainedConfig, layer: int, producer: int):
        super().__init__()
        # Scale and window belong to the probabilities, hence to the producer.
        self.geo = geometry(config, producer)
        g = self.geo
        qkv_bias, o_bias = projection_biases(config)
        self.v_proj = nn.Linear(config.hidden_size, g.kv_num_heads * g.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(g.num_heads * g.head_dim, config.hidden_size, bias=o_bias)

    def forward(self, normed, visibility, past_value, shared: SharedState, ops: AttentionOps):
        g = self.geo
        output, present_value = ops.consumer(
            self.v_proj(normed), past_value, visibility,
            shared.probs, shared.lse, shared.query, shared.key,
            num_heads=g.num_heads, kv_num_heads=g.kv_num_heads, scale=g.scale,
            sliding_window=g.sliding_window,
        )  # fmt: skip
        return self.o_proj(output), present_value


class DecoderLayer(nn.Module):
    def __init__(self, config: PreTrainedConfig, uniattn: UniAttnConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.role = uniattn.role(layer)
        self.producer = uniattn.producer_of(layer) if self.role == "consumer" else None
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)
        if self.role == "consumer":
            self.self_attn = ConsumerAttention(config, layer, uniattn.producer_of(layer))
            # Wc of the paper (`v2_proj` in released checkpoints): applied to the same normed
            # input as v_proj and added after o_proj, before the residual add.
            self.compensation = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        else:
            self.self_attn = SelfAttention(config, layer)

    def forward(
        self, hidden, cos, sin, visibility, past_key, past_value,
        shared: SharedState | None, ops: AttentionOps, tap: LayerTap | None = None,
    ):  # fmt: skip
        """Returns (hidden, present_key or None, present_value, shared state or None).

        visibility: attention_mask (B, S) for the dynamic-cache ops, position_ids (B, L) for
        the static ones (see AttentionOps)."""
        normed = self.input_layernorm(hidden)
        if self.role == "consumer":
            attn, present_value = self.self_attn(normed, visibility, past_value, shared, ops)
            attn = attn + self.compensation(normed)
            present_key, shared = None, None
        else:
            attn, present_key, present_value, shared = self.self_attn(
                normed, cos, sin, visibility, past_key, past_value, ops
            )
        hidden = hidden + attn
        if tap is not None:
            tap(self.layer, normed, hidden)
        hidden = hidden + self.mlp(self.post_attention_layernorm(hidden))
        return hidden, present_key, present_value, shared


class UniAttnModel(nn.Module):
    """Embeddings, decoder layers and final norm; runs the layers over explicit caches."""

    def __init__(self, config: PreTrainedConfig, uniattn: UniAttnConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(config, uniattn, i) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config)

    def run_layers(
        self, hidden, position_ids, attention_mask, past: list[tuple], ops: AttentionOps,
        *, last_layer: int | None = None, tap: LayerTap | None = None,
    ) -> tuple[torch.Tensor, list[tuple]]:  # fmt: skip
        """past[i] = (past_key or None, past_value); returns (normed hidden, presents).

        Calibration passes stop after `last_layer` (the deepest layer they measure) and read
        each layer's normed input and post-attention residual stream through `tap`.
        """
        end = len(self.layers) if last_layer is None else last_layer + 1
        # What the ops read visibility from: the mask in v1, the positions in v2.
        visibility = position_ids if ops.cache == "static" else attention_mask
        state = LayerState(hidden, *self.rotary_emb(hidden, position_ids), visibility, {})
        presents = self.run_layer_range(state, range(end), past, ops, tap)
        return self.norm(state.hidden), presents

    def run_layer_range(
        self, state: "LayerState", layers: range, past: list[tuple], ops: AttentionOps, tap: LayerTap | None = None
    ) -> list[tuple]:
        """Advance `state` through `layers` (in order); returns their (present_key, present_value).

        A later call can continue from the state where an earlier one stopped: this is how
        healing runs the layers a base model and its UniAttn version share only once.
        """
        presents = []
        for layer in (self.layers[i] for i in layers):
            past_key, past_value = past[layer.layer]
            hidden, present_key, present_value, shared = layer(
                state.hidden, state.cos, state.sin, state.visibility, past_key, past_value,
                state.shared_by_producer.get(layer.producer), ops, tap,
            )  # fmt: skip
            state.hidden = hidden
            if layer.role == "producer":
                state.shared_by_producer[layer.layer] = shared
            presents.append((present_key, present_value))
        return presents


@dataclass
class LayerState:
    """What flows from one decoder layer to the next: the residual stream, the rotary
    tables, what the attention ops read visibility from (the attention mask for dynamic
    caches, the position ids for static ones) and the shared state of the producers seen so far."""

    hidden: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    visibility: torch.Tensor
    shared_by_producer: dict[int, SharedState]


class UniAttnForCausalLM(PreTrainedModel, GenerationMixin):
    """A causal LM whose consumer layers reuse their producer's softmax.

    Usable like a transformers causal LM: `model(input_ids, attention_mask, position_ids)`
    returns `.logits` and the `UniAttnCache` (`.cache` from transformers 5.24, before that
    `.past_key_values`), and `model.generate(...)` works with greedy search and sampling. `model.uniattn_config` is the resolved layer map.
    """

    base_model_prefix = "model"
    main_input_name = "input_ids"
    _supports_sdpa = False
    _no_split_modules = ["DecoderLayer"]
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: PreTrainedConfig, uniattn_config: UniAttnConfig):
        if config.model_type not in SUPPORTED_MODEL_TYPES:
            raise UniAttnError(
                f"unsupported architecture {config.model_type!r}",
                f"uniattn-export supports {', '.join(SUPPORTED_MODEL_TYPES)}",
            )
        super().__init__(config)
        self.uniattn_config = uniattn_config
        config.uniattn = uniattn_config.to_dict()  # so save_pretrained stores the layer map
        self.attention_ops = REFERENCE_OPS
        self.model = UniAttnModel(config, uniattn_config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    def geometry(self, layer: int) -> AttentionGeometry:
        return self.model.layers[layer].self_attn.geo

    def past_from(self, cache: UniAttnCache | None, batch: int, dtype, device) -> list[tuple]:
        """run_layers' per-layer (past_key, past_value); empty (B, Hkv, 0, D) without a cache."""
        if cache is None:
            cache = UniAttnCache(self.uniattn_config)  # a fresh cache yields empty pasts
        geometries = [layer.self_attn.geo for layer in self.model.layers]
        return [
            cache.past(i, batch, g.kv_num_heads, g.head_dim, dtype, device)
            for i, g in enumerate(geometries)
        ]

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: UniAttnCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        labels: torch.LongTensor | None = None,
        cache: UniAttnCache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """`cache=` (transformers >= 5.24) and `past_key_values=` (earlier) name the same input."""
        if (input_ids is None) == (inputs_embeds is None):
            raise UniAttnError("pass exactly one of input_ids and inputs_embeds")
        hidden = self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        batch, length = hidden.shape[:2]
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if cache is not None and past_key_values is not None and cache is not past_key_values:
            raise UniAttnError(
                "both cache= and past_key_values= were passed, with different caches",
                "pass the UniAttnCache under one name",
            )
        cache = past_key_values if cache is None else cache
        if cache is not None and not isinstance(cache, UniAttnCache):
            raise UniAttnError(
                f"the cache is a {type(cache).__name__}",
                "a UniAttn model keeps no K for consumers: pass the UniAttnCache it returned, or None",
            )
        past_len = cache.get_seq_length() if cache is not None else 0
        self._refuse_missing_past(attention_mask, position_ids, past_len, length)
        if cache is None and use_cache:
            cache = UniAttnCache(self.uniattn_config)

        if attention_mask is None:
            attention_mask = torch.ones(batch, past_len + length, dtype=torch.long, device=hidden.device)
        if attention_mask.dim() != 2 or attention_mask.shape[-1] != past_len + length:
            raise UniAttnError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, expected "
                f"({batch}, {past_len + length}) (past + new tokens)",
                "pass the 2-D padding mask covering the cached and the new tokens",
            )
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + length, device=hidden.device)
            position_ids = position_ids.unsqueeze(0).expand(batch, -1)

        past = self.past_from(cache, batch, hidden.dtype, hidden.device)
        hidden, presents = self.model.run_layers(
            hidden, position_ids, attention_mask.long(), past, self.attention_ops
        )
        if cache is not None:
            for i, (present_key, present_value) in enumerate(presents):
                cache.store(i, present_key, present_value)
        keep = slice(-logits_to_keep, None) if logits_to_keep else slice(None)
        logits = self.lm_head(hidden[:, keep, :])
        loss = None
        if labels is not None:  # next-token cross-entropy, as every transformers causal LM
            loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_KEYWORD: cache if use_cache else None})

    @staticmethod
    def _refuse_missing_past(attention_mask, position_ids, past_len: int, length: int) -> None:
        """A step whose earlier tokens are in no cache would attend to its new tokens only and
        produce plausible-looking garbage: refuse it (a mask wider than cache + new tokens, or,
        with nothing cached, positions that start after 0 in every row)."""
        if attention_mask is not None and attention_mask.dim() == 2 and attention_mask.shape[-1] > past_len + length:
            missing = attention_mask.shape[-1] - past_len - length
        elif past_len == 0 and position_ids is not None and bool((position_ids.min(dim=-1).values > 0).all()):
            missing = int(position_ids.min())
        else:
            return
        raise UniAttnError(
            f"this step's {missing} earlier token(s) are in no cache (cache holds {past_len}, "
            f"{length} new): it would run without its past",
            f"pass the UniAttnCache returned by the previous step as {CACHE_KEYWORD}=",
        )

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        """generate() would build a DynamicCache; this model needs its K-less UniAttnCache."""
        if generation_config.cache_implementation is not None:
            raise UniAttnError(
                f"cache_implementation={generation_config.cache_implementation!r} is not supported",
                "leave it unset: UniAttn models use their own cache (no K for consumers)",
            )
        if model_kwargs.get(CACHE_KEYWORD) is None and generation_config.use_cache is not False:
            model_kwargs[CACHE_KEYWORD] = UniAttnCache(self.uniattn_config)
