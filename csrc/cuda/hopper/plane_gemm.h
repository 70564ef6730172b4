// The sm_90 plane GEMM (plane_gemm.cu): batch-first ks::matmul for d > 1 from the transposed
// copy of x straight into y's interleaved layout. No torch types: bare nvcc compiles it.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace ks {
namespace hopper {

struct PlaneGemmArgs {
  const void* xt;  // (B, a, d, c) contiguous: plane i*d + l is a K-major (B x c) matrix
  const void* wp;  // (a, d, b, c) contiguous: the planes of w, K-major
  void* y;         // rows of y (a, b, d) at row stride ldy (elements)
  int64_t B, a, b, c, d, ldy;
  bool bf16;       // else fp16
};

// Whether this build holds the sm_90a kernels (wgmma); the caller also checks the device.
bool hopper_kernels_built();

// Grid and coordinate limits (what the plan serves otherwise is ks_plan.h's plan_serves).
bool plane_gemm_fits(int64_t B, int64_t a, int64_t b, int64_t c, int64_t d);

cudaError_t plane_gemm_interleaved(const PlaneGemmArgs& args, cudaStream_t stream);

}  // namespace hopper
}  // namespace ks
