"""Generation over an exported artifact with ONNX Runtime (CPU, or CUDA with IOBinding).

The project's custom-op library (uniattn_export.native.ort_custom_op_library()) is
registered automatically when it was built, so the `uniattn` nodes run our kernels;
without it onnxruntime inlines the model-local function bodies. `description` says which.

Dynamic-cache artifacts (op contract v1): on CUDA the caches and the shared state never
leave the device: each step binds the previous step's `present.*` OrtValues (device memory
ORT allocated) as this step's `past_key_values.*`, and only the token ids, mask and positions
go up and the logits come down.

Static-cache artifacts (v2): each batch size gets, once, persistent buffers on the session's
device: the caches (B, Hkv, C, D), input_ids and position_ids (B, 1), a fixed attention_mask
(B, C), logits (B, 1, V) and next_tokens (B, 1), and one IOBinding that binds them all, each
cache as both `past_key_values.*` and `present.*`, so the graph updates it in place. A decode
step (one new token per row) writes its ids and positions into their buffers in place and
runs that binding; only next_tokens (greedy, `step_greedy`) or the logits (`step`) come down.
A prompt step (L > 1) binds its own ids, mask and positions buffers with the same caches
and outputs. Prompts are right-padded (the GenerationSession's `padding`), and a generation
that would not fit the capacity is refused before anything runs. The custom-op library
serves a static artifact only when it implements op version 2 (its kernels' ABI >= 2);
otherwise the function bodies run and `description` says why.

CUDA graphs are options on top of that one path (the CPU runs the same code without them):
the session is created with the CUDA EP's `enable_cuda_graph`, and a decode step runs with
run option gpu_graph_id = B, so onnxruntime captures one graph per batch size at its first
decode step (inside that one call onnxruntime runs the step more than once: regular runs up
to its warm-up count, then the capture, which it replays; a step rewrites the same slots with
the same values, so this changes nothing) and replays it from then on; prompt steps run
uncaptured (gpu_graph_id -1). A replay reads and writes the addresses recorded at capture, so
a batch size's buffers live as long as the session, as its captured graph does: every batch
size used keeps its caches. Without graphs only the current batch size's buffers are kept.
onnxruntime keeps captured graphs per thread (its CUDA EP's per-thread context; a session
used from a new thread captures again there) and captures in cudaStreamCaptureModeGlobal,
during which no other thread may allocate or copy on the device: every CUDA session of this
process does its device work under one lock.

Placement check: a graph is captured whole only when every compute node runs on the CUDA EP
and no Memcpy node moves data between host and device. onnxruntime refuses to create an
enable_cuda_graph session otherwise ("This session cannot use the graph capture feature ...")
without naming the nodes; the session records onnxruntime's node assignment
(session.record_ep_graph_assignment_info) and `placement_problems` names them. With
cuda_graph=None the session then runs without graphs and warns; cuda_graph=True makes it a
one-line error. CPU nodes of a session onnxruntime accepted need no copy: they compute
shapes, which a batch size's graph fixes anyway. Neither check would see a CPU node reading
a graph input's values (its copy happens outside the graph, so a replay would reuse the
captured value); tests/gpu/ort_cuda_graph_check.py compares tokens with graphs on and off.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from pathlib import Path
from typing import Iterable, Literal

import numpy as np

from ...dtypes import DTYPES
from ...errors import UniAttnError
from ...export import io_names
from ...export.artifact import Artifact, load_artifact
from ...export.schema import CUDA_LINEAR_CONFIG_KEY
from ...native import kernel_abi_version, ort_custom_op_library
from ..session import GenerationSession

Device = Literal["cpu", "cuda"]
FUNCTION_BODIES = "ONNX function bodies (no custom-op library)"
# Kernel ABI from which the library implements op contract version 2 (static caches).
STATIC_CACHE_ABI = 2
CUDA_EP, CPU_EP = "CUDAExecutionProvider", "CPUExecutionProvider"
# The run option naming the captured graph a run replays (one per batch size); -1: uncaptured.
GRAPH_ID, UNCAPTURED = "gpu_graph_id", "-1"
# onnxruntime's refusal of an enable_cuda_graph session (core/session/inference_session.cc).
GRAPH_REFUSAL = "cannot use the graph capture feature"
RECORD_ASSIGNMENT = "session.record_ep_graph_assignment_info"
# While onnxruntime captures (cudaStreamCaptureModeGlobal) no other thread may allocate or
# copy on the device, so every CUDA session of this process works under this lock.
_CUDA_WORK = threading.Lock()


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def placement_problems(nodes: Iterable[tuple[str, str, str]], refusal: str | None = None) -> list[str]:
    """What keeps onnxruntime from capturing the graph as one CUDA graph, one entry per node.

    nodes: (execution provider, node name, op type) of every node as onnxruntime assigned
    them (`assigned_nodes`); refusal: onnxruntime's message when it refused to create the
    session with enable_cuda_graph, else None. Breaking: a node on a provider other than
    CUDA or CPU, a Memcpy node, and, after a refusal, every node on the CPU. onnxruntime
    accepts CPU nodes only as copy-free shape computations, so once it refused, those nodes
    are the ones whose data crosses to the host. Empty: nothing stands in the way.
    """
    problems = [
        f"{name or '(unnamed)'} ({op_type}) on {provider}"
        for provider, name, op_type in nodes
        if provider not in (CUDA_EP, CPU_EP) or op_type.startswith("Memcpy") or (refusal and provider == CPU_EP)
    ]
    return problems or ([refusal] if refusal else [])


def assigned_nodes(session) -> list[tuple[str, str, str]]:
    """(execution provider, node name, op type) of every node of an onnxruntime session
    created with session.record_ep_graph_assignment_info = 1."""
    return [
        (subgraph.ep_name, node.name, node.op_type)
        for subgraph in session.get_provider_graph_assignment_info()
        for node in subgraph.get_nodes()
    ]


def open_with_cuda_graphs(model: str | bytes, options, providers) -> tuple[object, list[str]]:
    """An onnxruntime InferenceSession of `model` with CUDA graphs if the placement check
    passes, and the check's problems (`placement_problems`; empty: graphs on).

    providers(graphs) gives the execution providers with or without enable_cuda_graph. When
    onnxruntime refuses the graphs, or the check finds problems, the session returned is
    one without them; onnxruntime's other errors propagate.
    """
    import onnxruntime as ort

    options.add_session_config_entry(RECORD_ASSIGNMENT, "1")
    refusal = None
    try:
        session = ort.InferenceSession(model, options, providers=providers(True))
    except Exception as exc:  # onnxruntime raises its own exception types per status code
        if GRAPH_REFUSAL not in str(exc):
            raise
        refusal = _first_line(exc)
        session = ort.InferenceSession(model, options, providers=providers(False))
    problems = placement_problems(assigned_nodes(session), refusal)
    if problems and refusal is None:  # onnxruntime took the graph but the check did not
        session = ort.InferenceSession(model, options, providers=providers(False))
    return session, problems


class _BatchBuffers:
    """One batch size's persistent buffers on the session's device and the decode binding
    over them (module docstring)."""

    def __init__(self, owner: OrtSession, batch: int):
        import onnxruntime as ort

        def allocate(shape, element_type, initial):
            value = ort.OrtValue.ortvalue_from_shape_and_type(shape, element_type, owner.device, owner.device_id)
            value.update_inplace(initial)
            return value

        cache = DTYPES[owner.artifact.dtype]
        # Zeroed once: the function bodies multiply every slot, hidden ones by probability 0,
        # and 0 * NaN of uninitialized memory would be NaN (reset() says why later
        # generations of this batch size need no clearing).
        self.caches = {
            past: allocate(shape, cache.onnx, np.zeros(shape, cache.numpy))
            for past, shape in ((p, [batch, heads, owner.capacity, dim]) for p, (heads, dim) in owner._cache_shapes.items())
        }
        self.input_ids = allocate([batch, 1], np.int64, np.zeros((batch, 1), np.int64))
        self.position_ids = allocate([batch, 1], np.int64, np.zeros((batch, 1), np.int64))
        # A decode step reads the mask only through its row sums, and with one new token the
        # last-token index is 0 whatever they are (docs/export.md, "Static caches"): one fixed
        # (B, C) mask serves every decode step.
        self.attention_mask = allocate([batch, owner.capacity], np.int64, np.ones((batch, owner.capacity), np.int64))
        self.logits = allocate([batch, 1, owner.vocab_size], np.float32, np.zeros((batch, 1, owner.vocab_size), np.float32))
        self.next_tokens = allocate([batch, 1], np.int64, np.zeros((batch, 1), np.int64))
        self.batch = batch
        tokens = (self.input_ids, self.attention_mask, self.position_ids)
        self.decode = owner._bind(self, dict(zip(io_names.TOKEN_INPUTS, tokens)))
        self.run_options = ort.RunOptions()
        if owner.cuda_graph:
            self.run_options.add_run_config_entry(GRAPH_ID, str(batch))  # ids >= 1; 0 is onnxruntime's default


def custom_op_library_for(static: bool, custom_ops: bool | None) -> tuple[str | None, str]:
    """The custom-op library an artifact runs with (OrtSession) or ships (genai folders), and
    why the function bodies run instead when it is None ("" when not asked for).

    custom_ops: None takes the built library when it serves the artifact's op version (static
    caches: op version 2, kernel ABI >= STATIC_CACHE_ABI); True requires that (one-line
    UniAttnError otherwise); False never takes it."""
    library = ort_custom_op_library() if custom_ops is not False else None
    if custom_ops and library is None:
        raise UniAttnError(
            "the custom-op library (libuniattn_ort.so) is not built",
            "build the package with its native libraries, or run without --custom-ops",
        )
    abi = kernel_abi_version() if library is not None and static else None
    if library is not None and static and (abi or 0) < STATIC_CACHE_ABI:
        if custom_ops:
            raise UniAttnError(
                f"the custom-op library {library} implements op version 1 only (kernel ABI "
                f"{abi}), but this static-cache artifact needs op version 2",
                "rebuild the native libraries from this checkout, or run with --custom-ops off",
            )
        return None, " (the installed custom-op library implements op version 1 only; this artifact needs 2)"
    return library, ""


class OrtSession(GenerationSession):
    """An onnxruntime InferenceSession over an artifact, with the KV cache kept inside.

    custom_ops: None registers the library when it is built (and, for a static artifact,
    implements op version 2); True requires it; False never loads it (function bodies only).
    io_binding: keep the caches as OrtValues on the device between steps (always on CUDA and
    for static artifacts; optional for dynamic ones on the CPU).
    cuda_graph: None runs decode steps as CUDA graphs for a static artifact on CUDA when the
    placement check passes (else warns and runs without); True requires them (one-line
    UniAttnError if impossible); False never uses them. `cuda_graph` (the attribute) says
    whether they are on, `graph_placement` lists what the check found in the way.
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
        cuda_graph: bool | None = None,
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
        # Fatal only: warnings (unused initializers and the like) are noise here, and a failing
        # node's error is raised with the same text, which ORT would otherwise also print.
        options.log_severity_level = 4
        library, bodies_reason = custom_op_library_for(self.static, custom_ops)
        if library is not None:
            if device == "cuda":  # Linear's kernel (CUDA only: on the CPU ORT must run its body; docs/ops.md)
                options.add_session_config_entry(CUDA_LINEAR_CONFIG_KEY, "1")
            try:
                options.register_custom_ops_library(library)
            except Exception as exc:  # onnxruntime reports a failed dlopen/registration this way
                raise UniAttnError(
                    f"onnxruntime {ort.__version__} cannot load the custom-op library {library} ({_first_line(exc)})",
                    "rebuild it for this onnxruntime, or run with --custom-ops off",
                ) from None
        self.custom_op_library = library

        if device == "cuda":
            if CUDA_EP not in ort.get_available_providers():
                raise UniAttnError(
                    f"onnxruntime {ort.__version__} here has no CUDA execution provider",
                    "install onnxruntime-gpu (same version) or run on the CPU",
                )
        elif device != "cpu":
            raise UniAttnError(f"unknown device {device!r}", "use cpu or cuda")
        graphs_possible = device == "cuda" and self.static
        if cuda_graph and not graphs_possible:
            raise UniAttnError(
                "CUDA graphs need a static-cache artifact on CUDA; this is "
                + (f"{self.artifact.path}, which has dynamic caches" if not self.static else "a CPU session"),
                "export with --cache static and run with --device cuda, or leave CUDA graphs off",
            )
        self._open(options, graphs_possible and cuda_graph is not False, required=bool(cuda_graph))
        if device == "cuda" and self.session.get_providers()[0] != CUDA_EP:
            raise UniAttnError("onnxruntime did not enable the CUDA execution provider", "check the CUDA installation")
        self._uncaptured = None  # run options of prompt steps (their shapes vary: never captured)
        if self.cuda_graph:
            self._uncaptured = ort.RunOptions()
            self._uncaptured.add_run_config_entry(GRAPH_ID, UNCAPTURED)
        self._buffers: dict[int, _BatchBuffers] = {}  # static caches: per batch size

        self.output_names = [o.name for o in self.session.get_outputs()]
        self.cache_names = self.artifact.cache_names()
        self._cache_shapes = {}
        for spec in self.artifact.input_specs:
            if io_names.is_past(spec["name"]):
                self._cache_shapes[spec["name"]] = (spec["shape"][1], spec["shape"][3])
        self._cache: dict = {}
        self._active: _BatchBuffers | None = None  # static caches: the batch reset() started
        kernels = f"custom-op library {library}" if library else FUNCTION_BODIES + bodies_reason
        cache = f"static caches of {self.capacity} tokens" if self.static else "dynamic caches"
        self.description = (
            f"onnxruntime {ort.__version__}, {self.session.get_providers()[0]}, {cache}, {kernels}, "
            f"{self.artifact.dtype}"
        )
        if graphs_possible:
            self.description += ", CUDA graphs " + (
                "on (one per batch size)" if self.cuda_graph else "off (placement check)" if self.graph_placement else "off"
            )

    def _open(self, options, graphs: bool, required: bool) -> None:
        """Create the onnxruntime session, with CUDA graphs when `graphs` and the placement
        check passes (module docstring); sets session, cuda_graph and graph_placement."""
        try:
            if graphs:
                self.session, self.graph_placement = open_with_cuda_graphs(
                    str(self.artifact.onnx_path), options, self._providers
                )
            else:
                self.session, self.graph_placement = self._load(options), []
        except UniAttnError:
            raise
        except Exception as exc:  # onnxruntime raises its own exception types per status code
            raise self._load_error(exc) from None
        self.cuda_graph = graphs and not self.graph_placement
        if not self.graph_placement:
            return
        shown = "; ".join(self.graph_placement[:6])
        if len(self.graph_placement) > 6:
            shown += f"; and {len(self.graph_placement) - 6} more"
        why = f"onnxruntime places {shown} (a captured graph needs every compute node on the CUDA execution provider and no Memcpy)"
        if required:
            raise UniAttnError(
                f"CUDA graphs are impossible for {self.artifact.onnx_path}: {why}",
                "run with CUDA graphs off (cuda_graph=False), or re-export so that every node runs on CUDA",
            )
        warnings.warn(f"CUDA graphs off for {self.artifact.onnx_path}: {why}", stacklevel=3)

    def _providers(self, graphs: bool) -> list:
        if self.device != "cuda":
            return [CPU_EP]
        # use_tf32 defaults to on in ORT's CUDA EP: float32 MatMuls would round their inputs
        # to 10 mantissa bits (logit errors ~1e-2 on the H100), far outside a float32 tolerance.
        cuda_options = {"device_id": self.device_id, "use_tf32": 0}
        if graphs:
            cuda_options["enable_cuda_graph"] = 1
        return [(CUDA_EP, cuda_options), CPU_EP]

    def _load(self, options):
        """The onnxruntime session on this device, without CUDA graphs."""
        import onnxruntime as ort

        try:
            return ort.InferenceSession(str(self.artifact.onnx_path), options, providers=self._providers(False))
        except Exception as exc:  # onnxruntime raises its own exception types per status code
            raise self._load_error(exc) from None

    def _load_error(self, exc: Exception) -> UniAttnError:
        if self.artifact.dtype == "bfloat16" and self.device == "cpu":
            return UniAttnError(
                f"onnxruntime's CPU execution provider cannot run this bfloat16 artifact ({_first_line(exc)})",
                "run bfloat16 artifacts with --device cuda, or export float16 or float32 for the CPU",
            )
        return UniAttnError(
            f"onnxruntime cannot load {self.artifact.onnx_path} ({_first_line(exc)})",
            "re-export the model with this version of uniattn-export",
        )

    def _device_work(self):
        """The lock every CUDA session's device work holds (see _CUDA_WORK); none on the CPU."""
        return _CUDA_WORK if self.device == "cuda" else contextlib.nullcontext()

    @property
    def uses_custom_ops(self) -> bool:
        return self.custom_op_library is not None

    def reset(self, batch_size: int) -> None:
        """Start a batch of `batch_size` rows.

        Static caches: the batch size's buffers are allocated (and zeroed) the first time only
        and are not cleared afterwards. A row's step reads the slots up to its own position,
        and this generation wrote all of them before (the prompt step writes slots 0..width-1
        of every row, each later step its own slot first), so what earlier generations left
        in higher slots is never visible: the library's kernels stop at the position, and the
        function bodies multiply those slots by probability exactly 0, which needs them
        finite: they hold values the graph wrote, load_caches' values, or the first zeros.
        """
        if self.static:
            with self._device_work():
                if not self.cuda_graph:  # no captured graph refers to other batch sizes' buffers
                    self._buffers = {b: buffers for b, buffers in self._buffers.items() if b == batch_size}
                if batch_size not in self._buffers:
                    self._buffers[batch_size] = _BatchBuffers(self, batch_size)
            self._active = self._buffers[batch_size]
            self._cache = self._active.caches
            return
        import onnxruntime as ort

        self._cache = {}
        dtype = DTYPES[self.artifact.dtype]
        for name, (heads, head_dim) in self._cache_shapes.items():
            shape = [batch_size, heads, 0, head_dim]
            if self.io_binding:
                with self._device_work():
                    self._cache[name] = ort.OrtValue.ortvalue_from_shape_and_type(
                        shape, dtype.onnx, self.device, self.device_id
                    )
            else:
                self._cache[name] = np.zeros(shape, dtype=dtype.numpy)

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
        if not self._cache:
            raise UniAttnError("step() called before reset()", "call reset(batch_size) first")
        if self.static:
            return self._step_static(input_ids, attention_mask, position_ids, io_names.LOGITS)
        if self.io_binding:
            with self._device_work():
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
            if not self._cache:
                raise UniAttnError("step_greedy() called before reset()", "call reset(batch_size) first")
            return self._step_static(input_ids, attention_mask, position_ids, io_names.NEXT_TOKENS)[:, 0]
        return super().step_greedy(input_ids, attention_mask, position_ids)

    def load_caches(self, values: dict[str, np.ndarray]) -> None:
        """Copy host arrays (B, Hkv, C, D) into the bound static caches (benchmarks start
        decode from a cache of random values this way); names are past_key_values.*."""
        if not self._cache:
            raise UniAttnError("load_caches() called before reset()", "call reset(batch_size) first")
        for name, value in values.items():
            if name not in self._cache or tuple(value.shape) != tuple(self._cache[name].shape()):
                raise UniAttnError(f"no cache {name} of shape {tuple(value.shape)} here", "pass the shapes reset() allocated")
            with self._device_work():
                self._cache[name].update_inplace(np.ascontiguousarray(value))

    @contextlib.contextmanager
    def running_on(self, session):
        """Run this session's steps on another InferenceSession of the same file (e.g. one
        with profiling on) over the same buffers: the persistent decode bindings belong to
        the session that made them, so they are made anew for it and restored afterwards."""
        own, saved = self.session, {batch: buffers.decode for batch, buffers in self._buffers.items()}
        self.session = session
        try:
            for buffers in self._buffers.values():
                tokens = (buffers.input_ids, buffers.attention_mask, buffers.position_ids)
                buffers.decode = self._bind(buffers, dict(zip(io_names.TOKEN_INPUTS, tokens)))
            yield
        finally:
            self.session = own
            for batch, decode in saved.items():
                self._buffers[batch].decode = decode

    def _bind(self, buffers: _BatchBuffers, tokens: dict) -> object:
        """An IOBinding of the token inputs (OrtValues on the device) with the batch's outputs
        and caches, each cache as its past input and its present output."""
        binding = self.session.io_binding()
        for name, value in tokens.items():
            binding.bind_ortvalue_input(name, value)
        binding.bind_ortvalue_output(io_names.LOGITS, buffers.logits)
        binding.bind_ortvalue_output(io_names.NEXT_TOKENS, buffers.next_tokens)
        for past, present in self.cache_names:
            binding.bind_ortvalue_input(past, buffers.caches[past])
            binding.bind_ortvalue_output(present, buffers.caches[past])
        return binding

    def _step_static(self, input_ids, attention_mask, position_ids, wanted: str) -> np.ndarray:
        """One step over the active batch's buffers; returns the `wanted` output (logits or
        next_tokens) on the host. One new token per row: the decode binding, ids and positions
        written into their buffers in place (a captured graph on CUDA). More: a prompt step."""
        buffers = self._active
        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        positions = np.ascontiguousarray(position_ids, dtype=np.int64)
        if ids.ndim != 2 or ids.shape[0] != buffers.batch or positions.shape != ids.shape:
            raise UniAttnError(
                f"input_ids {ids.shape} and position_ids {positions.shape} do not match the batch of "
                f"{buffers.batch} rows reset() started",
                "pass (batch, new tokens) arrays for the batch size given to reset()",
            )
        last = int(np.max(positions))
        if last >= self.capacity:
            raise UniAttnError(
                f"position {last} is beyond the artifact's cache capacity ({self.capacity} tokens)",
                "re-export with a larger --max-length, or generate fewer tokens",
            )
        with self._device_work():
            if ids.shape[1] == 1:
                buffers.input_ids.update_inplace(ids)
                buffers.position_ids.update_inplace(positions)
                binding, run_options = buffers.decode, buffers.run_options
            else:  # this step's own token buffers, uncaptured
                import onnxruntime as ort

                mask = np.ascontiguousarray(attention_mask, dtype=np.int64)
                tokens = [ort.OrtValue.ortvalue_from_numpy(a, self.device, self.device_id) for a in (ids, mask, positions)]
                binding, run_options = self._bind(buffers, dict(zip(io_names.TOKEN_INPUTS, tokens))), self._uncaptured
            # A copy from pageable host memory may return before its DMA has landed, and the
            # graph runs on onnxruntime's own stream: wait for the copies.
            binding.synchronize_inputs()
            self.session.run_with_iobinding(binding, run_options)
            result = (buffers.logits if wanted == io_names.LOGITS else buffers.next_tokens).numpy()
        # On the CPU numpy() is a view of the bound buffer, which the next step overwrites;
        # from device memory it is already a fresh host copy.
        return result.copy() if self.device == "cpu" else result

    def cache_on_device(self) -> bool:
        """True when every cache tensor is an OrtValue in the session device's memory, where
        IOBinding keeps it between steps (on CUDA: no host copies of the cache)."""
        return self.io_binding and all(v.device_name() == self.device for v in self._cache.values())
