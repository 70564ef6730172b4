// The activations of ks::chain (ks_checks.h Activation), as PyTorch defines them, in fp32: shared
// by the epilogue kernel (ks_epilogue.cu) and the fused chain kernel (hopper/chain_gemm.cu).
#pragma once

namespace ks {

template <int ACT>
__device__ __forceinline__ float activate(float z) {
  if constexpr (ACT == 1) return z < 0.f ? 0.f : z;  // relu (NaN stays NaN)
  if constexpr (ACT == 2) return 0.5f * z * (1.f + erff(z * 0.70710678118654752f));  // gelu
  if constexpr (ACT == 3) {                                                           // gelu, tanh
    const float u = 0.79788456080286536f * (z + 0.044715f * z * z * z);
    return 0.5f * z * (1.f + tanhf(u));
  }
  if constexpr (ACT == 4) return z / (1.f + expf(-z));  // silu
  return z;
}

// The same with the activation chosen at run time (ks_checks.h Activation's values).
__device__ __forceinline__ float activate(float z, int act) {
  switch (act) {
    case 1: return activate<1>(z);
    case 2: return activate<2>(z);
    case 3: return activate<3>(z);
    case 4: return activate<4>(z);
    default: return z;
  }
}

}  // namespace ks
