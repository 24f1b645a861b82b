"""Fixtures for the TensorRT target: tiny models exported by the real exporter, engines built
from them with TensorRT-RTX on this CPU-only machine, and edited copies of their graphs.

The tiny model has 4 layers and SuperBlocks G=2 from layer 1 to 4: layer 0 ordinary,
layer 1 a producer whose shared state layer 2 consumes, layer 3 a producer without
consumers. So its graph holds all three node shapes: a producer with 5 outputs, producers
with outputs 3-4 absent, and a consumer.
"""

from __future__ import annotations

import shutil

import onnx
import pytest

from uniattn_export.export import export_model, load_artifact
from uniattn_export.model import load_model
from uniattn_export.model.synthetic import random_base_model, released_checkpoint, tiny_config
from uniattn_export.targets.trt import compat
from uniattn_export.targets.trt.build import BuildOptions, build_engine
from uniattn_export.targets.trt.profiles import DimRange, ProfileSpec


STATIC_CAPACITY = 64


def _export(folder, dtype, **cache):
    base = random_base_model(tiny_config("llama", num_hidden_layers=4))
    released_checkpoint(base, folder / "checkpoint", superblock_size=2, begin=1, end=4)
    model = load_model(folder / "checkpoint", dtype=dtype)
    return load_artifact(export_model(model, folder / "artifact", source_dir=folder / "checkpoint", **cache))


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("tiny_fp32"), "float32")


@pytest.fixture(scope="session")
def tiny_artifact_fp16(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("tiny_fp16"), "float16")


@pytest.fixture(scope="session")
def tiny_static_artifact(tmp_path_factory):
    """The same tiny model with fixed-capacity caches (op contract v2)."""
    return _export(tmp_path_factory.mktemp("tiny_static"), "float32", cache="static", max_length=STATIC_CAPACITY)


@pytest.fixture(scope="session")
def static_engines(tiny_static_artifact, tmp_path_factory):
    """{"uniattn": EngineBuild, "none": EngineBuild} of the static tiny model, batch 1-4,
    prefill 1-32 tokens."""
    folder = tmp_path_factory.mktemp("static_engines")
    profile = ProfileSpec(batch=DimRange(1, 2, 4), sequence=DimRange(1, 8, 32))
    return {
        mode: build_engine(tiny_static_artifact.onnx_path, folder / mode, BuildOptions(plugins=mode, profile=profile))
        for mode in ("uniattn", "none")
    }


@pytest.fixture(scope="session")
def flavour():
    return compat.load()


@pytest.fixture(scope="session")
def engines(tiny_artifact, tmp_path_factory):
    """{"uniattn": EngineBuild, "none": EngineBuild} of the float32 tiny model."""
    folder = tmp_path_factory.mktemp("engines")
    return {
        mode: build_engine(tiny_artifact.onnx_path, folder / mode, BuildOptions(plugins=mode))
        for mode in ("uniattn", "none")
    }


@pytest.fixture
def edited_graph(tiny_artifact, tmp_path):
    """edited_graph(edit) -> path of a copy of the tiny graph after edit(model) changed it."""

    def make(edit):
        model = onnx.load(str(tiny_artifact.onnx_path))
        edit(model)
        path = tmp_path / "edited" / "model.onnx"
        path.parent.mkdir(exist_ok=True)
        onnx.save(model, str(path))
        return path

    return make


@pytest.fixture
def artifact_copy(tiny_artifact, tmp_path):
    """A private copy of the float32 artifact folder (tests that write into it)."""
    return shutil.copytree(tiny_artifact.path, tmp_path / "artifact")
