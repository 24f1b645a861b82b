"""onnxruntime-genai on the GPU (run by hand on the GPU machine, or by tests/gpu/run_all.sh).

    PYTHONPATH=/root/site:$PWD UNIATTN_EXPORT_LIB_DIR=build/gpu/lib python3 tests/gpu/genai_check.py

Needs onnxruntime-gpu 1.31.1 and onnxruntime-genai-cuda 0.18 in /root/site
(`../shared/gpu/stage-wheels.sh onnxruntime-gpu==1.31.1 onnxruntime-genai-cuda==0.18.0`) and the
native libraries built with CUDA (run_all.sh builds them into build/gpu/lib). For tiny seeded
checkpoints (a base model, UniAttn with an odd and an even number of consumers) it exports
--target genai folders (static and dynamic caches, with the custom-op library copied in and
without it) and checks, on the CUDA provider:
  * greedy tokens from onnxruntime-genai equal OrtSession's (CUDA EP, same folder) and the
    PyTorch reference's (float32 on the CPU) for 4 right-padded prompts of different lengths;
    static folders run with onnxruntime-genai's CUDA graphs on (enable_cuda_graph) and off;
  * float16 static folders: onnxruntime-genai with CUDA graphs equals OrtSession on CUDA;
  * decode timing through targets/genai/runner.time_genai_decode (informational), and with
    --preset llama-3.2-1b also for that shape (base and UniAttn, float16, static, batch 1/8,
    prompt 128): minutes of export, so off by default.
Writes $OUT/genai_check.json (./genai_check.json without OUT); exit 0 only when every case ran
and matched. Not collected by pytest (no test_ prefix): it needs a GPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_loop  # noqa: E402  (tests/gpu/check_loop.py: the scripts' shared main loop)

PROMPTS = [[5, 9, 14, 3, 77, 41, 8, 100, 12], [33, 7, 90], [61, 4, 18, 27, 52, 9, 11, 70, 3, 44, 6, 15, 99, 23], [88]]
STEPS = 20
CAPACITY = 64
PAD, EOS = 0, 2
# name: (layers, base model?)  (SuperBlocks of 2 from layer 1: 4 layers -> 1 consumer, 6 -> 2)
MODELS = {"base": (4, True), "uniattn_odd": (4, False), "uniattn_even": (6, False)}
DEVICE = "cuda"  # --device cpu: a dry run of this script (no CUDA graphs)


def _checkpoint(root: Path, name: str, config) -> Path:
    from uniattn_export.model.synthetic import random_base_model, released_checkpoint

    folder = root / "checkpoints" / name
    if not folder.exists():
        model = random_base_model(config, seed=3)
        if MODELS.get(name, (0, False))[1]:
            model.save_pretrained(folder)
        else:
            released_checkpoint(model, folder, 2, 1, config.num_hidden_layers)
    return folder


def _export(root: Path, checkpoint: Path, cache: str, library: bool, dtype: str, capacity: int = CAPACITY) -> Path:
    from uniattn_export.export import export_model
    from uniattn_export.model import load_model
    from uniattn_export.targets.genai import genai_library_for, write_genai_config

    out = root / "genai" / f"{checkpoint.name}_{cache}{capacity}_{dtype}_{'library' if library else 'bodies'}"
    if out.is_dir():  # exported for an earlier case
        return out
    model = load_model(checkpoint, dtype=dtype)
    lib = genai_library_for(cache, library)
    size = capacity if cache == "static" else None
    export_model(
        model, out, source_dir=checkpoint, cache=cache, max_length=size, layout="genai", ort_contrib_ops=True,
        extra_files=lambda folder: write_genai_config(folder, model, cache=cache, capacity=size, library=lib),
    )  # fmt: skip
    return out


def token_case(root: Path, checkpoint: Path, reference, dtype: str, cache: str, library: bool, cuda_graph: bool) -> dict:
    from uniattn_export.targets.genai.runner import genai_generate
    from uniattn_export.targets.ort import OrtSession

    case = dict(model=checkpoint.name, dtype=dtype, cache=cache, library=library, cuda_graph=cuda_graph)
    folder = _export(root, checkpoint, cache, library, dtype)
    genai = genai_generate(folder, PROMPTS, STEPS, provider=DEVICE, cuda_graph=cuda_graph)
    session = OrtSession(folder, device=DEVICE, custom_ops=library)
    ours = session.generate(PROMPTS, STEPS, eos_token_id=EOS, pad_token_id=PAD).sequences(EOS)
    case.update(genai=genai, ours=ours, runtime=session.description)
    # float16: our runtime is the reference (same graph and kernels);
    # near-ties against float32 PyTorch are not a failure of genai.
    case["passed"] = genai == ours and (dtype == "float16" or ours == reference)
    if dtype == "float32":
        case["reference"] = reference
    return case


def token_cases(root: Path):
    """(name, check) of every token case, for check_loop.run_cases."""
    from uniattn_export.model import load_model
    from uniattn_export.model.synthetic import tiny_config
    from uniattn_export.validate.reference import TorchSession

    for name, (layers, _) in MODELS.items():
        checkpoint = _checkpoint(root, name, tiny_config("llama", num_hidden_layers=layers, pad_token_id=PAD, eos_token_id=EOS))
        reference = TorchSession(load_model(checkpoint)).generate(PROMPTS, STEPS, eos_token_id=EOS, pad_token_id=PAD).sequences(EOS)
        for dtype in ("float32", "float16"):
            for cache in ("static", "dynamic"):
                for library in (True, False):
                    if dtype == "float16" and (cache == "dynamic" or not library):
                        continue
                    for cuda_graph in ((True, False) if cache == "static" and DEVICE == "cuda" else (False,)):
                        label = f"{name} {dtype} {cache} {'library' if library else 'bodies'} cuda_graph={cuda_graph}"
                        yield label, lambda args=(checkpoint, reference, dtype, cache, library, cuda_graph): token_case(root, *args)


def time_decode(root: Path, preset: str | None) -> list[dict]:
    from uniattn_export.model.synthetic import preset_config, tiny_config
    from uniattn_export.targets.genai.runner import time_genai_decode

    timings = []
    plans = [("uniattn_odd", tiny_config("llama", num_hidden_layers=4, pad_token_id=PAD, eos_token_id=EOS), (1, 8), 32, 128)]
    if preset:
        config = preset_config(preset)
        for name in (f"{preset}_base", f"{preset}_uniattn"):
            MODELS.setdefault(name, (config.num_hidden_layers, name.endswith("_base")))
            plans.append((name, config, (1, 8), 128, 512))
    for name, config, batches, prompt_length, capacity in plans:
        checkpoint = _checkpoint(root, name, config)
        for library in (True, False):
            folder = _export(root, checkpoint, "static", library, "float16", capacity)
            for batch in batches:
                for cuda_graph in ((True, False) if DEVICE == "cuda" else (False,)):
                    entry = dict(model=name, library=library, batch=batch, prompt_length=prompt_length)
                    try:
                        entry.update(time_genai_decode(folder, batch=batch, prompt_length=prompt_length, new_tokens=64,
                                                       provider=DEVICE, cuda_graph=cuda_graph))  # fmt: skip
                    except Exception as exc:
                        entry.update(cuda_graph=cuda_graph, error=f"{type(exc).__name__}: {exc}")
                    print("TIME", entry, flush=True)
                    timings.append(entry)
    return timings


def _describe_tokens(case: dict) -> str:
    same = f"genai == ours: {case['genai'] == case['ours']}"
    return same + (f", ours == PyTorch reference: {case['ours'] == case['reference']}" if "reference" in case else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default=None, help="also time this shape preset (e.g. llama-3.2-1b)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: a dry run of the script")
    parser.add_argument("--work", type=Path, default=None, help="folder for checkpoints and exports (default: a temporary one)")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    import onnxruntime
    import onnxruntime_genai as og

    report = {
        "onnxruntime": onnxruntime.__version__, "providers": onnxruntime.get_available_providers(),
        "onnxruntime_genai": og.__version__, "genai_cuda": og.is_cuda_available(),
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = args.work or Path(tmp)
        report["cases"] = check_loop.run_cases(token_cases(root), _describe_tokens)
        report["timings"] = time_decode(root, args.preset)
    timing_errors = [t for t in report["timings"] if "error" in t]
    passed = bool(report["cases"]) and all(c["passed"] for c in report["cases"]) and not timing_errors
    return check_loop.finish(report, check_loop.results_dir() / "genai_check.json",
                             f"onnxruntime-genai tokens ({len(timing_errors)} timing errors)", passed)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
