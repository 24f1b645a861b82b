"""Stage entry: build a TensorRT engine from an exported ONNX artifact.

`build_engine(onnx_path, out_dir, options)` runs the preflight, then parses and builds in a
child process (worker.py; `parse_network` runs the parse alone, for inspection). The child
gets the library path the TensorRT-RTX parser needs (compat.py) and a fresh plugin registry
(so `--trt-plugins none` really inlines the function bodies), and a crash of the parser (it
aborts the process on some errors) becomes an error message instead of killing the caller.
Everything is written into a temporary folder that replaces `out_dir` only at the end:
engine.plan, engine_manifest.json and, on request, the timing cache.

Static-cache graphs (op contract v2) get two optimization profiles (prefill, decode; see
profiles.py) and, with the plugins, caches updated in place: the version 2 plugins declare
present.* aliased to past_key_values.*, the builder enables aliased plugin I/O, and the
manifest's "aliased_caches" records the pairs the built network declares (checked: every
cache). Engines of the function bodies (--trt-plugins none) compute present.* as new
tensors; their manifest has no aliased caches and the session alternates two cache sets.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ... import __version__
from ...errors import UniAttnError
from ...export import io_names
from ...export.artifact import sha256_of
from ...native import kernels_library
from . import compat, graph, worker
from .manifest import ENGINE_NAME, FORMAT_VERSION, plugin_code_sha256, write_manifest
from .preflight import PreflightReport, preflight
from .profiles import ProfileSpec

PLUGIN_MODES = ("uniattn", "none")
PRECISIONS = ("auto", "float32", "float16", "bfloat16")


@dataclass(frozen=True)
class BuildOptions:
    plugins: str = "uniattn"  # "none": a self-contained engine from the function bodies
    profile: ProfileSpec = field(default_factory=ProfileSpec)
    precision: str = "auto"  # strongly typed: must be the artifact's dtype
    tf32: bool = False
    optimization_level: int = 3
    workspace_mib: int | None = None
    timing_cache: Path | None = None
    compute_capabilities: tuple[str, ...] = ()  # TensorRT-RTX targets; () = all it supports
    flavour: str | None = None  # "tensorrt" | "tensorrt_rtx"; None = what is installed


@dataclass(frozen=True)
class EngineBuild:
    engine_path: Path
    manifest: dict
    preflight: PreflightReport
    seconds: float


def build_engine(onnx_path: Path, out_dir: Path, options: BuildOptions) -> EngineBuild:
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    flavour = compat.load(options.flavour)
    model = graph.load_graph(onnx_path)
    dtype = graph.activation_dtype(model)
    check_options(options, flavour, dtype)
    capacity = graph.cache_capacity(model)
    inputs = graph.graph_inputs(model)
    if capacity is None:
        profiles = [{"name": "all", "dims": options.profile.to_dict(), "inputs": options.profile.input_shapes(inputs)}]
    else:
        profiles = options.profile.static_profiles(inputs, capacity)
    capabilities = flavour.target_capabilities(list(options.compute_capabilities))
    nodes = graph.custom_nodes(model)
    layer_map = graph.layer_map(nodes)

    checks = preflight(model, flavour)
    with_plugins = options.plugins == "uniattn"
    if with_plugins and not checks.tensorrt_ok:
        raise UniAttnError(
            f"preflight: {checks.first_tensorrt_problem()}",
            "fix the plugin setup, or build a self-contained engine with --trt-plugins none",
        )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        staging = scratch / "out"
        staging.mkdir()
        request = {
            "action": "build",
            "onnx": str(onnx_path.resolve()),
            "engine": str(staging / ENGINE_NAME),
            "timing_cache_out": str(staging / "timing.cache"),
            "flavour": flavour.name,
            "plugins": with_plugins,
            "profiles": [profile["inputs"] for profile in profiles],
            "aliased_plugin_io": with_plugins and capacity is not None,
            "tf32": options.tf32,
            "optimization_level": options.optimization_level,
            "workspace_mib": options.workspace_mib,
            "timing_cache": str(options.timing_cache) if options.timing_cache else None,
            "compute_capabilities": capabilities,
        }
        started = time.perf_counter()
        result = _run_child(request, scratch, flavour)
        seconds = time.perf_counter() - started
        _check_plugin_layers(result["network"], nodes, with_plugins)
        aliased = _aliased_caches(result["network"], nodes, with_plugins and capacity is not None)
        manifest = {
            "format_version": FORMAT_VERSION,
            "uniattn_export_version": __version__,
            "engine": {"file": ENGINE_NAME, "sha256": sha256_of(staging / ENGINE_NAME),
                       "bytes": (staging / ENGINE_NAME).stat().st_size},  # fmt: skip
            "tensorrt": {"flavour": flavour.name, "version": flavour.version},
            "target": {"compute_capabilities": result["compute_capabilities"]},
            "plugins": _plugins_entry(options.plugins, nodes),
            "dtype": dtype,
            "tf32": options.tf32,
            "cache": {"mode": "dynamic" if capacity is None else "static", "capacity": capacity},
            "profiles": profiles,
            "aliased_caches": aliased,
            "io": result["network"]["io"],
            "layer_map": layer_map,
            "network": result["network"]["summary"],
            "source": {"onnx": str(onnx_path.resolve()), "onnx_sha256": sha256_of(onnx_path)},
            "build": {
                "optimization_level": options.optimization_level,
                "workspace_mib": options.workspace_mib,
                "timing_cache": request["timing_cache"],
                "seconds": round(seconds, 3),
            },
        }
        write_manifest(staging, manifest)
        if options.timing_cache:
            _store_timing_cache(staging / "timing.cache", Path(options.timing_cache))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return EngineBuild(out_dir / ENGINE_NAME, manifest, checks, seconds)


def check_options(options: BuildOptions, flavour: compat.Flavour, dtype: str) -> None:
    if options.plugins not in PLUGIN_MODES:
        raise UniAttnError(f"unknown plugin mode {options.plugins!r}", f"use one of: {', '.join(PLUGIN_MODES)}")
    if not 0 <= options.optimization_level <= 5:
        raise UniAttnError(f"optimization level {options.optimization_level} is outside 0-5", "pass 0 to 5")
    if options.precision not in PRECISIONS:
        raise UniAttnError(f"unknown precision {options.precision!r}", f"use one of: {', '.join(PRECISIONS)}")
    if options.precision not in ("auto", dtype):
        raise UniAttnError(
            f"the artifact is {dtype} but {options.precision} was asked for; {flavour.describe()} "
            "builds strongly typed networks whose precision is the ONNX graph's",
            f"re-export with --dtype {options.precision} or leave the precision at auto",
        )


def _plugins_entry(mode: str, nodes: list[graph.CustomNode]) -> dict:
    """What a plugin engine depends on besides TensorRT: the kernel library and the plugin
    code, by hash (checked before loading)."""
    kernels = kernels_library() if mode == "uniattn" else None
    return {
        "mode": mode,
        "kernels_sha256": sha256_of(kernels) if kernels else None,
        "plugin_code_sha256": plugin_code_sha256() if mode == "uniattn" else None,
        "ops": sorted({f"{n.plugin_namespace or ''}::{n.op_type}/{n.plugin_version}" for n in nodes}),
    }


def parse_network(onnx_path: Path, with_plugins: bool, flavour: str | None = None) -> dict:
    """Parse only (in a child process, as a build would) and describe the network: its
    layers, plugin layers and I/O tensors with the shapes and types TensorRT inferred."""
    chosen = compat.load(flavour)
    scratch = Path(tempfile.mkdtemp(prefix=".uniattn-trt-parse."))
    try:
        request = {"action": "parse", "onnx": str(Path(onnx_path).resolve()), "flavour": chosen.name,
                   "plugins": with_plugins}  # fmt: skip
        return _run_child(request, scratch, chosen)["network"]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_child(request: dict, scratch: Path, flavour: compat.Flavour) -> dict:
    request_path = scratch / "request.json"
    request_path.write_text(json.dumps(request))
    env = flavour.library_path_env(scratch)
    # The child imports this package from wherever the parent did.
    package_root = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    process = subprocess.run([sys.executable, "-m", worker.__name__, str(request_path)],
                             env=env, capture_output=True, text=True)  # fmt: skip
    result_path = scratch / "result.json"
    result = json.loads(result_path.read_text()) if result_path.is_file() else None
    if process.returncode == 0 and result and "error" not in result:
        return result
    logged = [line.strip() for line in process.stderr.splitlines() if "[E]" in line]
    if result and "error" in result:
        problem = result["error"] + (f" (TensorRT: {logged[-1]})" if logged else "")
    else:
        detail = logged[-1] if logged else (process.stderr.strip().splitlines() or ["no output"])[-1]
        problem = f"the TensorRT process died (exit {process.returncode}): {detail}"
    raise UniAttnError(f"{flavour.describe()} could not {request['action']} the model: {problem}",
                       "check the model and the TensorRT flags; rerun with --trt-plugins none to "
                       "rule out the plugins")  # fmt: skip


def _check_plugin_layers(network: dict, nodes: list[graph.CustomNode], with_plugins: bool) -> None:
    """The parser must have taken the path we asked for: one plugin layer per custom node,
    or none at all (function bodies inlined)."""
    imported = network["summary"]["plugin_layers"]
    expected = len(nodes) if with_plugins else 0
    if len(imported) != expected:
        raise UniAttnError(
            f"the ONNX parser imported {len(imported)} of {len(nodes)} custom nodes as plugins "
            f"(expected {expected})",
            "check that every custom node carries plugin_namespace='uniattn' and a plugin_version "
            "this package implements",
        )


def _aliased_caches(network: dict, nodes: list[graph.CustomNode], static_plugins: bool) -> dict[str, str]:
    """{present name: past name} of the caches the plugins update in place. A static-cache
    plugin engine must alias every cache it outputs to the same cache's input, or the session
    would bind one buffer to two tensors TensorRT treats as different memory."""
    declared = {}
    for layer in network["summary"]["plugin_layers"]:
        for output, source in layer.get("aliases", {}).items():
            cache = io_names.parse_cache_name(output)
            if cache is None or cache.past != source:
                raise UniAttnError(
                    f"plugin layer {layer['name']!r} aliases {output!r} to {source!r}, not to its past cache",
                    "re-export the model: present.* must be the plugin outputs of their past_key_values.*",
                )
            declared[output] = source
    if static_plugins:
        outputs = {t["name"] for t in network["io"] if t["mode"] == "output"}
        missing = sorted(n for n in outputs if io_names.parse_cache_name(n) is not None and n not in declared)
        if missing:
            raise UniAttnError(
                f"the static-cache engine would not update {', '.join(missing)} in place (no plugin "
                "declares it aliased to its past cache)",
                "re-export the model with uniattn-export (caches as outputs of the attention nodes)",
            )
    return dict(sorted(declared.items()))


def _store_timing_cache(built: Path, target: Path) -> None:
    if built.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        shutil.copyfile(built, tmp)
        os.replace(tmp, target)
        built.unlink()
