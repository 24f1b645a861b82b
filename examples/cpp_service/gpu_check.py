"""The C++ service on the CUDA execution provider, checked against the Python runtime, in one run.

On a machine with an NVIDIA GPU, onnxruntime-gpu 1.31.1 and the project's checkout:

    export PYTHONPATH=/root/site:$PWD      # onnxruntime-gpu, nlohmann-json (and cmake) staged there
    python3 examples/cpp_service/gpu_check.py --out "$OUT"

Stage the wheels first with `../shared/gpu/stage-wheels.sh onnxruntime-gpu==1.31.1
nlohmann-json==3.12.0` (add `cmake` when the machine has none). Steps, each reported:
  1. build the native libraries (CUDA kernels for this GPU only) and examples/cpp_service
     with CMake, unless UNIATTN_EXPORT_LIB_DIR already holds libuniattn_runtime.so;
  2. export a tiny UniAttn model (6 layers, 2 consumers) in float32 and float16;
  3. per dtype: generate with the Python runtime (OrtSession) on CUDA and on the CPU, and with
     the C++ program on CUDA and on the CPU (greedy with logits, and seeded sampling);
  4. compare: the program's CUDA tokens must equal the Python runtime's CUDA tokens, its
     CUDA logits must match them (max |diff| <= 1e-4 float32 / 2e-2 float16, relative to the
     logit scale), and its CPU tokens the Python CPU tokens.
Prints one summary line per check and writes OUT/gpu_check.json; exit code 1 if any fails.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import site
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
PROMPTS = [[5, 17, 99, 3, 250, 41, 8], [200, 1], [64, 64, 12, 7]]
MAX_NEW = 16
SEED, TEMPERATURE, TOP_K, TOP_P = 7, 0.9, 40, 0.95
LOGITS_TOLERANCE = {"float32": 1e-4, "float16": 2e-2}  # relative to max |logit|


def _cmake() -> str:
    found = shutil.which("cmake") or next(iter(glob.glob("/root/site/bin/cmake")), None)
    if found is None:
        raise RuntimeError("no cmake: stage the `cmake` wheel with stage-wheels.sh or install it")
    return found


def _sh(command: list[str], env=None) -> str:
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def build(out: Path) -> tuple[Path, Path]:
    """(library folder, cpp_service binary)."""
    cmake = _cmake()
    lib_dir = os.environ.get("UNIATTN_EXPORT_LIB_DIR")
    if not lib_dir or not (Path(lib_dir) / "libuniattn_runtime.so").is_file():
        build_dir = out / "build"
        _sh([cmake, "-S", str(REPO), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
             "-DUNIATTN_CUDA_ARCHITECTURES=native", f"-DPython3_EXECUTABLE={sys.executable}"])  # fmt: skip
        _sh([cmake, "--build", str(build_dir), f"-j{os.cpu_count()}"])
        lib_dir = str(build_dir / "lib")
        os.environ["UNIATTN_EXPORT_LIB_DIR"] = lib_dir
    service_dir = out / "cpp_service_build"
    _sh([cmake, "-S", str(REPO / "examples" / "cpp_service"), "-B", str(service_dir), "-DCMAKE_BUILD_TYPE=Release",
         f"-DUNIATTN_RUNTIME_LIBRARY={lib_dir}/libuniattn_runtime.so", f"-DUNIATTN_INCLUDE_DIR={REPO / 'include'}"])  # fmt: skip
    _sh([cmake, "--build", str(service_dir)])
    return Path(lib_dir), service_dir / "uniattn_cpp_service"


def export(out: Path) -> dict[str, Path]:
    from uniattn_export.export import export_model
    from uniattn_export.model import load_model
    from uniattn_export.model.synthetic import random_base_model, released_checkpoint, tiny_config

    checkpoint = out / "checkpoint"
    released_checkpoint(random_base_model(tiny_config(vocab_size=256), seed=0), checkpoint, 2, 2, 6)
    return {
        dtype: export_model(load_model(checkpoint, dtype=dtype), out / f"artifact_{dtype}", source_dir=checkpoint)
        for dtype in ("float32", "float16")
    }


def cuda_library_path() -> str:
    """Folders of the CUDA/cuDNN libraries the CUDA provider loads (torch's nvidia wheels, the toolkit)."""
    roots = [*site.getsitepackages(), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    folders = {str(Path(p).parent) for root in roots if root for p in glob.glob(f"{root}/nvidia/**/lib*.so*", recursive=True)}
    folders |= {d for d in ("/usr/local/cuda/lib64",) if Path(d).is_dir()}
    return os.pathsep.join(sorted(folders) + [os.environ.get("LD_LIBRARY_PATH", "")])


def run_service(binary: Path, artifact: Path, prompts_file: Path, onnxruntime: str, device: str, *flags) -> dict:
    env = dict(os.environ, LD_LIBRARY_PATH=cuda_library_path())
    start = time.perf_counter()
    stdout = _sh([str(binary), str(artifact), str(prompts_file), "--onnxruntime", onnxruntime, "--device", device,
                  "--max-new-tokens", str(MAX_NEW), "--custom-ops", "require", *map(str, flags)], env=env)  # fmt: skip
    result = json.loads(stdout)
    result["wall_s"] = time.perf_counter() - start
    return result


def check_dtype(dtype: str, artifact: Path, binary: Path, prompts_file: Path, onnxruntime: str,
                devices: list[str]) -> list[dict]:
    from uniattn_export.targets.ort import OrtSession
    from uniattn_export.targets.session import Sampling

    sampling = Sampling(temperature=TEMPERATURE, top_k=TOP_K, top_p=TOP_P, seed=SEED)
    sample_flags = ["--temperature", TEMPERATURE, "--top-k", TOP_K, "--top-p", TOP_P, "--seed", SEED]
    checks = []

    def record(name: str, passed: bool, **details):
        checks.append({"check": f"{dtype}: {name}", "passed": bool(passed), **details})
        print(f"{'PASS' if passed else 'FAIL'}  {dtype}: {name}  {json.dumps(details)[:300]}", flush=True)

    # ORT's CPU execution provider lacks float16 kernels for parts of the graph.
    for device in devices if dtype == "float32" else [d for d in devices if d == "cuda"]:
        python = OrtSession(artifact, device=device, custom_ops=True)
        greedy = python.generate(PROMPTS, MAX_NEW, return_logits=True)
        sampled = python.generate(PROMPTS, MAX_NEW, sampling=sampling)
        cpp = run_service(binary, artifact, prompts_file, onnxruntime, device, "--logits")
        cpp_sampled = run_service(binary, artifact, prompts_file, onnxruntime, device, *sample_flags)
        expected_logits = np.stack([s[:, -1, :] for s in greedy.step_logits], axis=1)
        got_logits = np.asarray(cpp["logits"], dtype=np.float32)
        scale = float(np.abs(expected_logits).max())
        diff = float(np.abs(got_logits - expected_logits).max()) if got_logits.shape == expected_logits.shape else None
        record(f"{device} runtime", f"{device.upper()}ExecutionProvider" in cpp["runtime"], runtime=cpp["runtime"],
               python_runtime=python.description)  # fmt: skip
        record(f"{device} greedy tokens equal Python", cpp["tokens"] == greedy.tokens.tolist(),
               cpp=cpp["tokens"], python=greedy.tokens.tolist())  # fmt: skip
        record(f"{device} logits match Python", diff is not None and diff <= LOGITS_TOLERANCE[dtype] * scale,
               max_abs_diff=diff, logit_scale=scale, tolerance=LOGITS_TOLERANCE[dtype] * scale)  # fmt: skip
        record(f"{device} sampled tokens equal Python (seed {SEED})", cpp_sampled["tokens"] == sampled.tokens.tolist(),
               cpp=cpp_sampled["tokens"], python=sampled.tokens.tolist(), cpp_wall_s=cpp_sampled["wall_s"])  # fmt: skip
        if device == "cuda":
            record("CUDA cache stays on the device (Python IOBinding)", python.cache_on_device())
    return checks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out/gpu_check")))
    parser.add_argument("--devices", default="cuda,cpu", help="execution providers to check (cpu alone: a dry run)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    import torch  # loads the CUDA libraries of torch's wheels into this process for ORT's CUDA provider

    import onnxruntime

    if hasattr(onnxruntime, "preload_dlls"):
        onnxruntime.preload_dlls()
    from uniattn_export import native

    summary = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
               "onnxruntime": onnxruntime.__version__, "providers": onnxruntime.get_available_providers(), "checks": []}  # fmt: skip
    try:
        lib_dir, binary = build(args.out)
        summary["libraries"] = str(lib_dir)
        artifacts = export(args.out)
        prompts_file = args.out / "prompts.txt"
        prompts_file.write_text("".join(" ".join(map(str, p)) + "\n" for p in PROMPTS))
        for dtype, artifact in artifacts.items():
            summary["checks"] += check_dtype(
                dtype, artifact, binary, prompts_file, native.onnxruntime_library(), args.devices.split(",")
            )
    except Exception as exc:  # report how far it got instead of a traceback only
        summary["error"] = f"{type(exc).__name__}: {exc}"
        print(f"ERROR {summary['error']}", flush=True)
    passed = "error" not in summary and bool(summary["checks"]) and all(c["passed"] for c in summary["checks"])
    summary["passed"] = passed
    (args.out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{'PASSED' if passed else 'FAILED'}: {sum(c['passed'] for c in summary['checks'])}/{len(summary['checks'])} checks; "
          f"{args.out / 'gpu_check.json'}")  # fmt: skip
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
