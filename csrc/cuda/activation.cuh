// The activations of ks::chain (ks_checks.h Activation), as PyTorch defines them, in fp32: shared
// by the epilogue kernel (ks_epilogue.cu) and the fused chain kernel (hopper/chain_gemm.cu).
#pragma once

namespace ks {

// GELU for 16-bit outputs: z * Phi(z) with Phi(-a) = 2^t(a), a = |z| clamped at 6 (Phi(-6) ~ 1e-9),
// t(a) = -1 + a Q(a), Q of degree 6 (a Chebyshev fit of (log2 Phi(-a) + 1) / a on [0, 6]). Relative
// error at most 4.7e-6 for |z| < 6 in fp32 (100x under a half-precision unit; erf's form,
// 0.5 z (1 + erf(z / sqrt 2)), loses every digit in the far negative tail where 1 + erf cancels),
// in 12 instructions with one MUFU against ~30 for erff. -inf gives -inf (PyTorch: NaN).
__device__ __forceinline__ float gelu_16bit(float z) {
  const float a = fminf(fabsf(z), 6.f);
  float q = -1.859846066e-06f;
  q = fmaf(q, a, 6.201623182e-05f);
  q = fmaf(q, a, -9.329389432e-04f);
  q = fmaf(q, a, 8.512646891e-03f);
  q = fmaf(q, a, -5.395614728e-02f);
  q = fmaf(q, a, -4.584885538e-01f);
  q = fmaf(q, a, -1.151227951e+00f);
  float e;  // Phi(-|z|)
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(fmaf(q, a, -1.f)));
  return z * (z < 0.f ? e : 1.f - e);
}

// kHalf: the output is rounded to fp16 or bf16, so GELU may take gelu_16bit's accuracy.
template <int ACT, bool kHalf = false>
__device__ __forceinline__ float activate(float z) {
  if constexpr (ACT == 1) return z < 0.f ? 0.f : z;  // relu (NaN stays NaN)
  if constexpr (ACT == 2) return kHalf ? gelu_16bit(z) : 0.5f * z * (1.f + erff(z * 0.70710678118654752f));  // gelu
  if constexpr (ACT == 3) {                                                           // gelu, tanh
    const float u = 0.79788456080286536f * (z + 0.044715f * z * z * z);
    return 0.5f * z * (1.f + tanhf(u));
  }
  if constexpr (ACT == 4) return z / (1.f + expf(-z));  // silu
  return z;
}

}  // namespace ks
