// Microbenchmark kernel: y[m][n] = sum_k x[m][k] * w[n][k], fp16 in/out, fp32 accumulate.
#include <cuda_fp16.h>
#include <cstdint>

template <int M, int R>
__global__ void gemv_rows(const __half* __restrict__ x, const __half* __restrict__ w,
                          __half* __restrict__ y, int n_rows, int k) {
  const int lane = threadIdx.x & 31;
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int row0 = warp * R;
  if (row0 >= n_rows) return;
  const int vecs = k >> 3;
  float acc[M][R];
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < R; ++r) acc[m][r] = 0.f;
  const uint4* wv = reinterpret_cast<const uint4*>(w);
  const uint4* xv = reinterpret_cast<const uint4*>(x);
#pragma unroll 2
  for (int v = lane; v < vecs; v += 32) {
    uint4 wr[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      int row = min(row0 + r, n_rows - 1);
      wr[r] = __ldcs(wv + (size_t)row * vecs + v);
    }
#pragma unroll
    for (int m = 0; m < M; ++m) {
      uint4 xr = __ldg(xv + (size_t)m * vecs + v);
      const __half2* xh = reinterpret_cast<const __half2*>(&xr);
      float2 xf[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) xf[j] = __half22float2(xh[j]);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const __half2* wh = reinterpret_cast<const __half2*>(&wr[r]);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          float2 wf = __half22float2(wh[j]);
          acc[m][r] = fmaf(wf.x, xf[j].x, acc[m][r]);
          acc[m][r] = fmaf(wf.y, xf[j].y, acc[m][r]);
        }
      }
    }
  }
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float s = acc[m][r];
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
      acc[m][r] = s;
    }
  if (lane == 0) {
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
      for (int r = 0; r < R; ++r)
        if (row0 + r < n_rows) y[(size_t)m * n_rows + row0 + r] = __float2half(acc[m][r]);
  }
}

template <int M, int R>
static void launch(const void* x, const void* w, void* y, int n, int k, cudaStream_t s) {
  const int threads = 128;
  const int warps = (n + R - 1) / R;
  const int blocks = (warps * 32 + threads - 1) / threads;
  gemv_rows<M, R><<<blocks, threads, 0, s>>>((const __half*)x, (const __half*)w, (__half*)y, n, k);
}

extern "C" int gemv(const void* x, const void* w, void* y, int m, int n, int k, int r, void* stream) {
  cudaStream_t s = (cudaStream_t)stream;
#define CASE(MM, RR) if (m == MM && r == RR) { launch<MM, RR>(x, w, y, n, k, s); return 0; }
  CASE(1,1) CASE(1,2) CASE(1,4) CASE(1,8)
  CASE(2,2) CASE(2,4)
  CASE(4,1) CASE(4,2) CASE(4,4)
  CASE(8,1) CASE(8,2) CASE(8,4)
  return 1;
}
