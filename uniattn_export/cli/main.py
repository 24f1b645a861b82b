"""`uniattn-export`: the command line. Each subcommand lives in its own module here and
registers itself with `register(subparsers)`; heavy imports happen only when it runs."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from .outcome import OneLineArgumentParser

# In pipeline order.
SUBCOMMANDS = ("convert", "heal", "generate", "model", "validate", "bench", "runtime_paths")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="uniattn-export",
        description=(
            "Export, compile and validate LLMs post-trained with UniAttn: consumer layers reuse "
            "their SuperBlock producer's softmax, need no Q/K projections and keep no K cache."
        ),
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f".{name}", __package__).register(sub)
    return parser


def quiet_libraries() -> None:
    """transformers' deprecation notices, info logs and save/load progress bars speak to the
    authors of code that calls transformers (this package), not to a user of the command
    line. Silenced here, in the CLI only (never on import of the package); a user's own
    TRANSFORMERS_VERBOSITY / HF_HUB_DISABLE_PROGRESS_BARS still wins. Read when transformers
    is first imported, hence set before any command runs."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"transformers(\.|$)")


def main(argv: list[str] | None = None) -> int:
    """Exit codes: cli/outcome.py (0 ok, 1 validation failed, 2 bad input, 3 internal error)."""
    from .outcome import run_command

    args = build_parser().parse_args(argv)
    quiet_libraries()
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
