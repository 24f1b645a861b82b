"""Generation over an exported artifact with ONNX Runtime (CPU, or CUDA with IOBinding).

The project's custom-op library (uniattn_export.native.ort_custom_op_library()) is
registered automatically when it was built, so the `uniattn` nodes run our kernels;
without it onnxruntime inlines the model-local function bodies. `description` says which.

Dynamic-cache artifacts (op contract v1): on CUDA the caches and the shared state never
leave the device: each step binds the previous step's `present.*` OrtValues (device memory
ORT allocated) as this step's `past_key_values.*`, and only the token ids, mask and positions
go up and the logits come down.

Static-cache artifacts (v2): `reset` allocates every cache once as a zeroed OrtValue of
capacity C on the session's device, and every step binds that one OrtValue as both
`past_key_values.*` and `present.*` (IOBinding, CPU and CUDA alike), so the graph updates
it in place; prompts are right-padded (the GenerationSession's `padding`), and a generation
that would not fit the capacity is refused before anything runs. The custom-op library
serves a static artifact only when it implements op version 2 (its kernels' ABI >= 2);
otherwise the function bodies run and `description` says why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from ...dtypes import DTYPES
from ...errors import UniAttnError
from ...export import io_names
from ...export.artifact import Artifact, load_artifact
from ...native import kernel_abi_version, ort_custom_op_library
from ..session import GenerationSession

Device = Literal["cpu", "cuda"]
FUNCTION_BODIES = "ONNX function bodies (no custom-op library)"
# Kernel ABI from which the library implements op contract version 2 (static caches).
STATIC_CACHE_ABI = 2


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


class OrtSession(GenerationSession):
    """An onnxruntime InferenceSession over an artifact, with the KV cache kept inside.

    custom_ops: None registers the library when it is built (and, for a static artifact,
    implements op version 2); True requires it; False never loads it (function bodies only).
    io_binding: keep the caches as OrtValues on the device between steps (always on CUDA and
    for static artifacts; optional for dynamic ones on the CPU).
    """

    def __init__(
        self,
        artifact: Artifact | str | Path,
        *,
        device: Device = "cpu",
        device_id: int = 0,
        custom_ops: bool | None = None,
        io_binding: bool | None = None,
        intra_op_threads: int = 0,
    ):
        import onnxruntime as ort

        self.artifact = artifact if isinstance(artifact, Artifact) else load_artifact(artifact)
        self.vocab_size, self.max_positions = self.artifact.vocab_size, self.artifact.max_positions  # checked by generate
        self.device, self.device_id = device, device_id
        self.static = self.artifact.cache_mode == "static"
        if self.static:
            self.padding, self.capacity = "right", self.artifact.capacity
        # The CUDA path always binds, and static caches are bound as past and present; on the
        # CPU binding is optional for dynamic caches (same code, testable here).
        self.io_binding = device == "cuda" or self.static or bool(io_binding)
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.log_severity_level = 3  # warnings about unused initializers etc. are noise here
        library = ort_custom_op_library() if custom_ops is not False else None
        if custom_ops and library is None:
            raise UniAttnError(
                "the custom-op library (libuniattn_ort.so) is not built",
                "build the package with its native libraries, or run without --custom-ops",
            )
        bodies_reason = ""
        abi = kernel_abi_version() if library is not None and self.static else None
        if library is not None and self.static and (abi or 0) < STATIC_CACHE_ABI:
            if custom_ops:
                raise UniAttnError(
                    f"the custom-op library {library} implements op version 1 only (kernel ABI "
                    f"{abi}), but this static-cache artifact needs op version 2",
                    "rebuild the native libraries from this checkout, or run with --custom-ops off",
                )
            library = None
            bodies_reason = " (the installed custom-op library implements op version 1 only; this artifact needs 2)"
        if library is not None:
            try:
                options.register_custom_ops_library(library)
            except Exception as exc:  # onnxruntime reports a failed dlopen/registration this way
                raise UniAttnError(
                    f"onnxruntime {ort.__version__} cannot load the custom-op library {library} ({_first_line(exc)})",
                    "rebuild it for this onnxruntime, or run with --custom-ops off",
                ) from None
        self.custom_op_library = library

        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UniAttnError(
                    f"onnxruntime {ort.__version__} here has no CUDA execution provider",
                    "install onnxruntime-gpu (same version) or run on the CPU",
                )
            # use_tf32 defaults to on in ORT's CUDA EP: float32 MatMuls would round their inputs
            # to 10 mantissa bits (logit errors ~1e-2 on the H100), far outside a float32 tolerance.
            cuda_options = {"device_id": device_id, "use_tf32": 0}
            providers = [("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"]
        elif device == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            raise UniAttnError(f"unknown device {device!r}", "use cpu or cuda")
        try:
            self.session = ort.InferenceSession(str(self.artifact.onnx_path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types per status code
            if self.artifact.dtype == "bfloat16" and device == "cpu":
                raise UniAttnError(
                    f"onnxruntime's CPU execution provider cannot run this bfloat16 artifact ({_first_line(exc)})",
                    "run bfloat16 artifacts with --device cuda, or export float16 or float32 for the CPU",
                ) from None
            raise UniAttnError(
                f"onnxruntime cannot load {self.artifact.onnx_path} ({_first_line(exc)})",
                "re-export the model with this version of uniattn-export",
            ) from None
        if device == "cuda" and self.session.get_providers()[0] != "CUDAExecutionProvider":
            raise UniAttnError("onnxruntime did not enable the CUDA execution provider", "check the CUDA installation")

        self.output_names = [o.name for o in self.session.get_outputs()]
        self.cache_names = self.artifact.cache_names()
        self._cache_shapes = {}
        for spec in self.artifact.input_specs:
            if io_names.is_past(spec["name"]):
                self._cache_shapes[spec["name"]] = (spec["shape"][1], spec["shape"][3])
        self._cache: dict = {}
        kernels = f"custom-op library {library}" if library else FUNCTION_BODIES + bodies_reason
        cache = f"static caches of {self.capacity} tokens" if self.static else "dynamic caches"
        self.description = (
            f"onnxruntime {ort.__version__}, {self.session.get_providers()[0]}, {cache}, {kernels}, "
            f"{self.artifact.dtype}"
        )

    @property
    def uses_custom_ops(self) -> bool:
        return self.custom_op_library is not None

    def reset(self, batch_size: int) -> None:
        import onnxruntime as ort

        self._cache = {}
        dtype = DTYPES[self.artifact.dtype]
        for name, (heads, head_dim) in self._cache_shapes.items():
            # Static caches: allocated here once for the whole generation and zeroed (the
            # function bodies multiply every slot, hidden ones by probability 0, and 0 * NaN
            # of uninitialized memory would be NaN).
            shape = [batch_size, heads, self.capacity if self.static else 0, head_dim]
            if self.io_binding:
                value = ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype.onnx, self.device, self.device_id)
                if self.static:
                    value.update_inplace(np.zeros(shape, dtype.numpy))
                self._cache[name] = value
            else:
                self._cache[name] = np.zeros(shape, dtype=dtype.numpy)

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
        if not self._cache:
            raise UniAttnError("step() called before reset()", "call reset(batch_size) first")
        if self.static:
            return self._step_in_place(input_ids, attention_mask, position_ids)
        if self.io_binding:
            return self._step_bound(input_ids, attention_mask, position_ids)
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids, **self._cache}
        results = dict(zip(self.output_names, self.session.run(self.output_names, feeds)))
        self._cache = {past: results[present] for past, present in self.cache_names}
        return results["logits"]

    def _step_bound(self, input_ids, attention_mask, position_ids) -> np.ndarray:
        """One step with IOBinding: the previous step's present.* OrtValues (device memory
        ORT allocated) are this step's past_key_values.*; ids, mask and positions go up,
        the logits come down, nothing else crosses."""
        binding = self.session.io_binding()
        for name, host in (("input_ids", input_ids), ("attention_mask", attention_mask), ("position_ids", position_ids)):
            binding.bind_cpu_input(name, np.ascontiguousarray(host, dtype=np.int64))
        for past, _ in self.cache_names:
            binding.bind_ortvalue_input(past, self._cache[past])
        bound = ["logits"] + [present for _, present in self.cache_names]
        binding.bind_output("logits", "cpu")
        for present in bound[1:]:
            binding.bind_output(present, self.device, self.device_id)
        self.session.run_with_iobinding(binding)
        outputs = dict(zip(bound, binding.get_outputs()))
        self._cache = {past: outputs[present] for past, present in self.cache_names}
        return outputs["logits"].numpy()

    def step_greedy(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
        if self.static:  # the graph's next_tokens: B int64 come down instead of B x V floats
            return self._step_in_place(input_ids, attention_mask, position_ids, io_names.NEXT_TOKENS)[:, 0]
        return super().step_greedy(input_ids, attention_mask, position_ids)

    def load_caches(self, values: dict[str, np.ndarray]) -> None:
        """Copy host arrays (B, Hkv, C, D) into the bound static caches (benchmarks start
        decode from a cache of random values this way); names are past_key_values.*."""
        if not self._cache:
            raise UniAttnError("load_caches() called before reset()", "call reset(batch_size) first")
        for name, value in values.items():
            if name not in self._cache or tuple(value.shape) != tuple(self._cache[name].shape()):
                raise UniAttnError(f"no cache {name} of shape {tuple(value.shape)} here", "pass the shapes reset() allocated")
            self._cache[name].update_inplace(np.ascontiguousarray(value))

    def _step_in_place(self, input_ids, attention_mask, position_ids, wanted: str = io_names.LOGITS) -> np.ndarray:
        """One step over static caches: each cache OrtValue is bound as its past input AND its
        present output, so the graph writes the new slots into the buffer it reads. Only the
        `wanted` output (logits or next_tokens) comes to the host; the other stays on the device."""
        last = int(np.max(position_ids))
        if last >= self.capacity:
            raise UniAttnError(
                f"position {last} is beyond the artifact's cache capacity ({self.capacity} tokens)",
                "re-export with a larger --max-length, or generate fewer tokens",
            )
        binding = self.session.io_binding()
        for name, host in zip(io_names.TOKEN_INPUTS, (input_ids, attention_mask, position_ids)):
            binding.bind_cpu_input(name, np.ascontiguousarray(host, dtype=np.int64))
        binding.bind_output(wanted, "cpu")  # first: get_outputs() keeps bind order
        for other in (io_names.LOGITS, io_names.NEXT_TOKENS):
            if other != wanted:
                binding.bind_output(other, self.device, self.device_id)
        for past, present in self.cache_names:
            binding.bind_ortvalue_input(past, self._cache[past])
            binding.bind_ortvalue_output(present, self._cache[past])
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()[0].numpy()

    def cache_on_device(self) -> bool:
        """True when every cache tensor is an OrtValue in the session device's memory, where
        IOBinding keeps it between steps (on CUDA: no host copies of the cache)."""
        return self.io_binding and all(v.device_name() == self.device for v in self._cache.values())
