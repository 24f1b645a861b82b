"""Profile ranges and the input shapes they give every graph input."""

from __future__ import annotations

import pytest

from uniattn_export.errors import UniAttnError
from uniattn_export.targets.trt.graph import TensorInfo
from uniattn_export.targets.trt.profiles import DimRange, ProfileSpec


def test_range_parsing():
    assert DimRange.parse("1:4:16", "batch", 1) == DimRange(1, 4, 16)
    assert DimRange.parse("8", "batch", 1) == DimRange(8, 8, 8)
    assert str(DimRange(0, 256, 2048)) == "0:256:2048"
    with pytest.raises(UniAttnError, match=r"past range -1:0:4 must satisfy 0 <= min"):
        DimRange.parse("-1:0:4", "past", 0)
    with pytest.raises(UniAttnError, match="batch range '1:2' is not MIN:OPT:MAX"):
        DimRange.parse("1:2", "batch", 1)


def test_spec_round_trips_through_its_dict():
    spec = ProfileSpec(batch=DimRange(1, 2, 3), sequence=DimRange(1, 5, 9), past=DimRange(0, 0, 7))
    assert ProfileSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(UniAttnError, match="sequence range 0:1:1"):
        ProfileSpec(sequence=DimRange(0, 1, 1))


def test_input_shapes_follow_the_optimum_names():
    spec = ProfileSpec(batch=DimRange(1, 2, 4), sequence=DimRange(1, 3, 8), past=DimRange(0, 5, 10))
    inputs = [
        TensorInfo("input_ids", "int64", ("batch", "sequence")),
        TensorInfo("attention_mask", "int64", ("batch", "total")),
        TensorInfo("past_key_values.0.value", "float16", ("batch", 2, "past", 64)),
    ]
    assert spec.input_shapes(inputs) == {
        "input_ids": [[1, 1], [2, 3], [4, 8]],
        "attention_mask": [[1, 1], [2, 8], [4, 18]],
        "past_key_values.0.value": [[1, 2, 0, 64], [2, 2, 5, 64], [4, 2, 10, 64]],
    }


@pytest.mark.parametrize(
    "info, message",
    [
        (TensorInfo("inputs_embeds", "float32", ("batch", "sequence", 64)), "graph input 'inputs_embeds'"),
        (TensorInfo("past_key_values.0.key", "float32", ("batch", "heads", "past", 64)), "has dynamic axis 1"),
        (TensorInfo("attention_mask", "int64", ("batch",)), "graph input 'attention_mask'"),
    ],
)
def test_inputs_it_cannot_bound(info, message):
    with pytest.raises(UniAttnError, match=message):
        ProfileSpec().input_shapes([info])
