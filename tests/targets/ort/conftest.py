"""Tiny UniAttn checkpoints (authors' layout) and their exports, cached per session."""

from __future__ import annotations

import functools

import pytest

from uniattn_export.export import export_model, load_artifact
from uniattn_export.model import load_model
from uniattn_export.model.synthetic import random_base_model, released_checkpoint, tiny_config


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """tiny(family, dtype="float32", capacity=None) -> (checkpoint folder, Artifact). SuperBlocks
    of 2 from layer 1 of 6: ordinary layers, producers and consumers all occur."""

    @functools.cache
    def checkpoint(family):
        folder = tmp_path_factory.mktemp(f"{family}_checkpoint")
        released_checkpoint(random_base_model(tiny_config(family), seed=2), folder, 2, 1, 6)
        return folder

    @functools.cache
    def make(family: str = "llama", dtype: str = "float32", capacity: int | None = None, ort_contrib_ops: bool = False):
        """capacity: a static-cache artifact of that many tokens (default: dynamic caches);
        ort_contrib_ops: the graph of the ort and genai targets (their fused ops)."""
        source = checkpoint(family)
        out = tmp_path_factory.mktemp(f"{family}_{dtype}_{capacity or 'dynamic'}") / "artifact"
        cache = dict(cache="static", max_length=capacity) if capacity else {}
        model = load_model(source, dtype=dtype)
        return source, load_artifact(export_model(model, out, source_dir=source, ort_contrib_ops=ort_contrib_ops, **cache))

    return make
