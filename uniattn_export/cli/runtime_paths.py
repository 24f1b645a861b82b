"""`uniattn-export runtime-paths`: where a C/C++ service finds what it builds and runs with.

    onnxruntime  libonnxruntime.so of the installed onnxruntime wheel (the C runtime dlopens it)
    runtime      libuniattn_runtime.so (link the service against it)
    include      the folder holding uniattn/runtime.h (its C API)
    custom_ops   libuniattn_ort.so (the runtime registers it; found beside the runtime)

With a NAME it prints that one path alone, for shell substitution; a path that is missing
is an error (exit code 2).
"""

from __future__ import annotations

import argparse
import json

NAMES = ("onnxruntime", "runtime", "include", "custom_ops")


def _paths() -> dict[str, str | None]:
    from .. import native

    return {
        "onnxruntime": native.onnxruntime_library(),
        "runtime": native.runtime_library(),
        "include": native.runtime_include_dir(),
        "custom_ops": native.ort_custom_op_library(),
    }


def run(args: argparse.Namespace) -> int:
    from ..errors import UniAttnError
    from ..native import BUILD_FIX

    paths = _paths()
    if args.name is not None:
        if paths[args.name] is None:
            fix = "install onnxruntime==1.31.*" if args.name == "onnxruntime" else BUILD_FIX
            raise UniAttnError(f"no {args.name} path: it is not installed or built", fix)
        print(paths[args.name])
    elif args.json:
        print(json.dumps(paths, indent=2))
    else:
        for name, path in paths.items():
            print(f"{name:12} {path or '(not found)'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "runtime-paths",
        help="print the paths a C/C++ service needs (libonnxruntime, the C runtime, its header)",
        description=__doc__.split("\n\n", 1)[0].split(": ", 1)[1],
    )
    p.add_argument("name", nargs="?", choices=NAMES, help="print only this path")
    p.add_argument("--json", action="store_true", help="print all paths as JSON")
    p.set_defaults(run=run)
