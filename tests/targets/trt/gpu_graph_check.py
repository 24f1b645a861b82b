"""One-shot GPU check of static-cache decoding in CUDA graphs, the TensorRT session's way,
without TensorRT (run on a CUDA machine; the integrator runs it through tests/gpu/run_all.sh).

No TensorRT can run an engine on the H100, so this drives the parts of TensorRTSession's
static path that do not need one, with the plugins' own launch path (`plugins.launch`,
op contract version 2: the real ua_producer_cuda / ua_consumer_cuda kernels) standing in for
`execute_async_v3`:

  * graphs.StaticBatch: caches allocated once per batch size, one set updated in place
    (aliased, as the plugin engines do) or two alternating sets (as the function-body
    engines do), the decode inputs bound once and written in place, the mask zero-padded;
  * graphs.DecodeGraphs: the first step of each (batch size, parity) runs eagerly and is
    captured, every later step only writes new queries/keys/values and positions into the
    bound buffers and replays the graph.

One "decode step" is a producer layer (5 outputs, the shared state) followed by a consumer
layer reusing its probabilities, both in place on caches of capacity C, rows of different
lengths. Every step's outputs and the whole caches are compared with model/attention.py's
static reference run on copies; two batch sizes are interleaved (their graphs coexist).
It also counts eager runs (must be one warm-up plus one capture per key) and replays, and
times replay against eager launches for one larger shape (reported, not asserted).

    UNIATTN_EXPORT_LIB_DIR=build/gpu/lib PYTHONPATH=. python3 tests/targets/trt/gpu_graph_check.py

Writes $OUT/trt_graph_check.json (./ when OUT is unset); exit code 0 only when every case
passed. Needs torch with CUDA and the kernel library built with its CUDA kernels.
"""

from __future__ import annotations

import json
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from uniattn_export.export.schema import CONSUMER_OP, PRODUCER_OP
from uniattn_export.model import attention as reference
from uniattn_export.targets.trt.graphs import DecodeGraphs, StaticBatch
from uniattn_export.targets.trt.plugins import AttentionFields, launch, workspace_bound

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "gpu"))
import check_loop  # noqa: E402  (tests/gpu/check_loop.py: the scripts' shared main loop)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TOLERANCE = {"float32": 2e-5, "float16": 4e-3, "bfloat16": 3e-2}  # relative to max(1, |expected|)
PROBS_MAX = 16
# Cache names of the two layers (the session keys its buffers by past names too).
PAST_KEY, PAST_VALUE, CONSUMER_PAST_VALUE = "past_key_values.0.key", "past_key_values.0.value", "past_key_values.1.value"


@dataclass(frozen=True)
class Case:
    name: str
    batches: tuple[int, ...]  # interleaved, one StaticBatch and graph per size
    capacity: int
    heads: int
    kv_heads: int
    head_dim: int
    dtype: str
    aliased: bool
    steps: int
    window: int = 0


CASES = [
    Case("aliased-fp16", (3, 1), 256, 8, 2, 64, "float16", True, 24),
    Case("aliased-bf16-window", (2,), 512, 32, 8, 64, "bfloat16", True, 20, window=64),
    Case("aliased-fp32-d128", (2,), 128, 8, 2, 128, "float32", True, 12),
    Case("alternating-fp16", (3, 1), 256, 8, 2, 64, "float16", False, 16),
    Case("aliased-long-B1", (1,), 8192, 32, 8, 64, "bfloat16", True, 8),
]


class Stepper:
    """One batch size of one case: the StaticBatch, the per-step inputs bound once (the new
    q/k/v of both layers), the outputs bound once, the workspaces, and the reference state."""

    def __init__(self, case: Case, batch: int, graphs: DecodeGraphs, seed: int):
        self.case, self.graphs = case, graphs
        t = DTYPES[case.dtype]
        shape = (batch, case.kv_heads, case.capacity, case.head_dim)
        specs = {name: (shape, t) for name in (PAST_KEY, PAST_VALUE, CONSUMER_PAST_VALUE)}
        self.state = StaticBatch(batch, case.capacity, specs, case.aliased)
        self.generator = torch.Generator(device="cuda").manual_seed(seed)
        width, kv_width = case.heads * case.head_dim, case.kv_heads * case.head_dim
        new = lambda *s: torch.zeros(*s, dtype=t, device="cuda")  # noqa: E731
        self.query, self.key, self.value = new(batch, 1, width), new(batch, 1, kv_width), new(batch, 1, kv_width)
        self.consumer_value = new(batch, 1, kv_width)
        self.output, self.consumer_output = new(batch, 1, width), new(batch, 1, width)
        self.probs = new(batch, case.heads, 1, case.capacity)
        self.lse = torch.zeros(batch, case.heads, 1, device="cuda")
        attrs = dict(num_heads=case.heads, kv_num_heads=case.kv_heads, scale=case.head_dim**-0.5,
                     sliding_window=case.window)  # fmt: skip
        self.attrs = attrs
        self.producer = AttentionFields(**attrs, probs_max_query_len=PROBS_MAX, num_outputs=5)
        self.consumer = AttentionFields(**attrs, num_outputs=2)
        # The sizes TensorRT would reserve for a decode profile of this batch (static: capacity fixed).
        bound = lambda op, f: workspace_bound(op, f, case.dtype, (batch, batch), (1, 1), (0, 0), case.head_dim,  # noqa: E731
                                              case.capacity)  # fmt: skip
        self.workspaces = [torch.empty(max(bound(PRODUCER_OP, self.producer), 1), dtype=torch.uint8, device="cuda"),
                           torch.empty(max(bound(CONSUMER_OP, self.consumer), 1), dtype=torch.uint8, device="cuda")]  # fmt: skip
        self.eager_runs = 0
        self.lengths = self.mask = None
        self.reference = {}

    def randomize(self, tensor):
        tensor.copy_(torch.randn(tensor.shape, generator=self.generator, device="cuda").to(tensor.dtype))

    def fill_history(self, first: int):
        """Random caches up to each row's length (as a prefill would leave them), written into
        the current past set; the reference starts from copies. Rows of different lengths
        (right padding): row b holds first + 7 b tokens."""
        self.lengths = np.array([first + 7 * b for b in range(self.state.batch)], dtype=np.int64)
        for tensor in self.state.past.values():
            self.randomize(tensor)
            for row, length in enumerate(self.lengths):
                tensor[row, :, length:] = 0  # slots beyond a row's length: never written yet
        self.reference = {name: tensor.clone() for name, tensor in self.state.past.items()}
        # The prompt's mask, right-padded; generate appends a column of ones per step.
        self.mask = (np.arange(int(self.lengths.max()))[None, :] < self.lengths[:, None]).astype(np.int64)
        self.state.write_mask(self.mask)

    def enqueue(self, stream_handle: int) -> None:
        """What execute_async_v3 would launch for this step: the producer, then the consumer."""
        self.eager_runs += 1
        s, past, present = self.state, self.state.past, self.state.present
        p_in = [self.query, self.key, self.value, past[PAST_KEY], past[PAST_VALUE], s.position_ids]
        p_out = [self.output, present[PAST_KEY], present[PAST_VALUE], self.probs, self.lse]
        launch(PRODUCER_OP, self.producer, [list(t.shape) for t in p_in], [list(t.shape) for t in p_out],
               self.case.dtype, [t.data_ptr() for t in p_in], [t.data_ptr() for t in p_out],
               self.workspaces[0].data_ptr(), stream_handle, version=2)  # fmt: skip
        c_in = [self.consumer_value, past[CONSUMER_PAST_VALUE], s.position_ids, self.probs, self.lse, self.query,
                present[PAST_KEY]]  # fmt: skip
        c_out = [self.consumer_output, present[CONSUMER_PAST_VALUE]]
        launch(CONSUMER_OP, self.consumer, [list(t.shape) for t in c_in], [list(t.shape) for t in c_out],
               self.case.dtype, [t.data_ptr() for t in c_in], [t.data_ptr() for t in c_out],
               self.workspaces[1].data_ptr(), stream_handle, version=2)  # fmt: skip

    def step(self, stream) -> dict:
        """One decode step: new inputs written in place, run (eager + capture, or replay),
        compared with the reference. Returns {check: worst error or None}."""
        s = self.state
        with torch.cuda.stream(stream):
            for tensor in (self.query, self.key, self.value, self.consumer_value):
                self.randomize(tensor)
            positions = self.lengths[:, None].copy()
            mask = self.mask = np.concatenate([self.mask, np.ones((s.batch, 1), np.int64)], axis=1)
            s.write_decode_inputs(np.zeros_like(positions), mask, positions)
            for tensor in (self.output, self.consumer_output, self.probs, self.lse):
                tensor.fill_(float("nan"))  # poisoned: the step must write them
            replayed = self.graphs.run(s.key, self.enqueue)
        stream.synchronize()
        position_ids = torch.from_numpy(positions).cuda()
        want = reference.producer_attention_static(
            self.query, self.key, self.value, self.reference[PAST_KEY], self.reference[PAST_VALUE], position_ids,
            **self.attrs, probs_max_query_len=PROBS_MAX,
        )  # fmt: skip
        want_consumer = reference.consumer_attention_static(
            self.consumer_value, self.reference[CONSUMER_PAST_VALUE], position_ids, want[3], want[4], self.query,
            want[1], **self.attrs,
        )  # fmt: skip
        tol = TOLERANCE[self.case.dtype]
        # Entries beyond a row's position are unspecified (docs/ops.md, version 2); hidden
        # slots up to it hold 0.
        written = torch.arange(self.case.capacity, device="cuda") <= position_ids[:, None, :, None]
        probs = torch.where(written, self.probs.float(), 0.0)
        checks = {
            "producer.output": check_loop.relative_error_within(self.output, want[0], tol),
            "producer.shared_probs": check_loop.relative_error_within(probs, want[3], tol),
            "producer.shared_lse": check_loop.relative_error_within(self.lse, want[4], 2e-5),
            "consumer.output": check_loop.relative_error_within(self.consumer_output, want_consumer[0], tol),
            "present_key": check_loop.relative_error_within(s.present[PAST_KEY], want[1], 0.0),
            "present_value": check_loop.relative_error_within(s.present[PAST_VALUE], want[2], 0.0),
            "consumer.present_value": check_loop.relative_error_within(s.present[CONSUMER_PAST_VALUE], want_consumer[1], 0.0),
            "mask_on_device": 0.0 if np.array_equal(s.attention_mask[:, : mask.shape[1]].cpu().numpy(), mask)
            and not s.attention_mask[:, mask.shape[1] :].any() else None,
        }  # fmt: skip
        self.reference = {PAST_KEY: want[1], PAST_VALUE: want[2], CONSUMER_PAST_VALUE: want_consumer[1]}
        s.finish_step()
        self.lengths += 1
        return {"replayed": replayed, "checks": checks}


def run_case(case: Case) -> dict:
    """Two generations per batch size over the same buffers (as two generate() calls of one
    session): the second starts from reset() and must replay the graphs of the first."""
    stream = torch.cuda.Stream()
    graphs = DecodeGraphs(stream)
    steppers = [Stepper(case, batch, graphs, zlib.crc32(f"{case.name}/{batch}".encode())) for batch in case.batches]
    worst: dict[str, float | None] = {}
    failed: list[str] = []
    replays = 0
    for generation, (first, steps) in enumerate(((5, case.steps), (3, 4))):
        for stepper in steppers:
            with torch.cuda.stream(stream):
                stepper.state.reset()
            stream.synchronize()
            clean = stepper.state.parity == 0 and not any(t.any() for c in stepper.state.caches for t in c.values())
            if not clean:
                failed.append(f"B{stepper.state.batch}.reset@generation{generation}")
            stepper.fill_history(first)
        for step in range(steps):
            for stepper in steppers:  # interleaved: each batch size's graph replays between the others'
                result = stepper.step(stream)
                replays += result["replayed"]
                for name, error in result["checks"].items():
                    label = f"B{stepper.state.batch}.{name}"
                    if error is None:  # off (or NaN): the worst error of this check is unbounded
                        failed.append(f"{label}@generation{generation}.step{step}")
                        worst[label] = None
                    elif worst.get(label, 0.0) is not None:
                        worst[label] = max(error, worst.get(label, 0.0))
    keys = len(case.batches) * (1 if case.aliased else 2)
    expected_replays = len(case.batches) * (case.steps + 4) - keys
    # Python runs the step twice per key (warm-up, capture) and never again: a replay runs no Python.
    eager = {f"B{s.state.batch}": s.eager_runs for s in steppers}
    structure_ok = (graphs.captures == keys and graphs.replays == replays == expected_replays
                    and all(count == 2 * keys // len(case.batches) for count in eager.values()))  # fmt: skip
    if not structure_ok:
        failed.append("capture/replay counts")
    return {"case": case.name, "passed": not failed, "failed": failed, "worst_errors": worst,
            "captures": graphs.captures, "replays": graphs.replays, "eager_runs": eager}  # fmt: skip


def time_replay(batch=8, capacity=4096, heads=32, kv_heads=8, head_dim=64, dtype="bfloat16", repeats=200) -> dict:
    """ms per decode step of the two layers: eager launches through Python vs graph replay."""
    case = Case("timing", (batch,), capacity, heads, kv_heads, head_dim, dtype, True, 0)
    stream = torch.cuda.Stream()
    graphs = DecodeGraphs(stream)
    stepper = Stepper(case, batch, graphs, 1)
    stepper.fill_history(capacity // 2)
    positions = stepper.lengths[:, None]
    with torch.cuda.stream(stream):
        stepper.state.write_decode_inputs(np.zeros_like(positions), stepper.mask, positions)
    graphs.run(stepper.state.key, stepper.enqueue)  # warm-up + capture

    def measure(run) -> float:
        stream.synchronize()
        started = time.perf_counter()
        with torch.cuda.stream(stream):
            for _ in range(repeats):
                run()
        stream.synchronize()
        return (time.perf_counter() - started) * 1000 / repeats

    eager_ms = measure(lambda: stepper.enqueue(stream.cuda_stream))
    replay_ms = measure(lambda: graphs.graphs[stepper.state.key].replay())
    return {"shape": {"batch": batch, "capacity": capacity, "heads": heads, "kv_heads": kv_heads,
                      "head_dim": head_dim, "dtype": dtype, "positions": stepper.lengths.tolist()},
            "eager_ms_per_step": round(eager_ms, 4), "replay_ms_per_step": round(replay_ms, 4)}  # fmt: skip


def main() -> int:
    header = check_loop.announce_cuda_device()
    if header is None:
        return 2
    reports = check_loop.run_cases(
        ((case.name, lambda case=case: run_case(case)) for case in CASES),
        lambda report: f"captures={report['captures']} replays={report['replays']} failed={report['failed'][:4]}",
    )
    timing = None
    try:
        timing = time_replay()
        print(f"timing: {json.dumps(timing)}")
    except Exception as exc:  # timing is reported, not asserted
        timing = {"exception": f"{type(exc).__name__}: {exc}"}
    return check_loop.finish(
        {"header": header, "cases": reports, "timing": timing}, check_loop.results_dir() / "trt_graph_check.json",
        f"static decode in CUDA graphs (TensorRT session logic, plugins' launch path) on {header['device']}",
    )


if __name__ == "__main__":
    sys.exit(main())
