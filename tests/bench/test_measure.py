"""The CUDA trace accounting of a profiled decode step (bench/measure.py): a trace of known
kernels and copies in torch.profiler's Chrome-trace shape, accounted by hand."""

from uniattn_export.bench.measure import TOP_KERNELS, account_cuda_trace, kernel_label


def _kernel(name: str, us: float) -> dict:
    return {"cat": "kernel", "name": name, "dur": us}


def test_kernels_are_ranked_by_total_time_with_copies_and_memcpy_bytes():
    events = [
        _kernel("gemv_fp16", 30.0), _kernel("uniattn::producer_decode", 50.0), _kernel("gemv_fp16", 30.0),
        _kernel("onnxruntime::cuda::_ConcatKernel", 10.0), _kernel("rms_norm", 5.0),
        {"cat": "gpu_memcpy", "name": "Memcpy DtoD (Device -> Device)", "args": {"bytes": 4096}},
        {"cat": "gpu_memcpy", "name": "Memcpy DtoH (Device -> Pinned)", "args": {"bytes": 8}},
        {"cat": "cpu_op", "name": "not a kernel", "dur": 1000.0},
    ]  # fmt: skip
    profile = account_cuda_trace(events)
    assert profile["kernels"] == 5
    assert profile["kernel_us"] == 125.0
    assert [k["name"] for k in profile["top_kernels"]] == [
        "gemv_fp16", "uniattn::producer_decode", "onnxruntime::cuda::_ConcatKernel", "rms_norm"]  # fmt: skip
    gemv = profile["top_kernels"][0]
    assert (gemv["count"], gemv["us"], gemv["share"]) == (2, 60.0, 60.0 / 125.0)
    assert sum(k["share"] for k in profile["top_kernels"]) == 1.0
    assert profile["copy_kernels"] == {"onnxruntime::cuda::_ConcatKernel": {"count": 1, "us": 10.0}}
    assert profile["memcpy_dtod_bytes"] == 4096
    assert profile["memcpy_bytes"] == {"Memcpy DtoD (Device -> Device)": 4096, "Memcpy DtoH (Device -> Pinned)": 8}


def test_only_the_largest_kernels_are_listed():
    events = [_kernel(f"kernel_{i}", float(i + 1)) for i in range(TOP_KERNELS + 5)]
    profile = account_cuda_trace(events)
    assert len(profile["top_kernels"]) == TOP_KERNELS
    assert profile["top_kernels"][0]["name"] == f"kernel_{TOP_KERNELS + 4}"
    assert profile["kernel_us"] == sum(range(1, TOP_KERNELS + 6))


def test_a_step_without_kernels_has_no_shares():
    profile = account_cuda_trace([])
    assert (profile["kernels"], profile["kernel_us"], profile["top_kernels"], profile["memcpy_dtod_bytes"]) == (0, 0, [], 0)


def test_kernel_labels_drop_return_type_namespaces_and_arguments():
    full = ("void uniattn::cuda::(anonymous namespace)::split_kv_kernel<__half, (uniattn::cuda::Weights)0, false, 8>"
            "(uniattn::cuda::(anonymous namespace)::SplitKvKernelArgs<__half>)")  # fmt: skip
    assert kernel_label(full) == "uniattn::cuda::split_kv_kernel"
    assert kernel_label("nvjet_sm90_hsh_128x8_64x12_2x1_v_bz_NNT") == "nvjet_sm90_hsh_128x8_64x12_2x1_v_bz_NNT"
    assert kernel_label("void onnxruntime::cuda::cuApplyLayerNorm<__half, float, __half, true>(__half*, float*)") == (
        "onnxruntime::cuda::cuApplyLayerNorm")
