// ks::chain's epilogue on CUDA: z = act(z + bias) in place over a contiguous (rows, features)
// output, in one pass (ATen would take two: the add, then the activation), math in fp32 and one
// rounding to the storage dtype. 16-byte vectors where every row is whole vectors and the
// pointers are aligned; single elements otherwise.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "activation.cuh"
#include "ks_kernels.h"

namespace ks {
namespace detail {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// V elements per thread and step (16 bytes, or 1); features % V == 0.
template <typename T, int ACT, int V>
__global__ void __launch_bounds__(kThreads) ks_bias_activation_kernel(T* __restrict__ z, const T* __restrict__ bias,
                                                                      int64_t vectors, int64_t row_vectors) {
  using Vec = std::conditional_t<V == 1, T, uint4>;
  for (int64_t v = (int64_t)blockIdx.x * kThreads + threadIdx.x; v < vectors; v += (int64_t)gridDim.x * kThreads) {
    Vec zv = reinterpret_cast<Vec*>(z)[v];
    T* ze = reinterpret_cast<T*>(&zv);
    Vec bv{};
    const T* be = reinterpret_cast<const T*>(&bv);
    if (bias) bv = reinterpret_cast<const Vec*>(bias)[v % row_vectors];
#pragma unroll
    for (int k = 0; k < V; ++k) ze[k] = from_f<T>(activate<ACT, !std::is_same<T, float>::value>(to_f(ze[k]) + (bias ? to_f(be[k]) : 0.f)));
    reinterpret_cast<Vec*>(z)[v] = zv;
  }
}

template <typename T, int ACT>
cudaError_t launch(void* z, const void* bias, int64_t rows, int64_t features, cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  const bool vec = features % V == 0 && ((reinterpret_cast<uintptr_t>(z) | reinterpret_cast<uintptr_t>(bias)) & 15) == 0;
  const int64_t per = vec ? V : 1;
  const int64_t vectors = rows * features / per;
  const unsigned grid = (unsigned)std::max<int64_t>(1, std::min<int64_t>((vectors + kThreads - 1) / kThreads, 132 * 32));
  T* zt = static_cast<T*>(z);
  const T* bt = static_cast<const T*>(bias);
  if (vec) ks_bias_activation_kernel<T, ACT, V><<<grid, kThreads, 0, stream>>>(zt, bt, vectors, features / V);
  else ks_bias_activation_kernel<T, ACT, 1><<<grid, kThreads, 0, stream>>>(zt, bt, vectors, features);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_act(void* z, const void* bias, int64_t rows, int64_t features, int act, cudaStream_t stream) {
  switch (act) {
    case 0: return launch<T, 0>(z, bias, rows, features, stream);
    case 1: return launch<T, 1>(z, bias, rows, features, stream);
    case 2: return launch<T, 2>(z, bias, rows, features, stream);
    case 3: return launch<T, 3>(z, bias, rows, features, stream);
    case 4: return launch<T, 4>(z, bias, rows, features, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t bias_activation(void* z, const void* bias, int64_t rows, int64_t features, int activation,
                            DType dtype, cudaStream_t stream) {
  if (rows < 0 || features <= 0) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  switch (dtype) {
    case DType::F32: return launch_act<float>(z, bias, rows, features, activation, stream);
    case DType::F16: return launch_act<__half>(z, bias, rows, features, activation, stream);
    case DType::BF16: return launch_act<__nv_bfloat16>(z, bias, rows, features, activation, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace detail
}  // namespace ks
