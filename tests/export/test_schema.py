"""Every Python form of the op contract equals op_schema.json: the torch custom ops, the ONNX
nodes the exporter emits, the model-local function bodies and the TensorRT plugin fields.
A change on either side without the other fails here."""

from __future__ import annotations

import inspect
import json

import onnx
import pytest

from uniattn_export.export import functions, ops
from uniattn_export.export.schema import PLUGIN_NAMESPACE, PRODUCER_OP, SCHEMA, SCHEMA_FILE
from uniattn_export.targets.trt import plugins

VERSIONS = sorted(SCHEMA.versions)
ROLES = ("producer", "consumer")
_ATTRIBUTE_TYPES = {"int": onnx.AttributeProto.INT, "float": onnx.AttributeProto.FLOAT, "string": onnx.AttributeProto.STRING}
_TORCH_TYPES = {"int": "int", "float": "float"}


def _spec(version: int, role: str):
    return getattr(SCHEMA.versions[version], role)


def test_schema_loads_every_field_of_the_json():
    raw = json.loads(SCHEMA_FILE.read_text())
    assert SCHEMA.domain == raw["domain"] == "uniattn"
    assert [str(v) for v in VERSIONS] == sorted(raw["versions"])
    for version in VERSIONS:
        for role in ROLES:
            spec = _spec(version, role)
            entry = raw["versions"][str(version)]["ops"][spec.name]
            assert [(t.name, t.type, list(t.shape), t.optional) for t in spec.inputs + spec.outputs] == [
                (t["name"], t["type"], t["shape"], bool(t.get("optional"))) for t in entry["inputs"] + entry["outputs"]
            ]
            assert [(a.name, a.type, a.default) for a in spec.attributes] == [
                (a["name"], a["type"], a.get("default")) for a in entry["attributes"]
            ]
            assert spec.aliases == entry["aliases"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("role", ROLES)
def test_torch_custom_op_arguments_follow_the_schema(version, role):
    spec = _spec(version, role)
    torch_op = ops.TORCH_OPS[version][ROLES.index(role)]
    arguments = [(a.name, str(a.type)) for a in torch_op._schema.arguments]
    computed = [a for a in spec.attributes if a.name not in ops.ROUTING_ATTRIBUTES]
    # is_causal is an int attribute carried as a torch bool.
    expected = [(t.name, "Tensor") for t in spec.inputs] + [
        (a.name, "bool" if a.name == "is_causal" else _TORCH_TYPES[a.type]) for a in computed
    ]
    assert arguments == expected
    assert len(torch_op._schema.returns) == len(spec.outputs)
    # The keyword defaults the model's layers rely on are the schema's.
    wrapper = ops.EXPORT_OPS[SCHEMA.versions[version].cache]
    signature = inspect.signature(getattr(wrapper, role))
    assert list(signature.parameters)[: len(spec.inputs)] == list(spec.input_names)
    keywords = {n: p.default for n, p in signature.parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert {n: (None if d is inspect.Parameter.empty else d) for n, d in keywords.items()} == {
        a.name: a.default for a in computed
    }


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("role", ROLES)
def test_emitted_node_follows_the_schema(version, role):
    spec = _spec(version, role)
    proto = ops.NODE_FUNCTIONS[version][ROLES.index(role)].to_function_proto()
    (node,) = [n for n in proto.node if n.domain == SCHEMA.domain]
    assert node.op_type == spec.name
    assert len(node.input) == len(spec.inputs) and len(node.output) == len(spec.outputs)
    assert {o.domain: o.version for o in proto.opset_import}[SCHEMA.domain] == version
    attributes = {a.name: a for a in node.attribute}
    assert list(attributes) == list(spec.attribute_names)
    for name in ops.ROUTING_ATTRIBUTES:  # literals in the translation: the schema's defaults
        assert onnx.helper.get_attribute_value(attributes[name]).decode() == spec.default(name)
    # Everything else is forwarded from the torch op's arguments.
    assert all(attributes[a].ref_attr_name == a for a in attributes if a not in ops.ROUTING_ATTRIBUTES)


@pytest.mark.parametrize("version", VERSIONS)
def test_function_bodies_follow_the_schema(version):
    bodies = {p.name: p for p in functions.function_protos(version)}
    assert set(bodies) == {_spec(version, r).name for r in ROLES}
    for role in ROLES:
        spec = _spec(version, role)
        body = bodies[spec.name]
        assert body.domain == SCHEMA.domain
        assert list(body.input) == list(spec.input_names)
        assert list(body.output) == list(spec.output_names)
        assert list(body.attribute) == [a.name for a in spec.attributes if a.required]
        defaults = {a.name: (a.type, onnx.helper.get_attribute_value(a)) for a in body.attribute_proto}
        expected = {
            a.name: (_ATTRIBUTE_TYPES[a.type], a.default.encode() if a.type == "string" else a.default)
            for a in spec.attributes if not a.required
        }  # fmt: skip
        assert defaults == expected
        assert {o.domain: o.version for o in body.opset_import} == {"": SCHEMA.versions[version].onnx_opset}


@pytest.mark.parametrize("name", sorted(SCHEMA.graph_ops))
def test_graph_op_bodies_follow_the_schema(name):
    spec = SCHEMA.graph_ops[name]
    body = functions.local_function(SCHEMA.domain, name)
    assert (body.domain, body.name) == (SCHEMA.domain, name)
    assert list(body.input) == list(spec.input_names)
    assert list(body.output) == list(spec.output_names)
    assert list(body.attribute) == [a.name for a in spec.attributes if a.required]
    assert not [a for a in spec.attributes if not a.required]  # (no graph op has a default yet)


@pytest.mark.parametrize("version", sorted(SCHEMA.versions))
def test_tensorrt_plugin_layouts_follow_the_schema(version):
    """The TensorRT plugins of every contract version: slots, fields, cache input, aliases."""
    contract = SCHEMA.versions[version]
    assert plugins.ROUTING_ATTRIBUTES == ops.ROUTING_ATTRIBUTES
    kinds = {"T": "T", "int64": "int64", "float": "float32"}
    fields = inspect.signature(plugins.AttentionFields).parameters
    for spec in (contract.producer, contract.consumer):
        layout = plugins.layout(spec.name, contract.plugin_version)
        assert (layout.op_type, layout.plugin_version, PLUGIN_NAMESPACE) == (spec.name, str(version), "uniattn")
        assert layout.input_kinds == tuple(kinds[t.type] for t in spec.inputs)
        assert layout.output_kinds == tuple(kinds[t.type] for t in spec.outputs)
        assert spec.inputs[layout.cache_input].name == ("past_key" if spec.name == PRODUCER_OP else "past_value")
        assert {spec.outputs[o].name: spec.inputs[i].name for o, i in layout.aliases.items()} == spec.aliases
        attributes = [a for a in spec.attributes if a.name not in ops.ROUTING_ATTRIBUTES]
        # num_outputs is no attribute: the builder writes it (a producer's used outputs).
        extra = ("num_outputs",) if spec.name == PRODUCER_OP else ()
        assert layout.field_names == tuple(a.name for a in attributes) + extra
        for attribute in attributes:  # the plugin fields' defaults are the attributes' defaults
            default = fields[attribute.name].default
            assert (None if default is inspect.Parameter.empty else default) == attribute.default
    assert fields["num_outputs"].default == len(contract.producer.outputs)


def test_dtype_table_uses_onnx_element_types():
    """dtypes.py spells ONNX element types as numbers (no onnx import for the CLI's parser)."""
    import onnx

    from uniattn_export.dtypes import DTYPES, onnx_type

    expected = {"float32": onnx.TensorProto.FLOAT, "float16": onnx.TensorProto.FLOAT16, "bfloat16": onnx.TensorProto.BFLOAT16}
    assert {name: d.onnx for name, d in DTYPES.items()} == expected
    assert onnx_type("int64") == onnx.TensorProto.INT64 and onnx_type("float") == onnx.TensorProto.FLOAT
