// Linear (docs/ops.md): output = input x weight^T with the weight (N, K) row-major, as a
// decode step's projections need it. For one token row a projection is a matrix-vector
// product whose time is the weight's bytes, and cuBLAS's GEMM kernels (nvjet, tiles of 8
// rows) stream it at 2.0-2.9 TB/s of the H100's 3.35; one warp per weight row with 16-byte
// loads and a shuffle reduction is 4-18% faster on every projection of Llama-3.2-1B (qkv 6.5
// vs 7.5 us, o 5.3 vs 6.5, gate_up 23.3 vs 24.2, down 14.1 vs 16.0, lm_head 168 vs 178:
// docs/measurements/h100-2026-12-07-s19). From two rows on it is not (the float32 FMAs per
// byte grow with the rows), so everything else (prefill, batched decode) is a cuBLAS GEMM,
// through the handle the caller's runtime owns.
#include <dlfcn.h>
#include <stdint.h>

#include "../src/common.h"
#include "device.cuh"
#include "launch.cuh"

namespace uniattn {
namespace cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxGemvFeatures = int64_t(1) << 28;  // a row's bytes fit the bulk prefetch's 32-bit size

// One warp per weight row: lane l reads slices l, l + 32, ... of the row (a warp's loads are
// 512 contiguous bytes in fp16), multiplies them with the same slices of the input, and the
// warp sums its lanes. float32 accumulation, one rounding to T. The weight is read once
// (streaming loads, so it does not evict the input from L2); the input, read by every warp,
// stays in cache and goes through the read-only path.
//
// A dependent launch (device.cuh; built with UA_DEPENDENT_LAUNCH=1): the weight is no kernel's
// output, so each warp asks L2 for its row before waiting for the kernel before it (attention
// before o_proj, the activation before down_proj) to finish, and those bytes are on their way
// while it runs.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    linear_gemv_kernel(const T* __restrict__ input, const T* __restrict__ weight, T* __restrict__ output,
                       const int slices, const int64_t out_features) {
  allow_dependents();
  const int64_t row = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (row >= out_features) return;
  const int lane = threadIdx.x & 31;
  const T* weight_row = weight + row * slices * 8;
  if (UA_DEPENDENT_LAUNCH && lane == 0) prefetch_l2(weight_row, uint32_t(slices) * 8u * uint32_t(sizeof(T)));
  wait_for_upstream();
  float acc = 0.f;
#pragma unroll 2
  for (int s = lane; s < slices; s += 32) {
    float w[8], x[8];
    slice_to_floats(load_slice<T, Load::kStreaming>(weight_row + s * 8), w);
    slice_to_floats(load_slice<T, Load::kReadOnly>(input + s * 8), x);
#pragma unroll
    for (int e = 0; e < 8; ++e) acc = fmaf(w[e], x[e], acc);
  }
  acc = warp_sum(acc);
  if (lane == 0) output[row] = from_float<T>(acc);
}

template <typename T>
ua_status gemv(const ua_linear_desc& d, const void* input, const void* weight, void* output, cudaStream_t stream) {
  const int64_t blocks = (d.out_features + kWarps - 1) / kWarps;
  const auto kernel = linear_gemv_kernel<T>;
  return launch_status("linear_gemv",
                       launch_dependent(kernel, dim3(unsigned(blocks)), dim3(kThreads), 0, stream,
                                        static_cast<const T*>(input), static_cast<const T*>(weight),
                                        static_cast<T*>(output), int(d.in_features / 8), d.out_features));
}

}  // namespace
}  // namespace cuda
}  // namespace uniattn

// ---- cuBLAS, for the calls that are GEMMs --------------------------------------------------
// The library is not linked: the handle belongs to the caller's runtime (ONNX Runtime's CUDA
// execution provider creates one per stream), so calls must go to the libcublas that created
// it, which that runtime has already loaded, and the handle is already bound to the stream
// the caller passes (ONNX Runtime: the kernel's compute stream). cublasGemmEx is looked up by
// name with its documented C signature; the enum values are cuBLAS's (cublas_api.h,
// library_types.h).
namespace uniattn {
namespace cuda {
namespace {

using GemmEx = int (*)(void* handle, int transa, int transb, int m, int n, int k, const void* alpha, const void* a,
                       int a_type, int lda, const void* b, int b_type, int ldb, const void* beta, void* c, int c_type,
                       int ldc, int compute_type, int algo);
constexpr int kOpN = 0, kOpT = 1;            // cublasOperation_t
constexpr int kComputeFloat32 = 68;          // CUBLAS_COMPUTE_32F
constexpr int kDefaultAlgo = -1;             // CUBLAS_GEMM_DEFAULT

int cuda_data_type(ua_dtype dtype) {  // cudaDataType_t
  switch (dtype) {
    case UA_FLOAT32: return 0;   // CUDA_R_32F
    case UA_FLOAT16: return 2;   // CUDA_R_16F
    case UA_BFLOAT16: return 14; // CUDA_R_16BF
  }
  return -1;
}

// The libcublas already in the process (the one that made the caller's handle), else the
// first that loads.
GemmEx load_cublas_gemm() {
  static const char* const kNames[] = {"libcublas.so.13", "libcublas.so.12", "libcublas.so"};
  void* library = nullptr;
  for (int mode : {RTLD_NOW | RTLD_NOLOAD, RTLD_NOW | RTLD_LOCAL})
    for (const char* name : kNames)
      if (library == nullptr) library = dlopen(name, mode);
  return library == nullptr ? nullptr : reinterpret_cast<GemmEx>(dlsym(library, "cublasGemmEx"));
}

ua_status cublas_linear(const ua_linear_desc& d, const void* input, const void* weight, void* output, void* handle) {
  static const GemmEx gemm = load_cublas_gemm();
  if (handle == nullptr)
    return fail(UA_UNSUPPORTED, "linear: rows=%lld, in_features=%lld is a GEMM for cuBLAS, and the caller passed no "
                "cuBLAS handle", (long long)d.rows, (long long)d.in_features);
  if (gemm == nullptr)
    return fail(UA_UNSUPPORTED, "linear: rows=%lld, in_features=%lld is a GEMM for cuBLAS (cublasGemmEx), and no "
                "libcublas.so.13/.12 could be loaded: put the CUDA toolkit's or the nvidia-cublas wheel's lib folder on "
                "LD_LIBRARY_PATH", (long long)d.rows, (long long)d.in_features);
  if (d.rows > INT32_MAX || d.in_features > INT32_MAX || d.out_features > INT32_MAX)
    return fail(UA_UNSUPPORTED, "linear: rows=%lld, in_features=%lld, out_features=%lld must stay below 2^31",
                (long long)d.rows, (long long)d.in_features, (long long)d.out_features);
  // Row-major output (rows, N) = input (rows, K) x weight (N, K)^T is, column-major,
  // output^T (N, rows) = weight^T (N x K, stored as K x N) x input^T (K x rows).
  const float alpha = 1.f, beta = 0.f;
  const int type = cuda_data_type(d.dtype), n = int(d.out_features), m = int(d.rows), k = int(d.in_features);
  const int status = gemm(handle, kOpT, kOpN, n, m, k, &alpha, weight, type, k, input, type, k, &beta, output, type,
                          n, kComputeFloat32, kDefaultAlgo);
  if (status != 0) return fail(UA_DEVICE_ERROR, "linear: cublasGemmEx failed with cublasStatus_t %d", status);
  return UA_OK;
}

}  // namespace
}  // namespace cuda
}  // namespace uniattn

extern "C" ua_status ua_linear_cuda(const ua_linear_desc* desc, const void* input, const void* weight, void* output,
                                    void* cublas_handle, void* stream) {
  using namespace uniattn;
  if (ua_status s = check_linear(desc, input, weight, output); s != UA_OK) return s;
  const ua_linear_desc& d = *desc;
  if (d.rows == 0 || d.out_features == 0) return ok();
  const auto cuda_stream = static_cast<cudaStream_t>(stream);
  const bool aligned =
      ((reinterpret_cast<uintptr_t>(input) | reinterpret_cast<uintptr_t>(weight)) & 15) == 0 && d.in_features % 8 == 0;
  if (d.rows > UA_LINEAR_GEMV_MAX_ROWS || !aligned || d.in_features == 0 || d.in_features > cuda::kMaxGemvFeatures ||
      d.out_features > int64_t(INT32_MAX) * cuda::kWarps)
    return cuda::cublas_linear(d, input, weight, output, cublas_handle);
  switch (d.dtype) {
    case UA_FLOAT32: return cuda::gemv<float>(d, input, weight, output, cuda_stream);
    case UA_FLOAT16: return cuda::gemv<__half>(d, input, weight, output, cuda_stream);
    case UA_BFLOAT16: return cuda::gemv<__nv_bfloat16>(d, input, weight, output, cuda_stream);
  }
  return fail(UA_INVALID_ARGUMENT, "unknown dtype code %d", int(d.dtype));
}
