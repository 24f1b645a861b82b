"""Stage 5 (with validate): time the exported model against its base model and transformers.

Entries: `run_bench(artifact, out_dir, baseline=..., settings=BenchSettings(...))` and
`run_preset(name, out_dir, ...)`, which builds both models from a shape preset first;
`prepare_preset` exports a preset's graphs without weights for machines whose exporter fails.
The entries are imported lazily (they pull in torch), so the CLI can read settings cheaply.
"""

from importlib import import_module

from .settings import BACKENDS, DEFAULT_BACKENDS, BenchSettings, parse_shapes

_LAZY = {"run_bench": ".run", "run_preset": ".run", "prepare_preset": ".run"}

__all__ = ["BACKENDS", "DEFAULT_BACKENDS", "BenchSettings", "parse_shapes", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
