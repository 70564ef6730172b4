// The sm_90a interleaved GEMM (interleaved_gemm.cu): batch-first ks::matmul for d in {2, 3, 4, 6,
// 8, 12} straight from x's rows into y's rows, one pass over each. No torch types: bare nvcc
// compiles it.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace ks {
namespace hopper {

struct InterleavedGemmArgs {
  const void* x;   // rows of x (a, c, d) at row stride ldx (elements); 16-byte aligned, ldx % 8 == 0
  const void* wp;  // (a, d, b, c8) contiguous: w's planes, K-major, c zero-padded to c8 = c rounded up to 8
  void* y;         // rows of y (a, b, d), contiguous; 16-byte aligned
  int64_t B, a, b, c, d, ldx;
  bool bf16;       // else fp16
};

// The planes' padded row length c8 that InterleavedGemmArgs::wp must have.
inline int64_t interleaved_padded_c(int64_t c) { return (c + 7) / 8 * 8; }

// Whether this build holds the sm_90a kernels (wgmma); the caller also checks the device.
bool hopper_kernels_built();

// TMA's coordinates are 32-bit (what the plan serves otherwise is ks_plan.h's plan_serves).
bool interleaved_gemm_fits(int64_t B, int64_t a, int64_t b, int64_t c, int64_t d);

cudaError_t interleaved_gemm(const InterleavedGemmArgs& args, cudaStream_t stream);

}  // namespace hopper
}  // namespace ks
