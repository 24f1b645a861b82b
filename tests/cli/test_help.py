"""Every `--help` builds the parser without importing the heavy libraries (it must be fast:
torch + transformers alone take seconds to import)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from uniattn_export.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "onnx", "onnxruntime", "onnxscript")
_PROBE = """
import json, sys
from uniattn_export.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
print(json.dumps({{"exit": code, "heavy": [m for m in {heavy!r} if m in sys.modules]}}))
"""


def _subcommands() -> list[str]:
    actions = [a for a in build_parser()._actions if a.dest == "command"]
    return sorted(actions[0].choices)


@pytest.mark.parametrize(
    "argv", [["--help"], *([name, "--help"] for name in _subcommands()), ["model", "--target", "trt", "--help"]],
    ids=" ".join,
)
def test_help_imports_no_heavy_library(argv):
    done = subprocess.run(
        [sys.executable, "-c", _PROBE.format(heavy=HEAVY), *argv],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert done.stdout.startswith("usage: uniattn-export")
    assert json.loads(done.stdout.splitlines()[-1]) == {"exit": 0, "heavy": []}
