// The ATen (permute + bmm) implementations of the ks ops. They are the CPU kernels, and the
// CUDA fallbacks for dtypes the fused kernels do not cover (float64).
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>

namespace ks {
at::Tensor matmul_aten(const at::Tensor& x, const at::Tensor& w, bool batch_last);
// K's a diagonal blocks (a, b*d, c*d), each densified in l: [i, j*d + l, k*d + l'] =
// w[i, j, k, l] * (l == l').
at::Tensor densify_blocks(const at::Tensor& w);
// Plan::Dense: K materialized (abd x acd), one GEMM (any device).
at::Tensor matmul_dense(const at::Tensor& x, const at::Tensor& w, bool batch_last);
at::Tensor weight_grad_aten(const at::Tensor& grad_y, const at::Tensor& x,
                            at::IntArrayRef pattern, bool batch_last);
// ks::chain's bias and activation on the chain's output z (..., out), in place, with ATen ops
// (the CPU kernel; the CUDA kernel runs its own one-pass epilogue).
void bias_activation_aten(at::Tensor& z, const std::optional<at::Tensor>& bias, int activation);
}  // namespace ks
