"""The CUDA kernels (plugins/kernels/cuda) run on the CPU through tests/plugins/cuda_emu.h and
are checked against model/attention.py (dynamic layout, op version 1) and against the GPU
script's static_reference (static layout, op version 2), with the same case runners as the GPU
run (tests/plugins/gpu_kernels.py). This tests their indexing, masking, split/combine logic,
fragment layouts and barriers in CI, where no GPU exists; speed and the hardware itself are
the GPU run's job.

The emulated device has 6 SMs running one block each (cuda_emu.h), so that the split-KV
planner cuts even small shapes' key axes into several splits (and the last block of each row
group combines them).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _load_runner():
    spec = importlib.util.spec_from_file_location("uniattn_gpu_kernels", HERE / "gpu_kernels.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


runner = _load_runner()


def _cuda_include() -> Path | None:
    """The CUDA headers nvcc compiles with (cuda_fp16.h, cuda_bf16.h), as nvcc reports them."""
    if shutil.which("nvcc") is None:
        return None
    dryrun = subprocess.run(["nvcc", "--dryrun", "-x", "cu", "-c", "/dev/null"], capture_output=True, text=True)
    for line in dryrun.stderr.splitlines():
        if "INCLUDES=" in line and "SYSTEM_INCLUDES" not in line:
            include = Path(line.split('"-I', 1)[1].split('"', 1)[0])
            if (include / "cuda_fp16.h").is_file():
                return include
    return None


def _compile(tmp_path_factory, *flags: str) -> Path:
    include = _cuda_include()
    if include is None:
        pytest.skip("the CUDA toolkit headers (next to nvcc) are needed to compile the kernels for the emulator")
    library = tmp_path_factory.mktemp("cuda_emu") / "libuniattn_cuda_emulated.so"
    command = [
        "g++", "-std=c++17", "-O1", "-fPIC", "-shared", "-DUA_CUDA_EMULATE", *flags,
        "-include", str(HERE / "cuda_emu.h"), f"-I{include}", f"-I{REPO / 'plugins/kernels/include'}",
        "-x", "c++", *map(str, sorted((REPO / "plugins/kernels/cuda").glob("*.cu"))),
        "-x", "none", str(REPO / "plugins/kernels/src/common.cpp"), "-o", str(library),
    ]
    build = subprocess.run(command, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-4000:]
    return library


def _build(tmp_path_factory, *flags: str) -> runner.Kernels:
    return runner.Kernels(str(_compile(tmp_path_factory, *flags)), device="cpu")


@pytest.fixture(scope="module")
def kernels(tmp_path_factory) -> runner.Kernels:
    return _build(tmp_path_factory)


def _assert_ok(result: dict) -> None:
    assert "error" not in result, f"{result['case']}: {result['error']}\n{result.get('traceback', '')}"
    failed = [c for c in result["checks"] if not c["ok"]]
    assert not failed, f"{result['case']}: {failed}"


@pytest.mark.parametrize("case", runner.edge_cases(large=False), ids=lambda c: c.name())
def test_edge_case_matches_reference(kernels, case):
    _assert_ok(runner.run_case(kernels, case, "cpu"))


@st.composite
def cases(draw) -> runner.Case:
    kv_heads = draw(st.integers(1, 2))
    # up to 72 query rows reach the second 16-row tile of a flash warp; up to 300 keys give
    # splits of several key tiles
    query_len = draw(st.one_of(st.integers(1, 4), st.integers(1, 72)))
    return runner.Case(
        batch=draw(st.integers(1, 2)),
        query_len=query_len,
        past_len=draw(st.one_of(st.just(0), st.integers(0, 260))),
        num_heads=kv_heads * draw(st.sampled_from((1, 2, 4, 8))),
        kv_num_heads=kv_heads,
        head_dim=draw(st.sampled_from((8, 16, 24, 40, 64, 72, 80, 96, 128))),
        dtype=draw(st.sampled_from(runner.DTYPE_NAMES)),
        is_causal=draw(st.booleans()),
        sliding_window=draw(st.one_of(st.just(0), st.integers(1, 80))),
        padding=draw(st.sampled_from(("none", "left", "holes", "empty_row"))),
        emit_probs=query_len <= 16 and draw(st.booleans()),
        emit_lse=draw(st.booleans()),
        in_place=draw(st.booleans()),
        query_scale=draw(st.sampled_from((1.0, 4.0))),
        rising_keys=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # examples: the profile's (tests/conftest.py)
@given(case=cases())
def test_random_shapes_match_reference(kernels, case):
    _assert_ok(runner.run_case(kernels, case, "cpu"))


@pytest.mark.parametrize("case", runner.static_cases(large=False), ids=lambda c: c.name())
def test_static_layout_matches_reference(kernels, case):
    """Op version 2 (capacity > 0) against runner.static_reference: every output, every cache
    slot bit for bit (untouched slots untouched, past untouched when present is another buffer),
    shared_probs not written past a row's last position, consumers that would fail on reading
    unspecified P entries or cache slots (both NaN)."""
    _assert_ok(runner.run_static_case(kernels, case, "cpu"))


# Tuning knobs the GPU run times as variants, pushed further: 16 keys per lane make each lane
# own the scores of two keys after the dot-product sum, 2 V rows per lane make the consumer
# read P with 4-byte loads, 2 warps per block make more, shorter splits.
ALTERNATE_TUNING = ("-DUA_KEYS_PER_THREAD=16", "-DUA_CONSUMER_KEYS_PER_THREAD=2", "-DUA_DECODE_WARPS=2")


@pytest.fixture(scope="module")
def alternate_kernels(tmp_path_factory) -> runner.Kernels:
    return _build(tmp_path_factory, *ALTERNATE_TUNING)


@pytest.mark.parametrize("case", [c for c in runner.edge_cases(large=False) if c.query_len <= 16], ids=lambda c: c.name())
def test_alternate_tuning_matches_reference(alternate_kernels, case):
    _assert_ok(runner.run_case(alternate_kernels, case, "cpu"))


@pytest.mark.parametrize("case", [c for c in runner.static_cases(large=False) if c.query_len <= 16], ids=lambda c: c.name())
def test_alternate_tuning_static_layout_matches_reference(alternate_kernels, case):
    _assert_ok(runner.run_static_case(alternate_kernels, case, "cpu"))


# The cluster path of the split-KV kernel (sm_90: a row group's blocks combine through each
# other's shared memory, their keys split at run time from the positions). The default build
# (UA_SPLIT_CLUSTERS=1) takes it where all clusters fit one wave of the device, which the
# emulated 6 SMs allow only for one or two row groups; this build takes it wherever the shapes
# do (UA_SPLIT_CLUSTERS=2), in clusters of up to 4 blocks (cuda_emu.h), and the split plan's
# build (UA_SPLIT_CLUSTERS=0) never does: between them every static case runs both ways.
@pytest.fixture(scope="module")
def cluster_kernels(tmp_path_factory) -> runner.Kernels:
    return _build(tmp_path_factory, "-DUA_SPLIT_CLUSTERS=2")


@pytest.fixture(scope="module")
def split_plan_kernels(tmp_path_factory) -> runner.Kernels:
    return _build(tmp_path_factory, "-DUA_SPLIT_CLUSTERS=0")


def _launches(kernels: runner.Kernels, kind: str) -> int:
    """The emulator's count of cluster or dependent launches so far (cuda_emu.h)."""
    count = getattr(kernels.lib, f"ua_emu_{kind}_launches")
    count.restype = ctypes.c_ulonglong
    return count()


def _cluster_launches(kernels: runner.Kernels) -> int:
    return _launches(kernels, "cluster")


CLUSTER_CASES = [c for c in runner.static_cases(large=False) + runner.random_static_cases(12, seed=31)
                 if c.query_len <= 16]


BUILDS = pytest.mark.parametrize("build", ["cluster_kernels", "split_plan_kernels"], ids=["clusters", "split-plan"])


@pytest.mark.parametrize("case", CLUSTER_CASES, ids=lambda c: c.name())
@BUILDS
def test_static_layout_both_ways(request, build, case):
    kernels = request.getfixturevalue(build)
    before = _cluster_launches(kernels)
    _assert_ok(runner.run_static_case(kernels, case, "cpu"))
    launched = _cluster_launches(kernels) > before
    assert launched == (build == "cluster_kernels"), f"cluster path taken: {launched}"


@BUILDS
def test_graph_replay_both_ways(request, build):
    """Six decode steps at new positions: through the cluster path every block's share of the
    keys follows from the positions read on the device, the launch stays the same; through
    the split plan the working splits change with the positions."""
    kernels = request.getfixturevalue(build)
    before = _cluster_launches(kernels)
    result = runner.graph_check(kernels)
    assert "error" not in result, result.get("traceback")
    assert result["ok"], [c for c in result["checks"] if not c["ok"]]
    launches = _cluster_launches(kernels) - before
    assert launches >= 12 if build == "cluster_kernels" else launches == 0  # producer and consumer, six steps


def test_one_wave_policy_keeps_the_split_plan_where_clusters_do_not_fit(kernels):
    """The default build: batch 3 x 2 KV heads = 6 row groups would need 12 blocks of the
    emulated 6 SMs for clusters of 2, so the split plan runs; at batch 1, one head, a cluster."""
    before = _cluster_launches(kernels)
    _assert_ok(runner.run_static_case(kernels, runner.StaticCase((0, 5, 37), 1, 64, 4, 2, 64, "float16"), "cpu"))
    assert _cluster_launches(kernels) == before
    _assert_ok(runner.run_static_case(kernels, runner.StaticCase((300,), 1, 512, 4, 1, 64, "float16"), "cpu"))
    assert _cluster_launches(kernels) > before


def _call(kernels, op: str, case: runner.Case, *, workspace="auto", misalign: str | None = None,
          alias_only_key: bool = False) -> tuple[int, str]:
    """One producer or consumer call on zero-free random tensors; returns (status, message)."""
    dt = case.torch_dtype
    B, L, P, S, Hq, Hkv, D = (case.batch, case.query_len, case.past_len, case.key_len, case.num_heads,
                              case.kv_num_heads, case.head_dim)
    t = {
        "query": torch.randn(B, L, Hq * D).to(dt), "key": torch.randn(B, L, Hkv * D).to(dt),
        "value": torch.randn(B, L, Hkv * D).to(dt), "past_key": torch.randn(B, Hkv, P, D).to(dt),
        "past_value": torch.randn(B, Hkv, P, D).to(dt), "attention_mask": torch.ones(B, S, dtype=torch.int64),
        "output": torch.empty(B, L, Hq * D, dtype=dt), "present_key": torch.empty(B, Hkv, S, D, dtype=dt),
        "present_value": torch.empty(B, Hkv, S, D, dtype=dt), "shared_probs": torch.empty(B, Hq, L, S, dtype=dt),
        "shared_lse": torch.empty(B, Hq, L),
    }
    if misalign:  # the same data one element further on
        shifted = torch.empty(t[misalign].numel() + 1, dtype=dt)
        t[misalign] = shifted[1:].view(t[misalign].shape)
    if alias_only_key:
        t["past_key"] = t["present_key"]
    desc = runner.make_desc(B, L, P, Hq, Hkv, D, dt, D**-0.5, True, 0)
    if op == "producer":
        io = runner.producer_io(**t)
    else:
        io = runner.consumer_io(
            value=t["value"], past_value=t["past_value"], attention_mask=t["attention_mask"], shared_probs=None,
            shared_lse=t["shared_lse"].zero_(), producer_query=t["query"], producer_key=t["present_key"],
            output=t["output"], present_value=t["present_value"])
    ws = kernels.workspace(op, desc, op == "producer") if workspace == "auto" else workspace
    return kernels.status(op, desc, io, ws)


# Shapes where a kernel once read past the end of a tensor: lanes beyond the head dim loaded
# the rows after a full step's keys, past the cache when the step ended at P (on the H100, ORT's
# tiny fp16 model "CUDA failure 700: an illegal memory access" in decode at P = 48). The
# emulated build with AddressSanitizer sees such an access: every tensor is its own exact-size
# malloc (torch's CPU allocator), the workspace included.
OUT_OF_BOUNDS_CASES = [
    runner.Case(3, 1, 48, 4, 2, 16, "float16", padding="left"),  # that model's decode step
    runner.Case(3, 1, 40, 4, 2, 16, "float32", padding="left", emit_probs=False),
    runner.Case(3, 40, 0, 4, 2, 16, "bfloat16", padding="left", emit_probs=False),  # its prefill (flash)
    runner.Case(1, 1, 64, 2, 1, 72, "bfloat16"),  # 16 lanes per key row, 9 of them in the head dim
    runner.Case(2, 1, 32, 2, 1, 136, "float16", emit_lse=False),  # 32 lanes, 17 in the head dim
    runner.Case(1, 3, 29, 4, 1, 8, "float32", is_causal=False),  # D 8: 7 of 8 lanes idle
]
# Static layout: slots past a row's last position hold NaN in these cases, so reading one is a
# wrong result; here any access outside the (B, Hkv, C, D) caches or P rows is an ASan error.
STATIC_OUT_OF_BOUNDS_CASES = [
    runner.StaticCase((0, 63), 1, 64, 4, 2, 16, "float16"),  # the first and the last slot
    runner.StaticCase((60, 3), 4, 64, 4, 1, 72, "bfloat16", in_place=False),
    runner.StaticCase((0, 41), 23, 64, 4, 2, 16, "bfloat16", emit_probs=False, sliding_window=9),  # flash
    runner.StaticCase((200, 17), 1, 203, 2, 1, 8, "float32", sliding_window=40),
]
# Positions outside the contract (>= C, negative, not contiguous): results are unspecified
# (kernels.h) but no access may leave the buffers.
INVALID_POSITIONS = [
    ("beyond-capacity", [[64], [70]], 64),
    ("negative", [[-3], [5]], 64),
    ("prefill-beyond", [[60, 61, 62, 63, 64, 65, 66, 90] * 3, list(range(24))], 64),
    ("not-contiguous", [[9, 2, 30, 1] * 5, [63, 0, 62, 1] * 5], 64),
]


def _call_with_positions(kernels, positions: list[list[int]], capacity: int) -> list[tuple[int, str]]:
    """Producer (emitting P for L <= 16), consumer reusing P, consumer recomputing; float16,
    exact-size tensors; returns each call's (status, message)."""
    pos = torch.tensor(positions, dtype=torch.int64)
    (B, L), (Hq, Hkv, D), dt = pos.shape, (4, 2, 16), torch.float16
    cache = lambda: torch.randn(B, Hkv, capacity, D).to(dt)  # noqa: E731
    q, k, v = torch.randn(B, L, Hq * D).to(dt), torch.randn(B, L, Hkv * D).to(dt), torch.randn(B, L, Hkv * D).to(dt)
    present_key, present_value, out = cache(), cache(), torch.empty(B, L, Hq * D, dtype=dt)
    probs = torch.empty(B, Hq, L, capacity, dtype=dt) if L <= 16 else None
    lse = torch.empty(B, Hq, L)
    desc = runner.make_desc(B, L, 0, Hq, Hkv, D, dt, D**-0.5, True, 8, capacity=capacity)
    results = [kernels.status("producer", desc, runner.producer_io(
        query=q, key=k, value=v, past_key=present_key, past_value=present_value, output=out, present_key=present_key,
        present_value=present_value, shared_probs=probs, shared_lse=lse, position_ids=pos),
        kernels.workspace("producer", desc, probs is not None))]
    for shared in ([probs] if probs is not None else []) + [None]:
        own = cache()
        results.append(kernels.status("consumer", desc, runner.consumer_io(
            value=v, past_value=own, shared_probs=shared, shared_lse=lse.zero_(), producer_query=q,
            producer_key=present_key, output=out, present_value=own, position_ids=pos),
            kernels.workspace("consumer", desc, shared is not None)))
    return results


def _asan_runtime() -> str:
    path = subprocess.run(["g++", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    assert Path(path).is_file(), f"g++ has no AddressSanitizer runtime (got {path!r})"
    return path


@pytest.mark.parametrize("flags", [("-DUA_SPLIT_CLUSTERS=0",), ("-DUA_SPLIT_CLUSTERS=2",)], ids=["split-plan", "clusters"])
def test_no_access_outside_the_tensors(tmp_path_factory, flags):
    """The cases above on an AddressSanitizer build, in a child process that preloads the
    ASan runtime (stack instrumentation off: the emulator's fibers switch stacks); once with
    the split plan everywhere, once with the cluster path wherever the shapes allow it."""
    # not loaded here: an ASan library refuses a process whose runtime was not preloaded
    asan = _compile(tmp_path_factory, *flags, "-fsanitize=address", "-fno-omit-frame-pointer", "--param",
                    "asan-stack=0")
    env = {**os.environ, "LD_PRELOAD": _asan_runtime(), "ASAN_OPTIONS": "detect_leaks=0"}
    child = subprocess.run([sys.executable, __file__, str(asan)], capture_output=True, text=True, env=env)
    report = child.stderr[child.stderr.find("ERROR: AddressSanitizer"):][:3000] or child.stderr[-3000:]
    assert child.returncode == 0, f"{child.stdout[-2000:]}\n{report}"
    expected = len(OUT_OF_BOUNDS_CASES) + len(STATIC_OUT_OF_BOUNDS_CASES) + len(INVALID_POSITIONS)
    assert [line.endswith(": ok") for line in child.stdout.splitlines()] == [True] * expected


def test_missing_workspace_is_reported(kernels):
    case = runner.Case(1, 1, 500, 4, 2, 64, "bfloat16")
    desc = runner.make_desc(1, 1, 500, 4, 2, 64, torch.bfloat16, 0.125, True, 0)
    needed = kernels.lib.ua_producer_cuda_workspace_size(ctypes.byref(desc), 1)
    assert needed > 0
    status, message = _call(kernels, "producer", case, workspace=None)
    assert status == 1
    assert f"workspace is NULL but {needed} bytes are needed" in message


def test_flash_path_needs_no_workspace(kernels):
    desc = runner.make_desc(1, 128, 0, 4, 2, 64, torch.float16, 0.125, True, 0)
    assert kernels.lib.ua_producer_cuda_workspace_size(ctypes.byref(desc), 0) == 0
    assert kernels.lib.ua_consumer_cuda_workspace_size(ctypes.byref(desc), 0) == 0
    assert kernels.lib.ua_producer_cuda_workspace_size(ctypes.byref(desc), 1) > 0  # emitting P: split-KV


@pytest.mark.parametrize("head_dim, status, words", [(12, 2, "head_dim=12 unsupported"), (264, 2, "head_dim=264")])
def test_unsupported_head_dim(kernels, head_dim, status, words):
    got, message = _call(kernels, "producer", runner.Case(1, 1, 3, 2, 1, head_dim, "float16"))
    assert got == status and words in message


@pytest.mark.parametrize("op, tensor", [("producer", "key"), ("producer", "present_value"), ("consumer", "value")])
def test_misaligned_tensor_is_rejected(kernels, op, tensor):
    status, message = _call(kernels, op, runner.Case(1, 2, 5, 4, 2, 64, "bfloat16"), misalign=tensor)
    assert status == 1
    assert f"{tensor} must be 16-byte aligned" in message


def test_half_in_place_append_is_rejected(kernels):
    status, message = _call(kernels, "producer", runner.Case(1, 1, 5, 4, 2, 64, "float32"), alias_only_key=True)
    assert status == 1 and "must both alias" in message


def test_empty_query_copies_the_past(kernels):
    """L = 0: nothing to attend, but present = past still holds."""
    B, P, Hkv, D = 2, 7, 2, 16
    past_k, past_v = torch.randn(B, Hkv, P, D), torch.randn(B, Hkv, P, D)
    present_k, present_v = torch.full_like(past_k, float("nan")), torch.full_like(past_v, float("nan"))
    empty = torch.empty(B, 0, 4 * D)
    desc = runner.make_desc(B, 0, P, 4, Hkv, D, torch.float32, 0.25, True, 0)
    io = runner.producer_io(query=empty, key=empty[..., : Hkv * D], value=empty[..., : Hkv * D], past_key=past_k,
                            past_value=past_v, attention_mask=torch.ones(B, P, dtype=torch.int64), output=empty,
                            present_key=present_k, present_value=present_v, shared_probs=None, shared_lse=None)
    kernels.call("producer", desc, io, None)
    assert torch.equal(present_k, past_k) and torch.equal(present_v, past_v)


def test_gpu_benchmark_code_runs_on_the_emulator(kernels, tmp_path, capsys):
    """The GPU run's benchmark and report code, on tiny shapes (the times mean nothing here):
    a broken benchmark must show up in CI, not in the one GPU run."""
    decode = runner.bench_decode(kernels, batch=1, seq=40, copy_bw=1e9, heads=(4, 2, 16))
    assert not [k for k in decode["ms"] if k.endswith("_error")], decode["ms"]
    assert all(decode["ms"][k] > 0 for k in decode["bytes"])
    subset = runner.bench_decode(kernels, batch=2, seq=24, copy_bw=1e9, only=runner.VARIANT_BENCHES, heads=(4, 2, 16))
    assert sorted(subset["ms"]) == sorted(runner.VARIANT_BENCHES)
    prefill = runner.bench_prefill(kernels, seq=70, heads=(4, 2, 16))
    assert not [k for k in prefill["ms"] if k.endswith("_error")], prefill["ms"]
    static = runner.bench_static_decode(kernels, batch=2, length=40, capacity=64, heads=(4, 2, 16))
    assert not [k for k in static["ms"] if k.endswith("_error")], static["ms"]
    assert all(static["ms"][k] > 0 for k in static["bytes"])
    report = {
        "checks": [runner.run_case(kernels, runner.Case(1, 1, 5, 2, 1, 16, "float16"), "cpu")],
        "copy_TBps": 1e-3, "read_TBps": 2e-3, "bandwidth_TBps": {"memcpy": 1e-3, "elementwise": 5e-4, "read": 2e-3},
        "breakdown": {"B1_S40": {"split_kv_kernel<float, (Weights)0, true, 8>": {"calls": 10, "mean_us": 3.5}},
                      "B32_S8192": {"error": "RuntimeError: out of memory"}},
        "sanitizer": [{"tool": "memcheck", "ok": True}, {"tool": "racecheck", "ok": None, "why": "time budget spent"}],
        "decode": [decode, {"batch": 8, "seq": 99, "error": "RuntimeError: out of memory"}],
        "prefill": [prefill, {"seq": 99, "error": "RuntimeError: out of memory"}],
        "variants": {"keys8": {"checks_passed": 1, "checks": 1, "decode": [subset]},
                     "flash16rows": {"checks_passed": 1, "checks": 1, "prefill": [prefill]},
                     "keys2": {"flags": [], "skipped": "time budget spent"}},
    }
    report["static_decode"] = [static, {"batch": 1, "length": 99, "error": "RuntimeError: out of memory"}]
    report["graph"] = {"steps": 6, "captured": True, "ok": False, "checks": [
        {"output": "replay 3 consumer.output", "ok": False}, {"output": "replay 3 cache v", "ok": True}]}
    report["not_verified"] = runner.not_verified(report, sanitize_requested=True)
    assert report["not_verified"] == [
        "CUDA graph replay: ['replay 3 consumer.output']",
        "decode batch=8 seq=99: RuntimeError: out of memory",
        "static_decode batch=1 length=99: RuntimeError: out of memory",
        "prefill seq=99: RuntimeError: out of memory",
        "compute-sanitizer racecheck: time budget spent",
    ]
    runner.print_summary(report, tmp_path)
    printed = capsys.readouterr().out
    assert "correctness: 1/1 cases passed" in printed
    assert "   8    99 | error: RuntimeError: out of memory" in printed
    assert "variant flash16rows (1/1 checks): prefill 70:" in printed and "variant keys2 (time budget spent)" in printed
    assert "HBM: copy 0.00 TB/s read+write (cudaMemcpy 0.00, elementwise 0.00), read-only 0.00 TB/s" in printed
    assert "kernels B1_S40 (producer + consumer, us): split_kv_kernel<float, (Weights)0, true, 8> 3.5" in printed
    assert "compute-sanitizer memcheck: clean" in printed and "compute-sanitizer racecheck: time budget spent" in printed
    assert printed.count("   2    24 |") == 0 and printed.count("   1    40 |") == 2  # the ms and TB/s tables
    assert printed.count("   2    40 | ") == 1 and "   1    99 | error: RuntimeError: out of memory" in printed
    assert "static decode step captured once, replayed 6 times with new position_ids: FAILED" in printed
    assert printed.rstrip().endswith("NOT VERIFIED (5): CUDA graph replay: ['replay 3 consumer.output']; decode "
                                     "batch=8 seq=99: RuntimeError: out of memory; static_decode batch=1 length=99: "
                                     "RuntimeError: out of memory; prefill seq=99: RuntimeError: out of memory; "
                                     "compute-sanitizer racecheck: time budget spent")


def test_graph_replay_check_runs_on_the_emulator(kernels):
    """graph_check's steps and host mirror, without the capture (no GPU): six decode steps at
    new positions (one crossing a split boundary, one ending at the last slot), in place."""
    result = runner.graph_check(kernels)
    assert "error" not in result, result.get("traceback")
    assert not result["captured"] and result["ok"], [c for c in result["checks"] if not c["ok"]]
    assert len(result["checks"]) == 6 * 7


def test_gated_silu_matches_float64(kernels):
    """The GatedSilu kernel (16-byte and element paths) against silu(gate) * up in float64,
    the GPU run's shapes but the largest."""
    before = _launches(kernels, "dependent")
    results = runner.gated_silu_check(kernels, runner.GATED_SILU_SHAPES[:-1])
    assert len(results) == 3 * 2 * (len(runner.GATED_SILU_SHAPES) - 1)
    assert all(r["ok"] for r in results), [r for r in results if not r["ok"]]
    assert _launches(kernels, "dependent") - before == len(results)  # device.cuh: launch_dependent


def test_gated_silu_refuses_bad_arguments(kernels):
    gate_up = torch.zeros(2, 16)
    status, message = kernels.gated_silu(gate_up, gate_up[:, :8])
    assert (status, message) == (1, "gated_silu: output overlaps gate_up")


def test_linear_gemv_matches_float64(kernels):
    """The Linear GEMV kernel (one row: K below, at and above a warp's 256 elements, not a
    multiple of it; N below and above a block's rows) against input x weight^T in float64."""
    before = _launches(kernels, "dependent")
    results = runner.linear_check(kernels, runner.LINEAR_GEMV_SHAPES, offsets=(0,))
    assert len(results) == 3 * len(runner.LINEAR_GEMV_SHAPES)
    assert all(r["ok"] for r in results), [r for r in results if not r["ok"]]
    assert _launches(kernels, "dependent") - before == len(results)


def test_dependent_chain_reads_what_the_kernel_before_wrote(kernels):
    """gpu_kernels.dependent_chain_check's small chain (Linear, GatedSilu, Linear into buffers
    filled with NaN before each round): here kernels run one after another, so this checks the
    chain's arithmetic and that every kernel of it is a dependent launch; the GPU run checks the
    overlap."""
    before = _launches(kernels, "dependent")
    results = runner.dependent_chain_check(kernels, rounds=2, shapes=runner.DEPENDENT_CHAIN_SHAPES[1:])
    assert [r["case"] for r in results] == ["dependent_chain-float32-K64-I96-stream"]
    assert results[0]["ok"], results
    assert _launches(kernels, "dependent") - before == 2 * 3


@pytest.mark.parametrize("rows,k,offset", [(2, 64, 0), (1, 64, 1), (1, 20, 0)],
                         ids=["two rows", "misaligned", "K not a multiple of 8"])
def test_linear_sends_what_is_not_a_gemv_to_cublas(kernels, rows, k, offset):
    """More than one row, a misaligned tensor or K not a multiple of 8 is cuBLAS's; without a
    handle (the emulated build passes none) the call says so instead of computing anything."""
    (result,) = runner.linear_check(kernels, ((rows, k, 5),), offsets=(offset,))[:1]
    assert result["status"] == 2 and not result["ok"]
    assert result["message"] == f"linear: rows={rows}, in_features={k} is a GEMM for cuBLAS, and the caller passed no cuBLAS handle"


def test_split_rotary_matches_float64(kernels):
    """The SplitRotary kernel (16-byte and element paths, positions clamped to the tables)
    against docs/ops.md's formula in float64, the GPU run's shapes."""
    before = _launches(kernels, "dependent")
    results = runner.split_rotary_check(kernels)
    assert len(results) == 3 * 2 * len(runner.SPLIT_ROTARY_SHAPES)
    assert all(r["ok"] for r in results), [r for r in results if not r["ok"]]
    assert _launches(kernels, "dependent") - before == len(results)


@pytest.mark.parametrize(("output", "onto", "message"), [("query", "qkv", "query overlaps qkv"),
                                                         ("value", "key", "key overlaps value")])
def test_split_rotary_refuses_overlapping_tensors(kernels, output, onto, message):
    qkv, cos, sin, positions = runner.split_rotary_values(2, 2, 1, 8, 4, seed=0)
    outputs = {"query": torch.zeros(2, 16), "key": torch.zeros(2, 8), "value": torch.zeros(2, 8)}
    outputs[output] = {"qkv": qkv, "key": outputs["key"]}[onto][:, :outputs[output].shape[1]]
    assert kernels.split_rotary(qkv, cos, sin, positions, tuple(outputs.values()), 2, 1) == (1, f"split_rotary: {message}")


def test_profiler_kernel_names_are_shortened_not_cut():
    """Run 1 lost every kernel name to the argument list of '(anonymous namespace)'."""
    name = ("void uniattn::cuda::(anonymous namespace)::split_kv_kernel<__nv_bfloat16, (uniattn::cuda::Weights)0, "
            "true, 8>(uniattn::cuda::(anonymous namespace)::SplitKvKernelArgs<__nv_bfloat16>)")
    assert runner.kernel_name(name) == "split_kv_kernel<__nv_bfloat16, (Weights)0, true, 8>"
    assert runner.kernel_name("Memset (Device)") == "Memset (Device)"


if __name__ == "__main__":  # the child of test_no_access_outside_the_tensors: python this.py LIBRARY
    sanitized = runner.Kernels(sys.argv[1], device="cpu")
    all_ok = True
    for case in OUT_OF_BOUNDS_CASES + STATIC_OUT_OF_BOUNDS_CASES:
        run = runner.run_static_case if isinstance(case, runner.StaticCase) else runner.run_case
        result = run(sanitized, case, "cpu")
        failed = result.get("error") or [c for c in result["checks"] if not c["ok"]]
        all_ok &= not failed
        print(f"{case.name()}: {f'failed {failed}' if failed else 'ok'}", flush=True)
    for label, positions, capacity in INVALID_POSITIONS:
        failed = [r for r in _call_with_positions(sanitized, positions, capacity) if r[0] != 0]
        all_ok &= not failed
        print(f"static positions {label}: {f'failed {failed}' if failed else 'ok'}", flush=True)
    sys.exit(0 if all_ok else 1)
