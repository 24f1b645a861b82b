"""onnxruntime-genai (0.18, CPU) runs our genai artifacts as they are: greedy tokens equal to
our runtime (OrtSession) and the PyTorch reference for base and UniAttn models, static and
dynamic caches, with and without the custom-op library, on batches of prompts of different
lengths (onnxruntime-genai pads them on the right)."""

from __future__ import annotations

import json
import os

import onnx
import pytest

from uniattn_export.cli.main import main
from uniattn_export.errors import UniAttnError
from uniattn_export.export import export_model, load_artifact
from uniattn_export.model import load_model
from uniattn_export.model.synthetic import random_base_model, released_checkpoint, tiny_config
from uniattn_export.native import ORT_LIBRARY
from uniattn_export.targets.genai import genai_library_for, write_genai_config
from uniattn_export.targets.genai.runner import genai_generate, load_genai_model, pad_right, time_genai_decode
from uniattn_export.targets.ort import OrtSession
from uniattn_export.validate.reference import TorchSession

pytestmark = pytest.mark.usefixtures("single_torch_thread")

CAPACITY = 48
STEPS = 16
PAD, EOS = 0, 2
# Rows of different lengths: onnxruntime-genai right-pads the shorter ones.
PROMPTS = [[5, 9, 14, 3, 77, 41, 8, 100, 12], [33, 7, 90], [61, 4, 18, 27, 52, 9, 11, 70, 3, 44, 6, 15, 99, 23], [88]]
# name: (family, layers, base model?, config overrides). Consumers with SuperBlocks of 2 from
# layer 1: 4 layers -> [2] (odd), 6 -> [2, 4] (even). Mistral's window (8) is shorter than the
# longest prompt + generation, so the window matters.
MODELS = {
    "base": ("llama", 4, True, {}),
    "uniattn_odd": ("llama", 4, False, {}),
    "uniattn_even": ("llama", 6, False, {}),
    "mistral_window": ("mistral", 6, False, {"sliding_window": 8}),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    made = {}
    for name, (family, layers, base, overrides) in MODELS.items():
        folder = tmp_path_factory.mktemp(name)
        config = tiny_config(family, num_hidden_layers=layers, pad_token_id=PAD, eos_token_id=EOS, **overrides)
        model = random_base_model(config, seed=3)
        if base:
            model.save_pretrained(folder)
        else:
            released_checkpoint(model, folder, 2, 1, layers)
        made[name] = folder
    return made


@pytest.fixture(scope="module")
def genai_artifact(checkpoints, tmp_path_factory):
    made = {}

    def make(name: str, cache: str, library: bool):
        key = (name, cache, library)
        if key not in made:
            model = load_model(checkpoints[name])
            capacity = CAPACITY if cache == "static" else None
            lib = genai_library_for(cache, library)  # True: the library must be built and serve the op version
            out = tmp_path_factory.mktemp("genai") / f"{name}_{cache}_{library}"
            export_model(
                model, out, source_dir=checkpoints[name], cache=cache, max_length=capacity, layout="genai",
                extra_files=lambda folder: write_genai_config(folder, model, cache=cache, capacity=capacity, library=lib),
            )  # fmt: skip
            made[key] = out
        return made[key]

    return make


CASES = [
    ("base", "static", True), ("base", "dynamic", True),
    ("uniattn_odd", "static", True), ("uniattn_odd", "static", False),
    ("uniattn_odd", "dynamic", True), ("uniattn_odd", "dynamic", False),
    ("uniattn_even", "static", True), ("uniattn_even", "dynamic", False),
    ("mistral_window", "static", False),
]  # fmt: skip


@pytest.mark.parametrize(
    "name,cache,library", CASES, ids=[f"{n}-{c}-{'library' if lib else 'bodies'}" for n, c, lib in CASES]
)
def test_genai_generates_our_runtime_and_the_reference_tokens(checkpoints, genai_artifact, name, cache, library):
    folder = genai_artifact(name, cache, library)
    config = json.loads((folder / "genai_config.json").read_text())
    assert config["search"]["past_present_share_buffer"] is (cache == "static")
    assert config["model"]["pad_token_id"] == PAD and config["model"]["eos_token_id"] == EOS
    assert ((folder / ORT_LIBRARY).is_file(), config["model"]["decoder"]["session_options"].get("custom_ops_library")) == (
        (True, ORT_LIBRARY) if library else (False, None)
    )

    genai = genai_generate(folder, PROMPTS, STEPS)
    session = OrtSession(folder, custom_ops=library)  # our runtime on the same folder
    ours = session.generate(PROMPTS, STEPS, eos_token_id=EOS, pad_token_id=PAD).sequences(EOS)
    reference = TorchSession(load_model(checkpoints[name])).generate(PROMPTS, STEPS, eos_token_id=EOS, pad_token_id=PAD)
    assert genai == ours == reference.sequences(EOS)
    assert max(map(len, genai)) == STEPS  # at least one row ran every step
    assert session.padding == ("right" if cache == "static" else "left")


def _cache_inputs(folder):
    graph = onnx.load(folder / "model.onnx", load_external_data=False).graph
    return graph, [i.name for i in graph.input if i.name.startswith("past_key_values.")]


@pytest.mark.parametrize("cache", ["static", "dynamic"])
def test_odd_consumer_count_pairs_into_a_pseudo_layer_with_one_dummy_key(genai_artifact, cache):
    """Layers 0, 1, 3 keep K and V; consumer 2's value cache is pseudo layer 4's value, and
    its key is a dummy of one value cache's size that no attention node reads."""
    graph, caches = _cache_inputs(genai_artifact("uniattn_odd", cache, False))
    assert caches == [f"past_key_values.{layer}.{kind}" for layer in (0, 1, 3, 4) for kind in ("key", "value")]
    consumer = next(n for n in graph.node if n.name == "/model/layers.2/self_attn/UniAttnConsumer")
    assert consumer.input[1] == "past_key_values.4.value" and consumer.output[1] == "present.4.value"
    readers = [n for n in graph.node if "past_key_values.4.key" in n.input]
    dummy_source = "past_key_values.4.key" if cache == "static" else "present.4.value"
    writer = next(n for n in graph.node if "present.4.key" in n.output)
    assert (writer.op_type, list(writer.input)) == ("Identity", [dummy_source])
    assert readers == ([writer] if cache == "static" else [])
    shapes = {i.name: [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert shapes["past_key_values.4.key"] == shapes["past_key_values.4.value"]
    if cache == "static":
        assert shapes["past_key_values.4.key"] == ["batch_size", 2, CAPACITY, 16]


def test_even_consumer_count_needs_no_cache_beyond_the_models(genai_artifact, checkpoints, tmp_path):
    """Consumers 2 and 4 share pseudo layer 6: as many cache tensors as the optimum layout."""
    graph, caches = _cache_inputs(genai_artifact("uniattn_even", "dynamic", False))
    assert caches == [f"past_key_values.{layer}.{kind}" for layer in (0, 1, 3, 5, 6) for kind in ("key", "value")]
    consumers = {n.name: n.input[1] for n in graph.node if n.op_type == "UniAttnConsumer"}
    assert consumers == {
        "/model/layers.2/self_attn/UniAttnConsumer": "past_key_values.6.key",
        "/model/layers.4/self_attn/UniAttnConsumer": "past_key_values.6.value",
    }
    optimum = export_model(load_model(checkpoints["uniattn_even"]), tmp_path / "optimum")
    assert len(caches) == len(load_artifact(optimum).cache_names())


def _threads_started(make, alive: list) -> int:
    """Threads this process gains by `make()` (an ONNX Runtime session's intra-op pool starts
    with the session: one thread fewer than its size). What it made is kept in `alive`: no
    thread of an earlier object may exit during a later count."""
    before = len(os.listdir("/proc/self/task"))
    alive.append(make())
    return len(os.listdir("/proc/self/task")) - before


def _genai_model(folder, overlay: dict | None = None):
    import onnxruntime_genai as og

    config = og.Config(str(folder))
    if overlay is not None:
        config.overlay(json.dumps({"model": {"decoder": {"session_options": overlay}}}))
    return og.Model(config)


def _ort_session(onnx_file, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])


def test_genai_folders_run_onnx_runtimes_default_intra_op_threads(genai_artifact):
    """onnxruntime-genai's own default without intra_op_num_threads is half the logical CPUs
    (one thread on a 2-core machine); our folders say 0, ONNX Runtime's default, and genai
    then starts as many intra-op threads as a default InferenceSession of the same graph
    (measured against one thread of each). load_genai_model sets the same for other folders."""
    folder = genai_artifact("uniattn_odd", "static", False)
    config = json.loads((folder / "genai_config.json").read_text())
    assert config["model"]["decoder"]["session_options"]["intra_op_num_threads"] == 0
    alive: list = []
    _threads_started(lambda: _genai_model(folder), alive)  # genai's once-per-process threads start here
    one_genai = _threads_started(lambda: _genai_model(folder, {"intra_op_num_threads": 1}), alive)
    ours = _threads_started(lambda: _genai_model(folder), alive)
    through_loader = _threads_started(lambda: load_genai_model(folder), alive)
    _threads_started(lambda: _ort_session(folder / "model.onnx", 1), alive)  # the Python module's own ORT: the same
    one_ort = _threads_started(lambda: _ort_session(folder / "model.onnx", 1), alive)
    default_ort = _threads_started(lambda: _ort_session(folder / "model.onnx", None), alive)
    assert ours - one_genai == through_loader - one_genai == default_ort - one_ort == _physical_cores() - 1


def _physical_cores() -> int:
    """Distinct (package, core) pairs of the CPUs this process may run on (ONNX Runtime's default)."""
    cores = set()
    for cpu in os.sched_getaffinity(0):
        topology = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        with open(f"{topology}/physical_package_id") as package, open(f"{topology}/core_id") as core:
            cores.add((package.read().strip(), core.read().strip()))
    return len(cores)


def test_decode_timing_returns_numbers(genai_artifact):
    timing = time_genai_decode(genai_artifact("uniattn_odd", "static", False), batch=2, prompt_length=5, new_tokens=4, repeats=1)
    assert timing["decode_ms_per_token"] > 0 and timing["prefill_ms"] > 0
    assert (timing["batch"], timing["prompt_length"], timing["provider"]) == (2, 5, "cpu")


def test_prompts_ending_with_the_pad_token_are_refused():
    with pytest.raises(UniAttnError, match="prompt 1 ends with the pad token 0, which onnxruntime-genai would take as padding"):
        pad_right([[3, 0, 4], [5, 0]], PAD)


def test_dynamic_caches_with_a_sliding_window_are_refused(checkpoints, tmp_path):
    """v1 measures the window in cache slots, which right padding shifts (static caches: above)."""
    model = load_model(checkpoints["mistral_window"])
    with pytest.raises(UniAttnError, match=r"this model has a sliding window \(8 tokens\), which dynamic caches measure in cache slots"):
        export_model(
            model, tmp_path / "out", cache="dynamic", layout="genai",
            extra_files=lambda folder: write_genai_config(folder, model, cache="dynamic", capacity=None, library=None),
        )  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_generations_beyond_the_capacity_are_refused(genai_artifact):
    folder = genai_artifact("uniattn_odd", "static", False)
    with pytest.raises(UniAttnError, match=r"prompt \+ new tokens = 49 tokens exceeds the artifact's cache capacity \(48\)"):
        genai_generate(folder, [[5, 6, 7, 8, 9]], CAPACITY - 4)
    with pytest.raises(UniAttnError, match="exceeds the artifact's cache capacity"):
        time_genai_decode(folder, batch=1, prompt_length=40, new_tokens=9)


def test_cuda_graphs_need_the_cuda_provider(genai_artifact):
    with pytest.raises(UniAttnError, match="CUDA graphs need the cuda provider"):
        load_genai_model(genai_artifact("uniattn_odd", "static", False), "cpu", cuda_graph=True)


def test_cli_genai_target_writes_a_folder_genai_loads(checkpoints, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["model", str(checkpoints["uniattn_odd"]), "--target", "genai", "-o", str(out), "--max-length", "32",
            "--custom-ops", "off", "--max-new-tokens", "3", "--json"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr()
    report = json.loads(printed.out)
    assert report["passed"] and "static caches of 32 tokens" in report["runtime"]
    assert f"onnxruntime-genai og.Model({out}) loads it, with the function bodies" in printed.err
    assert load_artifact(out).cache_layout == "genai"
    assert genai_generate(out, PROMPTS[:2], 3) == OrtSession(out, custom_ops=False).generate(
        PROMPTS[:2], 3, eos_token_id=EOS, pad_token_id=PAD
    ).sequences(EOS)


def test_cli_genai_target_refuses_dynamic_caches_with_last_logits(checkpoints, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["model", str(checkpoints["base"]), "--target", "genai", "--cache", "dynamic", "--logits", "last", "-o", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "uniattn-export model: error: --target genai with dynamic caches needs the logits of every position "
        "(onnxruntime-genai picks each right-padded row's last real token itself). Drop --logits last, or pass --cache static."
    ]
    assert not out.exists()


def test_the_shipped_library_follows_the_ort_session_rule(monkeypatch, tmp_path):
    """genai_library_for and OrtSession take the custom-op library by one rule
    (targets/ort/session.py custom_op_library_for): same choice, same errors."""
    from uniattn_export.targets.ort import session as session_module

    library = str(tmp_path / ORT_LIBRARY)
    monkeypatch.setattr(session_module, "ort_custom_op_library", lambda: library)
    monkeypatch.setattr(session_module, "kernel_abi_version", lambda: 1)  # op version 1 only
    assert genai_library_for("dynamic", None) == tmp_path / ORT_LIBRARY
    assert genai_library_for("static", None) is None and genai_library_for("dynamic", False) is None
    with pytest.raises(UniAttnError) as error:
        genai_library_for("static", True)
    assert str(error.value) == (
        f"the custom-op library {library} implements op version 1 only (kernel ABI 1), but this static-cache "
        "artifact needs op version 2. Rebuild the native libraries from this checkout, or run with --custom-ops off."
    )
    monkeypatch.setattr(session_module, "kernel_abi_version", lambda: 2)
    assert genai_library_for("static", True) == tmp_path / ORT_LIBRARY
    monkeypatch.setattr(session_module, "ort_custom_op_library", lambda: None)
    assert genai_library_for("static", None) is None
    with pytest.raises(UniAttnError, match=r"^the custom-op library \(libuniattn_ort.so\) is not built"):
        genai_library_for("dynamic", True)
