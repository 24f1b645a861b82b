"""One code path for NVIDIA TensorRT 10.x / 11.x (`tensorrt`) and TensorRT-RTX 1.x
(`tensorrt_rtx_bindings`): everything that differs between them lives here.

The differences that matter to us:
  * Precision. TensorRT 11 and TensorRT-RTX build strongly typed networks only (the ONNX
    types decide); TensorRT 10 still accepts weakly typed ones, so we ask it for a strongly
    typed network too. There are no FP16/BF16 builder flags to set on any of them.
  * Target GPU. TensorRT builds for the GPU it runs on (it needs one); TensorRT-RTX builds on
    any machine, even without a GPU, for a list of compute capabilities, and its runtime
    refuses others (Hopper, sm_90, is not among them).
  * The RTX ONNX parser dlopens the unversioned `libtensorrt_rtx.so` when it imports a
    plugin node, but the PyPI wheel ships only `libtensorrt_rtx.so.1`. The parser finds the
    library through LD_LIBRARY_PATH, which a process reads only at start, so builds run in a
    child process whose environment points at a folder with that one symlink
    (`library_path_env`).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ...errors import UniAttnError

# (flavour, module) in order of preference: real TensorRT runs everywhere it installs.
FLAVOURS = (("tensorrt", "tensorrt"), ("tensorrt_rtx", "tensorrt_rtx_bindings"))
FLAVOUR_ENV = "UNIATTN_TRT_FLAVOUR"

# Compute capabilities TensorRT-RTX 1.x compiles for (its ComputeCapability enum, minus
# Turing, which our CUDA kernels are not built for).
RTX_COMPUTE_CAPABILITIES = ("8.0", "8.6", "8.9", "12.0", "12.1")

INSTALL_HINT = (
    "install TensorRT-RTX (`pip install uniattn-export[trt-rtx]`: builds on any machine, runs "
    "on Ampere/Ada/Blackwell) or NVIDIA TensorRT 10/11 (`pip install uniattn-export[trt]` with "
    "NVIDIA's package index reachable: needed for Hopper)"
)


@dataclass(frozen=True)
class Flavour:
    """The TensorRT in use: `name` is "tensorrt" or "tensorrt_rtx"."""

    name: str
    module: ModuleType

    @property
    def version(self) -> str:
        return self.module.__version__

    @property
    def is_rtx(self) -> bool:
        return self.name == "tensorrt_rtx"

    def describe(self) -> str:
        label = "TensorRT-RTX" if self.is_rtx else "TensorRT"
        return f"{label} {self.version}"

    # --- network and parser ----------------------------------------------------------------

    def network_flags(self) -> int:
        flags = self.module.NetworkDefinitionCreationFlag
        # TensorRT 11 / RTX networks are always strongly typed and may drop the flag.
        return 1 << int(flags.STRONGLY_TYPED) if hasattr(flags, "STRONGLY_TYPED") else 0

    def set_plugin_override(self, parser) -> None:
        """Plugins win over a node's local function (10.15+ / RTX); older parsers already let
        the plugin win when the node carries plugin_namespace."""
        flag = getattr(self.module.OnnxParserFlag, "ENABLE_PLUGIN_OVERRIDE", None)
        if flag is not None:
            parser.set_flag(flag)

    # --- builder config --------------------------------------------------------------------

    def target_capabilities(self, requested: list[str]) -> list[str]:
        """The compute capabilities an engine will target. RTX: the requested ones (all it
        supports when none). TensorRT builds for the GPU of the build machine: [] here."""
        if not self.is_rtx:
            if requested:
                raise UniAttnError(
                    f"{self.describe()} builds for the GPU it runs on; --trt-compute-capability "
                    "applies to TensorRT-RTX only",
                    "drop --trt-compute-capability or build with TensorRT-RTX",
                )
            return []
        for capability in requested:
            if capability not in RTX_COMPUTE_CAPABILITIES:
                raise UniAttnError(
                    f"TensorRT-RTX {self.version} cannot target compute capability {capability}",
                    f"choose among {', '.join(RTX_COMPUTE_CAPABILITIES)}",
                )
        return list(requested) or list(RTX_COMPUTE_CAPABILITIES)

    def set_compute_capabilities(self, config, capabilities: list[str]) -> list[str]:
        """Apply `target_capabilities`' answer to a builder config; returns the targets."""
        if not self.is_rtx:
            return [current_compute_capability()]
        config.num_compute_capabilities = len(capabilities)
        for index, capability in enumerate(capabilities):
            member = getattr(self.module.ComputeCapability, "SM" + capability.replace(".", ""))
            config.set_compute_capability(member, index)
        return capabilities

    def set_tf32(self, config, enabled: bool) -> None:
        flag = getattr(self.module.BuilderFlag, "TF32", None)
        if flag is None:
            if enabled:
                raise UniAttnError(f"{self.describe()} has no TF32 switch", "drop --trt-tf32")
        elif enabled:
            config.set_flag(flag)
        else:
            config.clear_flag(flag)

    def enable_aliased_plugin_io(self, config) -> None:
        """Plugins may declare outputs aliased to inputs (IPluginV3OneBuildV2, TensorRT 10.3+
        and TensorRT-RTX 1.x): a preview feature that must be switched on in the builder
        config, or the build fails on the first plugin that declares one."""
        feature = getattr(self.module.PreviewFeature, "ALIASED_PLUGIN_IO_10_03", None)
        if feature is None:
            raise UniAttnError(
                f"{self.describe()} has no aliased plugin I/O (TensorRT 10.3 or newer has it), "
                "which the static-cache plugins need",
                "install TensorRT 10.3+ or TensorRT-RTX, or build with --trt-plugins none",
            )
        config.set_preview_feature(feature, True)

    def plugin_registry(self):
        return self.module.get_plugin_registry()

    def library_path_env(self, scratch: Path) -> dict[str, str]:
        """Environment for a child process that runs the ONNX parser (see module doc)."""
        env = dict(os.environ)
        if not self.is_rtx:
            return env
        libs = Path(importlib.import_module("tensorrt_rtx_libs").__file__).parent
        versioned = next(iter(sorted(libs.glob("libtensorrt_rtx.so.*"))), None)
        if versioned is None or (libs / "libtensorrt_rtx.so").exists():
            return env
        shim = scratch / "trt-libs"
        shim.mkdir(parents=True, exist_ok=True)
        link = shim / "libtensorrt_rtx.so"
        if not link.exists():
            link.symlink_to(versioned)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(shim), os.environ.get("LD_LIBRARY_PATH", "")) if p
        )
        return env


def _import(module_name: str) -> tuple[ModuleType | None, str | None]:
    try:
        module = importlib.import_module(module_name)
        module.Logger  # the bindings import without their library; this touches it
        return module, None
    except ModuleNotFoundError:
        return None, "not installed"
    except (ImportError, OSError, AttributeError) as exc:  # bindings without libnvinfer
        return None, f"installed but unusable ({str(exc).splitlines()[0]})"


def load(flavour: str | None = None) -> Flavour:
    """The installed TensorRT. `flavour` (or $UNIATTN_TRT_FLAVOUR) picks one when both are."""
    flavour = flavour or os.environ.get(FLAVOUR_ENV) or None
    names = [f for f, _ in FLAVOURS]
    if flavour is not None and flavour not in names:
        raise UniAttnError(f"unknown TensorRT flavour {flavour!r}", f"use one of: {', '.join(names)}")
    reasons = []
    for name, module_name in FLAVOURS:
        if flavour is not None and name != flavour:
            continue
        module, reason = _import(module_name)
        if module is not None:
            return Flavour(name, module)
        reasons.append(f"{module_name}: {reason}")
    raise UniAttnError(f"no usable TensorRT ({'; '.join(reasons)})", INSTALL_HINT)


def current_compute_capability() -> str:
    """Compute capability of CUDA device 0 as "major.minor"."""
    import torch

    if not torch.cuda.is_available():
        raise UniAttnError(
            "no CUDA GPU is visible to this process",
            "run TensorRT engines on a machine with an NVIDIA GPU (and a CUDA build of torch)",
        )
    major, minor = torch.cuda.get_device_capability(0)
    return f"{major}.{minor}"
