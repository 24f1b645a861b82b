"""The child process of an engine build: `python -m uniattn_export.targets.trt.worker REQUEST`.

It parses (and for a build, builds) with a fresh plugin registry and the library path the
TensorRT-RTX parser needs (see build.py and compat.py), then writes result.json next to the
request. It imports only what that takes: no torch, no transformers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ...dtypes import trt_type_names
from ...errors import UniAttnError
from . import compat, graph


def _describe_network(trt, network) -> dict:
    """Layers and I/O of the parsed network (engines cannot be deserialized without a GPU, so
    this is what can be inspected on a build machine)."""
    dtypes = trt_type_names(trt)
    by_type: dict[str, int] = {}
    plugins = []
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        kind = str(layer.type).split(".")[-1]
        by_type[kind] = by_type.get(kind, 0) + 1
        if kind.startswith("PLUGIN"):
            entry = {"name": layer.name, "kind": kind,
                     "outputs": [layer.get_output(i).name for i in range(layer.num_outputs)]}  # fmt: skip
            entry.update(_plugin_aliases(trt, layer))
            plugins.append(entry)
    io = []
    for mode, count, get in (("input", network.num_inputs, network.get_input),
                             ("output", network.num_outputs, network.get_output)):  # fmt: skip
        for index in range(count):
            tensor = get(index)
            io.append({"name": tensor.name, "mode": mode, "dtype": dtypes.get(tensor.dtype, str(tensor.dtype)),
                       "shape": list(tensor.shape)})  # fmt: skip
    summary = {"layers": network.num_layers, "layer_types": dict(sorted(by_type.items())), "plugin_layers": plugins}
    return {"summary": summary, "io": io}


def _plugin_aliases(trt, layer) -> dict:
    """{"version", "aliases": {output name: input name}} of a UniAttn plugin layer, as the
    plugin object TensorRT holds declares them (get_aliased_input); {} for other plugins."""
    layer.__class__ = trt.IPluginV3Layer  # the bindings hand out every layer as ILayer
    plugin = layer.plugin
    build = plugin.get_capability_interface(trt.PluginCapabilityType.BUILD)
    if not hasattr(build, "get_aliased_input"):
        return {}
    aliases = {}
    for index in range(layer.num_outputs):
        source = build.get_aliased_input(index)
        if source >= 0:
            aliases[layer.get_output(index).name] = layer.get_input(source).name
    return {"version": str(plugin.plugin_version), "aliases": aliases}


def run(request: dict) -> dict:
    from .plugins import register_plugins

    flavour = compat.load(request["flavour"])
    trt = flavour.module
    if request["plugins"]:
        register_plugins(flavour)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(flavour.network_flags())
    parser = trt.OnnxParser(network, logger)
    if request["plugins"]:
        flavour.set_plugin_override(parser)
    onnx_path = Path(request["onnx"])
    model = graph.prepare_for_parser(graph.load_graph(onnx_path), request["plugins"])
    if not parser.parse(model.SerializeToString(), str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        return {"error": f"the ONNX parser rejected the model: {errors}"}
    if request["action"] == "parse":
        return {"network": _describe_network(trt, network)}

    config = builder.create_builder_config()
    for input_shapes in request["profiles"]:  # in order: the engine's profile indices
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in input_shapes.items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
    if request["aliased_plugin_io"]:
        flavour.enable_aliased_plugin_io(config)
    capabilities = flavour.set_compute_capabilities(config, request["compute_capabilities"])
    flavour.set_tf32(config, request["tf32"])
    config.builder_optimization_level = request["optimization_level"]
    # Layer names and details stay inspectable in the engine (EngineInspector on a GPU).
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if request["workspace_mib"]:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, request["workspace_mib"] << 20)
    cache_path = Path(request["timing_cache"]) if request["timing_cache"] else None
    cache = None
    if cache_path is not None:
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
        config.set_timing_cache(cache, False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        return {"error": "the builder produced no engine"}
    Path(request["engine"]).write_bytes(serialized)
    if cache is not None:
        Path(request["timing_cache_out"]).write_bytes(cache.serialize())
    return {"network": _describe_network(trt, network), "compute_capabilities": capabilities}


def main(request_path: str) -> int:
    request_file = Path(request_path)
    try:
        result = run(json.loads(request_file.read_text()))
    except UniAttnError as exc:
        result = {"error": str(exc)}
    (request_file.parent / "result.json").write_text(json.dumps(result))
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
