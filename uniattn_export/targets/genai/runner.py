"""Running a genai artifact folder with onnxruntime-genai: greedy generation and decode timing.

onnxruntime-genai pads a batch of prompts on the right with the config's pad_token_id and
takes each row's trailing pad_token_id tokens as padding, so a prompt that itself ends with
that token would lose it: `genai_generate` refuses such prompts.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ...errors import UniAttnError
from .config import GENAI_CONFIG_FILE, ORT_DEFAULT_THREADS

PROVIDERS = ("cpu", "cuda")


def _import_genai():
    try:
        import onnxruntime_genai as og
    except ImportError:
        raise UniAttnError(
            "onnxruntime-genai is not installed",
            "pip install 'uniattn-export[genai]' (onnxruntime-genai-cuda with onnxruntime-gpu for CUDA)",
        ) from None
    return og


def genai_config(folder: str | Path) -> dict:
    path = Path(folder) / GENAI_CONFIG_FILE
    if not path.is_file():
        raise UniAttnError(f"{folder} has no {GENAI_CONFIG_FILE}", "export it with `uniattn-export model CKPT --target genai`")
    return json.loads(path.read_text())


def load_genai_model(folder: str | Path, provider: str = "cpu", cuda_graph: bool = False):
    """og.Model over the folder, on `provider`; cuda_graph turns on onnxruntime-genai's CUDA
    graph capture (provider option enable_cuda_graph; static caches only)."""
    og = _import_genai()
    if provider not in PROVIDERS:
        raise UniAttnError(f"unknown provider {provider!r}", f"use one of {PROVIDERS}")
    if cuda_graph and provider != "cuda":
        raise UniAttnError("CUDA graphs need the cuda provider", "pass provider='cuda'")
    config = og.Config(str(folder))
    # Without intra_op_num_threads onnxruntime-genai runs the decoder on half the logical CPUs
    # (one on a 2-core machine: SmolLM2-135M decode 38 ms, 22 ms on 2 threads); our folders
    # say 0 (ONNX Runtime's default, as our sessions), other folders (its builder's) get it here.
    config.overlay(json.dumps({"model": {"decoder": {"session_options": ORT_DEFAULT_THREADS}}}))
    config.clear_providers()
    if provider == "cuda":
        config.append_provider("cuda")
        # As OrtSession: ORT's CUDA EP defaults to TF32 float32 MatMuls (logit errors ~1e-2).
        config.set_provider_option("cuda", "use_tf32", "0")
        if cuda_graph:
            config.set_provider_option("cuda", "enable_cuda_graph", "1")
    return og, og.Model(config)


def check_length(config: dict, tokens: int) -> None:
    """Refuse a generation of `tokens` (prompt + new) that the folder's caches cannot hold:
    static caches (shared buffers) hold search.max_length tokens, the model context_length."""
    search = config["search"]
    limit, what = config["model"]["context_length"], "the model's context"
    if search.get("past_present_share_buffer"):
        limit, what = search["max_length"], "the artifact's cache capacity"
    if tokens > limit:
        raise UniAttnError(
            f"the longest prompt + new tokens = {tokens} tokens exceeds {what} ({limit})",
            "shorten the prompt or generate fewer tokens, or re-export with a larger --max-length",
        )


def pad_right(prompts: Sequence[Sequence[int]], pad_token_id: int) -> np.ndarray:
    """(B, W) int32 ids, right-padded the way onnxruntime-genai reads them."""
    for index, prompt in enumerate(prompts):
        if not prompt:
            raise UniAttnError(f"prompt {index} is empty", "drop empty prompts")
        if prompt[-1] == pad_token_id:
            raise UniAttnError(
                f"prompt {index} ends with the pad token {pad_token_id}, which onnxruntime-genai would take as padding",
                "end prompts with another token",
            )
    ids = np.full((len(prompts), max(map(len, prompts))), pad_token_id, dtype=np.int32)
    for row, prompt in enumerate(prompts):
        ids[row, : len(prompt)] = prompt
    return ids


def random_prompt_ids(rng: np.random.Generator, model_config: dict, batch: int, length: int) -> np.ndarray:
    """(batch, length) int32 random ids without the pad token (genai_config.json's "model"
    section), so no row reads as padded and every row runs all `length` tokens."""
    pad, vocab = model_config["pad_token_id"], model_config["vocab_size"]
    ids = rng.integers(0, vocab, (batch, length), dtype=np.int32)
    ids[ids == pad] = (pad + 1) % vocab
    return ids


def genai_generate(folder: str | Path, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
                   provider: str = "cpu", cuda_graph: bool = False, model=None) -> list[list[int]]:  # fmt: skip
    """Greedy tokens onnxruntime-genai generates for each prompt: up to max_new_tokens per
    row, cut after the row's first eos (as Generation.sequences does). `model`: an og.Model
    from load_genai_model to reuse."""
    full_config = genai_config(folder)
    config = full_config["model"]
    ids = pad_right(prompts, config["pad_token_id"])
    check_length(full_config, ids.shape[1] + max_new_tokens)
    og, model = (_import_genai(), model) if model is not None else load_genai_model(folder, provider, cuda_graph)
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, batch_size=len(ids), max_length=ids.shape[1] + max_new_tokens)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    steps = []
    while not generator.is_done() and len(steps) < max_new_tokens:
        generator.generate_next_token()
        steps.append(np.array(generator.get_next_tokens()).reshape(-1))
    eos = config["eos_token_id"]
    eos = set(eos if isinstance(eos, list) else [eos])
    rows = []
    for row in np.stack(steps, axis=1).tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        rows.append(row[:cut])
    return rows


def time_genai_decode(folder: str | Path, *, batch: int, prompt_length: int, new_tokens: int = 32,
                      provider: str = "cpu", cuda_graph: bool = False, repeats: int = 3, seed: int = 0) -> dict:  # fmt: skip
    """Time onnxruntime-genai on the folder: prefill of `batch` random prompts of
    `prompt_length` tokens, then `new_tokens` decode steps (eos ignored: the vocabulary's eos
    is masked by min_length), `repeats` times after one warm-up. Returns milliseconds:
    prefill_ms (median), decode_ms_per_token (median over every decode step of every repeat),
    and the settings."""
    full_config = genai_config(folder)
    config = full_config["model"]
    check_length(full_config, prompt_length + new_tokens)
    og, model = load_genai_model(folder, provider, cuda_graph)
    ids = random_prompt_ids(np.random.default_rng(seed), config, batch, prompt_length)
    total = prompt_length + new_tokens
    prefill, decode = [], []
    for repeat in range(repeats + 1):
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, batch_size=batch, max_length=total, min_length=total)
        generator = og.Generator(model, params)
        start = time.perf_counter()
        generator.append_tokens(ids)
        generator.generate_next_token()
        np.asarray(generator.get_next_tokens())  # waits for the device
        first = time.perf_counter()
        steps = []
        for _ in range(new_tokens - 1):
            before = time.perf_counter()
            generator.generate_next_token()
            np.asarray(generator.get_next_tokens())
            steps.append(time.perf_counter() - before)
        if repeat:  # the first pass warms up (allocations, graph capture)
            prefill.append(first - start)
            decode += steps
        del generator
    return {
        "runtime": f"onnxruntime-genai {og.__version__}", "provider": provider, "cuda_graph": cuda_graph,
        "batch": batch, "prompt_length": prompt_length, "new_tokens": new_tokens, "repeats": repeats,
        "prefill_ms": 1e3 * statistics.median(prefill),
        "decode_ms_per_token": 1e3 * statistics.median(decode),
    }  # fmt: skip
