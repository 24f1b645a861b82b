"""Random-weight artifacts for timing: the preset mode, `--baseline build`, and the fallback
for machines whose exporter fails (export the graphs elsewhere, fill the weights here).

Only shapes matter for timing, so weights are transformers' random initialization (made on
the GPU when there is one: 24 s for 1.2B parameters on 2 CPU cores) and Wc is random too.
A prepared artifact is one whose external weight file was removed to make it small enough to
carry (the 1B graph is 1 MB, its weights 2.5 GB); `reuse_artifact` refills that file with
random values of each tensor's type and records the new hash in the manifest.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch

from ..errors import UniAttnError
from ..export import artifact as artifact_files
from ..export.artifact import Artifact, load_artifact
from ..model.checkpoint import model_from_state, to_model_keys
from ..model.config import UniAttnConfig
from ..model.synthetic import PRESETS, preset_config
from .runtimes import random_bits

PRESET_SUPERBLOCK_SIZE = 4
COMPENSATION_SCALE = 0.05  # the scale synthetic.released_checkpoint gives Wc
ARTIFACT_FOLDER, BASELINE_FOLDER = "uniattn", "base"
_FILL_BLOCK = 1 << 20  # random values repeat every 1M elements: only timing reads them
_FILL_SCALE = 0.02  # transformers' initializer_range: activations stay finite in float16
_FLOAT_TYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.BFLOAT16: "bfloat16"}

Log = Callable[[str], None]


def preset_layer_map(num_layers: int) -> UniAttnConfig:
    """SuperBlocks of 4 over the top half of the layers (Llama-3.2-1B: begin 8, end 16, so
    producers 8 and 12 with consumers 9-11 and 13-15)."""
    return UniAttnConfig.from_grouping(num_layers, PRESET_SUPERBLOCK_SIZE, num_layers // 2, num_layers, "begin_offset")


def random_base_weights(config, dtype: str, seed: int) -> dict[str, torch.Tensor]:
    """The base architecture's parameters after transformers' random initialization, on the CPU."""
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(copy.deepcopy(config), dtype=getattr(torch, dtype))
    state = model.state_dict()
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # the loader re-ties it
    return {name: tensor.to("cpu") for name, tensor in state.items()}


def export_random_model(
    make_config: Callable, uniattn: UniAttnConfig, weights: dict[str, torch.Tensor], out: Path,
    *, logits: str, seed: int, external_data: bool | None = None,
) -> Path:  # fmt: skip
    """Export `weights` (+ random Wc for the consumers of `uniattn`) as an artifact.
    make_config returns a fresh config (a model must not reuse another model's config)."""
    from ..export import export_model

    config = make_config()
    state = dict(weights)
    generator = torch.Generator().manual_seed(seed)
    dtype = next(iter(weights.values())).dtype
    for layer in uniattn.consumers:
        wc = torch.randn(config.hidden_size, config.hidden_size, generator=generator) * COMPENSATION_SCALE
        state[f"model.layers.{layer}.compensation.weight"] = wc.to(dtype)
    model = model_from_state(config, uniattn, to_model_keys(state, uniattn, config))
    return export_model(model, out, logits=logits, external_data=external_data)


def fill_random_weights(folder: Path, seed: int = 0) -> None:
    """Write the external weight file a prepared artifact lacks: random values of each
    tensor's type at its offset; the manifest then records the new file's hash."""
    manifest = json.loads((folder / artifact_files.MANIFEST_FILE).read_text())
    name = artifact_files.EXTERNAL_DATA_FILE
    size = manifest["files"][name]["bytes"]
    graph = onnx.load(folder / artifact_files.MODEL_FILE, load_external_data=False).graph
    rng = np.random.default_rng(seed)
    block = {dtype: random_bits((_FILL_BLOCK,), dtype, rng, _FILL_SCALE) for dtype in _FLOAT_TYPES.values()}
    tmp = folder / f".{name}.tmp"
    with open(tmp, "wb") as f:
        f.truncate(size)
        for tensor in graph.initializer:
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            if tensor.data_type not in _FLOAT_TYPES:
                raise UniAttnError(
                    f"{folder} keeps the non-float tensor {tensor.name} in {name}; random values cannot replace it",
                    "carry the artifact with its weight file, or export it on this machine",
                )
            where = {entry.key: int(entry.value) for entry in tensor.external_data if entry.key in ("offset", "length")}
            bits = block[_FLOAT_TYPES[tensor.data_type]]
            f.seek(where.get("offset", 0))
            f.write(np.resize(bits, where["length"] // bits.itemsize).tobytes())
    tmp.replace(folder / name)
    manifest["files"][name] = {"sha256": artifact_files.sha256_of(folder / name), "bytes": size}
    artifact_files.write_manifest(folder, manifest)


def strip_weights(folder: Path) -> int:
    """Remove a prepared artifact's external weight file; returns the bytes left in the folder."""
    (folder / artifact_files.EXTERNAL_DATA_FILE).unlink(missing_ok=True)
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def reuse_artifact(folder: Path, dtype: str, uniattn: UniAttnConfig, geometry: dict) -> Artifact | None:
    """The artifact in `folder` when it is one of `dtype` with this layer map and geometry
    (refilling the weights of a prepared one); None when it must be (re)built."""
    manifest_file = folder / artifact_files.MANIFEST_FILE
    if not manifest_file.is_file():
        return None
    manifest = json.loads(manifest_file.read_text())
    matches = (
        manifest.get("dtype") == dtype
        and UniAttnConfig.from_dict(manifest["layer_map"]).layer_map == uniattn.layer_map
        and all(manifest["geometry"].get(k) == v for k, v in geometry.items())
    )
    if not matches:
        return None
    if artifact_files.EXTERNAL_DATA_FILE in manifest["files"] and not (folder / artifact_files.EXTERNAL_DATA_FILE).is_file():
        fill_random_weights(folder)
    try:
        return load_artifact(folder)
    except UniAttnError:  # a damaged earlier build: export again
        return None


def _geometry(config) -> dict:
    return {"num_layers": config.num_hidden_layers, "hidden_size": config.hidden_size, "vocab_size": config.vocab_size}


def build_pair(
    make_config: Callable, targets: dict[str, tuple[Path, UniAttnConfig]], dtype: str, *,
    logits: str, seed: int, log: Log, external_data: bool | None = None,
) -> tuple[dict[str, Artifact], dict]:  # fmt: skip
    """Export (or reuse) one artifact per target from one set of random base weights.
    Returns the artifacts by target name, and what was done with timings."""
    config = make_config()
    report: dict = {}
    artifacts: dict[str, Artifact] = {}
    weights = None
    for name, (folder, uniattn) in targets.items():
        start = time.perf_counter()
        reused = reuse_artifact(folder, dtype, uniattn, _geometry(config))
        if reused is not None:
            artifacts[name] = reused
            report[name] = {"path": str(folder), "reused": True, "seconds": round(time.perf_counter() - start, 2)}
            log(f"{name}: reusing {folder} ({uniattn.describe()})")
            continue
        if weights is None:
            log(f"random {dtype} weights for {config.num_hidden_layers} layers, d={config.hidden_size}")
            weights = random_base_weights(config, dtype, seed)
            report["weights_init_seconds"] = round(time.perf_counter() - start, 2)
            start = time.perf_counter()
        log(f"{name}: exporting {uniattn.describe()} with torch {torch.__version__} -> {folder}")
        export_random_model(make_config, uniattn, weights, folder, logits=logits, seed=seed, external_data=external_data)
        seconds = round(time.perf_counter() - start, 2)
        report[name] = {"path": str(folder), "reused": False, "export_seconds": seconds}
        log(f"{name}: exported in {seconds:.1f} s")
        artifacts[name] = load_artifact(folder, verify_hashes=False)  # export_model just checked them
    return artifacts, report


def preset_targets(preset: str, work_dir: Path) -> tuple[Callable, dict[str, tuple[Path, UniAttnConfig]]]:
    if preset not in PRESETS:
        raise UniAttnError(f"unknown preset {preset!r}", f"use one of {', '.join(PRESETS)}")
    num_layers = PRESETS[preset]["num_hidden_layers"]
    targets = {
        "artifact": (work_dir / ARTIFACT_FOLDER, preset_layer_map(num_layers)),
        "baseline": (work_dir / BASELINE_FOLDER, UniAttnConfig.none(num_layers)),
    }
    return (lambda: preset_config(preset)), targets


def build_baseline_for(artifact: Artifact, out: Path, *, seed: int, log: Log) -> tuple[Artifact, dict]:
    """`--baseline build`: the artifact's architecture without SuperBlocks, random weights,
    same dtype and logits mode."""
    from transformers import AutoConfig

    def make_config():
        return AutoConfig.from_pretrained(artifact.path)

    targets = {"baseline": (out, UniAttnConfig.none(artifact.uniattn.num_layers))}
    artifacts, report = build_pair(make_config, targets, artifact.dtype, logits=artifact.manifest["logits"], seed=seed, log=log)
    return artifacts["baseline"], report
