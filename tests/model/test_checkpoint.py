"""Loading the authors' layout and ours, saving, and every kind of bad checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from uniattn_export.errors import UniAttnError
from uniattn_export.model import UniAttnConfig, load_model, save_model
from uniattn_export.model.synthetic import random_base_model, released_checkpoint, tiny_config

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture
def released(tmp_path):
    """A Llama checkpoint in the authors' layout: G=3, b=1, e=6 -> producers 1, 4."""
    base = random_base_model(tiny_config("llama"), seed=4)
    folder = tmp_path / "released"
    uniattn = released_checkpoint(base, folder, 3, 1, 6, seed=5)
    return folder, uniattn


def _edit_config(folder, **changes):
    raw = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    (folder / "config.json").write_text(json.dumps(raw))


def _edit_weights(folder, edit):
    state = load_file(str(folder / "model.safetensors"))
    edit(state)
    save_file(state, str(folder / "model.safetensors"))


def test_released_layout_maps_v2_proj_and_drops_consumer_qk(released):
    folder, uniattn = released
    assert uniattn.layer_map == {1: (2, 3), 4: (5,)}
    model = load_model(folder)
    assert model.uniattn_config.layer_map == uniattn.layer_map
    assert model.uniattn_config.producer_rule == "begin_offset"
    state = load_file(str(folder / "model.safetensors"))
    for layer in uniattn.consumers:
        attn = model.model.layers[layer].self_attn
        assert not hasattr(attn, "q_proj") and not hasattr(attn, "k_proj")
        assert torch.equal(
            model.model.layers[layer].compensation.weight, state[f"model.layers.{layer}.v2_proj.weight"]
        )
    assert hasattr(model.model.layers[1].self_attn, "q_proj")


def test_mistral_release_uses_the_absolute_rule(tmp_path):
    base = random_base_model(tiny_config("mistral"), seed=4)
    uniattn = released_checkpoint(base, tmp_path, 2, 1, 6)
    # l mod 2 == 0 inside [1, 6): producers 2, 4; layer 1 reuses layer 0 (the nearest own softmax).
    assert uniattn.layer_map == {0: (1,), 2: (3,), 4: (5,)}
    assert load_model(tmp_path).uniattn_config.layer_map == uniattn.layer_map


def test_save_load_round_trip_keeps_map_and_logits(released, tmp_path):
    folder, uniattn = released
    model = load_model(folder)
    out = save_model(model, tmp_path / "ours")
    raw = json.loads((out / "config.json").read_text())
    assert raw["uniattn"]["layer_map"] == {"1": [2, 3], "4": [5]}
    assert "grouping_idx" not in raw  # the explicit map is the only description
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ours")]  # no temp left
    reloaded = load_model(out)
    assert reloaded.uniattn_config.layer_map == uniattn.layer_map
    ids = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reloaded(input_ids=ids).logits)
    assert load_model(out, dtype="bfloat16").dtype == torch.bfloat16


def test_tied_embeddings_stay_tied(tmp_path):
    base = random_base_model(tiny_config("qwen2", tie_word_embeddings=True), seed=4)
    released_checkpoint(base, tmp_path / "r", 2, 0, 6)
    model = load_model(tmp_path / "r")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    reloaded = load_model(save_model(model, tmp_path / "ours"))
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight


def test_softmax_only_release_gets_zero_compensation(released):
    folder, uniattn = released
    _edit_weights(folder, lambda s: [s.pop(f"model.layers.{c}.v2_proj.weight") for c in uniattn.consumers])
    model = load_model(folder)
    for layer in uniattn.consumers:
        assert not model.model.layers[layer].compensation.weight.any()


def test_sharded_checkpoint_loads(released, tmp_path):
    folder, _ = released
    state = load_file(str(folder / "model.safetensors"))
    names = sorted(state)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in halves.items():
        save_file({k: state[k] for k in keys}, str(folder / shard))
    (folder / "model.safetensors").unlink()
    index = {"weight_map": {k: shard for shard, keys in halves.items() for k in keys}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    model = load_model(folder)
    assert torch.equal(model.model.layers[2].compensation.weight, state["model.layers.2.v2_proj.weight"])
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(UniAttnError, match="lists model-00002-of-00002.safetensors but that file is missing"):
        load_model(folder)


# --- bad inputs: one clear UniAttnError each ------------------------------------------------


def test_missing_folder_and_files(tmp_path, released):
    with pytest.raises(UniAttnError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UniAttnError, match="has no config.json"):
        load_model(tmp_path / "empty")
    folder, _ = released
    (folder / "model.safetensors").unlink()
    with pytest.raises(UniAttnError, match=r"has no weights \(model.safetensors or pytorch_model.bin\)"):
        load_model(folder)


def test_invalid_config_json(released):
    folder, _ = released
    (folder / "config.json").write_text("{not json")
    with pytest.raises(UniAttnError, match="config.json is not valid JSON"):
        load_model(folder)


def test_truncated_and_corrupt_safetensors(released):
    folder, _ = released
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(UniAttnError, match="cannot read weights from model.safetensors.*corrupt or truncated"):
        load_model(folder)
    weights.write_bytes(b"\xff" * 64)
    with pytest.raises(UniAttnError, match="cannot read weights from model.safetensors"):
        load_model(folder)


def _set(name, value):
    return lambda state: state.__setitem__(name, value)


def _drop(name):
    return lambda state: state.pop(name)


def _nan_at(name):
    return lambda state: state[name].__setitem__((0, 0), float("nan"))


# (config.json changes, weights edit, load_model kwargs, expected message)
BAD_CHECKPOINTS = {
    "v2_proj on a layer the config calls a producer": (
        {}, _set("model.layers.4.v2_proj.weight", torch.zeros(64, 64)), {},
        "weights contain model.layers.4.v2_proj.weight but the layer map makes layer 4 a producer",
    ),
    "grouping keys contradict the weights": (  # G=2: producers 1, 3, 5
        {"grouping_idx": 2}, None, {}, "the layer map makes layer 3 a producer",
    ),
    "a consumer without its v2_proj": (
        {}, _drop("model.layers.3.v2_proj.weight"), {},
        r"consumer layers \[3\] have no Wc weight \(v2_proj / compensation\) while other consumers do",
    ),
    "partial grouping keys": (
        {"grouping_end_idx": None}, None, {},
        "config.json has grouping_idx, grouping_begin_idx but not grouping_end_idx",
    ),
    "non-integer grouping keys": ({"grouping_idx": "four"}, None, {}, "must be integers"),
    "a consumer without producer": (  # (l - 1) mod 2 == 0 makes layer 0 a consumer of nothing
        {"grouping_begin_idx": 0, "grouping_idx": 2}, None, {"producer_rule": "gemma2"},
        "layer 0 would be a consumer with no earlier layer to share from",
    ),
    "unsupported architecture": (
        {"model_type": "gpt2"}, None, {}, "unsupported architecture 'gpt2'.*supports llama, mistral, qwen2",
    ),
    "NaN weights": (
        {}, _nan_at("model.layers.2.mlp.up_proj.weight"), {},
        "weight model.layers.2.mlp.up_proj.weight contains NaN or Inf",
    ),
    "weights of another shape": (
        {}, _set("model.layers.2.v2_proj.weight", torch.zeros(64, 32)), {},
        "weights do not fit the config: .*size mismatch",
    ),
    "a missing weight": (
        {}, _drop("model.layers.0.mlp.up_proj.weight"), {},
        "weights are missing model.layers.0.mlp.up_proj.weight",
    ),
    "an unknown dtype": ({}, None, {"dtype": "float7"}, "unknown dtype 'float7'"),
    "an integer dtype": ({}, None, {"dtype": "int8"}, r"unsupported dtype 'int8'\. Use one of float32, float16, bfloat16, float64"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_CHECKPOINTS)
def test_bad_checkpoint(released, case):
    config_changes, edit_weights, kwargs, message = BAD_CHECKPOINTS[case]
    folder, _ = released
    _edit_config(folder, **config_changes)
    if edit_weights is not None:
        _edit_weights(folder, edit_weights)
    with pytest.raises(UniAttnError, match=message):
        load_model(folder, **kwargs)


def test_our_format_with_a_missing_compensation(released, tmp_path):
    folder, _ = released
    out = save_model(load_model(folder), tmp_path / "ours")
    _edit_weights(out, lambda s: s.pop("model.layers.5.compensation.weight"))
    with pytest.raises(UniAttnError, match=r"consumer layers \[5\] have no Wc weight"):
        load_model(out)
    # Unlike a softmax-only release, our format never means "Wc = 0" by omission.
    _edit_weights(out, lambda s: [s.pop(f"model.layers.{c}.compensation.weight") for c in (2, 3)])
    with pytest.raises(UniAttnError, match="weights are missing model.layers.2.compensation.weight"):
        load_model(out)


def test_our_format_layer_map_problems(released, tmp_path):
    folder, _ = released
    out = save_model(load_model(folder), tmp_path / "ours")
    raw = json.loads((out / "config.json").read_text())
    raw["uniattn"]["num_layers"] = 8
    (out / "config.json").write_text(json.dumps(raw))
    with pytest.raises(UniAttnError, match="the layer map describes 8 layers but the model has 6"):
        load_model(out)
    raw["uniattn"]["num_layers"] = 6
    raw["uniattn"]["layer_map"] = {"3": [2]}
    (out / "config.json").write_text(json.dumps(raw))
    with pytest.raises(UniAttnError, match="consumer layer 2 comes before"):
        load_model(out)
    raw["uniattn"]["layer_map"] = "oops"
    (out / "config.json").write_text(json.dumps(raw))
    with pytest.raises(UniAttnError, match="the 'uniattn' entry of config.json is malformed"):
        load_model(out)
    raw["uniattn"]["layer_map"] = {"1": [2, 3], "4": [5]}
    (out / "config.json").write_text(json.dumps(raw))
    with pytest.raises(UniAttnError, match="a producer rule cannot override it"):
        load_model(out, producer_rule="absolute")


def test_save_refuses_to_replace_a_folder_that_is_not_a_model(released, tmp_path):
    folder, _ = released
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(UniAttnError, match="exists and is not a UniAttn checkpoint folder"):
        save_model(load_model(folder), precious)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_layer_map_round_trip_and_default_release_shape():
    cfg = UniAttnConfig.from_grouping(32, 4, 16, 33, "begin_offset")
    assert cfg.producers == [16, 20, 24, 28]
    assert cfg.consumers == [17, 18, 19, 21, 22, 23, 25, 26, 27, 29, 30, 31]
    assert cfg.kv_cache_saving == pytest.approx(0.1875)
    assert UniAttnConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    # Rules disagree when b is not aligned with G.
    assert UniAttnConfig.from_grouping(32, 4, 18, 32, "absolute").producers == [17, 20, 24, 28]
    assert UniAttnConfig.from_grouping(32, 4, 18, 32, "begin_offset").producers == [18, 22, 26, 30]
