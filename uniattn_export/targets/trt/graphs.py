"""Device state of static-cache decoding and its CUDA graphs, independent of TensorRT.

A static-cache engine (op contract v2) has one set of shapes per batch size in decode, so one
decode step can be captured in a CUDA graph and replayed for every later step: everything it
reads or writes stays at one device address, and what changes between steps (the new token,
its position, the mask) is written into those buffers in place before the replay. This
module holds that logic with the engine's work as a callback `enqueue(key, stream_handle)`
(TensorRT: `execute_async_v3`), so tests/targets/trt/gpu_graph_check.py runs exactly this
code on a GPU with the plugins' own launch path in place of TensorRT, which cannot run there.

  StaticBatch    the buffers of one batch size: caches (one set when the engine updates them
                 in place, two used alternately when it writes present.* to other memory),
                 the decode inputs bound once, the mask zero-padded to the capacity
  DecodeGraphs   per key (batch size, cache parity): the first call runs the step eagerly
                 (the warm-up TensorRT needs before a capture, and that step's real work),
                 then captures it; later calls replay the capture
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

Enqueue = Callable[[int], None]  # launches one step on the CUDA stream it is given


@dataclass
class StaticBatch:
    """The device buffers of one batch size (see module doc). `cache_specs` maps each past
    cache name to (shape, torch dtype); `aliased` says whether the engine writes present.*
    into the past buffers (plugins, version 2) or into other memory (function bodies)."""

    batch: int
    capacity: int
    cache_specs: dict
    aliased: bool
    device: str = "cuda"
    caches: list[dict] = field(init=False)
    input_ids: object = field(init=False)
    position_ids: object = field(init=False)
    attention_mask: object = field(init=False)
    parity: int = field(init=False, default=0)
    mask_columns: int = field(init=False, default=0)  # columns of the step mask on the device

    def __post_init__(self):
        import torch

        sets = 1 if self.aliased else 2
        self.caches = [
            {name: torch.zeros(shape, dtype=dtype, device=self.device) for name, (shape, dtype) in self.cache_specs.items()}
            for _ in range(sets)
        ]  # fmt: skip
        self.input_ids = torch.zeros((self.batch, 1), dtype=torch.int64, device=self.device)
        self.position_ids = torch.zeros((self.batch, 1), dtype=torch.int64, device=self.device)
        self.attention_mask = torch.zeros((self.batch, self.capacity), dtype=torch.int64, device=self.device)

    def reset(self) -> None:
        """A new generation: zeroed caches (the function bodies multiply hidden slots by
        probability 0, and 0 * NaN of stale memory would be NaN), mask and parity."""
        for caches in self.caches:
            for tensor in caches.values():
                tensor.zero_()
        self.attention_mask.zero_()
        self.parity, self.mask_columns = 0, 0

    @property
    def past(self) -> dict:
        """The buffers this step reads as past_key_values.*."""
        return self.caches[self.parity]

    @property
    def present(self) -> dict:
        """The buffers this step writes as present.* (keyed by the past name): the same ones
        when aliased, else the other set."""
        return self.caches[self.parity if self.aliased else 1 - self.parity]

    @property
    def key(self) -> tuple[int, int]:
        """What a decode graph is captured for: the batch size and which cache set is past."""
        return (self.batch, self.parity)

    def finish_step(self) -> None:
        """After a step: what it wrote is the next step's past."""
        if not self.aliased:
            self.parity = 1 - self.parity

    def write_decode_inputs(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray) -> None:
        """Write one decode step's inputs into the bound buffers, on the current stream: the
        token and position (B, 1), and the mask columns not on the device yet (the mask is
        the step's (B, S) zero-padded to (B, C))."""
        import torch

        self.input_ids.copy_(torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64)))
        self.position_ids.copy_(torch.from_numpy(np.ascontiguousarray(position_ids, dtype=np.int64)))
        self.write_mask(attention_mask)

    def write_mask(self, attention_mask: np.ndarray) -> None:
        import torch

        width = attention_mask.shape[1]
        if width < self.mask_columns:  # a shorter mask: a new sequence over this buffer
            self.attention_mask.zero_()
            self.mask_columns = 0
        tail = np.ascontiguousarray(attention_mask[:, self.mask_columns :], dtype=np.int64)
        self.attention_mask[:, self.mask_columns : width].copy_(torch.from_numpy(tail))
        self.mask_columns = width


class DecodeGraphs:
    """One CUDA graph per key, captured on first use on `stream` (a torch.cuda.Stream).

    `run(key, enqueue)` runs one step: the first time for a key it calls `enqueue` eagerly
    (TensorRT finishes deferred setup in the first enqueue after binding, which must not
    happen inside a capture; it is also this step's real work), synchronizes, and captures a
    second call into a graph without executing it; later calls replay that graph. The
    enqueued work must read and write only memory whose addresses do not change between
    steps, never synchronize or allocate, and launch only on the stream it is given.
    """

    def __init__(self, stream):
        self.stream = stream
        self.graphs: dict = {}
        self.captures = 0
        self.replays = 0

    def run(self, key, enqueue: Enqueue) -> bool:
        """One step for `key`; True when it was a replay."""
        import torch

        graph = self.graphs.get(key)
        if graph is not None:
            with torch.cuda.stream(self.stream):
                graph.replay()
            self.replays += 1
            return True
        with torch.cuda.stream(self.stream):
            enqueue(self.stream.cuda_stream)
        self.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream):
            enqueue(self.stream.cuda_stream)
        self.graphs[key] = graph
        self.captures += 1
        return False

    def drop(self, batch: int) -> None:
        """Forget the graphs of one batch size (its buffers are about to be freed)."""
        for key in [k for k in self.graphs if k[0] == batch]:
            del self.graphs[key]
