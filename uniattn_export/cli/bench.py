"""`uniattn-export bench ARTIFACT [ARTIFACT] [--baseline BASE|build]... [--base-checkpoint HF]`
or `bench --preset NAME`: time prefill and decode of an artifact against its base model,
onnxruntime-genai and transformers, in one run.

For every batch x context cell and every runtime (ORT over static-cache artifacts through
OrtSession: custom-op library, function bodies, CUDA graphs; ORT over dynamic-cache artifacts:
library, bodies; onnxruntime-genai on the base model its own builder makes, and on our
`--target genai` exports; transformers with DynamicCache / StaticCache / StaticCache +
torch.compile on the base architecture) it records
prefill latency, decode latency per step (median and p90; the cache of the target length is
built directly from random values), tokens/s, peak device memory, KV-cache bytes, on CUDA the
copies of one profiled decode step, and the time ratios between runtimes. Outputs:
OUT/bench.json, OUT/bench.png, and a table on stdout. The run writes a temporary .OUT.XXXXXXXX
beside OUT (bench.json there is rewritten after every cell) that becomes OUT at the end; an
existing OUT is replaced only when it is an earlier bench output holding nothing else, and
the models an earlier run built there (OUT/work, OUT/genai, OUT/baseline_artifact*) are
re-used. A failed or interrupted run leaves OUT as it was.

ARTIFACT: one export per cache mode, plus one --target genai export, of the same model (a
dynamic, a static and a genai one run the ort-*, ort-static-* and genai-artifact rows);
--baseline likewise, repeated. --base-checkpoint: the base model's transformers folder, which
onnxruntime-genai's builder turns into its row's model.
--preset NAME builds a UniAttn artifact (SuperBlocks of 4 over the top half of the layers)
and its base model from a shape preset with random weights first, with dynamic and static
caches and as --target genai folders, and the base checkpoint for onnxruntime-genai (in
OUT/work, or --work DIR, reused when already there); --prepare DIR only exports the graphs
without weights (to carry to a machine whose exporter fails; with static or genai-artifact
backends, those pairs too, of the capacity the given --contexts and steps need).
Exit codes: 0 ran (skipped cells are listed in the JSON), 1 some measurement failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _backends(text: str) -> tuple[str, ...]:
    from ..bench import BACKENDS

    names = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = [n for n in names if n not in BACKENDS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown backend(s) {unknown or text!r}; choose from {', '.join(BACKENDS)}")
    return names


def register(sub: argparse._SubParsersAction) -> None:
    from ..bench import DEFAULT_BACKENDS, BenchSettings

    defaults = BenchSettings()
    p = sub.add_parser(
        "bench",
        help="benchmark an artifact against its base model and transformers (JSON + table + plot)",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("artifact", nargs="*", type=Path,
                   help="artifact folder(s), one per cache mode and one --target genai export (omit with --preset)")
    p.add_argument("--baseline", action="append", default=None,
                   help="artifact of the base model (repeat: one per ARTIFACT kind), or 'build' to export the "
                        "artifacts' architecture without SuperBlocks (random weights) into OUT/baseline_artifact*")  # fmt: skip
    p.add_argument("--base-checkpoint", type=Path, default=None,
                   help="the base model's transformers folder: onnxruntime-genai's model builder makes the "
                        "onnxruntime-genai row's model from it (into OUT/genai)")  # fmt: skip
    p.add_argument("-o", "--output", type=Path, help="folder for bench.json and bench.png")
    g = p.add_argument_group("preset mode")
    g.add_argument("--preset", default=None, help="build the artifacts from this shape preset (llama-3.2-1b, llama-3.1-8b, tiny)")
    g.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default=None,
                   help="precision of the preset's artifacts (default float16)")  # fmt: skip
    g.add_argument("--work", type=Path, default=None, help="where the preset's artifacts are built or reused (default OUT/work)")
    g.add_argument("--prepare", type=Path, default=None,
                   help="only export the preset's graphs into this folder, without weight files, and stop")  # fmt: skip
    g.add_argument("--export-processes", type=int, default=None,
                   help="exports run at once (default: one per 2 cores and per 4x the weights' bytes of memory)")  # fmt: skip
    m = p.add_argument_group("matrix and limits")
    m.add_argument("--device", choices=("cuda", "cpu"), default=defaults.device)
    m.add_argument("--batches", type=_ints, default=defaults.batches, help="default 1,8,32")
    m.add_argument("--contexts", type=_ints, default=defaults.contexts, help="default 512,2048,8192")
    m.add_argument("--backends", type=_backends, default=DEFAULT_BACKENDS,
                   help=f"default {','.join(DEFAULT_BACKENDS)} (also: transformers-static)")  # fmt: skip
    m.add_argument("--compile", default="none",
                   help="cells where transformers-static-compiled runs: BxS[,BxS...], 'all' or 'none' "
                        "(default; torch.compile takes about a minute per shape on a 1B model)")  # fmt: skip
    m.add_argument("--compile-backend", choices=("inductor", "eager"), default=defaults.compile_backend,
                   help="inductor = mode reduce-overhead (CUDA graphs, what generate uses); eager = dynamo only")  # fmt: skip
    m.add_argument("--decode-cells", default="",
                   help="only these cells decode: BxS[,BxS...] (default every cell)")  # fmt: skip
    m.add_argument("--prefill-cells", default="",
                   help="only these cells prefill: BxS[,BxS...] (default every cell); with --decode-cells "
                        "the matrix is the cells either names")  # fmt: skip
    m.add_argument("--decode-steps", type=int, default=defaults.decode_steps, help="timed decode steps per cell")
    m.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps, help="untimed decode steps first")
    m.add_argument("--prefill-repeats", type=int, default=defaults.prefill_repeats, help="timed prefills per cell")
    m.add_argument("--no-prefill", action="store_true", help="time decode only")
    m.add_argument("--cell-seconds", type=float, default=defaults.cell_seconds,
                   help="stop sampling a cell after this long (at least one sample each)")  # fmt: skip
    m.add_argument("--time-budget", type=float, default=defaults.time_budget,
                   help="seconds for the whole run, build included; later cells are recorded as skipped")  # fmt: skip
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--row-processes", action=argparse.BooleanOptionalAction, default=None,
                   help="load and measure each runtime in a fresh process, so one row's device memory or CUDA "
                        "error cannot fail the next (default: on with --device cuda)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the JSON document instead of the table")
    p.set_defaults(run=run)


def _settings(args: argparse.Namespace):
    from ..bench import BenchSettings, parse_shapes

    compile_shapes = (
        frozenset((b, c) for b in args.batches for c in args.contexts) if args.compile == "all" else parse_shapes(args.compile)
    )
    return BenchSettings(
        batches=args.batches, contexts=args.contexts, backends=args.backends, device=args.device,
        decode_steps=args.decode_steps, warmup_steps=args.warmup_steps, prefill=not args.no_prefill,
        prefill_repeats=args.prefill_repeats, cell_seconds=args.cell_seconds, time_budget=args.time_budget,
        compile_shapes=compile_shapes, compile_backend=args.compile_backend, seed=args.seed,
        decode_shapes=parse_shapes(args.decode_cells), prefill_shapes=parse_shapes(args.prefill_cells),
        row_processes=args.row_processes,
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..errors import UniAttnError

    stderr = Console(stderr=True, soft_wrap=True)

    def log(line: str) -> None:
        stderr.print(f"[dim]bench[/] {line}", highlight=False)

    if args.export_processes is not None and (args.preset is None or args.export_processes < 1):
        raise UniAttnError(f"--export-processes {args.export_processes} is not a number of processes for a preset's exports",
                           "pass --preset NAME with --export-processes 1 or more")  # fmt: skip
    if args.prepare is not None:
        if args.preset is None or args.artifact:
            raise UniAttnError("--prepare exports a preset's graphs", "pass --preset NAME --prepare DIR (no ARTIFACT)")
        from ..bench import prepare_preset

        from ..bench.settings import GENAI_ARTIFACT_BACKEND, needs_capacity

        settings = _settings(args)
        capacity = max(settings.contexts) + settings.decode_length() if needs_capacity(settings.backends) else None
        info = prepare_preset(args.preset, args.prepare, dtype=args.dtype or "float16", seed=args.seed,
                              capacity_needed=capacity, genai=GENAI_ARTIFACT_BACKEND in settings.backends, log=log,
                              export_processes=args.export_processes)  # fmt: skip
        print(json.dumps(info, indent=2))
        return 0
    if (not args.artifact) == (args.preset is None):
        raise UniAttnError("pass either an ARTIFACT folder or --preset NAME", "see `uniattn-export bench --help`")
    if args.output is None:
        raise UniAttnError("no output folder", "pass -o OUT (bench.json and bench.png are written there)")
    if args.preset is not None and (args.baseline is not None or args.base_checkpoint is not None):
        raise UniAttnError("--preset builds its own baseline", "drop --baseline and --base-checkpoint")
    if args.preset is None and (args.dtype is not None or args.work is not None):
        raise UniAttnError("--dtype and --work apply to --preset", "an artifact keeps the dtype it was exported in")
    settings = _settings(args)
    build = args.baseline == ["build"]
    if args.baseline and "build" in args.baseline and not build:
        raise UniAttnError("--baseline build and a baseline artifact were both given", "pass one of them")
    baseline = None if build or args.baseline is None else [Path(b) for b in args.baseline]
    from ..bench.folder import bench_folder, relocate

    inputs = (*args.artifact, *(baseline or ()), args.base_checkpoint, args.work)
    with bench_folder(args.output, inputs=inputs) as out:
        if args.preset is not None:
            from ..bench import run_preset

            doc = run_preset(args.preset, out, work_dir=args.work, dtype=args.dtype or "float16", settings=settings, log=log,
                             export_processes=args.export_processes)  # fmt: skip
        else:
            from ..bench import run_bench

            doc = run_bench(args.artifact, out, baseline=baseline, build_baseline=build,
                            base_checkpoint=args.base_checkpoint, settings=settings, log=log)  # fmt: skip
        doc = relocate(doc, out, args.output)

    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        from ..bench.report import categories_table, copies_table, kernels_table, summary_table

        console = Console(width=200)
        console.print(summary_table(doc))
        for table in (copies_table(doc), kernels_table(doc), categories_table(doc)):
            if table is not None:
                console.print(table)
        if doc["stopped"]:
            print(f"stopped early: {doc['stopped']}")
        print(f"wrote {args.output / 'bench.json'} and {args.output / 'bench.png'}")
    return 1 if doc["failures"] else 0
