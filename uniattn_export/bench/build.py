"""Random-weight artifacts for timing: the preset mode, `--baseline build`, and the fallback
for machines whose exporter fails (export the graphs elsewhere, fill the weights here).

Only shapes matter for timing, so weights are transformers' random initialization (made on
the GPU when there is one: 24 s for 1.2B parameters on 2 CPU cores) and Wc is random too.
A prepared artifact is one whose external weight file was removed to make it small enough to
carry (the 1B graph is 1 MB, its weights 2.5 GB); `reuse_artifact` refills that file with
random values of each tensor's type and records the new hash in the manifest.
Exports are Python-bound traces (one core, ~70 s for the 1B preset): `export_workers` runs as
many at once in processes as cores and memory allow, each making the same weights from the seed.
"""

from __future__ import annotations

import copy
import functools
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection

import numpy as np
import onnx
import torch

from ..errors import UniAttnError
from ..export import artifact as artifact_files
from ..export.artifact import Artifact, load_artifact
from ..model.checkpoint import model_from_state, to_model_keys
from ..model.config import UniAttnConfig
from ..model.synthetic import PRESETS, preset_config
from .measure import first_line
from .runtimes import random_bits

PRESET_SUPERBLOCK_SIZE = 4
COMPENSATION_SCALE = 0.05  # the scale synthetic.released_checkpoint gives Wc
ARTIFACT_FOLDER, BASELINE_FOLDER, BASE_CHECKPOINT_FOLDER = "uniattn", "base", "base_hf"
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


@dataclass(frozen=True)
class Target:
    """One artifact to build: its folder, layer map and cache mode (capacity for static);
    layout "genai": a `--target genai` folder (onnxruntime-genai's cache layout, its
    genai_config.json and the custom-op library when built for the op version)."""

    folder: Path
    uniattn: UniAttnConfig
    cache: str = "dynamic"
    capacity: int | None = None
    layout: str = "optimum"


def export_random_model(
    make_config: Callable, uniattn: UniAttnConfig, weights: dict[str, torch.Tensor], out: Path,
    *, logits: str, seed: int, external_data: bool | None = None, cache: str = "dynamic", max_length: int | None = None,
    layout: str = "optimum",
) -> Path:  # fmt: skip
    """Export `weights` (+ random Wc for the consumers of `uniattn`) as an artifact; layout
    "genai" writes what `uniattn-export model --target genai` writes.
    make_config returns a fresh config (a model must not reuse another model's config)."""
    from ..export import export_model
    from ..targets.genai import genai_export_options, genai_library_for

    config = make_config()
    state = dict(weights)
    generator = torch.Generator().manual_seed(seed)
    dtype = next(iter(weights.values())).dtype
    for layer in uniattn.consumers:
        wc = torch.randn(config.hidden_size, config.hidden_size, generator=generator) * COMPENSATION_SCALE
        state[f"model.layers.{layer}.compensation.weight"] = wc.to(dtype)
    model = model_from_state(config, uniattn, to_model_keys(state, uniattn, config))
    target_options = {}
    if layout == "genai":
        library = genai_library_for(cache, None)  # --custom-ops auto
        target_options = genai_export_options(model, cache=cache, capacity=max_length, library=library)
    return export_model(model, out, logits=logits, external_data=external_data, cache=cache, max_length=max_length,
                        ort_contrib_ops=True, **target_options)  # fmt: skip (every bench row runs onnxruntime)


def _has_current_fusions(fused: dict, cache: str) -> bool:
    """Whether a reused folder's graph has every fusion of today's export (not one from before)."""
    return fused.get("skip_norms", 0) > 0 and fused.get("silu", 0) > 0 and (
        cache == "dynamic" or fused.get("rotary_tables", 0) > 0
    )


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


def genai_library_is_current(folder: Path, cache: str) -> bool:
    """Whether a genai folder ships the custom-op library an export would ship now (the same
    bytes), or none when none would be shipped."""
    from ..targets.genai import genai_library_for
    from ..targets.genai.runner import genai_config

    expected = genai_library_for(cache, None)
    shipped = genai_config(folder)["model"]["decoder"]["session_options"].get("custom_ops_library")
    if expected is None or shipped is None:
        return expected is None and shipped is None
    copy = folder / shipped
    return shipped == expected.name and copy.is_file() and artifact_files.sha256_of(copy) == artifact_files.sha256_of(expected)


def reuse_artifact(folder: Path, dtype: str, target: Target, geometry: dict) -> Artifact | None:
    """The artifact in `folder` when it is one of `dtype` with the target's layer map, cache
    mode, capacity (a larger one serves too), cache layout (genai: shipping the library an
    export would ship now) and fused norms, and this geometry (refilling the weights of a prepared one); None
    when it must be (re)built."""
    manifest_file = folder / artifact_files.MANIFEST_FILE
    if not manifest_file.is_file():
        return None
    manifest = json.loads(manifest_file.read_text())
    cache = manifest.get("cache", {"mode": "dynamic", "capacity": None})
    matches = (
        manifest.get("dtype") == dtype
        and UniAttnConfig.from_dict(manifest["layer_map"]).layer_map == target.uniattn.layer_map
        and all(manifest["geometry"].get(k) == v for k, v in geometry.items())
        and cache["mode"] == target.cache
        and (target.capacity is None or cache["capacity"] >= target.capacity)
        and cache.get("layout", "optimum") == target.layout
        and _has_current_fusions(manifest.get("graph", {}).get("fused", {}), target.cache)
    )
    if not matches or (target.layout == "genai" and not genai_library_is_current(folder, target.cache)):
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
    make_config: Callable, targets: dict[str, Target], dtype: str, *,
    logits: str, seed: int, log: Log, external_data: bool | None = None, base_checkpoint: Path | None = None,
    may_fail: Collection[str] = (), workers: int | None = 1,
) -> tuple[dict[str, Artifact], dict]:  # fmt: skip
    """Export (or reuse) one artifact per target from one set of random base weights, and
    save those weights as a transformers checkpoint in `base_checkpoint` when given (the
    source onnxruntime-genai's builder reads). Returns the artifacts by target name, and
    what was done with timings. A failed export of a target named in `may_fail` is recorded
    (its report entry's status "failed: ...") and that target left out; others raise.
    With workers > 1 the exports run in that many processes at once (None: as many as
    `export_workers` allows for the exports pending); each makes the same random weights from
    `seed`, so make_config must be picklable there."""
    config = make_config()
    report: dict = {}
    artifacts: dict[str, Artifact] = {}
    weights = None

    def base_weights() -> dict[str, torch.Tensor]:
        nonlocal weights
        if weights is None:
            start = time.perf_counter()
            log(f"random {dtype} weights for {config.num_hidden_layers} layers, d={config.hidden_size}")
            weights = random_base_weights(config, dtype, seed)
            report["weights_init_seconds"] = round(time.perf_counter() - start, 2)
        return weights

    pending: dict[str, Target] = {}
    for name, target in targets.items():
        start = time.perf_counter()
        reused = reuse_artifact(target.folder, dtype, target, _geometry(config))
        if reused is None:
            pending[name] = target
            continue
        artifacts[name] = reused
        report[name] = {"path": str(target.folder), "reused": True, "seconds": round(time.perf_counter() - start, 2)}
        log(f"{name}: reusing {target.folder} ({target.uniattn.describe()}, {target.cache} caches)")

    def exported(name: str, outcome: float | Exception) -> None:
        target = targets[name]
        if isinstance(outcome, Exception):
            if name not in may_fail:
                raise outcome
            report[name] = {"path": str(target.folder), "status": f"failed: {first_line(outcome)}"}
            log(f"{name}: export failed ({first_line(outcome)})")
            return
        report[name] = {"path": str(target.folder), "reused": False, "export_seconds": round(outcome, 2)}
        log(f"{name}: exported in {outcome:.1f} s")
        artifacts[name] = load_artifact(target.folder, verify_hashes=False)  # export_model just checked them

    def announce(name: str, target: Target, where: str = "") -> None:
        log(f"{name}: exporting {target.uniattn.describe()}, {target.cache} caches, {target.layout} layout, "
            f"with torch {torch.__version__}{where} -> {target.folder}")

    options = {"logits": logits, "seed": seed, "external_data": external_data}
    if workers is None and pending:
        workers = export_workers(config, dtype, len(pending))
    workers = min(workers or 1, len(pending))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1) as pool:
            futures = {}
            for name, target in pending.items():
                announce(name, target, f" (one of {workers} export processes)")
                futures[name] = pool.submit(_export_in_process, make_config, target, dtype, threads, options)
            try:
                for name, future in futures.items():
                    try:
                        outcome = future.result()
                    except BrokenProcessPool:  # a worker was killed: the out-of-memory killer, most likely
                        outcome = UniAttnError(f"an export process of {name} ended abruptly (out of memory?)",
                                               "pass --export-processes 1 to export one artifact at a time")
                    except Exception as exc:
                        outcome = exc
                    exported(name, outcome)
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise
    else:
        for name, target in pending.items():
            state = base_weights()
            announce(name, target)
            start = time.perf_counter()
            try:
                _export_target(make_config, target, state, **options)
                outcome = time.perf_counter() - start
            except Exception as exc:
                outcome = exc
            exported(name, outcome)
    if base_checkpoint is not None and not (base_checkpoint / "config.json").is_file():
        start = time.perf_counter()
        save_base_checkpoint(make_config(), base_weights(), base_checkpoint)
        report["base_checkpoint"] = {"path": str(base_checkpoint), "seconds": round(time.perf_counter() - start, 2)}
        log(f"base checkpoint (for onnxruntime-genai's builder) saved in {base_checkpoint}")
    return artifacts, report


def _export_target(make_config: Callable, target: Target, weights: dict[str, torch.Tensor], *, logits: str,
                   seed: int, external_data: bool | None) -> None:
    export_random_model(make_config, target.uniattn, weights, target.folder, logits=logits, seed=seed,
                        external_data=external_data, cache=target.cache, max_length=target.capacity,
                        layout=target.layout)  # fmt: skip


def _export_in_process(make_config: Callable, target: Target, dtype: str, threads: int, options: dict) -> float:
    """One export in a worker process (build_pair with workers > 1): the random weights made
    again from the seed, the export timed without them."""
    torch.set_num_threads(threads)
    weights = random_base_weights(make_config(), dtype, options["seed"])
    start = time.perf_counter()
    _export_target(make_config, target, weights, **options)
    return time.perf_counter() - start


def export_workers(config, dtype: str, pending: int) -> int:
    """Exports to run at once on this machine: an export is a Python-bound trace (one core
    busy) that holds about three copies of the weights (the random state, the model, what is
    written), so one per two cores and per four weight sizes of memory, at most `pending`."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(copy.deepcopy(config), dtype=getattr(torch, dtype))
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(max(1, min(pending, (os.cpu_count() or 1) // 2, memory // max(1, 4 * weight_bytes))))


def save_base_checkpoint(config, weights: dict[str, torch.Tensor], folder: Path) -> None:
    """The base model with `weights` as a transformers folder (config + safetensors), with a
    placeholder tokenizer: onnxruntime-genai's builder loads one (AutoTokenizer) and fails
    without it, and random weights have no text anyway (one word "t<i>" per token id)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=next(iter(weights.values())).dtype)
    model.load_state_dict(weights, strict=False, assign=True)
    model.tie_weights()
    tmp = folder.with_name(f".{folder.name}.tmp")
    model.save_pretrained(tmp)
    words = Tokenizer(models.WordLevel({f"t{i}": i for i in range(config.vocab_size)}, unk_token="t0"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="t0").save_pretrained(tmp)
    tmp.replace(folder)


def _builder_source(checkpoint: Path, cache: Path) -> Path:
    """The folder to give the builder: `checkpoint` itself, or, when its config.json has no
    `architectures` (the builder picks its model class from architectures[0] and fails with
    "'NoneType' object is not subscriptable" without it; e.g. smollm2-135m, built from a GGUF
    file), a folder in `cache` of links to its files with that field added from model_type."""
    config = json.loads((checkpoint / "config.json").read_text())
    if config.get("architectures"):
        return checkpoint
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if config.get("model_type") not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UniAttnError(f"{checkpoint}/config.json names no architectures and no causal-LM model_type",
                           "add \"architectures\": [\"<Model>ForCausalLM\"] to it")  # fmt: skip
    config["architectures"] = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[config["model_type"]]]
    source = cache / "source"
    source.mkdir(parents=True, exist_ok=True)
    for item in Path(checkpoint).resolve().iterdir():
        link = source / item.name
        if item.name != "config.json" and not link.exists():
            link.symlink_to(item)
    (source / "config.json").write_text(json.dumps(config, indent=2))
    return source


# onnxruntime-genai's builder precision names for our dtypes.
GENAI_PRECISION = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
GENAI_STAMP = "uniattn_bench_source.json"


# Our benchmarked artifacts keep the last position's logits only (--logits last); the
# builder's equivalent computes the LM head on the last token only during prefill.
GENAI_EXTRA_OPTIONS = ("prune_lm_head=true",)


def build_genai_model(checkpoint: Path, out: Path, dtype: str, device: str, log: Log) -> tuple[Path, dict]:
    """onnxruntime-genai's own model builder over a transformers checkpoint folder:
    `python -m onnxruntime_genai.models.builder -i CHECKPOINT -o OUT -p fp32|fp16|bf16 -e cpu|cuda
    --extra_options prune_lm_head=true` (a subprocess: the builder imports its modules by bare
    name). Reused when OUT was built from the same folder, precision, execution provider and
    options (a stamp file says so)."""
    import subprocess
    import sys

    precision, provider = GENAI_PRECISION[dtype], "cuda" if device == "cuda" else "cpu"
    if provider == "cpu" and precision != "fp32":
        # the builder's float combinations for the CPU: fp32 only (its model then fails to decode)
        raise UniAttnError(f"onnxruntime-genai's builder makes {precision} models for CUDA only, not the CPU",
                           "benchmark float32 artifacts on the CPU")  # fmt: skip
    source = {"checkpoint": str(Path(checkpoint).resolve()), "precision": precision, "execution_provider": provider,
              "extra_options": list(GENAI_EXTRA_OPTIONS)}  # fmt: skip
    stamp = out / GENAI_STAMP
    if stamp.is_file() and json.loads(stamp.read_text()) == source and (out / "genai_config.json").is_file():
        log(f"onnxruntime-genai: reusing {out}")
        return out, {"path": str(out), "reused": True, **source}
    cache = out.with_name(f".{out.name}.cache")
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(_builder_source(checkpoint, cache)),
               "-o", str(out), "-p", precision, "-e", provider, "-c", str(cache), "--extra_options", *GENAI_EXTRA_OPTIONS]  # fmt: skip
    log(f"onnxruntime-genai: {' '.join(command[1:])}")
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0 or not (out / "genai_config.json").is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UniAttnError(f"onnxruntime-genai's model builder failed on {checkpoint} ({tail[0][:300]})",
                           "run the builder command by hand to see its full output")  # fmt: skip
    stamp.write_text(json.dumps(source))
    return out, {"path": str(out), "reused": False, "build_seconds": round(time.perf_counter() - start, 1),
                 "command": " ".join(command[1:]), **source}  # fmt: skip


def static_capacity(needed: int, max_positions: int) -> int:
    """A static artifact's capacity for `needed` tokens: rounded up to a multiple of 256 (so
    the next run with a few more steps reuses it), never above the model's positions."""
    if needed > max_positions:
        raise UniAttnError(f"a cache of {needed} tokens exceeds the model's {max_positions} positions",
                           "pass smaller --contexts or fewer --decode-steps")  # fmt: skip
    return min(-(-needed // 256) * 256, max_positions)


def preset_targets(
    preset: str, work_dir: Path, capacity_needed: int | None = None, dynamic: bool = True, static: bool = True,
    genai: bool = False,
) -> tuple[Callable, dict[str, Target]]:  # fmt: skip
    """The preset's dynamic-cache pair (uniattn/, base/; unless dynamic=False: no dynamic row
    runs, and a 1B export costs a minute) and, when capacity_needed is given, its static-cache
    pair (uniattn_static/, base_static/; unless static=False) and with genai=True its
    `--target genai` pair (uniattn_genai/, base_genai/; static caches), of at least that
    capacity. Target names: artifact, baseline, then with -static / -genai."""
    if preset not in PRESETS:
        raise UniAttnError(f"unknown preset {preset!r}", f"use one of {', '.join(PRESETS)}")
    num_layers = PRESETS[preset]["num_hidden_layers"]
    maps = {"artifact": (ARTIFACT_FOLDER, preset_layer_map(num_layers)), "baseline": (BASELINE_FOLDER, UniAttnConfig.none(num_layers))}
    targets = {name: Target(work_dir / folder, uniattn) for name, (folder, uniattn) in maps.items()} if dynamic else {}
    if capacity_needed is not None:
        capacity = static_capacity(capacity_needed, preset_config(preset).max_position_embeddings)
        for kind, wanted in (("static", static), ("genai", genai)):
            for name, (folder, uniattn) in maps.items():
                if wanted:
                    layout = "genai" if kind == "genai" else "optimum"
                    targets[f"{name}-{kind}"] = Target(work_dir / f"{folder}_{kind}", uniattn, "static", capacity, layout)
    return functools.partial(preset_config, preset), targets


def build_baseline_for(artifact: Artifact, out: Path, *, seed: int, log: Log) -> tuple[Artifact, dict]:
    """`--baseline build`: the artifact's architecture without SuperBlocks, random weights,
    same dtype, logits mode, cache mode, capacity and cache layout (genai: a `--target genai`
    folder)."""
    from transformers import AutoConfig

    def make_config():
        return AutoConfig.from_pretrained(artifact.path)

    base = UniAttnConfig.none(artifact.uniattn.num_layers)
    targets = {"baseline": Target(out, base, artifact.cache_mode, artifact.capacity, artifact.cache_layout)}
    artifacts, report = build_pair(make_config, targets, artifact.dtype, logits=artifact.manifest["logits"], seed=seed, log=log)
    return artifacts["baseline"], report
