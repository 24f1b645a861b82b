"""Both loaders, the Python one (load_artifact) and the C runtime (runtime/src/manifest.cpp),
refuse the same tampered artifacts with the same sentence: sha256 of every listed file, the
manifest's format version and field types, the three copies of the layer map, and the facts
the manifest states twice (config.json, its own I/O list). The C runtime also refuses a
generation that would run past the model's positions."""

from __future__ import annotations

import shutil

import pytest

from uniattn_export.errors import UniAttnError
from uniattn_export.export import load_artifact

from artifact_edits import edit_json, manifest_edit, rehash, setting


def _flip_16_bytes(artifact):
    data = bytearray((artifact / "model.onnx").read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0x5A for b in data[middle : middle + 16])
    (artifact / "model.onnx").write_bytes(bytes(data))


def _layer_map_file(artifact):
    edit_json(artifact / "uniattn_layer_map.json", lambda m: m["layer_map"].pop("4"))  # 4 -> 5 gone
    rehash(artifact, "uniattn_layer_map.json")


def _config_vocab(artifact):
    edit_json(artifact / "config.json", setting("vocab_size", 300))
    rehash(artifact, "config.json")


def _config_positions(artifact):
    edit_json(artifact / "config.json", lambda c: c.pop("max_position_embeddings"))
    rehash(artifact, "config.json")


CASES = [
    ("model_onnx_16_bytes_changed", _flip_16_bytes, "model.onnx was modified after export (sha256 differs from the manifest)"),
    ("format_version_abc", manifest_edit(setting("format_version", "abc")), "uniattn_manifest.json: field format_version is "),
    ("format_version_newer", manifest_edit(setting("format_version", 2)), "was written by a newer uniattn-export (manifest format 2)"),
    ("files_a_list", manifest_edit(setting("files", ["model.onnx"])), "field files is "),
    ("manifest_vocab_size", manifest_edit(lambda m: m["geometry"].update(vocab_size=999)),
     "says vocab_size=999 but config.json has vocab_size=256"),
    ("manifest_num_layers", manifest_edit(lambda m: m["geometry"].update(num_layers=9)),
     "says num_layers=9 but config.json has num_hidden_layers=6"),
    ("manifest_dtype", manifest_edit(setting("dtype", "float16")), "says dtype float16 but its caches are float32"),
    ("config_vocab_rehashed", _config_vocab, "says vocab_size=256 but config.json has vocab_size=300"),
    ("config_positions_rehashed", _config_positions, "config.json has max_position_embeddings="),
    ("layer_map_file_rehashed", _layer_map_file, "uniattn_layer_map.json differs from the manifest's"),
]  # fmt: skip


@pytest.mark.parametrize("tamper, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_both_loaders_refuse_a_tampered_artifact(tiny_artifact, tmp_path, c_runtime, c_runtime_error, tamper, words):
    artifact = shutil.copytree(tiny_artifact, tmp_path / "artifact")
    tamper(artifact)
    with pytest.raises(UniAttnError) as python_error:
        load_artifact(artifact)
    with pytest.raises(c_runtime_error) as c_error:
        c_runtime(artifact)
    assert c_error.value.status == "ARTIFACT_ERROR"
    assert words in str(python_error.value), python_error.value
    assert words in c_error.value.message, c_error.value.message


def test_the_untampered_copy_loads_in_both(tiny_artifact, tmp_path, c_runtime):
    artifact = shutil.copytree(tiny_artifact, tmp_path / "artifact")
    assert load_artifact(artifact).max_positions == 256
    assert c_runtime(artifact).generate([[1, 2, 3]], 2).tokens.shape == (1, 2)


def test_c_runtime_refuses_a_generation_past_the_positions(tiny_artifact, c_runtime, c_runtime_error):
    runtime = c_runtime(tiny_artifact)
    with pytest.raises(c_runtime_error) as caught:
        runtime.generate([[1] * 250, [2]], 7)
    assert caught.value.status == "INVALID_ARGUMENT"
    assert caught.value.message == "prompt tokens (250) + max_new_tokens (7) exceed the model's 256 positions"
    assert runtime.generate([[1] * 250, [2]], 6).tokens.shape[0] == 2  # 250 + 6 == 256 fits
