"""Validation reports: the JSON file and a rich summary table."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table


def write_report(report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def _status(ok: bool) -> str:
    return "[green]pass[/]" if ok else "[red]FAIL[/]"


def summary_table(report: dict) -> Table:
    tol = report["tolerance"]
    logits, tokens, topk = report["logits"], report["tokens"], report["topk"]
    worst = logits["worst"]
    table = Table(
        title=f"validation of {report['artifact']} ({report['dtype']})",
        caption=f"runtime: {report['runtime']}\nreference: {report['reference']}",
    )
    table.add_column("check")
    table.add_column("measured", justify="right")
    table.add_column("limit", justify="right")
    table.add_column("", justify="center")
    table.add_row(
        "logits max |abs err|", f"{logits['max_abs']:.3g}", f"{tol['logits_abs']:.3g}",
        _status(logits["max_abs"] <= tol["logits_abs"]),
    )  # fmt: skip
    table.add_row("logits mean |abs err|", f"{logits['mean_abs']:.3g}", "", "")
    table.add_row("logits max / mean rel err", f"{logits['max_rel']:.3g} / {logits['mean_rel']:.3g}", "", "")
    table.add_row(
        "worst logit",
        f"step {worst['step']}, row {worst['batch_row']}, pos {worst['position']}, token {worst['token_id']}",
        "", "",
    )  # fmt: skip
    table.add_row(
        "tolerance derivation",
        f"{tol['safety_factor']:g} x noise {tol['noise_abs']:.3g}",
        f"({tol['noise_source']})", "",
    )  # fmt: skip
    table.add_row("smallest tolerance that passes", f"{tol['smallest_passing']:.3g}", "", "")
    diverged = [s for s in tokens["first_divergence_step"] if s is not None]
    table.add_row(
        "greedy token agreement",
        f"{100 * tokens['agreement']:.1f}%",
        "no divergence beyond near-ties",
        _status(not tokens["divergences"]),
    )  # fmt: skip
    table.add_row(
        "first divergence step",
        str(min(diverged)) if diverged else "none",
        f"{len(tokens['near_tie_divergences'])} near-tie(s)", "",
    )  # fmt: skip
    table.add_row(f"top-{topk['k']} overlap mean / min", f"{topk['mean']:.3f} / {topk['min']:.3f}", "", "")
    if report["perplexity"] is not None:
        ppl = report["perplexity"]
        table.add_row(
            f"perplexity ({ppl['tokens']} tokens, artifact by {ppl['artifact_method']})",
            f"{ppl['artifact']:.4f} vs {ppl['reference']:.4f}",
            f"+-{ppl['tolerance_abs']:.3g}",
            _status(ppl["abs_diff"] <= ppl["tolerance_abs"]),
        )  # fmt: skip
    table.add_row("verdict", "", "", _status(report["passed"]))
    return table


def print_summary(report: dict, console: Console | None = None) -> None:
    console = console or Console()
    console.print(summary_table(report))
    for failure in report["failures"]:
        console.print(f"[red]failed:[/] {failure}")
