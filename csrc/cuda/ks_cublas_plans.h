// The cuBLAS plans of ks::matmul (ks_plan.h): y is allocated by the caller (contiguous), x rows
// have unit inner stride and row stride ldx (batch-first: B rows of a*c*d; batch-last: a*c*d
// rows of B), w is (a,b,c,d) of x's dtype.
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>

namespace ks {
// Plan::Strided, batch-last, any d.
void strided_batch_last(const at::Tensor& x, int64_t ldx, const at::Tensor& w, at::Tensor& y, int64_t B);
// Plan::Strided, batch-first, d == 1.
void strided_batch_first_d1(const at::Tensor& x, int64_t ldx, const at::Tensor& w, at::Tensor& y, int64_t B);
// Plan::BlockDense, either layout.
void block_dense(const at::Tensor& x, int64_t ldx, const at::Tensor& w, at::Tensor& y, int64_t B, bool batch_last);
// Plan::Transposed, batch-first (x is made contiguous first).
void transposed_batch_first(const at::Tensor& x, const at::Tensor& w, at::Tensor& y, int64_t B);
// Plan::Interleaved, batch-first 16-bit on sm_90a, d in {2, 3, 4, 6, 8, 12} (y contiguous).
void interleaved_batch_first(const at::Tensor& x, const at::Tensor& w, at::Tensor& y, int64_t B);
// The fused 2-factor chain (hopper/chain_gemm.cu) serves x and these factors (shapes, dtype,
// strides; the caller checks the device and the build).
bool fused_chain_serves(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w2);
// act(F2(F1(x)) + bias) in one kernel, batch-first; activation: ks_checks.h Activation.
at::Tensor fused_chain(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w2,
                       const std::optional<at::Tensor>& bias, int activation);
}  // namespace ks
