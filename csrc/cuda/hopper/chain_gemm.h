// The sm_90a fused chain (chain_gemm.cu): ks::chain of two factors F1 = (a1, 64, c1, 1) and
// F2 = (1, b2, c2, d2) with bias and activation in one kernel; the intermediate (a1 * 64 features
// per row) never leaves shared memory. No torch types: bare nvcc compiles it.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace ks {
namespace hopper {

struct ChainGemmArgs {
  const void* x;     // rows of x (a1, c1) at row stride ldx (elements); 16-byte aligned, ldx % 8 == 0
  const void* w1;    // F1's w (a1, 64, c1, 1), contiguous: block i's rows j, K-major
  const void* w2p;   // F2's planes (d2, b2, c2), contiguous, K-major
  const void* bias;  // (b2 * d2), 16-byte aligned, or nullptr
  void* y;           // rows of y (b2 * d2), contiguous; 16-byte aligned
  int64_t B, a1, c1, b2, c2, d2, ldx;
  int activation;    // ks_checks.h Activation
  bool bf16;         // else fp16
};

// The chains it takes: F1 = (a1, 64, c1, 1), F2 = (1, b2, c2, d2), a1 * 64 = c2 * d2 <= 384 (the
// intermediate of 128 rows in shared memory), d2 in {2, 3, 4}; TMA's 16-byte strides: c1 % 8 == 0,
// (b2 * d2) % 8 == 0; 32-bit coordinates.
bool chain_gemm_serves(int64_t B, int64_t a1, int64_t b1, int64_t c1, int64_t d1, int64_t a2, int64_t b2, int64_t c2,
                       int64_t d2);

cudaError_t chain_gemm(const ChainGemmArgs& args, cudaStream_t stream);

}  // namespace hopper
}  // namespace ks
