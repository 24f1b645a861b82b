"""Tiny checkpoints in the authors' release layout, exported by the real exporter (cached
per session: an export takes seconds)."""

from __future__ import annotations

import json

import pytest

from uniattn_export.export import export_model, load_artifact
from uniattn_export.model import load_model
from uniattn_export.model.synthetic import random_base_model, released_checkpoint, tiny_config

# 6 layers, SuperBlocks of 2 from layer 1 (the released scripts' grouping keys). The Llama
# and Qwen2 rule gives 1->2, 3->4 with layers 0 and 5 ordinary; Mistral's l mod 2 rule gives
# 0->1, 2->3, 4->5. Between them every node shape occurs.
SUPERBLOCKS = (2, 1, 6)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """checkpoint(family, base=False, **config) -> folder of a seeded tiny checkpoint."""
    made = {}

    def make(family: str = "llama", base: bool = False, **config):
        key = (family, base, json.dumps(config, sort_keys=True))
        if key not in made:
            folder = tmp_path_factory.mktemp(f"{family}_{'base' if base else 'uniattn'}")
            model = random_base_model(tiny_config(family, **config), seed=1)
            if base:
                model.save_pretrained(folder)
            else:
                released_checkpoint(model, folder, *SUPERBLOCKS)
            made[key] = folder
        return made[key]

    return make


@pytest.fixture(scope="session")
def exported(checkpoint, tmp_path_factory):
    """exported(family, dtype="float32", base=False, cache="dynamic", max_length=None,
    ort_contrib_ops=False, **config) -> loaded Artifact (ort_contrib_ops: the graph of the ort and
    genai targets)."""
    made = {}

    def make(family: str = "llama", dtype: str = "float32", base: bool = False, cache: str = "dynamic",
             max_length: int | None = None, ort_contrib_ops: bool = False, **config):  # fmt: skip
        key = (family, dtype, base, cache, max_length, ort_contrib_ops, json.dumps(config, sort_keys=True))
        if key not in made:
            source = checkpoint(family, base, **config)
            out = tmp_path_factory.mktemp("artifacts") / f"{family}_{dtype}_{'base' if base else 'uniattn'}_{cache}"
            model = load_model(source, dtype=dtype)
            made[key] = load_artifact(export_model(model, out, source_dir=source, cache=cache, max_length=max_length,
                                                   ort_contrib_ops=ort_contrib_ops))  # fmt: skip
        return made[key]

    return make
