"""The TensorRT flags of `uniattn-export model ... --target trt`, and the build they drive.

The `model` command calls `add_arguments(parser)` when it builds its parser,
`check_ready(args, dtype)` before any work (flags, a usable TensorRT, a GPU where the flavour
needs one), `build_from_args(args, artifact_dir)` after the export, and prints
`describe_build(report)`; the engine lands in ARTIFACT/trt/ (engine.plan +
engine_manifest.json). Heavy imports happen in the build only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

TRT_DIR = "trt"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .profiles import ProfileSpec

    defaults = ProfileSpec()
    group = parser.add_argument_group(
        "TensorRT (--target trt)",
        "Engines are built with the TensorRT in this environment: NVIDIA TensorRT 10/11 (on "
        "the GPU it will run on) or TensorRT-RTX 1.x (on any machine, for Ampere/Ada/Blackwell).",
    )
    group.add_argument("--trt-plugins", choices=("uniattn", "none"), default="uniattn",
                       help="uniattn: the custom nodes run the UniAttn plugins (shared kernels); "
                            "none: a self-contained engine from the ONNX function bodies")
    group.add_argument("--trt-batch", default=str(defaults.batch), metavar="MIN:OPT:MAX",
                       help="batch sizes of the optimization profile (default %(default)s)")
    group.add_argument("--trt-seq", default=None, metavar="MIN:OPT:MAX",
                       help=f"new tokens per call: 1 in decode, the prompt in prefill (default {defaults.sequence}; "
                            "static caches: the prefill profile, at most the capacity)")
    group.add_argument("--trt-past", default=None, metavar="MIN:OPT:MAX",
                       help=f"dynamic caches only: cached tokens before a call (default {defaults.past})")
    group.add_argument("--trt-precision", choices=("auto", "float32", "float16", "bfloat16"), default="auto",
                       help="must match the exported dtype: networks are strongly typed (default auto)")
    group.add_argument("--trt-tf32", action="store_true", help="allow TF32 math in float32 layers")
    group.add_argument("--trt-opt-level", type=int, default=3, metavar="0-5",
                       help="builder optimization level (default %(default)s)")
    group.add_argument("--trt-workspace-mib", type=int, default=None, metavar="MIB",
                       help="cap on the builder's scratch memory")
    group.add_argument("--trt-timing-cache", type=Path, default=None, metavar="PATH",
                       help="read and update this timing cache (faster rebuilds)")
    group.add_argument("--trt-compute-capability", default="", metavar="LIST",
                       help="TensorRT-RTX only: targets, e.g. 8.6,8.9 (default: all it supports)")
    group.add_argument("--trt-flavour", choices=("tensorrt", "tensorrt_rtx"), default=None,
                       help="which TensorRT when both are installed")
    group.add_argument("--trt-preflight-only", action="store_true",
                       help="report whether every custom node resolves, and build nothing")


def options_from_args(args: argparse.Namespace, capacity: int | None = None):
    """BuildOptions from the flags; `capacity` is the static artifact's (None: dynamic caches
    or not known yet), which bounds the default prefill range and excludes --trt-past."""
    from ...errors import UniAttnError
    from .build import BuildOptions
    from .profiles import DimRange, ProfileSpec

    defaults = ProfileSpec()
    if capacity is not None and args.trt_past is not None:
        raise UniAttnError(
            "--trt-past applies to dynamic caches; a static-cache engine holds the artifact's "
            f"capacity ({capacity} tokens) in every profile",
            "drop --trt-past (or export with --cache dynamic)",
        )
    sequence = defaults.sequence
    if args.trt_seq is not None:
        sequence = DimRange.parse(args.trt_seq, "--trt-seq", 1)
    elif capacity is not None and sequence.max > capacity:
        sequence = DimRange(1, 1, capacity)
    profile = ProfileSpec(
        batch=DimRange.parse(args.trt_batch, "--trt-batch", 1),
        sequence=sequence,
        past=DimRange.parse(args.trt_past, "--trt-past", 0) if args.trt_past is not None else defaults.past,
    )
    return BuildOptions(
        plugins=args.trt_plugins,
        profile=profile,
        precision=args.trt_precision,
        tf32=args.trt_tf32,
        optimization_level=args.trt_opt_level,
        workspace_mib=args.trt_workspace_mib,
        timing_cache=args.trt_timing_cache,
        compute_capabilities=tuple(c.strip() for c in args.trt_compute_capability.split(",") if c.strip()),
        flavour=args.trt_flavour,
    )


def check_ready(args: argparse.Namespace, dtype: str) -> None:
    """Everything a build needs that can be known before exporting: valid flags, an
    installed TensorRT, its targets, and the GPU that NVIDIA TensorRT builds for."""
    from . import compat
    from .build import check_options

    options = options_from_args(args)
    flavour = compat.load(options.flavour)
    check_options(options, flavour, dtype)
    flavour.target_capabilities(list(options.compute_capabilities))
    if not flavour.is_rtx and not args.trt_preflight_only:
        compat.current_compute_capability()  # TensorRT builds on (and for) the GPU it runs on


# GPU generations by compute capability, for the summary (what a user knows their GPU as).
GPU_FAMILIES = {"8.0": "Ampere datacenter (A100, A30)", "8.6": "Ampere (RTX 30, A10, A40)",
                "8.7": "Ampere (Jetson Orin)", "8.9": "Ada (RTX 40, L4, L40)", "9.0": "Hopper (H100, H200)",
                "10.0": "Blackwell datacenter (B200)", "12.0": "Blackwell (RTX 50, RTX PRO)",
                "12.1": "Blackwell (GB10)"}  # fmt: skip


def describe_build(report: dict) -> list[str]:
    """What `model --target trt` built, where it runs and what this machine did not check."""
    if report["engine"] is None:
        ok = report["preflight"]["tensorrt_ok"]
        return [f"TensorRT preflight only: every custom node {'resolves' if ok else 'does NOT resolve'}; no engine built"]
    tensorrt = {"tensorrt": "TensorRT", "tensorrt_rtx": "TensorRT-RTX"}[report["tensorrt"]["flavour"]]
    capabilities = ", ".join(f"{c} {GPU_FAMILIES.get(c, '')}".rstrip() for c in report["compute_capabilities"])
    if report["cache"]["mode"] == "static":
        profile = "; ".join(
            f"{p['name']}: " + ", ".join(f"{name} {dims[0]}-{dims[2]}" for name, dims in p["dims"].items()
                                       if name != "capacity")
            for p in report["profiles"]
        )  # fmt: skip
        in_place = "updated in place (aliased plugin I/O)" if report["aliased_caches"] else (
            "recomputed into a second buffer (function bodies: no aliasing)")
        profile += f"; caches of {report['cache']['capacity']} tokens, {in_place}"
    else:
        profile = ", ".join(f"{name} {dims[0]}-{dims[2]}" for name, dims in report["profile"].items())
    return [
        f"engine {report['engine']} ({report['engine_bytes'] / 2**20:.1f} MiB, {report['dtype']}, "
        f"plugins: {report['plugins']}), built in {report['build_seconds']:.1f} s with {tensorrt} {report['tensorrt']['version']}",
        f"runs on compute capability {capabilities}; profile: {profile}",
        "not checked here: the engine was built but not run (running needs one of those GPUs and "
        "the same TensorRT); validation (unless --no-validate) runs the ONNX file with onnxruntime. "
        f"Try it there: uniattn-export generate {Path(report['engine']).parent} --prompt ...",
    ]


def build_from_args(args: argparse.Namespace, artifact_dir: Path) -> dict:
    """Build ARTIFACT/trt/ from an exported artifact; returns the report (JSON-ready)."""
    from ...export import load_artifact
    from . import compat
    from .build import build_engine
    from .graph import load_graph
    from .preflight import preflight

    artifact = load_artifact(artifact_dir)
    options = options_from_args(args, artifact.capacity if artifact.cache_mode == "static" else None)
    if args.trt_preflight_only:
        checks = preflight(load_graph(artifact.onnx_path), compat.load(options.flavour))
        return {"target": "trt", "preflight": checks.to_dict(), "engine": None}
    built = build_engine(artifact.onnx_path, Path(artifact_dir) / TRT_DIR, options)
    manifest = built.manifest
    return {
        "target": "trt",
        "engine": str(built.engine_path),
        "tensorrt": manifest["tensorrt"],
        "compute_capabilities": manifest["target"]["compute_capabilities"],
        "plugins": manifest["plugins"]["mode"],
        "dtype": manifest["dtype"],
        "profile": manifest["profiles"][0]["dims"],
        "cache": manifest["cache"],
        "profiles": [{"name": p["name"], "dims": p["dims"]} for p in manifest["profiles"]],
        "aliased_caches": len(manifest["aliased_caches"]),
        "network": {k: manifest["network"][k] for k in ("layers", "layer_types")},
        "plugin_layers": [layer["name"] for layer in manifest["network"]["plugin_layers"]],
        "engine_bytes": manifest["engine"]["bytes"],
        "build_seconds": manifest["build"]["seconds"],
        "preflight": built.preflight.to_dict(),
        "engine_executed": False,  # a build never runs the engine; that needs a GPU it supports
    }
