"""Decode-shaped GEMMs on the GPU: cuBLAS with the ONNX layout (x @ W, W (K, N)), cuBLAS with the
torch layout (x @ W^T, W (N, K)) and a hand-written dot-product GEMV on (N, K), for the Llama-3.2-1B
projections. Each shape cycles through enough weight copies to exceed L2, as a decode step does.
Also the library's own entry point ua_linear_cuda (GEMV up to 4 rows, cuBLAS through torch's
handle beyond), checked against float64.
Usage: python gemv_bench.py GEMV.so KERNELS.so OUT.json"""
import ctypes, json, sys, statistics
import torch
import torch.nn.functional as F

lib = ctypes.CDLL(sys.argv[1])
lib.gemv.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 4 + [ctypes.c_void_p]
kernels = ctypes.CDLL(sys.argv[2])


class LinearDesc(ctypes.Structure):
    _fields_ = [("rows", ctypes.c_int64), ("in_features", ctypes.c_int64), ("out_features", ctypes.c_int64),
                ("dtype", ctypes.c_int)]


kernels.ua_linear_cuda.argtypes = [ctypes.POINTER(LinearDesc)] + [ctypes.c_void_p] * 5
kernels.ua_last_error.restype = ctypes.c_char_p


def ua_linear(x, w, y):
    desc = LinearDesc(x.shape[0], x.shape[1], w.shape[0], 1)
    status = kernels.ua_linear_cuda(ctypes.byref(desc), x.data_ptr(), w.data_ptr(), y.data_ptr(),
                                    ctypes.c_void_p(torch.cuda.current_blas_handle()),
                                    ctypes.c_void_p(torch.cuda.current_stream().cuda_stream))
    if status != 0:
        raise RuntimeError(kernels.ua_last_error().decode())
SHAPES = {"qkv (producer)": (2048, 3072), "v+Wc (consumer)": (2048, 2560), "o": (2048, 2048),
          "gate_up": (2048, 16384), "down": (8192, 2048), "lm_head": (2048, 128256)}
dev = torch.device("cuda")
torch.manual_seed(0)
results = []


def timed(fn, copies, reps=20):
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for i in range(copies):
            fn(i)
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(g):
        for i in range(copies):
            fn(i)
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); g.replay(); b.record(); b.synchronize()
        times.append(a.elapsed_time(b) * 1000 / copies)
    return statistics.median(times)


for name, (k, n) in SHAPES.items():
    nbytes = k * n * 2
    copies = max(2, min(16, int(1.5e9 // nbytes)))
    w_nk = [torch.randn(n, k, device=dev, dtype=torch.float16) * 0.02 for _ in range(copies)]
    w_kn = [w.t().contiguous() for w in w_nk]
    for m in (1, 2, 4, 8, 32):
        x = torch.randn(m, k, device=dev, dtype=torch.float16)
        y = torch.empty(m, n, device=dev, dtype=torch.float16)
        row = {"shape": name, "K": k, "N": n, "M": m, "MB": nbytes / 1e6}
        row["cublas_x@W(K,N) us"] = timed(lambda i: torch.matmul(x, w_kn[i], out=y), copies)
        row["cublas_x@W(N,K)^T us"] = timed(lambda i: torch.matmul(x, w_nk[i].t(), out=y), copies)
        ref = F.linear(x.float(), w_nk[0].float())
        for r in (1, 2, 4, 8):
            stream = torch.cuda.current_stream().cuda_stream
            if lib.gemv(x.data_ptr(), w_nk[0].data_ptr(), y.data_ptr(), m, n, k, r, ctypes.c_void_p(stream)) != 0:
                continue
            torch.cuda.synchronize()
            err = (y.float() - ref).abs().max().item()
            us = timed(lambda i: lib.gemv(x.data_ptr(), w_nk[i].data_ptr(), y.data_ptr(), m, n, k, r,
                                          ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)), copies)
            row[f"gemv R={r} us"] = us
            row[f"gemv R={r} maxerr"] = err
        ua_linear(x, w_nk[0], y)
        torch.cuda.synchronize()
        row["ua_linear maxerr"] = (y.double() - x.double() @ w_nk[0].double().t()).abs().max().item()
        row["ua_linear us"] = timed(lambda i: ua_linear(x, w_nk[i], y), copies)
        best = min(v for kk, v in row.items() if kk.endswith(" us"))
        row["GB/s best"] = nbytes / best / 1e3
        for kk in list(row):
            if kk.endswith(" us"):
                row[kk.replace(" us", " GB/s")] = round(nbytes / row[kk] / 1e3, 1)
        print(json.dumps(row), flush=True)
        results.append(row)
    del w_nk, w_kn
    torch.cuda.empty_cache()

with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
    for (k, n) in SHAPES.values():
        w = torch.randn(n, k, device=dev, dtype=torch.float16)
        wt = w.t().contiguous()
        x = torch.randn(1, k, device=dev, dtype=torch.float16)
        torch.matmul(x, wt); torch.matmul(x, w.t())
        torch.cuda.synchronize()
names = sorted({e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA})
json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": results,
           "kernels": names}, open(sys.argv[3], "w"), indent=1)
print("\n".join(names))
