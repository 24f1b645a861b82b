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
     logit scale), and its CPU tokens the Python CPU tokens;
  5. the execution provider, from what the program's process held while running (ORT's CUDA
     provider library and the CUDA driver mapped, an NVIDIA device file open; none on the
     CPU), and with the GPU hidden (CUDA_VISIBLE_DEVICES="") --device cuda must fail;
  6. static-cache artifacts (capacity 64, float32 and float16; the graph --target ort writes:
     skip norms, GatedSilu, SplitRotary): the program serves three
     requests on one runtime (batches of 3, 1 and 3 rows of different lengths, 32 new tokens)
     with CUDA graphs on and off; ONNX Runtime must accept the graph capture (no warning,
     "cuda_graphs": true), and greedy tokens, seeded samples and logits must be the same with
     graphs on, with graphs off and from the Python runtime on CUDA (float32 on the CPU too).
Prints one summary line per check and writes OUT/gpu_check.json; exit code 1 if any check
fails or did not run.
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
STATIC_CAPACITY, STATIC_NEW = 64, 32
# Requests served one after the other by one runtime: batch sizes 3, 1, 3 (the second batch
# of 3 replays the graph captured for the first, over re-zeroed caches).
STATIC_REQUESTS = [PROMPTS, [PROMPTS[1]], PROMPTS]
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


def export(out: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """(dynamic-cache artifacts, static-cache artifacts) per dtype."""
    from uniattn_export.export import export_model, load_artifact
    from uniattn_export.model import load_model
    from uniattn_export.model.synthetic import random_base_model, released_checkpoint, tiny_config

    checkpoint = out / "checkpoint"
    released_checkpoint(random_base_model(tiny_config(vocab_size=256), seed=0), checkpoint, 2, 2, 6)
    dtypes = ("float32", "float16")
    dynamic = {
        dtype: export_model(load_model(checkpoint, dtype=dtype), out / f"artifact_{dtype}", source_dir=checkpoint)
        for dtype in dtypes
    }
    # The static artifacts are the graph `--target ort` writes (what a service is given): ONNX
    # Runtime's skip norms and our GatedSilu and SplitRotary beside the attention ops.
    static = {
        dtype: export_model(load_model(checkpoint, dtype=dtype), out / f"artifact_{dtype}_static", source_dir=checkpoint,
                            cache="static", max_length=STATIC_CAPACITY, ort_contrib_ops=True)
        for dtype in dtypes
    }  # fmt: skip
    for artifact in static.values():
        fused = load_artifact(artifact).manifest["graph"]["fused"]
        if not (fused["skip_norms"] and fused["gated_silu"] and fused["split_rotary"]):
            raise RuntimeError(f"{artifact} is not the ort target's graph: fused {fused}")
    return dynamic, static


def cuda_library_path() -> str:
    """Folders of the CUDA/cuDNN libraries the CUDA provider loads (torch's nvidia wheels, the toolkit)."""
    roots = [*site.getsitepackages(), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    folders = {str(Path(p).parent) for root in roots if root for p in glob.glob(f"{root}/nvidia/**/lib*.so*", recursive=True)}
    folders |= {d for d in ("/usr/local/cuda/lib64",) if Path(d).is_dir()}
    return os.pathsep.join(sorted(folders) + [os.environ.get("LD_LIBRARY_PATH", "")])


def _gpu_use(pid: int) -> set[str]:
    """What process `pid` holds of the GPU now, from /proc (works inside containers, where
    nvidia-smi may not see the process): ORT's CUDA provider library loaded, the CUDA driver
    loaded, an NVIDIA device file open. The open device file is the decisive one: on the H100
    machine a CUDA process had /dev/nvidia* open, while a process that only imported torch
    had libcuda.so mapped but no device open."""
    found = set()
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
        found |= {name for name in ("libonnxruntime_providers_cuda.so", "libcuda.so") if name in maps}
        if any(os.readlink(fd).startswith("/dev/nvidia") for fd in glob.glob(f"/proc/{pid}/fd/*")):
            found.add("/dev/nvidia*")
    except OSError:  # the process ended between two looks
        pass
    return found


GPU_EVIDENCE = {"libonnxruntime_providers_cuda.so", "libcuda.so", "/dev/nvidia*"}


def run_service(binary: Path, artifact: Path, prompts_file: Path, onnxruntime: str, device: str, *flags,
                env_overrides: dict | None = None, max_new: int = MAX_NEW) -> dict:
    """The program's JSON, plus `gpu_use`: what it was seen holding of the GPU while it ran
    (sampled every 20 ms), the evidence that --device cuda really ran on the CUDA provider
    rather than the description string saying so."""
    env = dict(os.environ, LD_LIBRARY_PATH=cuda_library_path(), **(env_overrides or {}))
    command = [str(binary), str(artifact), str(prompts_file), "--onnxruntime", onnxruntime, "--device", device,
               "--max-new-tokens", str(max_new), "--custom-ops", "require", *map(str, flags)]  # fmt: skip
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    gpu_use: set[str] = set()
    while True:  # communicate() drains both pipes while it waits (the logits overflow a pipe)
        gpu_use |= _gpu_use(process.pid)
        try:
            stdout, stderr = process.communicate(timeout=0.02)
            break
        except subprocess.TimeoutExpired:  # retrying loses no output
            pass
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{stdout[-3000:]}\n{stderr[-3000:]}")
    result = json.loads(stdout)
    result["stderr"] = stderr
    result["wall_s"] = time.perf_counter() - start
    result["gpu_use"] = sorted(gpu_use)
    return result


def hidden_gpu_refusal(binary: Path, artifact: Path, prompts_file: Path, onnxruntime: str) -> tuple[bool, str]:
    """With every GPU hidden, --device cuda must fail (non-zero exit, no output, its one error
    line) instead of falling back to the CPU: (refused as expected, what it said)."""
    env = dict(os.environ, LD_LIBRARY_PATH=cuda_library_path(), CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([str(binary), str(artifact), str(prompts_file), "--onnxruntime", onnxruntime,
                           "--device", "cuda", "--max-new-tokens", "2"], capture_output=True, text=True, env=env)  # fmt: skip
    refused = done.returncode != 0 and not done.stdout.strip() and done.stderr.startswith("uniattn_cpp_service: error:")
    return refused, (done.stderr or done.stdout)[:600]  # its start: what came before our line shows there


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
        # The provider, from what the process held while it ran (not from its description):
        # on CUDA the CUDA provider, the driver and an open device; on the CPU no CUDA provider
        # (the library's CUDA kernels may still load the driver).
        def ran_on_device(use):
            return set(use) == GPU_EVIDENCE if device == "cuda" else "libonnxruntime_providers_cuda.so" not in use

        record(f"{device} runtime ran on {device.upper()}ExecutionProvider",
               ran_on_device(cpp["gpu_use"]) and ran_on_device(cpp_sampled["gpu_use"]),
               gpu_use=cpp["gpu_use"], sampled_gpu_use=cpp_sampled["gpu_use"], runtime=cpp["runtime"],
               python_runtime=python.description, python_providers=python.session.get_providers())  # fmt: skip
        record(f"{device} Python runtime on {device.upper()}ExecutionProvider",
               python.session.get_providers()[0] == f"{device.upper()}ExecutionProvider" and python.uses_custom_ops,
               providers=python.session.get_providers())  # fmt: skip
        record(f"{device} greedy tokens equal Python", cpp["tokens"] == greedy.tokens.tolist(),
               cpp=cpp["tokens"], python=greedy.tokens.tolist())  # fmt: skip
        record(f"{device} logits match Python", diff is not None and diff <= LOGITS_TOLERANCE[dtype] * scale,
               max_abs_diff=diff, logit_scale=scale, tolerance=LOGITS_TOLERANCE[dtype] * scale)  # fmt: skip
        record(f"{device} sampled tokens equal Python (seed {SEED})", cpp_sampled["tokens"] == sampled.tokens.tolist(),
               cpp=cpp_sampled["tokens"], python=sampled.tokens.tolist(), cpp_wall_s=cpp_sampled["wall_s"])  # fmt: skip
        if device == "cuda":
            record("CUDA cache stays on the device (Python IOBinding)", python.cache_on_device())
            refused, message = hidden_gpu_refusal(binary, artifact, prompts_file, onnxruntime)
            record("--device cuda with the GPU hidden fails (no silent CPU fallback)", refused, message=message)
    return checks


def check_static(dtype: str, artifact: Path, binary: Path, requests_file: Path, onnxruntime: str,
                 devices: list[str]) -> list[dict]:
    """Step 6: a static-cache artifact through the program with CUDA graphs on and off."""
    from uniattn_export.targets.ort import OrtSession
    from uniattn_export.targets.session import Sampling

    sampling = Sampling(temperature=TEMPERATURE, top_k=TOP_K, top_p=TOP_P, seed=SEED)
    sample_flags = ["--temperature", TEMPERATURE, "--top-k", TOP_K, "--top-p", TOP_P, "--seed", SEED]
    checks = []

    def record(name: str, passed: bool, **details):
        checks.append({"check": f"{dtype} static: {name}", "passed": bool(passed), **details})
        print(f"{'PASS' if passed else 'FAIL'}  {dtype} static: {name}  {json.dumps(details)[:300]}", flush=True)

    def tokens(result: dict) -> list:
        return [request["tokens"] for request in result["requests"]]

    for device in devices if dtype == "float32" else [d for d in devices if d == "cuda"]:
        python = OrtSession(artifact, device=device, custom_ops=True)
        greedy = [python.generate(p, STATIC_NEW).tokens.tolist() for p in STATIC_REQUESTS]
        sampled = [python.generate(p, STATIC_NEW, sampling=sampling).tokens.tolist() for p in STATIC_REQUESTS]
        with_logits = python.generate(PROMPTS, STATIC_NEW, return_logits=True)
        expected_logits = np.concatenate(with_logits.step_logits, axis=1)
        scale = float(np.abs(expected_logits).max())
        for graphs in ("on", "off") if device == "cuda" else ("off",):
            run = lambda *flags: run_service(binary, artifact, requests_file, onnxruntime, device, "--cuda-graphs",
                                             graphs, *flags, max_new=STATIC_NEW)  # fmt: skip
            cpp, cpp_sampled = run(), run(*sample_flags)
            label = f"{device}, CUDA graphs {graphs}" if device == "cuda" else device
            if device == "cuda":
                record(f"{label}: the program says graphs are {graphs}",
                       cpp["cuda_graphs"] is (graphs == "on") and cpp_sampled["cuda_graphs"] is (graphs == "on"),
                       runtime=cpp["runtime"], warning=cpp["stderr"].strip()[-500:])  # fmt: skip
            record(f"{label}: greedy tokens of 3 requests equal Python", tokens(cpp) == greedy,
                   cpp=tokens(cpp), python=greedy, wall_s=cpp["wall_s"])  # fmt: skip
            record(f"{label}: sampled tokens equal Python (seed {SEED})", tokens(cpp_sampled) == sampled,
                   cpp=tokens(cpp_sampled), python=sampled)  # fmt: skip
            single = run_service(binary, artifact, requests_file.with_name("prompts.txt"), onnxruntime, device,
                                 "--cuda-graphs", graphs, "--logits", max_new=STATIC_NEW)  # fmt: skip
            got = np.asarray(single["logits"], dtype=np.float32)
            diff = float(np.abs(got - expected_logits).max()) if got.shape == expected_logits.shape else None
            record(f"{label}: logits match Python", diff is not None and diff <= LOGITS_TOLERANCE[dtype] * scale,
                   max_abs_diff=diff, tolerance=LOGITS_TOLERANCE[dtype] * scale)  # fmt: skip
    return checks


STATIC_CHECKS = {"cuda": 8, "cpu": 3}  # check_static's records per device (CUDA: graphs on and off)


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
        artifacts, static_artifacts = export(args.out)
        prompts_file = args.out / "prompts.txt"
        prompts_file.write_text("".join(" ".join(map(str, p)) + "\n" for p in PROMPTS))
        requests_file = args.out / "requests.txt"
        requests_file.write_text("---\n".join("".join(" ".join(map(str, p)) + "\n" for p in r) for r in STATIC_REQUESTS))
        for dtype, artifact in artifacts.items():
            summary["checks"] += check_dtype(
                dtype, artifact, binary, prompts_file, native.onnxruntime_library(), args.devices.split(",")
            )
        for dtype, artifact in static_artifacts.items():
            summary["checks"] += check_static(
                dtype, artifact, binary, requests_file, native.onnxruntime_library(), args.devices.split(",")
            )
    except Exception as exc:  # report how far it got instead of a traceback only
        summary["error"] = f"{type(exc).__name__}: {exc}"
        print(f"ERROR {summary['error']}", flush=True)
    # Every check of every dtype and device must have run: a missing one counts as a failure.
    devices = args.devices.split(",")
    per_device = {"cuda": 7, "cpu": 5}  # check_dtype's records per device
    # float32 on every device, float16 on CUDA only
    expected_checks = sum(per_device[d] for d in devices) + (per_device["cuda"] if "cuda" in devices else 0)
    expected_checks += sum(STATIC_CHECKS[d] for d in devices) + (STATIC_CHECKS["cuda"] if "cuda" in devices else 0)
    summary["expected_checks"] = expected_checks
    passed = ("error" not in summary and len(summary["checks"]) == expected_checks
              and all(c["passed"] for c in summary["checks"]))  # fmt: skip
    summary["passed"] = passed
    (args.out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{'PASSED' if passed else 'FAILED'}: {sum(c['passed'] for c in summary['checks'])}/{len(summary['checks'])} checks; "
          f"{args.out / 'gpu_check.json'}")  # fmt: skip
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
