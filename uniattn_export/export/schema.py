"""The op contract as typed data: op_schema.json (docs/ops.md) loaded once.

Every Python backend takes its names, versions, argument order and attribute defaults from
here (the torch custom ops, the translation to ONNX nodes, the function bodies, the TensorRT
plugin fields), and tests/export/test_schema.py fails when one of them drifts from the JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

SCHEMA_FILE = Path(__file__).with_name("op_schema.json")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    type: str  # "T" (the activation type), "int64" or "float"
    shape: tuple[str, ...]
    optional: bool = False


@dataclass(frozen=True)
class AttributeSpec:
    name: str
    type: str  # "int", "float" or "string"
    default: int | float | str | None = None  # None: required

    @property
    def required(self) -> bool:
        return self.default is None


@dataclass(frozen=True)
class OpSpec:
    name: str
    version: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    attributes: tuple[AttributeSpec, ...]
    aliases: dict[str, str]  # output name -> the input it may share memory with

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    @property
    def attribute_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.attributes)

    def input_index(self, name: str) -> int:
        return self.input_names.index(name)

    def output_index(self, name: str) -> int:
        return self.output_names.index(name)

    def default(self, attribute: str):
        return next(a.default for a in self.attributes if a.name == attribute)


@dataclass(frozen=True)
class ContractVersion:
    version: int
    cache: str  # "dynamic" (v1: growing caches) or "static" (v2: fixed capacity, in place)
    onnx_opset: int  # default-domain opset of the graph and the function bodies
    producer: OpSpec
    consumer: OpSpec

    @property
    def plugin_version(self) -> str:
        return str(self.producer.default("plugin_version"))


@dataclass(frozen=True)
class Schema:
    domain: str
    cuda_linear_config_key: str  # the session config entry enabling Linear's CUDA kernel (docs/ops.md)
    plugin_namespace: str
    versions: dict[int, ContractVersion]
    graph_ops: dict[str, OpSpec]  # ops outside the attention contract, the same under every version (version 0)

    def for_cache(self, cache: str) -> ContractVersion:
        return next(v for v in self.versions.values() if v.cache == cache)


PRODUCER_OP = "UniAttnProducer"
CONSUMER_OP = "UniAttnConsumer"
GATED_SILU_OP = "GatedSilu"
SPLIT_ROTARY_OP = "SplitRotary"
LINEAR_OP = "Linear"


def _op(name: str, version: int, raw: dict) -> OpSpec:
    return OpSpec(
        name=name,
        version=version,
        inputs=tuple(TensorSpec(t["name"], t["type"], tuple(t["shape"]), bool(t.get("optional"))) for t in raw["inputs"]),
        outputs=tuple(TensorSpec(t["name"], t["type"], tuple(t["shape"]), bool(t.get("optional"))) for t in raw["outputs"]),
        attributes=tuple(AttributeSpec(a["name"], a["type"], a.get("default")) for a in raw["attributes"]),
        aliases=dict(raw["aliases"]),
    )


@lru_cache(maxsize=1)
def load_schema() -> Schema:
    raw = json.loads(SCHEMA_FILE.read_text())
    versions = {}
    for key, entry in raw["versions"].items():
        version = int(key)
        versions[version] = ContractVersion(
            version=version,
            cache=entry["cache"],
            onnx_opset=int(raw["onnx_opset"][key]),
            producer=_op(PRODUCER_OP, version, entry["ops"][PRODUCER_OP]),
            consumer=_op(CONSUMER_OP, version, entry["ops"][CONSUMER_OP]),
        )
    graph_ops = {name: _op(name, 0, entry) for name, entry in raw["graph_ops"].items()}
    return Schema(domain=raw["domain"], cuda_linear_config_key=raw["cuda_linear_config_key"],
                  plugin_namespace=raw["plugin_namespace"], versions=versions, graph_ops=graph_ops)


SCHEMA = load_schema()
DOMAIN = SCHEMA.domain
CUDA_LINEAR_CONFIG_KEY = SCHEMA.cuda_linear_config_key
PLUGIN_NAMESPACE = SCHEMA.plugin_namespace
CACHE_MODES = tuple(v.cache for v in SCHEMA.versions.values())
