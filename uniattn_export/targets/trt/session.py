"""Generation over a TensorRT engine (the trt/ folder of an artifact), with the interface of
every other runtime (targets/session.py).

Before anything is deserialized the engine manifest is checked against this process
(TensorRT flavour and version, GPU compute capability, plugin library and code, engine
hash), so a mismatch is one sentence. Plugin engines get the UniAttn plugin creators
registered first. Buffers are torch CUDA tensors, all work runs on one stream; only the
token ids, mask and positions go up and the logits come down.

Dynamic caches (op contract v1): each step's present.* outputs are the next step's
past_key_values.* inputs, and every step sets shapes and addresses anew.

Static caches (v2, manifest "cache" static): prompts are right-padded (`padding`), and per
batch size the caches are allocated once (graphs.StaticBatch). Prefill runs on profile 0
("prefill") with the prompt's shapes. Decode runs on profile 1 ("decode") in an execution
context of its own per batch size (and cache parity), whose every tensor is bound once: its
first step runs `execute_async_v3` eagerly (TensorRT's warm-up before a capture) and is
captured in a CUDA graph, and every later step writes the token, position and new mask
columns into the bound buffers and replays the graph (graphs.DecodeGraphs). Plugin engines
update the caches in place (present.* aliased to past_key_values.*, one buffer bound to
both); engines of the function bodies write present.* into a second cache set, and the two
sets alternate as past and present.

Not verified anywhere in this project: no TensorRT that runs on the H100 (sm_90) is
obtainable here, and TensorRT-RTX refuses compute capability 9.0, so this class has never
run an engine. What it runs is checked elsewhere: the kernels through onnxruntime on the
H100, the plugins' own launch path by tests/targets/trt/gpu_enqueue_check.py, and the
static-cache buffers, in-place input writes and CUDA-graph capture/replay of graphs.py,
driving the plugins' launch path instead of TensorRT, by tests/targets/trt/gpu_graph_check.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...dtypes import trt_type_names
from ...errors import UniAttnError
from ...export import io_names
from ...native import kernels_library
from ..session import GenerationSession
from . import compat
from .graphs import DecodeGraphs, StaticBatch
from .manifest import check_loadable, read_manifest
from .plugins import register_plugins
from .profiles import ProfileSpec


class TensorRTSession(GenerationSession):
    def __init__(self, engine_dir: str | Path, *, flavour: str | None = None):
        import torch

        self.engine_dir = Path(engine_dir)
        manifest = read_manifest(self.engine_dir)
        self.flavour = compat.load(flavour or manifest["tensorrt"]["flavour"])
        uses_plugins = manifest["plugins"]["mode"] == "uniattn"
        engine_path = check_loadable(
            self.engine_dir, manifest, self.flavour.name, self.flavour.version,
            compat.current_compute_capability, kernels_library() if uses_plugins else None,
        )  # fmt: skip
        if uses_plugins:
            register_plugins(self.flavour)
        trt = self.flavour.module
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise UniAttnError(
                f"{self.flavour.describe()} could not deserialize {engine_path} (see its log above)",
                "rebuild the engine on this machine",
            )
        self.stream = torch.cuda.Stream()
        self.manifest = manifest
        self.inputs, self.outputs = [], []
        for index in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(index)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs).append(name)
        self.cache_names = [(c.past, c.present) for c in io_names.cache_pairs(self.inputs)]
        self._cache: dict[str, torch.Tensor] = {}
        plugins = "UniAttn plugins" if uses_plugins else "function bodies (no plugins)"
        cache = manifest.get("cache", {"mode": "dynamic"})  # engines built before static caches
        self.static = cache["mode"] == "static"
        if self.static:
            self.padding, self.capacity = "right", int(cache["capacity"])
            self.aliased = bool(manifest["aliased_caches"])
            prefill = manifest["profiles"][0]["dims"]  # batch and sequence ranges; no past
            self.profile = ProfileSpec.from_dict({**prefill, "past": [0, 0, 0]})
            self._batches: dict[int, StaticBatch] = {}
            self._batch: StaticBatch | None = None
            self._prefill_context = None
            self._decode_contexts: dict = {}
            self._decode_outputs: dict = {}
            self.graphs = DecodeGraphs(self.stream)
            in_place = "in place" if self.aliased else "in two alternating buffers"
            cache_text = f"static caches of {self.capacity} tokens {in_place}, decode in CUDA graphs"
        else:
            self.profile = ProfileSpec.from_dict(manifest["profiles"][0]["dims"])
            self.context = self.engine.create_execution_context()
            cache_text = "dynamic caches"
        self.description = f"{self.flavour.describe()}, {plugins}, {cache_text}, {manifest['dtype']}"

    def _torch_dtype(self, name: str):
        import torch

        trt = self._trt
        # trt.nptype has no bfloat16, hence the names (torch spells them the same).
        return getattr(torch, trt_type_names(trt)[self.engine.get_tensor_dtype(name)])

    def layers(self) -> list[str]:
        """The engine's layers as its inspector reports them (JSON, one per layer)."""
        inspector = self.engine.create_engine_inspector()
        fmt = self._trt.LayerInformationFormat.JSON
        return [inspector.get_layer_information(i, fmt) for i in range(self.engine.num_layers)]

    def reset(self, batch_size: int) -> None:
        import torch

        self._check_range("batch", batch_size, self.profile.batch)
        if self.static:
            self._reset_static(batch_size)
            return
        self._cache = {}
        for past, _ in self.cache_names:
            _, heads, _, head_dim = self.engine.get_tensor_shape(past)
            self._cache[past] = torch.empty((batch_size, heads, 0, head_dim), dtype=self._torch_dtype(past),
                                            device="cuda")  # fmt: skip

    def _check_range(self, what: str, size: int, allowed) -> None:
        if not allowed.min <= size <= allowed.max:
            raise UniAttnError(
                f"{what} {size} is outside the engine's profile ({allowed.min}..{allowed.max})",
                f"rebuild with a wider --trt-{'seq' if what == 'sequence' else what} range",
            )

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
        import torch

        if self.static:
            return self._step_static(input_ids, attention_mask, position_ids)
        if not self._cache:
            raise UniAttnError("step() called before reset()", "call reset(batch_size) first")
        self._check_range("sequence", input_ids.shape[1], self.profile.sequence)
        self._check_range("past", next(iter(self._cache.values())).shape[2], self.profile.past)
        # Uploads, allocations, the engine and the next step's reads all on one stream: no
        # cross-stream hazards for torch's caching allocator.
        with torch.cuda.stream(self.stream):
            feeds = {
                name: torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64)).cuda()
                for name, array in (("input_ids", input_ids), ("attention_mask", attention_mask),
                                    ("position_ids", position_ids))
            }  # fmt: skip
            feeds.update(self._cache)
            placeholders = []  # an empty tensor still needs a valid address
            for name in self.inputs:
                tensor = feeds[name]
                self.context.set_input_shape(name, tuple(tensor.shape))
                if tensor.numel() == 0:
                    tensor = torch.empty(1, dtype=tensor.dtype, device="cuda")
                    placeholders.append(tensor)
                self.context.set_tensor_address(name, tensor.data_ptr())
            results = {}
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                results[name] = torch.empty(shape, dtype=self._torch_dtype(name), device="cuda")
                self.context.set_tensor_address(name, results[name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise UniAttnError(f"{self.flavour.describe()} failed to run the engine (see its log)",
                                   "rebuild the engine; check the GPU with nvidia-smi")  # fmt: skip
            logits = results["logits"].float().cpu()  # synchronizes the stream
        self._cache = {past: results[present] for past, present in self.cache_names}
        return logits.numpy()

    # --- static caches (module doc) -------------------------------------------------------

    def _reset_static(self, batch_size: int) -> None:
        """Caches of this batch size are allocated on its first use and kept (its decode
        graphs hold their addresses); a new generation zeroes them."""
        batch = self._batches.get(batch_size)
        if batch is None:
            specs = {}
            for past, _ in self.cache_names:
                _, heads, capacity, head_dim = self.engine.get_tensor_shape(past)
                specs[past] = ((batch_size, heads, capacity, head_dim), self._torch_dtype(past))
            batch = StaticBatch(batch_size, self.capacity, specs, self.aliased)
            self._batches[batch_size] = batch
        import torch

        with torch.cuda.stream(self.stream):
            batch.reset()
        self._batch = batch

    def release(self, batch_size: int) -> None:
        """Free the caches, decode contexts and graphs of one batch size."""
        self.graphs.drop(batch_size)
        self._batches.pop(batch_size, None)
        for key in [k for k in self._decode_contexts if k[0] == batch_size]:
            del self._decode_contexts[key], self._decode_outputs[key]
        if self._batch is not None and self._batch.batch == batch_size:
            self._batch = None

    def _bind(self, context, shapes: dict, addresses: dict) -> dict:
        """Set every input's shape and address, allocate the outputs TensorRT does not alias
        to an input, and bind them; returns the outputs (name -> tensor)."""
        import torch

        for name in self.inputs:
            context.set_input_shape(name, tuple(shapes[name]))
            context.set_tensor_address(name, addresses[name].data_ptr())
        outputs = {}
        for name in self.outputs:
            tensor = addresses.get(name)
            if tensor is None:
                shape = tuple(context.get_tensor_shape(name))
                tensor = torch.empty(shape, dtype=self._torch_dtype(name), device="cuda")
            outputs[name] = tensor
            context.set_tensor_address(name, tensor.data_ptr())
        return outputs

    def _cache_addresses(self, batch: StaticBatch) -> dict:
        addresses = {past: batch.past[past] for past, _ in self.cache_names}
        addresses.update({present: batch.present[past] for past, present in self.cache_names})
        return addresses

    def _enqueue(self, context, stream_handle: int) -> None:
        if not context.execute_async_v3(stream_handle):
            raise UniAttnError(f"{self.flavour.describe()} failed to run the engine (see its log)",
                               "rebuild the engine; check the GPU with nvidia-smi")  # fmt: skip

    def _step_static(self, input_ids, attention_mask, position_ids) -> np.ndarray:
        import torch

        batch = self._batch
        if batch is None:
            raise UniAttnError("step() called before reset()", "call reset(batch_size) first")
        last = int(np.max(position_ids))
        if last >= self.capacity:
            raise UniAttnError(
                f"position {last} is beyond the engine's cache capacity ({self.capacity} tokens)",
                "re-export with a larger --max-length and rebuild, or generate fewer tokens",
            )
        with torch.cuda.stream(self.stream):
            if input_ids.shape[1] == 1 and batch.mask_columns > 0:
                logits = self._decode(batch, input_ids, attention_mask, position_ids)
            else:
                logits = self._prefill(batch, input_ids, attention_mask, position_ids)
            host = logits.float().cpu()  # synchronizes the stream
        batch.finish_step()
        return host.numpy()

    def _prefill(self, batch: StaticBatch, input_ids, attention_mask, position_ids):
        """Profile 0, the prompt's own shapes, bound for this call."""
        import torch

        self._check_range("sequence", input_ids.shape[1], self.profile.sequence)
        if self._prefill_context is None:
            self._prefill_context = self.engine.create_execution_context()
            self._prefill_context.set_optimization_profile_async(0, self.stream.cuda_stream)
        feeds = {
            name: torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64)).cuda()
            for name, array in zip(io_names.TOKEN_INPUTS, (input_ids, attention_mask, position_ids))
        }
        shapes = {name: tensor.shape for name, tensor in feeds.items()}
        shapes.update({past: batch.past[past].shape for past, _ in self.cache_names})
        outputs = self._bind(self._prefill_context, shapes, {**feeds, **self._cache_addresses(batch)})
        self._enqueue(self._prefill_context, self.stream.cuda_stream)
        batch.write_mask(attention_mask)  # the decode mask starts from the prompt's
        return outputs[io_names.LOGITS]

    def _decode(self, batch: StaticBatch, input_ids, attention_mask, position_ids):
        """Profile 1, every tensor bound once per (batch size, parity); replayed graphs."""
        key = batch.key
        context = self._decode_contexts.get(key)
        if context is None:
            context = self.engine.create_execution_context()
            context.set_optimization_profile_async(1, self.stream.cuda_stream)
            feeds = dict(zip(io_names.TOKEN_INPUTS, (batch.input_ids, batch.attention_mask, batch.position_ids)))
            shapes = {name: tensor.shape for name, tensor in feeds.items()}
            shapes.update({past: batch.past[past].shape for past, _ in self.cache_names})
            self._decode_outputs[key] = self._bind(context, shapes, {**feeds, **self._cache_addresses(batch)})
            self._decode_contexts[key] = context
        batch.write_decode_inputs(input_ids, attention_mask, position_ids)
        self.graphs.run(key, lambda stream_handle: self._enqueue(context, stream_handle))
        return self._decode_outputs[key][io_names.LOGITS]
