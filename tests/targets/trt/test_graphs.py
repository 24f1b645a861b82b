"""graphs.StaticBatch on the CPU: the buffers a static-cache TensorRT session binds once per
batch size (torch tensors; the CUDA graphs themselves need a GPU: gpu_graph_check.py)."""

from __future__ import annotations

import numpy as np
import torch

from uniattn_export.targets.trt.graphs import StaticBatch

SPECS = {"past_key_values.0.key": ((2, 1, 8, 4), torch.float16), "past_key_values.1.value": ((2, 1, 8, 4), torch.float16)}


def test_aliased_engines_read_and_write_one_cache_set():
    batch = StaticBatch(2, 8, SPECS, aliased=True, device="cpu")
    assert len(batch.caches) == 1 and batch.past is batch.present
    addresses = {name: t.data_ptr() for name, t in batch.past.items()}
    for _ in range(3):
        batch.finish_step()
        assert batch.key == (2, 0) and {n: t.data_ptr() for n, t in batch.present.items()} == addresses


def test_function_body_engines_alternate_two_cache_sets():
    batch = StaticBatch(2, 8, SPECS, aliased=False, device="cpu")
    first, second = batch.caches
    assert (batch.past, batch.present, batch.key) == (first, second, (2, 0))
    batch.finish_step()
    assert (batch.past, batch.present, batch.key) == (second, first, (2, 1))
    batch.finish_step()
    assert (batch.past, batch.present, batch.key) == (first, second, (2, 0))
    assert batch.past["past_key_values.0.key"].shape == (2, 1, 8, 4)
    assert batch.past["past_key_values.0.key"].dtype == torch.float16


def test_decode_inputs_are_written_in_place_and_the_mask_is_zero_padded():
    batch = StaticBatch(2, 8, SPECS, aliased=True, device="cpu")
    bound = (batch.input_ids.data_ptr(), batch.position_ids.data_ptr(), batch.attention_mask.data_ptr())
    prompt_mask = np.array([[1, 1, 1], [1, 0, 0]])  # right padding: row 1 has one real token
    batch.write_mask(prompt_mask)
    # generate's convention: each decode step appends a column of ones.
    step_mask = np.concatenate([prompt_mask, np.ones((2, 1), np.int64)], axis=1)
    batch.write_decode_inputs(np.array([[7], [9]]), step_mask, np.array([[3], [1]]))
    assert (batch.input_ids.data_ptr(), batch.position_ids.data_ptr(), batch.attention_mask.data_ptr()) == bound
    assert batch.input_ids.tolist() == [[7], [9]] and batch.position_ids.tolist() == [[3], [1]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 0, 0, 0, 0], [1, 0, 0, 1, 0, 0, 0, 0]]
    assert batch.mask_columns == 4
    # Only new columns travel: an earlier column changed on the host is not re-sent.
    step_mask = np.concatenate([step_mask, np.ones((2, 1), np.int64)], axis=1)
    step_mask[1, 1] = 1
    batch.write_decode_inputs(np.array([[1], [2]]), step_mask, np.array([[4], [2]]))
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0, 0, 0], [1, 0, 0, 1, 1, 0, 0, 0]]


def test_reset_zeroes_caches_mask_and_parity_in_the_same_memory():
    batch = StaticBatch(2, 8, SPECS, aliased=False, device="cpu")
    for caches in batch.caches:
        for tensor in caches.values():
            tensor.fill_(float("nan"))
    batch.write_mask(np.ones((2, 5), np.int64))
    batch.finish_step()
    addresses = [{n: t.data_ptr() for n, t in c.items()} for c in batch.caches]
    batch.reset()
    assert batch.parity == 0 and batch.mask_columns == 0 and not batch.attention_mask.any()
    assert all(not t.any() for c in batch.caches for t in c.values())  # NaN gone too
    assert [{n: t.data_ptr() for n, t in c.items()} for c in batch.caches] == addresses
    batch.write_mask(np.ones((2, 2), np.int64))
    assert batch.attention_mask.sum().item() == 4
