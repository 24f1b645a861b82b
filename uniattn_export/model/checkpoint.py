"""Loading and saving UniAttn checkpoints.

Three layouts load:
  * ours: a save_pretrained folder whose config.json has a "uniattn" entry (the explicit
    layer map); consumers carry no q_proj/k_proj and their Wc is `compensation`.
  * the authors' release: a Hugging Face Llama/Mistral/Qwen2 folder whose config.json has
    grouping_idx / grouping_begin_idx / grouping_end_idx and whose consumers carry
    `model.layers.{l}.v2_proj.weight` (their unused q_proj/k_proj are dropped here).
  * a plain base model (no SuperBlocks): every layer is an ordinary layer.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from transformers import AutoConfig, GenerationConfig, PreTrainedConfig

from ..errors import UniAttnError
from ..output import CHECKPOINT, atomic_folder, check_destination
from .config import DEFAULT_RULE_BY_MODEL_TYPE, UniAttnConfig
from .modeling import SUPPORTED_MODEL_TYPES, UniAttnForCausalLM

MODEL_DTYPES = ("float32", "float16", "bfloat16", "float64")  # float64: the validation reference
RELEASED_GROUPING_KEYS = ("grouping_idx", "grouping_begin_idx", "grouping_end_idx")
_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def _read_config_json(path: Path) -> dict:
    config_file = path / "config.json"
    if not path.exists():
        raise UniAttnError(f"checkpoint folder {path} does not exist", "check the path")
    if not config_file.is_file():
        raise UniAttnError(
            f"{path} has no config.json", "pass a Hugging Face model folder (config.json + weights)"
        )
    try:
        raw = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UniAttnError(
            f"{config_file} is not valid JSON ({exc})", "restore the file from the original checkpoint"
        ) from None
    if not isinstance(raw, dict):
        raise UniAttnError(
            f"{config_file} holds a JSON {type(raw).__name__}, not an object", "restore the file from the original checkpoint"
        )
    return raw


def _check_config_values(raw: dict, config_file: Path) -> None:
    """Values transformers accepts silently but no model can run with."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    for key in ("max_position_embeddings", "vocab_size", "hidden_size", "num_hidden_layers"):
        value = raw.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise UniAttnError(f"{config_file} has {key}={value!r}, expected a positive integer", "fix config.json")
    for key in ("rope_parameters", "rope_scaling"):  # transformers 5 / 4 names of the same entry
        rope = raw.get(key) or {}
        rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else rope
        if rope_type != "default" and rope_type not in ROPE_INIT_FUNCTIONS:
            raise UniAttnError(
                f"{config_file} has {key} rope_type {rope_type!r}, which transformers does not know",
                f"use one of default, {', '.join(ROPE_INIT_FUNCTIONS)}",
            )


def read_checkpoint_config(path: str | os.PathLike) -> dict:
    """config.json of a checkpoint folder as a dict, its values checked (no weights read)."""
    path = Path(path)
    raw = _read_config_json(path)
    _check_config_values(raw, path / "config.json")
    return raw


def resolve_uniattn_config(
    raw: dict, num_layers: int, producer_rule: str | None = None
) -> UniAttnConfig:
    """The explicit layer map of a checkpoint, from whichever description it carries."""
    if "uniattn" in raw:
        if producer_rule is not None:
            raise UniAttnError(
                "this checkpoint stores an explicit layer map; a producer rule cannot override it",
                "drop --producer-rule",
            )
        return UniAttnConfig.from_dict(raw["uniattn"], num_layers)
    present = [k for k in RELEASED_GROUPING_KEYS if k in raw]
    if not present:
        return UniAttnConfig.none(num_layers)
    if len(present) != len(RELEASED_GROUPING_KEYS):
        missing = sorted(set(RELEASED_GROUPING_KEYS) - set(present))
        raise UniAttnError(
            f"config.json has {', '.join(present)} but not {', '.join(missing)}",
            "add the missing SuperBlock keys (the released training scripts write all three)",
        )
    rule = producer_rule or DEFAULT_RULE_BY_MODEL_TYPE.get(raw.get("model_type", ""))
    if rule is None:
        raise UniAttnError(
            f"no known producer rule for model_type {raw.get('model_type')!r}",
            "pass --producer-rule begin_offset|absolute|gemma2",
        )
    size, begin, end = (raw[k] for k in RELEASED_GROUPING_KEYS)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (size, begin, end)):
        raise UniAttnError(
            f"grouping_idx / grouping_begin_idx / grouping_end_idx must be integers, got {size!r} / {begin!r} / {end!r}",
            "fix config.json",
        )
    return UniAttnConfig.from_grouping(num_layers, size, begin, end, rule)


def _weight_files(path: Path) -> list[Path]:
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = path / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise UniAttnError(f"{index} is malformed ({exc!r})", "restore the index file") from None
            missing = [s for s in shards if not (path / s).is_file()]
            if missing:
                raise UniAttnError(
                    f"{index.name} lists {missing[0]} but that file is missing",
                    "download the complete checkpoint",
                )
            return [path / s for s in shards]
        if (path / single).is_file():
            return [path / single]
    raise UniAttnError(
        f"{path} has no weights (model.safetensors or pytorch_model.bin)",
        "pass a folder that contains the model weights",
    )


def _read_weights(files: list[Path]) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            if f.suffix == ".safetensors":
                state.update(load_file(str(f)))
            else:
                state.update(torch.load(f, map_location="cpu", weights_only=True))
        except (SafetensorError, RuntimeError, OSError, EOFError, ValueError) as exc:
            raise UniAttnError(
                f"cannot read weights from {f.name} ({str(exc).splitlines()[0]})",
                "the file is corrupt or truncated: download it again",
            ) from None
    return state


def to_model_keys(
    state: dict[str, torch.Tensor],
    uniattn: UniAttnConfig,
    config: PreTrainedConfig,
    zero_missing_compensation: bool = True,
) -> dict[str, torch.Tensor]:
    """Rename/drop file keys to this model's parameters, checking them against the map.

    zero_missing_compensation: consumers without any Wc get Wc = 0 (the released
    softmax-only checkpoints, and a base model about to be converted). Our own format always
    stores Wc, so there a missing one is an error.
    """
    out: dict[str, torch.Tensor] = {}
    consumers_with_wc = set()
    for name, tensor in state.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue  # older checkpoints saved this buffer; it is recomputed from the config
        m = _LAYER_KEY.match(name)
        if m:
            layer, rest = int(m.group(1)), m.group(2)
            role = uniattn.role(layer) if layer < uniattn.num_layers else "ordinary"
            if rest.startswith(("v2_proj.", "compensation.")):
                if role != "consumer":
                    raise UniAttnError(
                        f"weights contain {name} but the layer map makes layer {layer} a {role}",
                        "the SuperBlock settings in config.json do not match these weights "
                        "(check grouping_* keys and the producer rule)",
                    )
                consumers_with_wc.add(layer)
                name = f"model.layers.{layer}.compensation.{rest.split('.', 1)[1]}"
            elif role == "consumer" and rest.startswith(("self_attn.q_proj.", "self_attn.k_proj.")):
                continue  # the released code computes them for consumers but never uses them
        out[name] = tensor
    missing_wc = sorted(set(uniattn.consumers) - consumers_with_wc)
    if missing_wc and consumers_with_wc:
        raise UniAttnError(
            f"consumer layers {missing_wc} have no Wc weight (v2_proj / compensation) while "
            "other consumers do",
            "the SuperBlock settings in config.json do not match these weights",
        )
    if not zero_missing_compensation:
        missing_wc = []
    for layer in missing_wc:
        # Softmax-only checkpoints (released *_softmax files) share P without compensation.
        out[f"model.layers.{layer}.compensation.weight"] = torch.zeros(
            config.hidden_size, config.hidden_size, dtype=next(iter(out.values())).dtype
        )
    if config.tie_word_embeddings and "model.embed_tokens.weight" in out:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]  # re-tied after loading
    return out


def load_model(
    path: str | os.PathLike,
    dtype: torch.dtype | str | None = None,
    producer_rule: str | None = None,
) -> UniAttnForCausalLM:
    """Load a UniAttn (or plain base) checkpoint as the reference model.

    dtype: torch dtype or its name ("float32", "bfloat16", ...); None keeps the stored dtype.
    producer_rule: only for checkpoints in the authors' layout; None picks the rule of the
    released modeling file of that architecture (Llama: begin_offset, Mistral: absolute).
    """
    path = Path(path)
    raw = read_checkpoint_config(path)
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UniAttnError(
            f"unsupported architecture {model_type!r} in {path / 'config.json'}",
            f"uniattn-export supports {', '.join(SUPPORTED_MODEL_TYPES)}",
        )
    try:
        config = AutoConfig.from_pretrained(path)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise UniAttnError(
            f"transformers cannot read {path / 'config.json'} ({str(exc).splitlines()[0]})",
            "fix or restore config.json",
        ) from None
    uniattn = resolve_uniattn_config(raw, config.num_hidden_layers, producer_rule)
    state = to_model_keys(
        _read_weights(_weight_files(path)), uniattn, config, zero_missing_compensation="uniattn" not in raw
    )

    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise UniAttnError(f"unknown dtype {dtype!r}", f"use one of {', '.join(MODEL_DTYPES)}")
        dtype = getattr(torch, dtype)
    if dtype is not None and dtype not in (getattr(torch, name) for name in MODEL_DTYPES):
        raise UniAttnError(f"unsupported dtype {str(dtype).removeprefix('torch.')!r}", f"use one of {', '.join(MODEL_DTYPES)}")
    stored = state["model.embed_tokens.weight"].dtype if "model.embed_tokens.weight" in state else None
    dtype = dtype or stored or torch.float32
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            raise UniAttnError(
                f"weight {name} has dtype {str(tensor.dtype).removeprefix('torch.')}, not a floating-point type",
                "quantized or integer checkpoints are not supported: pass the float16/bfloat16/float32 weights",
            )
        if not torch.isfinite(tensor).all():
            raise UniAttnError(
                f"weight {name} contains NaN or Inf", "the checkpoint is corrupt: download it again"
            )

    model = model_from_state(config, uniattn, {k: v.to(dtype) for k, v in state.items()})
    if (path / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(path)
    model.name_or_path = str(path)
    return model


def model_from_state(
    config: PreTrainedConfig, uniattn: UniAttnConfig, state: dict[str, torch.Tensor]
) -> UniAttnForCausalLM:
    """Build the model around `state` (parameter names of this model) without copying it."""
    with torch.device("meta"):
        model = UniAttnForCausalLM(config, uniattn)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        problem = (
            f"weights are missing {missing[0]} (and {len(missing) - 1} more)"
            if missing
            else f"weights contain unexpected {unexpected[0]} (and {len(unexpected) - 1} more)"
        )
        raise UniAttnError(problem, "config.json does not describe these weights")
    try:
        model.load_state_dict(state, assign=True)
    except RuntimeError as exc:
        detail = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), str(exc))
        raise UniAttnError(f"weights do not fit the config: {detail}", "config.json does not describe these weights") from None
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    # Non-persistent buffers (RoPE frequencies) were created on the meta device.
    rotary = type(model.model.rotary_emb)(config)
    model.model.rotary_emb = rotary.to(model.model.embed_tokens.weight.device)
    model.config.dtype = model.model.embed_tokens.weight.dtype
    return model.eval()


def save_model(
    model: UniAttnForCausalLM,
    out_dir: str | os.PathLike,
    tokenizer=None,
    extra_files: dict[str, str | bytes] | None = None,
    *,
    inputs: tuple[str | os.PathLike, ...] = (),
    force: bool = False,
) -> Path:
    """Save in our format (save_pretrained + explicit layer map), atomically.

    extra_files: name -> text or bytes written alongside (e.g. conversion_report.json).
    inputs, force: what the folder may replace (uniattn_export/output.py states the rule).
    """
    out_dir = check_destination(out_dir, CHECKPOINT, inputs=inputs, force=force)  # before touching the model
    for key in RELEASED_GROUPING_KEYS:  # the explicit map is the only truth
        if hasattr(model.config, key):
            delattr(model.config, key)
    with atomic_folder(out_dir, CHECKPOINT, inputs=inputs, force=force) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name, content in (extra_files or {}).items():
            if isinstance(content, bytes):
                (tmp / name).write_bytes(content)
            else:
                (tmp / name).write_text(content)
    return out_dir
