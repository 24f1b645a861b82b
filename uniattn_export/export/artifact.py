"""The artifact folder: what the exporter writes and what every later stage loads.

    OUT/model.onnx             the graph (optimum naming, uniattn nodes + their functions)
    OUT/model.onnx_data        weights, when stored externally (large models)
    OUT/config.json            the model config with the explicit layer map ("uniattn")
    OUT/uniattn_layer_map.json the layer map alone (producer -> consumers)
    OUT/uniattn_manifest.json  versions, opset, dtype, I/O names, per-layer roles, hashes
    OUT/tokenizer*, generation_config.json   copied from the checkpoint when present

`load_artifact` is the only way in: it checks the hashes and the graph's structure before
any runtime sees the file, so a tampered or mismatched folder fails with one sentence.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import onnx

from .. import __version__
from ..dtypes import onnx_type_name
from ..errors import UniAttnError
from ..model.config import UniAttnConfig
from . import io_names
from .schema import CONSUMER_OP, DOMAIN, PLUGIN_NAMESPACE, PRODUCER_OP, SCHEMA

MODEL_FILE = "model.onnx"
EXTERNAL_DATA_FILE = "model.onnx_data"
MANIFEST_FILE = "uniattn_manifest.json"
LAYER_MAP_FILE = "uniattn_layer_map.json"
CONFIG_FILE = "config.json"
MANIFEST_FORMAT = "uniattn-export/artifact"
MANIFEST_VERSION = 1



def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: Path) -> dict:
    """A file's entry under the manifest's "files": what both loaders check before using it."""
    return {"sha256": sha256_of(path), "bytes": path.stat().st_size}


def io_spec(values) -> list[dict]:
    specs = []
    for value in values:
        tensor = value.type.tensor_type
        dims = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in tensor.shape.dim]
        specs.append({"name": value.name, "dtype": onnx_type_name(tensor.elem_type), "shape": dims})
    return specs


def package_versions() -> dict[str, str]:
    found = {"uniattn_export": __version__, "python": platform.python_version()}
    for package in ("torch", "transformers", "onnx", "onnxscript", "onnx-ir", "onnxruntime"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found


def build_manifest(
    folder: Path, model, *, input_names: list[str], output_names: list[str],
    source: Path | None, side_files: list[str], logits: str, cache: dict,
) -> dict:  # fmt: skip
    """The manifest of a freshly written folder (the graph and config already in it)."""
    graph = onnx.load(folder / MODEL_FILE, load_external_data=False)
    uniattn: UniAttnConfig = model.uniattn_config
    layers = []
    for i in range(uniattn.num_layers):
        g = model.geometry(i)
        role = uniattn.role(i)
        layers.append({
            "index": i, "role": role,
            "producer": uniattn.producer_of(i) if role == "consumer" else None,
            "key_cache": uniattn.has_key_cache(i),
            "num_heads": g.num_heads, "kv_num_heads": g.kv_num_heads, "head_dim": g.head_dim,
            "scale": g.scale, "sliding_window": g.sliding_window,
        })  # fmt: skip
    itemsize = model.model.embed_tokens.weight.element_size()
    contract = SCHEMA.for_cache(cache["mode"])
    files = [MODEL_FILE, CONFIG_FILE, LAYER_MAP_FILE, *side_files]
    if (folder / EXTERNAL_DATA_FILE).is_file():
        files.insert(1, EXTERNAL_DATA_FILE)
    return {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "created_with": package_versions(),
        "source_checkpoint": str(source.resolve()) if source is not None else None,
        "model_type": model.config.model_type,
        "dtype": str(model.dtype).removeprefix("torch."),
        "logits": logits,
        # mode "dynamic" (op contract v1, growing caches) or "static" (v2, fixed capacity)
        # layout: the cache tensors' names, "optimum" or "genai" (io_names.py)
        "cache": {"mode": cache["mode"], "capacity": cache["capacity"], "op_version": contract.version,
                  "layout": cache["layout"]},
        "onnx": {
            "file": MODEL_FILE,
            "external_data": EXTERNAL_DATA_FILE if EXTERNAL_DATA_FILE in files else None,
            "ir_version": graph.ir_version,
            "opset": contract.onnx_opset,
            "custom_opsets": {DOMAIN: contract.version},
        },
        "custom_ops": {
            "domain": DOMAIN, "producer": PRODUCER_OP, "consumer": CONSUMER_OP,
            "plugin_version": contract.plugin_version, "plugin_namespace": PLUGIN_NAMESPACE,
        },  # fmt: skip
        "geometry": {
            "num_layers": uniattn.num_layers,
            "hidden_size": model.config.hidden_size,
            "vocab_size": model.config.vocab_size,
        },
        "layer_map": uniattn.to_dict(),
        "layers": layers,
        "kv_cache_bytes_per_token": sum(
            (1 + layer["key_cache"]) * layer["kv_num_heads"] * layer["head_dim"] * itemsize
            for layer in layers
        ),
        "inputs": io_spec(graph.graph.input),
        "outputs": io_spec(graph.graph.output),
        "files": {name: file_record(folder / name) for name in files},
    }


def write_manifest(folder: Path, manifest: dict) -> None:
    tmp = folder / f".{MANIFEST_FILE}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, folder / MANIFEST_FILE)


@dataclass(frozen=True)
class Artifact:
    """A checked artifact folder."""

    path: Path
    manifest: dict
    uniattn: UniAttnConfig
    max_positions: int  # config.json's max_position_embeddings: prompt + generated tokens fit in it

    @property
    def onnx_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def dtype(self) -> str:
        return self.manifest["dtype"]

    @property
    def layers(self) -> list[dict]:
        return self.manifest["layers"]

    @property
    def input_specs(self) -> list[dict]:
        return self.manifest["inputs"]

    @property
    def output_specs(self) -> list[dict]:
        return self.manifest["outputs"]

    @property
    def cache_mode(self) -> str:
        """"dynamic" (growing caches, op contract v1) or "static" (fixed capacity, v2)."""
        return self.manifest["cache"]["mode"]

    @property
    def cache_layout(self) -> str:
        """"optimum" or "genai": how the cache tensors are named (io_names.py)."""
        return self.manifest["cache"]["layout"]

    @property
    def capacity(self) -> int | None:
        """Tokens a static artifact's caches hold (prompt + new tokens); None for dynamic."""
        return self.manifest["cache"]["capacity"]

    @property
    def vocab_size(self) -> int:
        return self.manifest["geometry"]["vocab_size"]

    @property
    def source_checkpoint(self) -> Path | None:
        source = self.manifest.get("source_checkpoint")
        return Path(source) if source else None

    def cache_names(self) -> list[tuple[str, str]]:
        """(past input, present output) pairs, in graph order."""
        return [(c.past, c.present) for c in io_names.cache_pairs(s["name"] for s in self.input_specs)]

    def has_tokenizer(self) -> bool:
        return (self.path / "tokenizer.json").is_file() or (self.path / "tokenizer.model").is_file()


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise UniAttnError(f"{path.parent} has no {path.name} ({what})", "re-export the model with `uniattn-export model`")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UniAttnError(f"{path} is not valid JSON ({exc})", "re-export the model") from None
    if not isinstance(data, dict):
        raise UniAttnError(f"{path} holds a JSON {type(data).__name__}, not an object ({what})", "re-export the model")
    return data


_EDITED = "re-export the model; never edit an artifact in place"


def _field(manifest: dict, path: Path, key: str, valid, expected: str):
    """manifest[key] (nested keys joined by '.'), or one line naming the field."""
    value = manifest
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if not valid(value):
        raise UniAttnError(f"{path / MANIFEST_FILE}: field {key} is {value!r}, expected {expected}", _EDITED)
    return value


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_sha256(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _check_manifest_fields(path: Path, manifest: dict) -> None:
    """The types of every field a loader reads (the C runtime's manifest.cpp checks the same)."""
    _field(manifest, path, "dtype", lambda v: v in ("float32", "float16", "bfloat16"), "float32, float16 or bfloat16")
    _field(manifest, path, "logits", lambda v: v in ("all", "last"), "'all' or 'last'")
    _field(manifest, path, "onnx.file", lambda v: v == MODEL_FILE, repr(MODEL_FILE))
    files = _field(manifest, path, "files", lambda v: isinstance(v, dict) and MODEL_FILE in v, f"an object listing {MODEL_FILE}")
    for name, entry in files.items():
        if not (isinstance(entry, dict) and _is_sha256(entry.get("sha256")) and isinstance(entry.get("bytes"), int)):
            raise UniAttnError(f"{path / MANIFEST_FILE}: the entry of {name} in files is {entry!r}, expected sha256 and bytes", _EDITED)
    for key in ("num_layers", "hidden_size", "vocab_size"):
        _field(manifest, path, f"geometry.{key}", _positive_int, "a positive integer")
    _field(manifest, path, "layer_map", lambda v: isinstance(v, dict), "an object")
    _field(manifest, path, "layers", lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v), "a list of layers")
    for key in ("inputs", "outputs"):
        _field(manifest, path, key, lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v), "a list of tensors")


def _load_graph(path: Path) -> onnx.ModelProto:
    from google.protobuf.message import DecodeError

    try:
        return onnx.load(path / MODEL_FILE, load_external_data=False)
    except (DecodeError, ValueError, OSError) as exc:
        raise UniAttnError(f"{path / MODEL_FILE} is not a readable ONNX model ({str(exc).strip()[:120]})", _EDITED) from None


def _cross_check(path: Path, manifest: dict, graph: onnx.ModelProto, config: dict, uniattn: UniAttnConfig) -> None:
    """Facts stated twice (manifest, config.json, graph) must agree."""
    geometry = manifest["geometry"]
    for key, config_key in (("num_layers", "num_hidden_layers"), ("hidden_size", "hidden_size"), ("vocab_size", "vocab_size")):
        if config.get(config_key) != geometry[key]:
            raise UniAttnError(
                f"the manifest of {path} says {key}={geometry[key]} but config.json has {config_key}={config.get(config_key)!r}",
                _EDITED,
            )
    if not (geometry["num_layers"] == len(manifest["layers"]) == uniattn.num_layers):
        raise UniAttnError(
            f"the manifest of {path} says num_layers={geometry['num_layers']} but lists {len(manifest['layers'])} layers "
            f"and a layer map of {uniattn.num_layers}",
            _EDITED,
        )
    for key, values in (("inputs", graph.graph.input), ("outputs", graph.graph.output)):
        if io_spec(values) != manifest[key]:
            raise UniAttnError(f"the {key} of {path / MODEL_FILE} (names, dtypes or shapes) differ from the manifest's", _EDITED)
    specs = {s["name"]: s for s in manifest["inputs"] + manifest["outputs"]}
    caches = [s for name, s in specs.items() if name.startswith(("past_key_values.", "present."))]
    if any(s["dtype"] != manifest["dtype"] for s in caches):
        raise UniAttnError(f"the manifest of {path} says dtype {manifest['dtype']} but its caches are {caches[0]['dtype']}", _EDITED)
    logits_vocab = specs.get("logits", {}).get("shape", [None])[-1]
    if logits_vocab != geometry["vocab_size"]:
        raise UniAttnError(f"the manifest of {path} says vocab_size={geometry['vocab_size']} but the logits have {logits_vocab}", _EDITED)
    max_positions = config.get("max_position_embeddings")
    if not _positive_int(max_positions):
        raise UniAttnError(f"{path / CONFIG_FILE} has max_position_embeddings={max_positions!r}, expected a positive integer", _EDITED)


def _check_folder(path: Path, manifest: dict, verify_hashes: bool) -> tuple[UniAttnConfig, dict]:
    """Files, hashes, layer map copies, cross-checks and graph structure; returns the
    layer map and config.json."""
    from .structure import check_structure

    for name, entry in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise UniAttnError(f"{file} is missing (the manifest lists it)", "re-export the model or restore the file")
        if verify_hashes and sha256_of(file) != entry["sha256"]:
            raise UniAttnError(
                f"{file} was modified after export (sha256 differs from the manifest)",
                "re-export the model; never edit an artifact in place",
            )
    uniattn = UniAttnConfig.from_dict(manifest["layer_map"])
    config = _read_json(path / CONFIG_FILE, "the model config")
    copies = {LAYER_MAP_FILE: _read_json(path / LAYER_MAP_FILE, "the layer map"), CONFIG_FILE: config.get("uniattn")}
    for name, copy in copies.items():
        if copy is None or UniAttnConfig.from_dict(copy).layer_map != uniattn.layer_map:
            raise UniAttnError(
                f"the layer map in {path / name} differs from the manifest's",
                "re-export the model; the folder mixes files of different exports",
            )
    graph = _load_graph(path)
    _cross_check(path, manifest, graph, config, uniattn)
    check_structure(graph, manifest, uniattn)
    return uniattn, config


def require_artifact_folder(path: str | Path) -> Path:
    """The path as a folder that exists, else the one-line error (a file inside an artifact is
    the usual slip: its folder is meant)."""
    path = Path(path)
    if path.is_file():
        raise UniAttnError(
            f"{path} is a file, not an artifact folder", "pass the folder itself (the -o folder of `uniattn-export model`)"
        )
    if not path.is_dir():
        raise UniAttnError(f"artifact folder {path} does not exist", "pass the -o folder of `uniattn-export model`")
    return path


def load_artifact(path: str | Path, *, verify_hashes: bool = True) -> Artifact:
    """Open an artifact folder: manifest, hashes, layer map copies, cross-checks of the facts
    stated twice (manifest, config.json, graph) and graph structure."""
    path = require_artifact_folder(path)
    manifest = _read_json(path / MANIFEST_FILE, "the export manifest")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise UniAttnError(f"{path / MANIFEST_FILE} is not a uniattn-export manifest", "re-export the model")
    version = _field(manifest, path, "format_version", _positive_int, "a positive integer")
    if version > MANIFEST_VERSION:
        raise UniAttnError(
            f"{path} was written by a newer uniattn-export (manifest format {version})", "upgrade uniattn-export"
        )
    # Artifacts written before cache modes existed have growing caches.
    manifest.setdefault("cache", {"mode": "dynamic", "capacity": None, "op_version": 1})
    # ... and, before cache layouts existed, optimum's names.
    manifest["cache"].setdefault("layout", "optimum")
    _check_manifest_fields(path, manifest)
    try:
        uniattn, config = _check_folder(path, manifest, verify_hashes)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise UniAttnError(
            f"the artifact in {path} is malformed ({type(exc).__name__}: {exc} in its manifest or graph)",
            "re-export the model",
        ) from None
    return Artifact(path=path, manifest=manifest, uniattn=uniattn, max_positions=config["max_position_embeddings"])
