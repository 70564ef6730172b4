// Host-side launch helpers shared by the sm_90a kernels. No torch types: bare nvcc compiles it.
#pragma once
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

namespace ks {
namespace hopper {

// The current device, and the kernel's dynamic shared-memory limit raised to `bytes` once per
// device: `configured` (a static of the caller's kernel instantiation) keeps one bit per device,
// because cudaFuncSetAttribute costs host time that shows at small sizes.
template <typename Kernel>
inline cudaError_t device_with_smem(Kernel kernel, int bytes, std::atomic<uint64_t>& configured, int* device) {
  cudaError_t e = cudaGetDevice(device);
  if (e != cudaSuccess) return e;
  const uint64_t bit = uint64_t(1) << (*device & 63);
  if (!(configured.load() & bit)) {
    e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (e != cudaSuccess) return e;
    configured.fetch_or(bit);
  }
  return cudaSuccess;
}

}  // namespace hopper
}  // namespace ks
