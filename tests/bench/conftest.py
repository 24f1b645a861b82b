"""Tiny artifacts for the benchmark tests, built once per session the way a GPU machine whose
exporter fails gets them: `prepare_preset` exports the tiny preset's graphs without weight
files, then `run_preset` over that folder refills the weights (and runs a first benchmark)."""

from __future__ import annotations

import itertools
import shutil

import pytest

from uniattn_export.bench import BenchSettings, prepare_preset, run_preset
from uniattn_export.bench.build import ARTIFACT_FOLDER, BASELINE_FOLDER
from uniattn_export.export import load_artifact

# float32: the tests compare logits of two runtimes on the same random cache.
DTYPE = "float32"


def small_settings(**overrides) -> BenchSettings:
    """A matrix that runs in seconds on the CPU."""
    fields = dict(
        batches=(1, 2), contexts=(8, 24), device="cpu", decode_steps=3, warmup_steps=1, prefill_repeats=2,
        backends=("ort-library", "ort-bodies", "transformers-dynamic"), time_budget=600.0,
    )  # fmt: skip
    fields.update(overrides)
    return BenchSettings(**fields)


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """(prepare report, folder) of the tiny preset's weight-less artifacts."""
    folder = tmp_path_factory.mktemp("prepared")
    return prepare_preset("tiny", folder, dtype=DTYPE), folder


@pytest.fixture(scope="session")
def work(prepared, tmp_path_factory):
    """The work folder the runs share (each reuses what an earlier one built): a copy of the
    prepared folder, so that `prepared` stays weight-less whichever test runs first."""
    folder = tmp_path_factory.mktemp("work") / "prepared"
    shutil.copytree(prepared[1], folder)
    return folder


@pytest.fixture(scope="session")
def preset_run(work, tmp_path_factory):
    """(bench document, output folder, work folder) of run_preset over the work folder."""
    out = tmp_path_factory.mktemp("preset_run")
    doc = run_preset("tiny", out, work_dir=work, dtype=DTYPE, settings=small_settings())
    return doc, out, work


@pytest.fixture(scope="session")
def artifacts(preset_run):
    """(UniAttn artifact, base artifact) with their weights filled in."""
    _, _, work = preset_run
    return load_artifact(work / ARTIFACT_FOLDER), load_artifact(work / BASELINE_FOLDER)


@pytest.fixture
def settings():
    """settings(**overrides) -> BenchSettings of a small CPU matrix."""
    return small_settings


def assert_ratios_divide_medians(doc: dict, ratios: tuple, phases: tuple, batches=(1, 2), contexts=(8, 24)) -> None:
    """Each (name, numerator runtime, denominator runtime) ratio of bench.json equals the quotient
    of the two runtimes' medians in every cell and phase."""
    medians = {(r["runtime"], r["batch"], r["context"], phase): r[phase]["median_ms"]
               for r in doc["results"] for phase in phases if r[phase]["status"] == "ok"}  # fmt: skip
    entries = {(r["name"], r["batch"], r["context"]): r for r in doc["ratios"]}
    for (name, top, bottom), batch, context, phase in itertools.product(ratios, batches, contexts, phases):
        expected = medians[(top, batch, context, phase)] / medians[(bottom, batch, context, phase)]
        assert entries[(name, batch, context)][phase] == pytest.approx(expected), (name, batch, context, phase)
