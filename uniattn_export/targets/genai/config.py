"""genai_config.json for an artifact exported with the genai cache layout (io_names.py).

onnxruntime-genai (0.18) loads a folder holding the ONNX graph and genai_config.json:
  model.type                  its decoder-only model class (llama, mistral, qwen2 here)
  model.decoder.inputs/outputs  the I/O names; cache names as "past_key_values.%d.key"
                              templates (it finds the cache layers by the key template and
                              feeds key and value for each, reading each layer's heads and
                              head size from the graph's input shapes)
  search.max_length           prompt + generated tokens; for static caches the capacity, and
  search.past_present_share_buffer  true: one (B, Hkv, max_length, D) buffer per cache bound
                              as past and present, which is op contract v2's convention
  decoder.session_options.custom_ops_library  a library it registers; a relative path is
                              resolved in the model folder (or the working directory), and a
                              resolved path outside those folders is refused, so the library
                              is copied into the folder
  decoder.session_options.intra_op_num_threads  absent, genai sets max(1, min(16, logical
                              CPUs / 2)) (its source at 0.16-dev; 0.18 measured the same: one
                              thread on a 2-core machine without SMT); a value
                              is passed to ONNX Runtime's SetIntraOpNumThreads, where 0 means
                              ONNX Runtime's own default (one per physical core), which our
                              sessions use: the folder says 0
onnxruntime-genai pads batched prompts on the right with pad_token_id and takes a row's
trailing pad_token_id tokens as its padding (attention_mask 0).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ...errors import UniAttnError
from ...export import io_names
from ..ort.session import custom_op_library_for

GENAI_CONFIG_FILE = "genai_config.json"
# ONNX Runtime's own intra-op thread count (0: one thread per physical core), the default of
# our sessions; onnxruntime-genai's default without the key is half the logical CPUs.
ORT_DEFAULT_THREADS = {"intra_op_num_threads": 0}
# transformers model types onnxruntime-genai runs with its decoder-only model class.
GENAI_MODEL_TYPES = ("llama", "mistral", "qwen2")


def genai_library_for(cache: str, custom_ops: bool | None) -> Path | None:
    """The custom-op library to ship in a genai folder, by OrtSession's rule
    (custom_op_library_for): None (auto) takes the built library when it serves the artifact's
    op version; True requires that; False ships none (onnxruntime then runs the function bodies)."""
    library, _ = custom_op_library_for(cache == "static", custom_ops)
    return Path(library) if library is not None else None


def check_genai_model(model, cache: str) -> None:
    """What onnxruntime-genai cannot run correctly, refused in one line."""
    config = model.config
    if config.model_type not in GENAI_MODEL_TYPES:
        raise UniAttnError(
            f"--target genai exports {', '.join(GENAI_MODEL_TYPES)} models, not {config.model_type!r}",
            "export with --target ort or onnx",
        )
    windows = {model.geometry(i).sliding_window for i in range(model.uniattn_config.num_layers)} - {0}
    if cache == "dynamic" and windows:
        # Growing caches (op contract v1) measure the window in cache slots; right padding
        # (onnxruntime-genai's) puts padding slots between a row's prompt and its new tokens.
        raise UniAttnError(
            f"this model has a sliding window ({min(windows)} tokens), which dynamic caches measure in cache slots: "
            "onnxruntime-genai's right padding would shift it",
            "pass --cache static (slot = position)",
        )


def genai_export_options(model, *, cache: str, capacity: int | None, library: Path | None) -> dict:
    """export_model's keywords for a `--target genai` folder of `model`: onnxruntime-genai's
    cache layout, and genai_config.json (+ `library`) written into the folder."""
    check_genai_model(model, cache)
    return {
        "layout": "genai",
        "extra_files": lambda folder: write_genai_config(folder, model, cache=cache, capacity=capacity, library=library),
    }


def _token_id(config, generation_config: dict, key: str):
    value = generation_config.get(key, getattr(config, key, None))
    return value[0] if isinstance(value, list) and value else value


def write_genai_config(folder: Path, model, *, cache: str, capacity: int | None, library: Path | None) -> list[str]:
    """Write genai_config.json (and copy `library`) into the artifact folder being written;
    returns the names of the files written."""
    check_genai_model(model, cache)
    config = model.config
    uniattn = model.uniattn_config
    has_key = [uniattn.has_key_cache(i) for i in range(uniattn.num_layers)]
    genai_layers = {t.name.layer for t in io_names.cache_tensors(has_key, "genai")}
    geometry = model.geometry(0)
    generation_config = {}
    if (folder / "generation_config.json").is_file():
        generation_config = json.loads((folder / "generation_config.json").read_text())
    eos = _token_id(config, generation_config, "eos_token_id")
    pad = _token_id(config, generation_config, "pad_token_id")
    session_options = {"log_id": "onnxruntime-genai", **ORT_DEFAULT_THREADS, "provider_options": []}
    written = [GENAI_CONFIG_FILE]
    if library is not None:
        shutil.copy2(library, folder / library.name)
        session_options["custom_ops_library"] = library.name  # resolved in the model folder
        written.append(library.name)
    templates = io_names.genai_name_templates()
    genai_config = {
        "model": {
            "type": config.model_type,
            "bos_token_id": _token_id(config, generation_config, "bos_token_id"),
            "eos_token_id": eos,
            # genai marks a row's trailing pad tokens as padding; without a pad token eos pads.
            "pad_token_id": pad if pad is not None else eos,
            "vocab_size": config.vocab_size,
            "context_length": config.max_position_embeddings,
            "decoder": {
                "filename": "model.onnx",
                "session_options": session_options,
                "hidden_size": config.hidden_size,
                "num_attention_heads": geometry.num_heads,
                "num_key_value_heads": geometry.kv_num_heads,
                "head_size": geometry.head_dim,
                # cache layers as genai counts them (model layers with K + pseudo layers)
                "num_hidden_layers": len(genai_layers),
                "inputs": {
                    "input_ids": io_names.INPUT_IDS, "attention_mask": io_names.ATTENTION_MASK,
                    "position_ids": io_names.POSITION_IDS,
                    "past_key_names": templates["past_key_names"], "past_value_names": templates["past_value_names"],
                },  # fmt: skip
                "outputs": {
                    "logits": io_names.LOGITS,
                    "present_key_names": templates["present_key_names"],
                    "present_value_names": templates["present_value_names"],
                },
            },
        },
        "search": {
            "do_sample": False,
            "num_beams": 1,
            "max_length": capacity if cache == "static" else config.max_position_embeddings,
            "past_present_share_buffer": cache == "static",
        },
    }
    (folder / GENAI_CONFIG_FILE).write_text(json.dumps(genai_config, indent=2) + "\n")
    return written
