"""Stage 1: the UniAttn reference model, its checkpoints, and conversion from a base model."""

from .checkpoint import load_model, save_model
from .config import UniAttnConfig
from .convert import convert_to_uniattn
from .modeling import UniAttnForCausalLM

__all__ = ["UniAttnConfig", "UniAttnForCausalLM", "convert_to_uniattn", "load_model", "save_model"]
