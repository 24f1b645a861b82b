"""The runtimes a benchmark compares, behind one interface.

  ort-library / ort-bodies        a dynamic-cache artifact in onnxruntime (CUDA or CPU EP) with
                                  or without the uniattn custom-op library, caches on the device
  ort-static-library / -bodies    a static-cache artifact through OrtSession (caches bound as past
  / -graph                        and present, step_greedy), without CUDA graphs; -graph:
                                  OrtSession(cuda_graph=True)
  onnxruntime-genai               a genai model folder (its builder's output) in og.Generator
  genai-artifact                  our `--target genai` export (static caches) in og.Generator
  transformers-dynamic / -static  the base architecture in transformers (SDPA attention),
  / -static-compiled              DynamicCache, StaticCache, StaticCache + torch.compile

Decode is timed on a cache of the target length built directly from random values of the
right shapes (consumer layers of a UniAttn artifact have no K), with a full attention mask:
exactly the per-token work of generation at that context, without prefilling B x S tokens
first (which the function-body path cannot do at batch 32 x 8192: it materializes
B*Hq*L*S scores). Every step is synchronized before its clock stops, and logits stay on
the device in every runtime (the generation loop's host copy of the (B, vocab) logits is a
fixed cost outside the model step).
"""

from __future__ import annotations

import json
import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..dtypes import DTYPES
from ..errors import UniAttnError
from ..export.artifact import Artifact
from ..model.modeling import CACHE_KEYWORD
from ..native import ort_custom_op_library
from ..targets.genai.runner import genai_config, load_genai_model, random_prompt_ids
from .measure import cuda_copy_profile, device_used_bytes, release_device_memory, synchronize
from .settings import GENAI_ARTIFACT_BACKEND, GENAI_BACKEND

# Live float32 (B, Hq, L, S) buffers in the function bodies' prefill (scores, masked scores,
# exps, probabilities) when onnxruntime does not reuse them.
_BODY_SCORE_COPIES = 4


@dataclass(frozen=True)
class ModelShape:
    """The sizes that decide a prefill's memory footprint."""

    hidden_size: int
    intermediate_size: int
    vocab_size: int
    num_heads: int
    kv_bytes_per_token: int
    itemsize: int
    logits_all_positions: bool

    def prefill_bytes(self, batch: int, length: int, materializes_scores: bool, key_length: int | None = None) -> int:
        """A generous estimate of one prefill's activations (the weights are already there):
        MLP and attention activations, the new caches, the logits and, for the function
        bodies, their float32 score matrices over `key_length` keys (default: length)."""
        tokens = batch * length
        activations = tokens * (3 * self.intermediate_size + 6 * self.hidden_size) * self.itemsize
        caches = 2 * tokens * self.kv_bytes_per_token
        logits = batch * (length if self.logits_all_positions else 1) * self.vocab_size * 4
        keys = length if key_length is None else key_length
        scores = _BODY_SCORE_COPIES * 4 * batch * self.num_heads * length * keys if materializes_scores else 0
        return activations + caches + logits + scores


def random_bits(shape: tuple[int, ...], dtype: str, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """Normal values (standard deviation `scale`) with the bit layout of `dtype` (bfloat16 as
    uint16: numpy has no bfloat16, onnxruntime copies the bytes)."""
    values = rng.standard_normal(shape, dtype=np.float32)
    if scale != 1.0:
        values *= scale
    if dtype == "float16":
        return values.astype(np.float16)
    if dtype == "bfloat16":
        return (values.view(np.uint32) >> 16).astype(np.uint16)
    return values


class DecodeRun(ABC):
    """A cache of `context` tokens; each `step()` decodes one token per row and returns its
    synchronized wall time in seconds. kv_cache_bytes: the cache as built (context tokens)."""

    kv_cache_bytes: int

    @abstractmethod
    def step(self) -> float: ...

    @abstractmethod
    def last_logits(self) -> np.ndarray:
        """float32 (B, 1, vocab) of the last step, on the host."""


class Runtime(ABC):
    """One backend over one model, loaded once and measured cell by cell."""

    backend: str
    model: str  # "artifact" | "baseline"
    description: str
    weight_bytes: int
    memory_method: str
    measures_prefill: bool = True

    def __init__(self, model: str, backend: str, device: str, seed: int):
        self.model, self.backend, self.device, self.seed = model, backend, device, seed

    @property
    def id(self) -> str:
        return f"{self.model}/{self.backend}"

    @abstractmethod
    def prefill_bytes(self, batch: int, length: int) -> int: ...

    @abstractmethod
    def prefill(self, batch: int, length: int) -> float:
        """One synchronized prefill of `length` new tokens per row from an empty cache."""

    @abstractmethod
    def start_decode(self, batch: int, context: int, steps: int) -> DecodeRun:
        """A cache of `context` random tokens, room for `steps` more."""

    def unsupported(self, phase: str, batch: int, context: int, steps: int) -> str | None:
        """Why `phase` cannot run on this cell (recorded as skipped), or None."""
        return None

    def copy_profile(self, run: DecodeRun) -> dict | None:
        """What one more decode step of `run` copies, under a profiler; None where not profiled."""
        return None

    def reset_peak_memory(self) -> None:
        """Start a cell's peak-memory window (where the backend can)."""

    @abstractmethod
    def peak_memory(self) -> int | None:
        """Peak device bytes of this runtime since reset_peak_memory (weights included);
        None on the CPU."""

    def close(self) -> None:
        release_device_memory(self.device)


# ---- onnxruntime ---------------------------------------------------------------------------


def artifact_weight_bytes(artifact: Artifact) -> int:
    return _initializer_bytes(_graph(artifact.onnx_path))


def artifact_shape(artifact: Artifact) -> ModelShape:
    config = artifact.manifest["geometry"]
    raw = json.loads((artifact.path / "config.json").read_text())
    return ModelShape(
        hidden_size=config["hidden_size"], intermediate_size=raw["intermediate_size"],
        vocab_size=config["vocab_size"], num_heads=max(layer["num_heads"] for layer in artifact.layers),
        kv_bytes_per_token=artifact.manifest["kv_cache_bytes_per_token"], itemsize=DTYPES[artifact.dtype].itemsize,
        logits_all_positions=artifact.manifest["logits"] == "all",
    )  # fmt: skip


def random_caches(artifact: Artifact, batch: int, context: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random bits (B, Hkv, context, D) for every past_key_values.* input of `artifact`, in the
    graph's order; layers of one geometry share one array (same values, less host memory).
    Dynamic and static runs draw them identically, so one seed gives both the same cache."""
    specs = {s["name"]: s["shape"] for s in artifact.input_specs}
    by_shape: dict[tuple, np.ndarray] = {}
    caches = {}
    for past, _ in artifact.cache_names():
        shape = (batch, specs[past][1], context, specs[past][3])
        if shape not in by_shape:
            by_shape[shape] = random_bits(shape, artifact.dtype, rng)
        caches[past] = by_shape[shape]
    return caches


class _OrtRuntime(Runtime):
    """What the onnxruntime runtimes share: weights, shapes, random inputs, device memory."""

    _CUDA_MEMORY_METHOD = (
        "device memory in use (cudaMemGetInfo, torch's pool excluded) above the level before the "
        "session was created: onnxruntime's arena keeps its high-water mark, and cells run smallest first"
    )

    def __init__(self, artifact: Artifact, model: str, backend: str, device: str, seed: int):
        super().__init__(model, backend, device, seed)
        self.artifact = artifact
        self.memory_method = self._CUDA_MEMORY_METHOD if device == "cuda" else "n/a on the CPU"
        self._used_before = device_used_bytes(device)
        self.weight_bytes = artifact_weight_bytes(artifact)
        self.shape = artifact_shape(artifact)
        self._rng = np.random.default_rng(seed)

    def random_ids(self, batch: int, length: int) -> np.ndarray:
        return self._rng.integers(0, self.shape.vocab_size, (batch, length), dtype=np.int64)

    def peak_memory(self) -> int | None:
        used = device_used_bytes(self.device)
        return None if used is None else used - self._used_before

    @property
    def generation_session(self):
        """The OrtSession that runs this runtime's steps."""
        raise NotImplementedError

    def copy_profile(self, run: DecodeRun) -> dict | None:
        """CUDA: torch.profiler around one step (for ort-static-graph a replay of the captured
        graph: CUPTI records the kernels it launches); CPU: ONNX Runtime's profiler."""
        return cuda_copy_profile(run.step) if self.device == "cuda" else self.cpu_copy_profile(run)

    def cpu_copy_profile(self, run: DecodeRun) -> dict:
        """One more decode step of `run` with ONNX Runtime's CPU profiler on: a second
        InferenceSession of the same file, options and kernels, with profiling, swapped into
        the OrtSession for that step (the binding code is the one users run). Accounts the
        output bytes of the nodes that copy tensors (Concat, Scatter*, Identity, Expand, ...):
        the dynamic path's present = concat(past, new), the function bodies' scatter into a copy
        of the cache. uniattn nodes' outputs are counted as copies for dynamic caches (v1
        kernels write present = past + new into a new buffer) and not for static ones (past and
        present are one bound buffer; the op-version-2 kernels write only the new rows)."""
        import onnxruntime as ort

        owner = self.generation_session
        with tempfile.TemporaryDirectory() as folder:
            options = ort.SessionOptions()
            options.enable_profiling = True
            options.profile_file_prefix = f"{folder}/step"
            options.log_severity_level = 3
            if owner.custom_op_library:
                options.register_custom_ops_library(owner.custom_op_library)
            profiled = ort.InferenceSession(str(self.artifact.onnx_path), options, providers=["CPUExecutionProvider"])
            with owner.running_on(profiled):
                run.step()
            with open(profiled.end_profiling()) as f:
                events = json.load(f)
        copies: dict[str, int] = {}
        uniattn: dict[str, int] = {}
        for event in events:
            args = event.get("args", {})
            if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
                continue
            op, size = args.get("op_name", ""), int(args.get("output_size", 0))
            if op in _COPY_OPS:
                copies[op] = copies.get(op, 0) + size
            elif op.startswith("UniAttn"):
                uniattn[op] = uniattn.get(op, 0) + size
        in_place = self.artifact.cache_mode == "static"
        return {
            "method": "onnxruntime CPU profiler, one decode step: output bytes of copying nodes by op type, plus "
            "the uniattn nodes' outputs unless the caches are bound in place",
            "copy_bytes": sum(copies.values()) + (0 if in_place else sum(uniattn.values())),
            "copy_bytes_by_op": copies, "uniattn_output_bytes": uniattn, "caches_bound_in_place": in_place,
        }  # fmt: skip


# Ops whose output is a copy of (part of) their inputs: a cache passing through one is copied.
_COPY_OPS = ("Concat", "ScatterElements", "ScatterND", "TensorScatter", "Identity", "Expand", "Where",
             "MemcpyFromHost", "MemcpyToHost", "Copy")  # fmt: skip


class OrtRuntime(_OrtRuntime):
    """A dynamic-cache artifact in onnxruntime; ort-library registers the custom-op library,
    ort-bodies runs the model-local function bodies. Decode binds each step's present.*
    OrtValues as the next step's past_key_values.* (the cache grows by one row per step)."""

    def __init__(self, artifact: Artifact, model: str, backend: str, device: str, seed: int):
        import onnxruntime as ort

        from ..targets.ort import OrtSession

        if artifact.cache_mode != "dynamic":
            raise UniAttnError(f"{backend} runs dynamic-cache artifacts; {artifact.path} has static caches",
                               "pass a --cache dynamic export too, or use the ort-static-* backends")  # fmt: skip
        library = backend == "ort-library"
        if library and ort_custom_op_library() is None:
            raise UniAttnError("the custom-op library (libuniattn_ort.so) is not built", "build the package's native libraries")
        super().__init__(artifact, model, backend, device, seed)
        self._ort = ort
        self.runner = OrtSession(artifact, device=device, custom_ops=library, io_binding=True)
        self.description = self.runner.description
        self._type = DTYPES[artifact.dtype].onnx
        self._outputs = [o.name for o in self.runner.session.get_outputs()]
        specs = {s["name"]: s["shape"] for s in artifact.input_specs}
        # past input -> (present output, kv heads, head dim), in graph order
        self._caches = {past: (present, specs[past][1], specs[past][3]) for past, present in artifact.cache_names()}

    @property
    def generation_session(self):
        return self.runner

    def device_value(self, bits: np.ndarray):
        """An OrtValue on this runtime's device holding `bits` (the artifact's dtype)."""
        value = self._ort.OrtValue.ortvalue_from_shape_and_type(list(bits.shape), self._type, self.device, 0)
        value.update_inplace(bits)
        return value

    def run(self, input_ids: np.ndarray, position_ids: np.ndarray, key_len: int, pasts: dict) -> dict:
        """One synchronized call with every output left on the device."""
        binding = self.runner.session.io_binding()
        mask = np.ones((len(input_ids), key_len), dtype=np.int64)
        for name, host in (("input_ids", input_ids), ("attention_mask", mask), ("position_ids", position_ids)):
            binding.bind_cpu_input(name, host)
        for name, value in pasts.items():
            binding.bind_ortvalue_input(name, value)
        for name in self._outputs:
            binding.bind_output(name, self.device, 0)
        self.runner.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return dict(zip(self._outputs, binding.get_outputs()))

    def prefill_bytes(self, batch: int, length: int) -> int:
        return self.shape.prefill_bytes(batch, length, materializes_scores=self.backend == "ort-bodies")

    def prefill(self, batch: int, length: int) -> float:
        empty = {
            past: self._ort.OrtValue.ortvalue_from_shape_and_type([batch, heads, 0, dim], self._type, self.device, 0)
            for past, (_, heads, dim) in self._caches.items()
        }
        ids = self.random_ids(batch, length)
        positions = np.broadcast_to(np.arange(length, dtype=np.int64), (batch, length)).copy()
        start = time.perf_counter()
        self.run(ids, positions, length, empty)
        return time.perf_counter() - start

    def start_decode(self, batch: int, context: int, steps: int) -> DecodeRun:
        return _OrtDecode(self, batch, context)

    def close(self) -> None:
        del self.runner
        super().close()


class _OrtDecode(DecodeRun):
    def __init__(self, runtime: OrtRuntime, batch: int, context: int):
        self.runtime, self.batch, self.length = runtime, batch, context
        caches = random_caches(runtime.artifact, batch, context, runtime._rng)
        self.pasts = {past: runtime.device_value(bits) for past, bits in caches.items()}
        self.kv_cache_bytes = sum(v.tensor_size_in_bytes() for v in self.pasts.values())
        self.outputs: dict = {}

    def step(self) -> float:
        ids = self.runtime.random_ids(self.batch, 1)
        positions = np.full((self.batch, 1), self.length, dtype=np.int64)
        start = time.perf_counter()
        self.outputs = self.runtime.run(ids, positions, self.length + 1, self.pasts)
        elapsed = time.perf_counter() - start
        self.pasts = {past: self.outputs[present] for past, (present, _, _) in self.runtime._caches.items()}
        self.length += 1
        return elapsed

    def last_logits(self) -> np.ndarray:
        return self.outputs["logits"].numpy()


class OrtStaticRuntime(_OrtRuntime):
    """A static-cache artifact through OrtSession, the path users get: `reset` allocates the
    caches once (capacity C, on the device), every step binds each as past and present, and a
    greedy step brings only the B next-token ids to the host (`step_greedy`). Backends:
    ort-static-library (custom-op library, op version 2, no CUDA graphs), ort-static-bodies (function bodies:
    not length-aware, every step attends over all C slots), ort-static-graph (the library with
    ONNX Runtime CUDA graphs: OrtSession(cuda_graph=True); CUDA only)."""

    def __init__(self, artifact: Artifact, model: str, backend: str, device: str, seed: int):
        from ..targets.ort import OrtSession

        if artifact.cache_mode != "static":
            raise UniAttnError(f"{backend} runs static-cache artifacts; {artifact.path} has dynamic caches",
                               "pass a --cache static export too, or use the ort-library/ort-bodies backends")  # fmt: skip
        graph = backend == "ort-static-graph"
        if graph and device != "cuda":
            raise UniAttnError("ONNX Runtime CUDA graphs need the CUDA execution provider", "run with --device cuda")
        library = backend != "ort-static-bodies"
        if library and ort_custom_op_library() is None:
            raise UniAttnError("the custom-op library (libuniattn_ort.so) is not built", "build the package's native libraries")
        super().__init__(artifact, model, backend, device, seed)
        # -graph requires CUDA graphs; the other rows run without them (OrtSession's default
        # would use graphs wherever possible, making -library a second -graph row).
        self.session = OrtSession(artifact, device=device, custom_ops=library, cuda_graph=graph)
        self.description = self.session.description
        self.capacity = artifact.capacity

    @property
    def generation_session(self):
        return self.session

    def unsupported(self, phase: str, batch: int, context: int, steps: int) -> str | None:
        return capacity_shortfall(self.capacity, phase, context, steps)

    def prefill_bytes(self, batch: int, length: int) -> int:
        bodies = self.backend == "ort-static-bodies"  # their scores span every slot of the capacity
        caches = batch * self.capacity * self.shape.kv_bytes_per_token
        return caches + self.shape.prefill_bytes(batch, length, materializes_scores=bodies, key_length=self.capacity)

    def prefill(self, batch: int, length: int) -> float:
        self.session.reset(batch)  # allocates and zeroes the caches: not part of the prefill
        ids = self.random_ids(batch, length)
        mask = np.ones((batch, length), dtype=np.int64)
        positions = np.broadcast_to(np.arange(length, dtype=np.int64), (batch, length)).copy()
        start = time.perf_counter()
        self.session.step_greedy(ids, mask, positions)  # the B ids on the host: the step is done
        return time.perf_counter() - start

    def start_decode(self, batch: int, context: int, steps: int) -> DecodeRun:
        return OrtStaticDecode(self, batch, context)

    def close(self) -> None:
        del self.session
        super().close()


def capacity_shortfall(capacity: int, phase: str, context: int, steps: int) -> str | None:
    """Why a static-cache artifact of `capacity` tokens cannot run `phase` on a cell, or None."""
    need = context + (steps if phase == "decode" else 0)
    if need > capacity:
        return f"needs a cache of {need} tokens, the artifact holds {capacity} (export with --max-length {need} or more)"
    return None


class OrtStaticDecode(DecodeRun):
    """Decode over static caches loaded with `context` random tokens (slots beyond them are
    zero and invisible: each step writes slot `position` and attends to slots <= it).
    greedy=True times step_greedy (B ids to the host, as generation does); False times
    `step` (the logits come to the host), for comparing logits with the dynamic path."""

    def __init__(self, runtime: OrtStaticRuntime, batch: int, context: int, greedy: bool = True):
        self.runtime, self.batch, self.length, self.greedy = runtime, batch, context, greedy
        session = runtime.session
        session.reset(batch)
        padded: dict[int, np.ndarray] = {}  # one capacity-wide copy per shared random array
        caches = {}
        self.kv_cache_bytes = 0  # the context's tokens, as the dynamic rows count them
        for past, bits in random_caches(runtime.artifact, batch, context, runtime._rng).items():
            if id(bits) not in padded:
                full = np.zeros((*bits.shape[:2], runtime.capacity, bits.shape[3]), bits.dtype)
                full[:, :, :context] = bits
                padded[id(bits)] = full
            caches[past] = padded[id(bits)]
            self.kv_cache_bytes += bits.nbytes
        session.load_caches(caches)
        self.outputs: np.ndarray | None = None

    def step(self) -> float:
        session = self.runtime.session
        ids = self.runtime.random_ids(self.batch, 1)
        mask = np.ones((self.batch, self.length + 1), dtype=np.int64)
        positions = np.full((self.batch, 1), self.length, dtype=np.int64)
        run = session.step_greedy if self.greedy else session.step
        start = time.perf_counter()
        self.outputs = run(ids, mask, positions)
        elapsed = time.perf_counter() - start
        self.length += 1
        return elapsed

    def last_logits(self) -> np.ndarray:
        if self.greedy:
            raise UniAttnError("a greedy static decode keeps its logits on the device", "start it with greedy=False")
        return self.outputs

    def last_tokens(self) -> np.ndarray:
        """(B,) int64 next tokens of the last greedy step."""
        return self.outputs


# ---- onnxruntime-genai -----------------------------------------------------------------------


class GenaiRuntime(Runtime):
    """A model folder of onnxruntime-genai (genai_config.json + ONNX file) run by
    onnxruntime-genai's Generator. `source`: a folder (backend onnxruntime-genai: what its model
    builder writes; any genai folder works), or one of our `--target genai` Artifacts (backend
    genai-artifact: static caches, whose manifest gives the exact shapes and the capacity).

    Prefill: one `append_tokens` of B x L random ids on a fresh Generator (the Generator, and
    with it the KV buffer of max_length, or of the capacity for our static folders, is created
    before the clock starts). Decode: genai cannot load a cache, so each cell first prefills
    `context` random tokens (untimed); then every `generate_next_token` runs one model step on
    the previous token and picks the next one (greedy: argmax), the same work as our
    step_greedy (graph argmax + B ids). The first generate_next_token after a prefill only
    picks from the prefill's logits: it is the first warm-up step. Random ids never hold the
    pad token (genai would take a trailing one as padding) and min_length = max_length keeps
    eos from ending a row. cuda_graph: the CUDA EP's `enable_cuda_graph` provider option
    (genai captures decode steps; prefill is not captured).

    With CUDA graphs, onnxruntime-genai (0.18) gives every run, the prompt's included, an
    attention mask max_length wide, and a GroupQueryAttention graph (its builder's) takes the
    total length from that width: a prompt shorter than max_length then counts as a second
    chunk after a cache, which GroupQueryAttention accepts only at batch 1. So prefill runs on a
    Generator whose max_length is the prompt's length (the first-prompt path at every batch),
    and a batch > 1 decode cell of such a model fills its cache by decoding: one prompt token,
    then context - 1 untimed generate_next_token steps (the same cache length as a prefill; the
    timed steps are the same work)."""

    def __init__(self, source: str | Path | Artifact, model: str, device: str, seed: int, cuda_graph: bool = False):
        artifact = source if isinstance(source, Artifact) else None
        self.folder = artifact.path if artifact is not None else Path(source)
        super().__init__(model, GENAI_BACKEND if artifact is None else GENAI_ARTIFACT_BACKEND, device, seed)
        self.memory_method = "device memory in use above the level before the model was loaded" if device == "cuda" else "n/a on the CPU"
        self._used_before = device_used_bytes(device)
        self._og, self.network = load_genai_model(self.folder, device, cuda_graph)
        self.genai_config = genai_config(self.folder)["model"]
        decoder = self.genai_config["decoder"]
        onnx_file = self.folder / decoder["filename"]
        graph = _graph(onnx_file)
        self.weight_bytes = _initializer_bytes(graph)
        self.prompt_batch_limited = cuda_graph and any(node.op_type == "GroupQueryAttention" for node in graph.node)
        self.capacity = None
        if artifact is not None:
            self.shape, self.capacity = artifact_shape(artifact), artifact.capacity
            library = decoder["session_options"].get("custom_ops_library")
            kernels = f"custom-op library {library} in the folder" if library else "function bodies"
            made = f"our --target genai export, {kernels}"
        else:
            itemsize = _cache_itemsize(graph, onnx_file)
            self.shape = ModelShape(
                # genai_config has no MLP width; 4 x hidden only sizes the prefill memory estimate
                hidden_size=decoder["hidden_size"], intermediate_size=4 * decoder["hidden_size"],
                vocab_size=self.genai_config["vocab_size"], num_heads=decoder["num_attention_heads"],
                kv_bytes_per_token=2 * decoder["num_hidden_layers"] * decoder["num_key_value_heads"] * decoder["head_size"] * itemsize,
                itemsize=itemsize, logits_all_positions=False,
            )  # fmt: skip
            made = "its builder's model"
        self.description = (
            f"onnxruntime-genai {self._og.__version__} on {made} ({self.folder}), {'cuda' if device == 'cuda' else 'cpu'}"
            f"{', CUDA graph' if cuda_graph else ''}"
        )
        self._rng = np.random.default_rng(seed)

    def random_ids(self, batch: int, length: int) -> np.ndarray:
        return random_prompt_ids(self._rng, self.genai_config, batch, length)

    def generator(self, batch: int, max_length: int):
        params = self._og.GeneratorParams(self.network)
        params.set_search_options(max_length=max_length, min_length=max_length, batch_size=batch, do_sample=False)
        return self._og.Generator(self.network, params)

    def unsupported(self, phase: str, batch: int, context: int, steps: int) -> str | None:
        return None if self.capacity is None else capacity_shortfall(self.capacity, phase, context, steps)

    def prefill_bytes(self, batch: int, length: int) -> int:
        return self.shape.prefill_bytes(batch, length, materializes_scores=False)

    def prefill(self, batch: int, length: int) -> float:
        generator = self.generator(batch, length)
        ids = self.random_ids(batch, length)
        synchronize(self.device)
        start = time.perf_counter()
        generator.append_tokens(ids)
        synchronize(self.device)
        return time.perf_counter() - start

    def start_decode(self, batch: int, context: int, steps: int) -> DecodeRun:
        return _GenaiDecode(self, batch, context, steps)

    def copy_profile(self, run: DecodeRun) -> dict | None:
        """CUDA: the kernels of one more generate_next_token (onnxruntime-genai's own model step
        and greedy pick, a graph replay with its CUDA graph on), as for the ORT rows; the CPU
        has no profile here (ONNX Runtime's profiler is not reachable through genai's API)."""
        return cuda_copy_profile(run.step) if self.device == "cuda" else None

    def peak_memory(self) -> int | None:
        used = device_used_bytes(self.device)
        return None if used is None else used - self._used_before

    def close(self) -> None:
        del self.network
        super().close()


class _GenaiDecode(DecodeRun):
    def __init__(self, runtime: GenaiRuntime, batch: int, context: int, steps: int):
        self.runtime = runtime
        # room for the prefill, the untimed first pick and every timed step
        self.generator = runtime.generator(batch, context + steps + 2)
        if runtime.prompt_batch_limited and batch > 1:  # see GenaiRuntime: the cache is filled by decoding
            self.generator.append_tokens(runtime.random_ids(batch, 1))
            for _ in range(context):  # the first only picks from the prompt's logits
                self.generator.generate_next_token()
        else:
            self.generator.append_tokens(runtime.random_ids(batch, context))
            self.generator.generate_next_token()  # picks from the prefill's logits: no model step
        self.kv_cache_bytes = batch * context * runtime.shape.kv_bytes_per_token

    def step(self) -> float:
        synchronize(self.runtime.device)
        start = time.perf_counter()
        self.generator.generate_next_token()
        synchronize(self.runtime.device)
        return time.perf_counter() - start

    def last_logits(self) -> np.ndarray:
        return np.asarray(self.generator.get_logits(), dtype=np.float32)


def _graph(onnx_file: Path) -> onnx.GraphProto:
    """The graph of an ONNX file without its external weights (read once per model)."""
    return onnx.load(onnx_file, load_external_data=False).graph


def _initializer_bytes(graph: onnx.GraphProto) -> int:
    return sum(
        int(np.prod(t.dims, dtype=np.int64)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        for t in graph.initializer
    )


def _cache_itemsize(graph: onnx.GraphProto, onnx_file: Path) -> int:
    """Bytes per element of the first past_key_values input of a genai decoder."""
    for value in graph.input:
        if value.name.startswith("past_key_values"):
            return onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).itemsize
    raise UniAttnError(f"{onnx_file} has no past_key_values inputs", "pass a decoder built by onnxruntime-genai's model builder")


# ---- transformers ----------------------------------------------------------------------------


class TransformersRuntime(Runtime):
    """The base architecture of `config` in transformers with random weights (timing does not
    depend on their values), SDPA attention, no padding (attention_mask None: transformers'
    fastest path)."""

    def __init__(self, config, dtype: str, backend: str, device: str, seed: int, compile_backend: str = "inductor"):
        import torch
        from transformers import AutoModelForCausalLM

        super().__init__("baseline", backend, device, seed)
        self._torch = torch
        torch.manual_seed(seed)
        with torch.device(device):
            self.network = AutoModelForCausalLM.from_config(
                config, dtype=getattr(torch, dtype), attn_implementation="sdpa"
            ).eval()
        self.config, self.dtype = config, dtype
        self.static = backend != "transformers-dynamic"
        self.compiled = backend == "transformers-static-compiled"
        # generate() runs prefill eagerly with every cache kind; its number is the dynamic row's.
        self.measures_prefill = backend == "transformers-dynamic"
        self.forward = self.network.forward
        compile_note = ""
        if self.compiled:
            options = {"mode": "reduce-overhead"} if compile_backend == "inductor" else {"backend": compile_backend}
            self.forward = torch.compile(self.network.forward, **options)
            compile_note = f", torch.compile({', '.join(f'{k}={v!r}' for k, v in options.items())})"
        import transformers

        self.description = (
            f"transformers {transformers.__version__}, torch {torch.__version__}, {device}, {dtype}, sdpa, "
            f"{'StaticCache' if self.static else 'DynamicCache'}{compile_note}"
        )
        self.weight_bytes = sum(p.numel() * p.element_size() for p in self.network.parameters())
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.shape = ModelShape(
            hidden_size=config.hidden_size, intermediate_size=config.intermediate_size, vocab_size=config.vocab_size,
            num_heads=config.num_attention_heads,
            kv_bytes_per_token=2 * config.num_hidden_layers * config.num_key_value_heads * self.head_dim * DTYPES[dtype].itemsize,
            itemsize=DTYPES[dtype].itemsize, logits_all_positions=False,
        )  # fmt: skip
        self.memory_method = "torch.cuda.max_memory_allocated (weights included)" if device == "cuda" else "n/a on the CPU"
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def random_ids(self, batch: int, length: int):
        return self._torch.randint(
            0, self.config.vocab_size, (batch, length), generator=self.generator, device=self.device
        )

    def prefill_bytes(self, batch: int, length: int) -> int:
        return self.shape.prefill_bytes(batch, length, materializes_scores=False)

    def prefill(self, batch: int, length: int) -> float:
        ids = self.random_ids(batch, length)
        with self._torch.no_grad():
            synchronize(self.device)
            start = time.perf_counter()
            self.network(input_ids=ids, use_cache=True, logits_to_keep=1)
            synchronize(self.device)
            return time.perf_counter() - start

    def start_decode(self, batch: int, context: int, steps: int) -> DecodeRun:
        return _TorchDecode(self, batch, context, steps)

    def reset_peak_memory(self) -> None:
        if self.device == "cuda":
            self._torch.cuda.reset_peak_memory_stats()

    def peak_memory(self) -> int | None:
        return self._torch.cuda.max_memory_allocated() if self.device == "cuda" else None

    def close(self) -> None:
        del self.network, self.forward
        if self.compiled:
            self._torch._dynamo.reset()
        super().close()


class _TorchDecode(DecodeRun):
    def __init__(self, runtime: TransformersRuntime, batch: int, context: int, steps: int):
        from transformers import DynamicCache, StaticCache

        torch, config = runtime._torch, runtime.config
        self.runtime, self.batch, self.length = runtime, batch, context
        if runtime.static:
            self.cache = StaticCache(config=config, max_cache_len=context + steps)
        else:
            self.cache = DynamicCache(config=config)
        shape = (batch, config.num_key_value_heads, context, runtime.head_dim)
        dtype = getattr(torch, runtime.dtype)
        for layer in range(config.num_hidden_layers):
            keys, values = (
                torch.randn(shape, generator=runtime.generator, device=runtime.device, dtype=torch.float32).to(dtype)
                for _ in range(2)
            )
            self.cache.update(keys, values, layer)
        # Bytes of the context's tokens (a StaticCache also reserves room for the new ones).
        self.kv_cache_bytes = 2 * config.num_hidden_layers * keys.numel() * keys.element_size()
        self.logits = None

    def step(self) -> float:
        torch = self.runtime._torch
        ids = self.runtime.random_ids(self.batch, 1)
        positions = torch.full((self.batch, 1), self.length, device=self.runtime.device, dtype=torch.int64)
        with torch.no_grad():
            synchronize(self.runtime.device)
            start = time.perf_counter()
            out = self.runtime.forward(input_ids=ids, position_ids=positions, use_cache=True,
                                       **{CACHE_KEYWORD: self.cache})  # transformers 5.24 renamed past_key_values
            synchronize(self.runtime.device)
            elapsed = time.perf_counter() - start
        self.logits = out.logits
        self.length += 1
        return elapsed

    def last_logits(self) -> np.ndarray:
        return self.logits.float().cpu().numpy()
