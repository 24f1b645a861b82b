"""One decode step on the CPU: our static artifacts (custom-op library, caches bound in place as
OrtSession binds them) against onnxruntime-genai's own model of the base (its graph run by plain
ONNX Runtime, past and present bound to one (B, Hkv, max_length, D) buffer per cache, as its
config's past_present_share_buffer makes onnxruntime-genai run it). 2 intra-op threads each.

  timing:  blocks of 8 steps of each model in turn (the first 2 of a block untimed: the previous
           session's pool threads stop spinning), ROUNDS rounds; medians of the steps and the
           median over rounds of each block's median relative to genai's
  --profile: ONNX Runtime's profiler over 40 steps of each, kernel time per op type

Usage: python3 cpu_decode.py CTX ROUNDS GENAI_DIR NAME=ARTIFACT_DIR ... [--profile]
(the README: CTX 128 and 512, ROUNDS 60, UniAttn and base SmolLM2-135M exports of --target ort)."""
import collections
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort

from uniattn_export import native

GENAI_CAPACITY = 8192  # the builder's max_length for SmolLM2 (genai_config.json, search.max_length)


def session(path: str, library: bool, profile: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.enable_profiling = profile
    if library:
        options.register_custom_ops_library(native.ort_custom_op_library())
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def stepper(folder: str, ctx: int, genai: bool, profile: bool, rng):
    """(run one step, session): inputs of a row at position ctx - 1, caches bound in place."""
    s = session(f"{folder}/model.onnx", not genai, profile)
    feeds = {"input_ids": np.array([[17]], np.int64), "attention_mask": np.ones((1, ctx), np.int64)}
    if not genai:
        feeds["position_ids"] = np.array([[ctx - 1]], np.int64)
    if genai:  # its cache dims are symbolic in the graph
        decoder = json.loads(open(f"{folder}/genai_config.json").read())["model"]["decoder"]
    for i in s.get_inputs():
        if i.name.startswith("past"):
            shape = ([1, decoder["num_key_value_heads"], GENAI_CAPACITY, decoder["head_size"]] if genai
                     else [1, *i.shape[1:]])  # fmt: skip
            feeds[i.name] = (rng.standard_normal(shape) * 0.5).astype(np.float32)
    binding, keep = s.io_binding(), {}
    for name, value in feeds.items():
        keep[name] = ort.OrtValue.ortvalue_from_numpy(value)
        binding.bind_ortvalue_input(name, keep[name])
    for o in s.get_outputs():
        past = o.name.replace("present.", "past_key_values.")
        binding.bind_ortvalue_output(o.name, keep[past]) if past in keep else binding.bind_output(o.name)
    return (lambda: s.run_with_iobinding(binding)), s


def main(argv: list[str]) -> None:
    profile = "--profile" in argv
    argv = [a for a in argv if a != "--profile"]
    ctx, rounds, genai_dir = int(argv[0]), int(argv[1]), argv[2]
    models = dict(a.split("=", 1) for a in argv[3:]) | {"genai": genai_dir}
    rng = np.random.default_rng(0)
    runs = {name: stepper(folder, ctx, name == "genai", profile, rng) for name, folder in models.items()}
    if profile:
        for name, (run, s) in runs.items():
            for _ in range(45):
                run()
            events = json.load(open(path := s.end_profiling()))
            os.remove(path)
            by_op, nodes = collections.defaultdict(float), collections.Counter()
            for e in events:
                if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                    by_op[e["args"]["op_name"]] += e["dur"] / 45
                    nodes[e["args"]["op_name"]] += 1
            print(f"{name} ctx {ctx}: " + ", ".join(f"{op} {us / 1e3:.3f} ms ({nodes[op] // 45})"
                                                    for op, us in sorted(by_op.items(), key=lambda x: -x[1]) if us > 20))
        return
    steps = {name: [] for name in runs}
    blocks = {name: [] for name in runs}
    for r in range(rounds + 1):
        for name, (run, _) in runs.items():
            block = []
            for step in range(8):
                start = time.perf_counter()
                run()
                if step >= 2:
                    block.append((time.perf_counter() - start) * 1e3)
            if r:  # round 0 warms up
                steps[name] += block
                blocks[name].append(np.median(block))
    genai = np.array(blocks["genai"])
    print(f"ctx {ctx}, {rounds} rounds: " + ", ".join(f"{n} {np.median(v):.3f} ms" for n, v in steps.items()) + "; "
          + ", ".join(f"{n}/genai {np.median(np.array(blocks[n]) / genai):.3f}" for n in models if n != "genai"))


if __name__ == "__main__":
    main(sys.argv[1:])
