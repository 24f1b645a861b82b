"""onnxruntime-genai target: the genai_config.json of an artifact folder, and running it."""

from .config import (
    GENAI_CONFIG_FILE, GENAI_MODEL_TYPES, check_genai_model, genai_export_options, genai_library_for, write_genai_config,
)  # fmt: skip

__all__ = [
    "GENAI_CONFIG_FILE", "GENAI_MODEL_TYPES", "check_genai_model", "genai_export_options", "genai_library_for",
    "write_genai_config",
]  # fmt: skip
