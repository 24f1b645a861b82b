"""The benchmark's settings: the matrix, shape lists and their errors."""

from __future__ import annotations

import pytest

from uniattn_export.bench import BenchSettings, parse_shapes
from uniattn_export.errors import UniAttnError


def test_parse_shapes():
    assert parse_shapes("1x2048, 32x8192") == {(1, 2048), (32, 8192)}
    assert parse_shapes("") == parse_shapes("none") == frozenset()
    with pytest.raises(UniAttnError, match=r"cannot read the shape '32\*8'\. Write shapes as BATCHxCONTEXT"):
        parse_shapes("1x8,32*8")


def test_cells_cover_the_matrix_smallest_cache_first():
    cells = BenchSettings(batches=(32, 1, 8), contexts=(8192, 512, 2048)).cells()
    assert sorted(cells) == sorted((b, c) for b in (1, 8, 32) for c in (512, 2048, 8192))
    sizes = [b * c for b, c in cells]
    assert sizes == sorted(sizes)
    assert cells[0] == (1, 512) and cells[-1] == (32, 8192)


def test_positions_needed_count_decode_steps_only_where_a_cell_decodes():
    both = BenchSettings(batches=(1,), contexts=(64, 512), decode_steps=5, warmup_steps=2)
    assert both.positions_needed() == 512 + 7
    prefill_only_at_512 = BenchSettings(batches=(1,), contexts=(64, 512), decode_steps=5, warmup_steps=2,
                                        decode_shapes=frozenset({(1, 64)}), prefill_shapes=frozenset({(1, 512)}))  # fmt: skip
    assert prefill_only_at_512.positions_needed() == 512


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"batches": ()}, r"batches must be positive integers, got \[\]"),
        ({"contexts": (512, 0)}, r"contexts must be positive integers, got \[512, 0\]"),
        ({"backends": ("ort-library", "tensorrt")}, r"unknown backend\(s\) \['tensorrt'\]"),
        ({"device": "tpu"}, "unknown device 'tpu'"),
        ({"decode_steps": 0}, "decode_steps must be >= 1, got 0"),
        ({"warmup_steps": -1}, "warmup_steps must be >= 0"),
        ({"time_budget": 0.0}, "time_budget must be > 0"),
        ({"cell_seconds": -1.0}, "cell_seconds must be > 0"),
        ({"compile_shapes": frozenset({(4, 512)})}, "compile shape 4x512 is not in the matrix"),
        ({"compile_backend": "tvm"}, "unknown compile backend 'tvm'"),
        ({"decode_shapes": frozenset({(2, 512)})}, "--decode-cells shape 2x512 is not in the matrix"),
        ({"prefill_shapes": frozenset({(1, 100)})}, "--prefill-cells shape 1x100 is not in the matrix"),
    ],
)
def test_bad_settings_say_what_is_wrong(fields, message):
    with pytest.raises(UniAttnError, match=message):
        BenchSettings(**fields)


def test_settings_round_trip_to_json_types():
    settings = BenchSettings(batches=(1,), contexts=(64,), compile_shapes=frozenset({(1, 64)}))
    data = settings.to_dict()
    assert data["compile_shapes"] == ["1x64"] and data["batches"] == [1] and data["backends"][0] == "ort-static-library"


def test_decode_and_prefill_cells_choose_the_matrix_and_the_phases():
    settings = BenchSettings(batches=(1, 8, 32), contexts=(2048, 8192), decode_shapes=frozenset({(1, 2048), (32, 8192)}),
                             prefill_shapes=frozenset({(8, 8192)}))  # fmt: skip
    assert settings.cells() == [(1, 2048), (8, 8192), (32, 8192)]
    assert settings.runs("decode", 32, 8192) and not settings.runs("decode", 8, 8192)
    assert settings.runs("prefill", 8, 8192) and not settings.runs("prefill", 1, 2048)
    assert BenchSettings().runs("prefill", 1, 512)  # no list: every cell runs both phases
    assert settings.to_dict()["decode_shapes"] == ["1x2048", "32x8192"]
