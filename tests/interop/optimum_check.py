"""Interop check: optimum-onnx's ORTModelForCausalLM generates from our artifacts.

optimum-onnx 0.1 pins transformers < 4.58 while this project needs transformers 5, so the
check runs in two interpreters (run_optimum_check.sh drives both):

  1. `expect` (project venv): exports tiny UniAttn checkpoints (Llama with an even and an odd
     number of cache tensors, Mistral, Qwen2, a plain base model) and records the greedy tokens
     our runtime (uniattn_export.targets.ort.OrtSession) generates for left-padded prompts;
  2. `check` (optimum venv; imports nothing from this project): loads every artifact folder
     with ORTModelForCausalLM.from_pretrained, with the uniattn custom-op library registered
     through SessionOptions when it is built, generates greedily with transformers' generate
     (with and without IOBinding) and compares the tokens.

Exit code 0 when every artifact gives identical tokens.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PROMPTS = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8], [9]]
NEW_TOKENS = 12
CASES = {
    # name: (family, layers, SuperBlocks (G, begin, end) or None for the base model)
    "llama_uniattn": ("llama", 6, (2, 1, 6)),  # 10 cache tensors
    "llama_odd_cache_count": ("llama", 4, (2, 1, 4)),  # 7 cache tensors: pairs do not line up
    "mistral_uniattn": ("mistral", 6, (3, 0, 6)),
    "qwen2_uniattn": ("qwen2", 6, (2, 1, 6)),
    "llama_base": ("llama", 4, None),
}


def expect(root: Path) -> int:
    from uniattn_export.export import export_model
    from uniattn_export.model import load_model
    from uniattn_export.model.synthetic import random_base_model, released_checkpoint, tiny_config
    from uniattn_export.native import ort_custom_op_library
    from uniattn_export.targets.ort import OrtSession

    cases = {}
    for name, (family, layers, blocks) in CASES.items():
        checkpoint, artifact = root / name / "checkpoint", root / name / "artifact"
        base = random_base_model(tiny_config(family, num_hidden_layers=layers), seed=21)
        if blocks is None:
            base.save_pretrained(checkpoint)
        else:
            released_checkpoint(base, checkpoint, *blocks)
        export_model(load_model(checkpoint), artifact, source_dir=checkpoint)
        # transformers' generate stops rows at the config's eos (2 for these configs): so do we.
        eos = json.loads((artifact / "config.json").read_text()).get("eos_token_id")
        session = OrtSession(artifact, custom_ops=False)
        tokens = session.generate(PROMPTS, NEW_TOKENS, eos_token_id=eos, pad_token_id=0).tokens
        cases[name] = {"artifact": str(artifact), "tokens": tokens.tolist()}
    expected = {"prompts": PROMPTS, "custom_op_library": ort_custom_op_library(), "cases": cases}
    (root / "expected.json").write_text(json.dumps(expected, indent=2))
    print(f"expected tokens of {len(cases)} artifacts in {root / 'expected.json'}")
    return 0


def check(root: Path) -> int:
    from importlib import metadata

    import onnxruntime as ort
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    expected = json.loads((root / "expected.json").read_text())
    width = max(len(p) for p in expected["prompts"])
    input_ids = torch.tensor([[0] * (width - len(p)) + p for p in expected["prompts"]])
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in expected["prompts"]])
    libraries = [None] + ([expected["custom_op_library"]] if expected["custom_op_library"] else [])
    results, passed = [], True
    for name, case in expected["cases"].items():
        for library in libraries:
            for io_binding in (False, True):
                options = ort.SessionOptions()
                if library:
                    options.register_custom_ops_library(library)
                model = ORTModelForCausalLM.from_pretrained(
                    case["artifact"], session_options=options, provider="CPUExecutionProvider",
                    use_io_binding=io_binding,
                )  # fmt: skip
                out = model.generate(
                    input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=NEW_TOKENS,
                    do_sample=False, pad_token_id=0,
                )  # fmt: skip
                tokens = out[:, width:].tolist()
                same = tokens == case["tokens"]
                passed &= same
                results.append({"case": name, "custom_op_library": library, "io_binding": io_binding,
                                "same_tokens": same, "tokens": tokens})  # fmt: skip
                kernels = "custom-op library" if library else "function bodies"
                print(f"{'ok  ' if same else 'FAIL'} {name} ({kernels}, io_binding={io_binding})")
    versions = {name: metadata.version(name) for name in ("optimum-onnx", "transformers", "onnxruntime", "torch")}
    (root / "optimum_report.json").write_text(json.dumps({"passed": passed, "versions": versions, "results": results}, indent=2))
    print(f"{'ALL IDENTICAL' if passed else 'MISMATCH'} ({versions})")
    return 0 if passed else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=("expect", "check"))
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    sys.exit(expect(args.folder) if args.stage == "expect" else check(args.folder))
