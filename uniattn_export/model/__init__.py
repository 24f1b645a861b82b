"""Stage 1: the UniAttn reference model, its checkpoints, and conversion from a base model.

Imported lazily (as the top-level package): the CLI's parser reads constants from
submodules here (e.g. model.real.SMOLLM2_NAME) without loading torch or transformers.
"""

from importlib import import_module

_LAZY = {
    "UniAttnConfig": ".config",
    "UniAttnForCausalLM": ".modeling",
    "convert_to_uniattn": ".convert",
    "load_model": ".checkpoint",
    "save_model": ".checkpoint",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
