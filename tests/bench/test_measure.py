"""The CUDA trace accounting of a profiled decode step (bench/measure.py): a trace of known
kernels and copies in torch.profiler's Chrome-trace shape, accounted by hand."""

from uniattn_export.bench.measure import account_cuda_trace, kernel_category, kernel_label


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
    assert [k["name"] for k in profile["kernel_list"]] == [
        "gemv_fp16", "uniattn::producer_decode", "onnxruntime::cuda::_ConcatKernel", "rms_norm"]  # fmt: skip
    gemv = profile["kernel_list"][0]
    assert (gemv["count"], gemv["us"], gemv["share"]) == (2, 60.0, 60.0 / 125.0)
    assert sum(k["share"] for k in profile["kernel_list"]) == 1.0
    assert "top_kernels" not in profile  # one list, not a second truncated copy
    # uniattn::producer_decode holds none of the attention words: other
    assert profile["by_category"] == {
        "gemm": {"count": 2, "us": 60.0}, "norm": {"count": 1, "us": 5.0}, "cache write": {"count": 1, "us": 10.0},
        "other": {"count": 1, "us": 50.0}}  # fmt: skip
    assert list(profile["by_category"]) == ["gemm", "norm", "cache write", "other"]  # the fixed order of kinds
    assert profile["copy_kernels"] == {"onnxruntime::cuda::_ConcatKernel": {"count": 1, "us": 10.0}}
    assert profile["memcpy_dtod_bytes"] == 4096
    assert profile["memcpy_bytes"] == {"Memcpy DtoD (Device -> Device)": 4096, "Memcpy DtoH (Device -> Pinned)": 8}


def test_every_kernel_name_is_listed():
    # 17 names, 1..17 us: more than the 12 the format 1 file kept
    events = [_kernel(f"kernel_{i}", float(i + 1)) for i in range(17)]
    profile = account_cuda_trace(events)
    assert len(profile["kernel_list"]) == 17
    assert [k["name"] for k in profile["kernel_list"]] == [f"kernel_{i}" for i in range(16, -1, -1)]
    assert [k["us"] for k in profile["kernel_list"]][-3:] == [3.0, 2.0, 1.0]
    assert profile["kernels"] == 17
    assert profile["kernel_us"] == 153.0  # 1 + 2 + ... + 17
    assert profile["by_category"] == {"other": {"count": 17, "us": 153.0}}


def test_names_are_cut_at_160_characters():
    long = "void onnxruntime::cuda::_UnaryElementWise<" + "__half, " * 40 + ">(__half const*)"
    profile = account_cuda_trace([_kernel(long, 2.0), _kernel(long, 3.0)])
    assert profile["kernel_list"] == [{"name": long[:160], "count": 2, "us": 5.0, "share": 1.0}]
    assert profile["by_category"] == {"elementwise": {"count": 2, "us": 5.0}}


def test_a_step_without_kernels_has_no_shares():
    profile = account_cuda_trace([])
    assert (profile["kernels"], profile["kernel_us"], profile["kernel_list"], profile["by_category"],
            profile["memcpy_dtod_bytes"]) == (0, 0, [], {}, 0)  # fmt: skip


# Kernel names seen in profiled decode steps on the H100 (cut as bench.json keeps them where
# longer), with the kind each counts in: the first of KERNEL_CATEGORIES their label matches.
H100_KERNELS = {
    "nvjet_sm90_hsh_128x8_64x12_2x1_v_bz_NNT": "gemm",
    "void uniattn::cuda::(anonymous namespace)::split_kv_kernel<__half, (uniattn::cuda::Weights)0, false, 8>"
    "(uniattn::cuda::SplitKvKernelArgs<__half>)": "attention",  # not split/slice
    "onnxruntime::contrib::cuda::H64::grp4_fp16::kernel_mha(unsigned int, unsigned int, float)": "attention",
    "void onnxruntime::contrib::cuda::SkipLayerNormKernelSmall<__half, 256u, 8, true>(__half*)": "norm",
    "void onnxruntime::contrib::cuda::UnpackRoPEAppend<__half, __half, 16, 64>(__half const*)": "rotary",  # not cache write
    "void onnxruntime::cuda::RotaryEmbeddingBSNH<__half>(__half*)": "rotary",
    "void uniattn::cuda::(anonymous namespace)::scatter_kernel<__half>(uniattn::cuda::Geometry)": "cache write",
    "void onnxruntime::cuda::_SplitSmallInnerKernel<int4>(onnxruntime::cuda::TArray<long, 4>)": "split/slice",
    "void onnxruntime::cuda::_UnaryElementWise<__half, __half, onnxruntime::contrib::cuda::OP_QuickGelu<__half>, 256, 4>"
    "(__half*)": "elementwise",
    "void onnxruntime::cuda::_BinaryElementWiseSimple<true, true, __half, __half, __half, onnxruntime::cuda::OP_Mul<__half, "
    "__half, __half>, 256, 4, int>(__half const*)": "elementwise",
    "void cublasLt::splitKreduce_kernel<32, 16, int, float>(int)": "gemm",  # not split/slice
    "void Generators::cuda::select_sort::GetTop1Kernel<1024>(float const*)": "sampling",
    "onnxruntime::contrib::cuda::GetSequenceLengths(int const*)": "other",
    "void onnxruntime::cuda::_ConcatKernelSameConcatDim(int)": "cache write",
    "void onnxruntime::cuda::_GatherScatterElementsKernel(int)": "cache write",  # scatter before gather
}  # fmt: skip


def test_h100_kernels_are_classified_by_their_first_matching_kind():
    assert {name: kernel_category(name) for name in H100_KERNELS} == H100_KERNELS


def test_the_tail_of_our_static_step_is_classified():
    # seen in the H100 run of 2026-12-06 (tenth session): the last-token tail's ArgMax, the mask's
    # ReduceSum (not sampling) and the positions' Clip
    tail = {
        "void onnxruntime::cuda::detail::arg_min_max_last_axis_cooperative_kernel<__half, int>(__half const*)": "sampling",
        "void onnxruntime::cuda::detail::reduce_sum_nd_kernel<long, 256>(long const*, long*)": "other",
        "void onnxruntime::cuda::_Clip<long>(long const*, long*)": "elementwise",
    }  # fmt: skip
    assert {name: kernel_category(name) for name in tail} == tail


def test_kinds_cover_every_kernel_and_sum_to_the_kernel_time():
    # one launch per name, 1.5 + 0.25 * i us: 15 names (more than 12), 48.75 us, and a second gemm of 10 us
    names = list(H100_KERNELS)
    events = [_kernel(name[:160], 1.5 + 0.25 * i) for i, name in enumerate(names)]
    events.append(_kernel(names[0], 10.0))  # the gemm twice
    profile = account_cuda_trace(events)
    assert profile["kernels"] == 16
    assert profile["kernel_us"] == 58.75
    assert len(profile["kernel_list"]) == 15
    assert {k["name"] for k in profile["kernel_list"]} == {name[:160] for name in names}
    assert profile["kernel_list"][0] == {"name": names[0], "count": 2, "us": 11.5, "share": 11.5 / 58.75}
    assert profile["by_category"] == {
        "gemm": {"count": 3, "us": 11.5 + 4.0},  # nvjet x2, splitKreduce (i = 10)
        "attention": {"count": 2, "us": 1.75 + 2.0},  # i = 1, 2
        "norm": {"count": 1, "us": 2.25},
        "rotary": {"count": 2, "us": 2.5 + 2.75},
        "cache write": {"count": 3, "us": 3.0 + 4.75 + 5.0},  # i = 6, 13, 14
        "split/slice": {"count": 1, "us": 3.25},
        "elementwise": {"count": 2, "us": 3.5 + 3.75},
        "sampling": {"count": 1, "us": 4.25},
        "other": {"count": 1, "us": 4.5},
    }  # fmt: skip
    assert sum(c["us"] for c in profile["by_category"].values()) == profile["kernel_us"]
    assert sum(c["count"] for c in profile["by_category"].values()) == profile["kernels"]


def test_kernel_labels_drop_return_type_namespaces_and_arguments():
    full = ("void uniattn::cuda::(anonymous namespace)::split_kv_kernel<__half, (uniattn::cuda::Weights)0, false, 8>"
            "(uniattn::cuda::(anonymous namespace)::SplitKvKernelArgs<__half>)")  # fmt: skip
    assert kernel_label(full) == "uniattn::cuda::split_kv_kernel"
    assert kernel_label("nvjet_sm90_hsh_128x8_64x12_2x1_v_bz_NNT") == "nvjet_sm90_hsh_128x8_64x12_2x1_v_bz_NNT"
    assert kernel_label("void onnxruntime::cuda::cuApplyLayerNorm<__half, float, __half, true>(__half*, float*)") == (
        "onnxruntime::cuda::cuApplyLayerNorm")
