"""Stage 1: the UniAttn reference model, its checkpoints, and conversion from a base model."""

from .checkpoint import load_model, save_model
from .config import UniAttnConfig
from .modeling import UniAttnForCausalLM

__all__ = ["UniAttnConfig", "UniAttnForCausalLM", "load_model", "save_model"]
