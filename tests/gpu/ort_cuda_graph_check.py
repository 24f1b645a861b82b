"""GPU check of OrtSession's CUDA-graph decode (static-cache artifacts), run on the GPU machine:

    PYTHONPATH=/root/site:$PWD UNIATTN_EXPORT_LIB_DIR=$PWD/build/gpu/lib python3 tests/gpu/ort_cuda_graph_check.py

(tests/gpu/run_all.sh builds the native libraries and runs it with those settings.) It exports
tiny static-cache artifacts (a UniAttn model and its base model, float16 and float32, capacity
64) and, for each, with the custom-op library (required: its absence fails the case) and with
the function bodies, compares a session with CUDA graphs (cuda_graph=None: the placement check
must turn them on) against one without (cuda_graph=False), both on CUDAExecutionProvider:
  * greedy tokens identical over 32 steps at batch 4 (rows of lengths 14, 3, 9, 1) and batch 1,
    in several generations in a row on the same sessions (batch 4, 1, 4 with other prompts,
    then the first batch again, which must repeat its first answer);
  * seeded samples identical (temperature, top-k, top-p);
  * the same generation from another thread (onnxruntime captures again there) identical;
  * logits of the graph session against the PyTorch reference within validation's derived
    tolerance (uniattn_export.validate, teacher-forced, 12 steps);
  * the placement check's verdict (graph_placement, empty), the nodes per execution provider
    as onnxruntime assigned them, and the session's description.
Before the artifacts, the placement check itself on two hand-built graphs: Add -> Mul (all on
CUDA: graphs on, and a captured graph replays with its input updated in place) and
Add -> Unique (Unique has no CUDA kernel: onnxruntime refuses, the check names the node).
Milliseconds per generated token (a generation's wall time / 32, prompt step included) with
and without graphs are recorded, not asserted. Writes
$OUT/ort_cuda_graph_check.json (./ort_cuda_graph_check_out without OUT), one line per case,
and exits 1 if any case failed or could not run.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_loop  # noqa: E402  (tests/gpu/check_loop.py: the scripts' shared main loop)

CAPACITY = 64
STEPS = 32
CASES = {  # name: (dtype, UniAttn SuperBlocks (size, begin, end) or None for the base model)
    "uniattn_fp16": ("float16", (2, 1, 6)),
    "uniattn_fp32": ("float32", (2, 1, 6)),
    "base_fp16": ("float16", None),
    "base_fp32": ("float32", None),
}


def export(root: Path, name: str, dtype: str, blocks) -> tuple[Path, Path]:
    from uniattn_export.export import export_model
    from uniattn_export.model import load_model
    from uniattn_export.model.synthetic import random_base_model, released_checkpoint, tiny_config

    checkpoint = root / name / "checkpoint"
    base = random_base_model(tiny_config("llama"), seed=3)
    if blocks is None:
        base.save_pretrained(checkpoint)
    else:
        released_checkpoint(base, checkpoint, *blocks)
    artifact = export_model(
        load_model(checkpoint, dtype=dtype), root / name / "artifact", source_dir=checkpoint,
        cache="static", max_length=CAPACITY, ort_contrib_ops=True,  # the graph `--target ort` makes
    )  # fmt: skip
    return checkpoint, artifact


def prompts(vocab: int, lengths, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, n).tolist() for n in lengths]


def timed(session, batch, **kwargs):
    start = time.perf_counter()
    run = session.generate(batch, STEPS, **kwargs)
    return run, 1000 * (time.perf_counter() - start) / STEPS


def check_placement() -> dict:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from uniattn_export.targets.ort.session import CUDA_EP, GRAPH_ID, open_with_cuda_graphs

    def model(last) -> bytes:
        """x -> Add -> `last` -> y, float32."""
        graph = helper.make_graph(
            [helper.make_node("Add", ["x", "x"], ["a"], name="double"), last], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        )  # fmt: skip
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10).SerializeToString()

    def providers(graphs):
        return [(CUDA_EP, {"enable_cuda_graph": 1} if graphs else {}), "CPUExecutionProvider"]

    square = helper.make_node("Mul", ["a", "a"], ["y"], name="last")
    session, problems = open_with_cuda_graphs(model(square), ort.SessionOptions(), providers)
    x = ort.OrtValue.ortvalue_from_numpy(np.zeros(4, np.float32), "cuda", 0)
    y = ort.OrtValue.ortvalue_from_shape_and_type([4], np.float32, "cuda", 0)
    binding = session.io_binding()
    binding.bind_ortvalue_input("x", x)
    binding.bind_ortvalue_output("y", y)
    run_options = ort.RunOptions()
    run_options.add_run_config_entry(GRAPH_ID, "1")
    inputs = [np.arange(4, dtype=np.float32) + shift for shift in (0, 1, -2)]
    outputs = []
    for values in inputs:  # the first run captures, the others replay
        x.update_inplace(values)
        binding.synchronize_inputs()
        session.run_with_iobinding(binding, run_options)
        outputs.append(y.numpy().tolist())
    expected = [(4 * values**2).tolist() for values in inputs]  # (x + x) * (x + x)
    unique = helper.make_node("Unique", ["a"], ["y"], name="last")  # no CUDA kernel
    refused_session, refused = open_with_cuda_graphs(model(unique), ort.SessionOptions(), providers)
    result = {
        "all_cuda": {"problems": problems, "outputs": outputs, "expected": expected},
        "unique_on_cpu": {"problems": refused},
    }
    result["passed"] = (
        problems == [] and outputs == expected and any(p.startswith("last (Unique) on CPUExecutionProvider") for p in refused)
        and refused_session.get_providers()[0] == CUDA_EP
    )
    return result


def check_run(checkpoint: Path, artifact_dir: Path, custom_ops: bool) -> dict:
    from uniattn_export.export import load_artifact
    from uniattn_export.targets.ort import OrtSession
    from uniattn_export.targets.ort.session import CUDA_EP, assigned_nodes
    from uniattn_export.targets.session import Sampling
    from uniattn_export.validate import validate_artifact

    artifact = load_artifact(artifact_dir)
    graphs = OrtSession(artifact, device="cuda", custom_ops=custom_ops)
    plain = OrtSession(artifact, device="cuda", custom_ops=custom_ops, cuda_graph=False)
    result = {
        "custom_ops": custom_ops,
        "runtime": graphs.description,
        "runtime_without_graphs": plain.description,
        "cuda_graph": graphs.cuda_graph,
        "graph_placement": graphs.graph_placement,
        "nodes_per_provider": dict(Counter(provider for provider, _, _ in assigned_nodes(graphs.session))),
        "cpu_nodes": [f"{name} ({op})" for provider, name, op in assigned_nodes(graphs.session) if provider != CUDA_EP],
        "checks": {},
        "decode_ms_per_token": {},
    }
    checks = result["checks"]
    checks["graphs on (placement check passed)"] = (
        graphs.cuda_graph is True and graphs.graph_placement == [] and graphs.description.endswith("CUDA graphs on (one per batch size)")
    )
    checks["graphs off when asked"] = plain.cuda_graph is False and plain.description.endswith("CUDA graphs off")
    vocab = artifact.vocab_size
    first, single, other = prompts(vocab, (14, 3, 9, 1), 1), prompts(vocab, (11,), 2), prompts(vocab, (2, 13, 5, 8), 3)
    answers = []
    for label, batch in (("batch 4", first), ("batch 1", single), ("batch 4, other prompts", other), ("batch 4 again", first)):
        on, on_ms = timed(graphs, batch)
        off, off_ms = timed(plain, batch)
        checks[f"greedy tokens, {label}"] = bool(np.array_equal(on.tokens, off.tokens))
        result["decode_ms_per_token"][label] = {"graphs": round(on_ms, 3), "no_graphs": round(off_ms, 3)}
        answers.append(on.tokens)
    checks["the first batch again repeats its first answer"] = bool(np.array_equal(answers[0], answers[3]))

    sampling = Sampling(temperature=0.9, top_k=50, top_p=0.95, seed=11)
    on, off = graphs.generate(other, STEPS, sampling=sampling), plain.generate(other, STEPS, sampling=sampling)
    checks["seeded samples"] = bool(np.array_equal(on.tokens, off.tokens))
    checks["samples differ from greedy (the draw mattered)"] = bool((on.tokens != answers[2]).any())

    from_thread = {}
    worker = threading.Thread(target=lambda: from_thread.update(run=graphs.generate(first, STEPS)))
    worker.start()
    worker.join()
    checks["greedy tokens from another thread"] = "run" in from_thread and bool(np.array_equal(from_thread["run"].tokens, answers[0]))

    report = validate_artifact(artifact, session=graphs, checkpoint=checkpoint, prompts=first)
    result["validation"] = {
        "passed": report["passed"],
        "failures": report["failures"],
        "logits_max_abs": report["logits"]["max_abs"],
        "tolerance": report["tolerance"]["logits_abs"],
    }
    checks["logits vs the PyTorch reference (validation)"] = bool(report["passed"])
    result["passed"] = all(checks.values())
    return result


def check_case(work: Path, name: str, dtype: str, blocks) -> dict:
    """Export one case, then run it with the custom-op library and with the function bodies."""
    checkpoint, artifact = export(work, name, dtype, blocks)
    runs = [check_run(checkpoint, artifact, custom_ops) for custom_ops in (True, False)]  # True raises when the library is missing
    return {"case": name, "dtype": dtype, "runs": runs, "passed": all(run["passed"] for run in runs)}


def _describe_runs(case: dict) -> str:
    lines = []
    for run in case["runs"]:
        failed = [check for check, ok in run["checks"].items() if not ok]
        lines.append(f"{'library' if run['custom_ops'] else 'bodies'} {'ok' if run['passed'] else 'FAILED'}: "
                     f"{run['runtime']}; decode ms/token {run['decode_ms_per_token']}"
                     + (f"; FAILED: {failed}; placement {run['graph_placement'][:5]}" if failed else ""))  # fmt: skip
    return " | ".join(lines)


def main() -> int:
    import onnxruntime as ort

    from uniattn_export import native

    summary = {
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "custom_op_library": native.ort_custom_op_library(),
        "kernel_abi": native.kernel_abi_version(),
        "capacity": CAPACITY,
        "steps": STEPS,
    }
    started = time.perf_counter()
    summary["cases"] = check_loop.run_cases(
        [("placement", lambda: {"case": "placement on hand-built graphs", **check_placement()})],
        lambda placement: str({k: v for k, v in placement.items() if k != "traceback"}),
    )
    with tempfile.TemporaryDirectory() as work:
        summary["cases"] += check_loop.run_cases(
            ((name, lambda name=name, spec=spec: check_case(Path(work), name, *spec)) for name, spec in CASES.items()),
            _describe_runs,
        )
    summary["seconds"] = round(time.perf_counter() - started, 1)
    return check_loop.finish(summary, check_loop.results_dir("ort_cuda_graph_check_out") / "ort_cuda_graph_check.json",
                             "OrtSession CUDA-graph decode")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
