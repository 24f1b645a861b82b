"""Generation over a TensorRT engine (the trt/ folder of an artifact), with the interface of
every other runtime (targets/session.py).

Before anything is deserialized the engine manifest is checked against this process
(TensorRT flavour and version, GPU compute capability, plugin library and code, engine
hash), so a mismatch is one sentence. Plugin engines get the UniAttn plugin creators
registered first. Buffers are torch CUDA tensors: the KV cache stays on the device between
steps (each step's present.* outputs are the next step's past_key_values.* inputs); only the
token ids, mask and positions go up and the logits come down.

Not verified anywhere in this project: no TensorRT that runs on the H100 (sm_90) is
obtainable here, and TensorRT-RTX refuses compute capability 9.0, so this class has never
run an engine. What it runs is checked elsewhere: the kernels through onnxruntime on the
H100, and the plugins' own launch path by tests/targets/trt/gpu_enqueue_check.py.
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
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.manifest = manifest
        self.profile = ProfileSpec.from_dict(manifest["profiles"][0]["dims"])
        self.inputs, self.outputs = [], []
        for index in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(index)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs).append(name)
        self.cache_names = [(c.past, c.present) for c in io_names.cache_pairs(self.inputs)]
        self._cache: dict[str, torch.Tensor] = {}
        plugins = "UniAttn plugins" if uses_plugins else "function bodies (no plugins)"
        self.description = f"{self.flavour.describe()}, {plugins}, {manifest['dtype']}"

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
