"""One-shot GPU check of the ONNX Runtime CUDA path (run by hand on the GPU machine).

    PYTHONPATH=/root/site:. python3 tests/targets/ort/gpu_check.py            # exports here
    python tests/targets/ort/gpu_check.py --prepare .gpu/ort_check           # on a CPU box
    PYTHONPATH=/root/site:. python3 tests/targets/ort/gpu_check.py --artifacts .gpu/ort_check

For tiny UniAttn checkpoints (Llama float32 / float16 / bfloat16, Mistral with a sliding
window, a plain base model, a D=64 model) it runs, on CUDAExecutionProvider with IOBinding:
  * the full validation (uniattn_export.validate) against the PyTorch reference: per-step
    logits within the derived tolerance, greedy tokens over 12 decode steps, left padding;
  * with the custom-op library (required: a missing library fails every case) and without it
    (function bodies on the CUDA EP), and checks both give the same greedy tokens;
  * checks the caches stayed in device memory between steps (no host round trips);
  * times decode steps (informational, not asserted).
It prints one line per case and writes $OUT/gpu_check.json (or --out); exit code 0 only when
every case ran both ways and passed everything above (--device cpu, a dry run of the script,
skips only the device-memory check). Not collected by pytest (no test_ prefix): it needs a GPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "gpu"))
import check_loop  # noqa: E402  (tests/gpu/check_loop.py: the scripts' shared main loop)

CASES = {
    # name: (family, dtype, config overrides, SuperBlocks (G, begin, end) or None for base)
    "llama_fp32": ("llama", "float32", {}, (2, 1, 6)),
    "llama_fp16": ("llama", "float16", {}, (2, 1, 6)),
    # onnxruntime's CPU EP has no bfloat16 kernels; whether the CUDA EP runs the whole graph
    # in bf16 is what this case finds out.
    "llama_bf16": ("llama", "bfloat16", {}, (2, 1, 6)),
    "mistral_window_fp32": ("mistral", "float32", {"sliding_window": 5}, (2, 1, 6)),
    "llama_base_fp16": ("llama", "float16", {}, None),
    # Wider heads (D=64, 8/2 heads) and a longer context: what the CUDA kernels are built for.
    # (about 45 MB written by --prepare, under the 64 MiB a transfer to the GPU machine takes)
    "llama_d64_fp16": ("llama", "float16", dict(hidden_size=512, num_attention_heads=8, num_key_value_heads=2,
                                                intermediate_size=512, vocab_size=512, num_hidden_layers=4),
                       (3, 1, 4)),  # fmt: skip
}
PROMPT_LENGTHS = (40, 9, 3)  # 40 > probs_max_query_len: the long-prefill branch runs too


def prepare(root: Path) -> None:
    """Write checkpoint + artifact folders for every case (needs torch.onnx; CPU is fine)."""
    from uniattn_export.export import export_model
    from uniattn_export.model import load_model
    from uniattn_export.model.synthetic import random_base_model, released_checkpoint, tiny_config

    for name, (family, dtype, overrides, blocks) in CASES.items():
        checkpoint = root / name / "checkpoint"
        config = tiny_config(family, **overrides)
        base = random_base_model(config, seed=11)
        if blocks is None:
            base.save_pretrained(checkpoint)
        else:
            released_checkpoint(base, checkpoint, *blocks)
        export_model(load_model(checkpoint, dtype=dtype), root / name / "artifact", source_dir=checkpoint)
        print(f"prepared {name}", flush=True)


def _decode_ms(session, vocab_size: int, batch: int, context: int, steps: int = 20) -> float:
    """Median wall time of one decode step (batch rows, `context` cached tokens)."""
    from uniattn_export.targets.session import position_ids_for

    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab_size, (batch, context)).astype(np.int64)
    mask = np.ones_like(ids)
    session.reset(batch)
    session.step(ids, mask, position_ids_for(mask))
    times = []
    for t in range(steps):
        mask = np.ones((batch, context + t + 1), np.int64)
        start = time.perf_counter()
        session.step(ids[:, :1], mask, np.full((batch, 1), context + t, np.int64))
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def check_case(name: str, folder: Path, device: str) -> dict:
    from uniattn_export.export import load_artifact
    from uniattn_export.targets.ort import OrtSession
    from uniattn_export.validate import validate_artifact

    artifact = load_artifact(folder / "artifact")
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, artifact.vocab_size, n).tolist() for n in PROMPT_LENGTHS]
    result = {"case": name, "dtype": artifact.dtype, "runs": []}
    tokens = {}
    for custom_ops in (False, True):  # custom_ops=True raises when the library is missing
        session = OrtSession(artifact, device=device, custom_ops=custom_ops)
        if session.uses_custom_ops is not custom_ops:
            raise RuntimeError(f"custom_ops={custom_ops} but the session reports {session.description}")
        if device == "cuda" and session.session.get_providers()[0] != "CUDAExecutionProvider":
            raise RuntimeError(f"the session runs on {session.session.get_providers()}, not CUDAExecutionProvider")
        report = validate_artifact(artifact, session=session, checkpoint=folder / "checkpoint", prompts=prompts)
        run = {
            "runtime": session.description,
            "passed": report["passed"],
            "failures": report["failures"],
            "logits_max_abs": report["logits"]["max_abs"],
            "tolerance": report["tolerance"]["logits_abs"],
            "noise": report["tolerance"]["noise_abs"],
            "token_agreement": report["tokens"]["agreement"],
            "cache_on_device": session.cache_on_device() if device == "cuda" else None,
            "decode_ms_per_token": {
                f"batch{b}_ctx{c}": _decode_ms(session, artifact.vocab_size, b, c) for b, c in ((1, 128), (8, 512))
            },
        }
        tokens[custom_ops] = report["tokens"]["artifact"]
        result["runs"].append(run)
    result["same_tokens_with_and_without_library"] = tokens[False] == tokens[True]
    # On CUDA the caches must have stayed on the device; the CPU dry run has no device memory.
    cache_ok = (lambda r: r["cache_on_device"] is True) if device == "cuda" else (lambda r: True)
    result["passed"] = (
        len(result["runs"]) == 2
        and all(r["passed"] and cache_ok(r) for r in result["runs"])
        and result["same_tokens_with_and_without_library"]
    )
    return result


def _describe_runs(case: dict) -> str:
    return "; ".join(
        f"{r['runtime'].split(', ')[2][:40]}: err {r['logits_max_abs']:.2e} <= {r['tolerance']:.2e} "
        f"agree {r['token_agreement']:.2f} device-cache {r['cache_on_device']} decode {r['decode_ms_per_token']}"
        for r in case["runs"]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepare", type=Path, help="only write checkpoints + artifacts into this folder")
    parser.add_argument("--artifacts", type=Path, help="use folders written by --prepare")
    parser.add_argument("--out", type=Path, default=check_loop.results_dir("gpu_check_out"))
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: a dry run of this script on a machine without a GPU")  # fmt: skip
    args = parser.parse_args()
    if args.prepare:
        prepare(args.prepare)
        return 0
    import onnxruntime as ort

    root = args.artifacts
    if root is None:
        root = args.out / "work"
        prepare(root)
    from uniattn_export import native

    summary = {
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "custom_op_library": native.ort_custom_op_library(),
        "device": args.device,
    }
    summary["cases"] = check_loop.run_cases(
        ((name, lambda name=name: check_case(name, root / name, args.device)) for name in CASES), _describe_runs
    )
    return check_loop.finish(summary, args.out / "gpu_check.json", "whole models on onnxruntime")

if __name__ == "__main__":
    sys.exit(main())
