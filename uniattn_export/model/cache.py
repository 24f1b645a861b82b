"""KV cache that stores keys only for the layers that compute their own softmax.

It is a transformers `Cache`, so `generate` (cache reuse, beam reordering, batch expansion)
works unchanged; consumer layers use a layer type that never holds keys.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

from .config import UniAttnConfig


class KeyValueLayer(DynamicLayer):
    """Cache of a producer or ordinary layer (keys and values)."""

    def store(self, keys: torch.Tensor | None, values: torch.Tensor) -> None:
        self.keys, self.values = keys, values
        self.dtype, self.device = values.dtype, values.device
        self.is_initialized = True


class ValueOnlyLayer(KeyValueLayer):
    """Cache of a consumer layer: values only; `keys` stays an empty tensor."""

    def store(self, keys: torch.Tensor | None, values: torch.Tensor) -> None:
        super().store(values.new_empty((*values.shape[:2], 0, values.shape[-1])), values)

    def get_seq_length(self) -> int:
        return self.values.shape[-2] if self.is_initialized else 0

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove < 0 and self.is_initialized:
            self.values = self.values[..., :tokens_to_remove, :]

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self.store(None, self.values.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self.store(None, self.values[indices, ...])

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.is_initialized:
            self.store(None, self.values.index_select(0, beam_idx.to(self.values.device)))


class UniAttnCache(Cache):
    """One layer entry per decoder layer; consumers keep no K."""

    def __init__(self, uniattn_config: UniAttnConfig):
        super().__init__(
            layers=[
                KeyValueLayer() if uniattn_config.has_key_cache(i) else ValueOnlyLayer()
                for i in range(uniattn_config.num_layers)
            ]
        )

    def past(
        self, layer_idx: int, batch: int, kv_heads: int, head_dim: int, dtype, device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(past_key, past_value); empty (B, Hkv, 0, D) tensors before the first step."""
        layer = self.layers[layer_idx]
        if not layer.is_initialized:
            empty = torch.empty((batch, kv_heads, 0, head_dim), dtype=dtype, device=device)
            return empty, empty
        return layer.keys, layer.values

    def store(self, layer_idx: int, present_key: torch.Tensor | None, present_value: torch.Tensor):
        self.layers[layer_idx].store(present_key, present_value)

    def nbytes(self) -> int:
        """Bytes held by the cache right now (keys + values of every layer)."""
        return sum(
            t.numel() * t.element_size()
            for layer in self.layers
            if layer.is_initialized
            for t in (layer.keys, layer.values)
        )
