"""The PyTorch reference model behind the shared generation loop.

Validation runs the reference and the artifact through the same `GenerationSession.generate`,
so both see byte-identical token ids, masks and position ids at every step.
"""

from __future__ import annotations

import numpy as np
import torch

from ..model.cache import UniAttnCache
from ..model.modeling import UniAttnForCausalLM
from ..targets.session import GenerationSession


class TorchSession(GenerationSession):
    def __init__(self, model: UniAttnForCausalLM):
        self.model = model.eval()
        self.dtype = str(model.dtype).removeprefix("torch.")
        self.description = f"PyTorch reference {torch.__version__}, {self.dtype}"
        self.vocab_size = model.config.vocab_size
        self.max_positions = model.config.max_position_embeddings
        self._cache: UniAttnCache | None = None

    def reset(self, batch_size: int) -> None:
        self._cache = UniAttnCache(self.model.uniattn_config)

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = self.model(
                input_ids=torch.from_numpy(input_ids),
                attention_mask=torch.from_numpy(attention_mask),
                position_ids=torch.from_numpy(position_ids),
                past_key_values=self._cache,
                use_cache=True,
            )
        return out.logits.float().numpy()
