"""uniattn-export: export, compile and validate LLMs post-trained with UniAttn.

Public API (imported lazily, so the CLI starts fast):
  load_model(path, dtype=None)  the PyTorch reference model of a checkpoint
  save_model(model, out_dir)    our checkpoint format (explicit layer map)
  UniAttnConfig                 the resolved producer -> consumers layer map
  UniAttnError                  every user-facing error
  ort_custom_op_library()       path of the ONNX Runtime custom-op library (None if not built)
"""

from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "UniAttnError": ".errors",
    "UniAttnConfig": ".model.config",
    "UniAttnForCausalLM": ".model.modeling",
    "load_model": ".model.checkpoint",
    "save_model": ".model.checkpoint",
    "ort_custom_op_library": ".native",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
