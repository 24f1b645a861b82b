"""The cache layouts of io_names.py: optimum's names, and onnxruntime-genai's pseudo layers."""

from __future__ import annotations

import pytest

from uniattn_export.export import io_names
from uniattn_export.export.io_names import CacheName


def _layout(has_key, layout):
    return [(t.name.past, t.name.present, t.source and (t.source.layer, t.source.kind)) for t in io_names.cache_tensors(has_key, layout)]


def test_optimum_layout_names_each_layer_and_gives_consumers_a_value_only():
    assert _layout([True, False], "optimum") == [
        ("past_key_values.0.key", "present.0.key", (0, "key")),
        ("past_key_values.0.value", "present.0.value", (0, "value")),
        ("past_key_values.1.value", "present.1.value", (1, "value")),
    ]
    assert io_names.input_names([True, False]) == ["input_ids", "attention_mask", "position_ids", "past_key_values.0.key",
                                                   "past_key_values.0.value", "past_key_values.1.value"]  # fmt: skip


def test_genai_layout_pairs_consumer_value_caches_into_pseudo_layers():
    # 7 layers, consumers 2, 4 and 6: pseudo layer 7 holds 2's and 4's value caches, pseudo
    # layer 8 a dummy key and 6's value cache.
    has_key = [True, True, False, True, False, True, False]
    layout = _layout(has_key, "genai")
    assert layout[:8] == [
        (f"past_key_values.{layer}.{kind}", f"present.{layer}.{kind}", (layer, kind)) for layer in (0, 1, 3, 5) for kind in ("key", "value")
    ]
    assert layout[8:] == [
        ("past_key_values.7.key", "present.7.key", (2, "value")),
        ("past_key_values.7.value", "present.7.value", (4, "value")),
        ("past_key_values.8.key", "present.8.key", None),
        ("past_key_values.8.value", "present.8.value", (6, "value")),
    ]
    # onnxruntime-genai's templates find every tensor: key and value for each layer index.
    templates = io_names.genai_name_templates()
    indices = sorted({t.name.layer for t in io_names.cache_tensors(has_key, "genai")})
    assert sorted([templates["past_key_names"] % i for i in indices] + [templates["past_value_names"] % i for i in indices]) == sorted(
        t.name.past for t in io_names.cache_tensors(has_key, "genai")
    ) == sorted(io_names.input_names(has_key, "genai")[3:])


def test_genai_layout_of_a_base_model_is_optimums():
    assert io_names.cache_tensors([True] * 3, "genai") == io_names.cache_tensors([True] * 3, "optimum")
    assert all(t.name == t.source for t in io_names.cache_tensors([True] * 3, "genai"))
    assert io_names.cache_tensors([True], "genai")[0].source == CacheName(0, "key")


def test_unknown_layout_is_refused():
    with pytest.raises(ValueError, match="unknown cache layout 'vllm'"):
        io_names.cache_tensors([True], "vllm")
