// CUDA registration of the ks ops: a thin layer that validates with the shared checks, fills
// ks::MatmulArgs and launches the fused kernel (csrc/cuda/ks_matmul.cu) on the current stream,
// or takes ATen's permute + bmm path where the kernel library says that measured faster.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "ks_aten.h"
#include "ks_checks.h"
#include "ks_kernels.h"

namespace ks {
namespace {

DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::F32;
    case at::kHalf: return DType::F16;
    case at::kBFloat16: return DType::BF16;
    default: TORCH_CHECK(false, "ks: no CUDA kernel for dtype ", t);
  }
}

// Rows of a batch-first operand as a (B, features) matrix with unit inner stride (copied only
// when needed); returns its row stride.
int64_t rows_of(const at::Tensor& t, int64_t B, int64_t features, at::Tensor& out) {
  out = t.reshape({B, features});
  if (!(out.stride(1) == 1 || features == 1)) out = out.contiguous();
  return B > 1 ? out.stride(0) : features;
}

at::Tensor matmul_cuda(const at::Tensor& x, const at::Tensor& w, bool batch_last) {
  int64_t B = 0;
  const Pattern p = check_matmul(x, w, batch_last, &B);
  TORCH_CHECK(x.is_cuda(), "ks: x must be a CUDA tensor here, got ", x.device());
  if (x.scalar_type() == at::kDouble) return matmul_aten(x, w, batch_last);  // no fp64 kernel
  const auto [a, b, c, d] = p;
  const int64_t in_f = a * c * d, out_f = a * b * d;
  TORCH_CHECK(b <= INT32_MAX && c <= INT32_MAX && d <= INT32_MAX && a <= INT32_MAX,
              "ks: pattern dims must fit in 32 bits, got ", pattern_str(p));
  MatmulArgs args{};
  args.batch = B;
  args.a = static_cast<int>(a);
  args.b = static_cast<int>(b);
  args.c = static_cast<int>(c);
  args.d = static_cast<int>(d);
  args.batch_last = batch_last;
  args.dtype = to_dtype(x.scalar_type());
  args.allow_tf32 = at::globalContext().allowTF32CuBLAS();
  if (matmul_prefers_bmm(args)) return matmul_aten(x, w, batch_last);
  c10::cuda::CUDAGuard guard(x.device());

  at::Tensor y;
  if (batch_last) {
    y = at::empty({out_f, B}, x.options());
  } else {
    auto shape = x.sizes().vec();
    shape.back() = out_f;
    y = at::empty(shape, x.options());
  }
  if (B == 0 || out_f == 0) return y;

  const at::Tensor wc = w.contiguous();
  // x rows (features for batch-first, batch for batch-last) must be unit-stride; copy only then.
  at::Tensor xk;
  int64_t ldx = 0;
  if (batch_last) {
    xk = (x.stride(1) == 1 || B == 1) ? x : x.contiguous();
    ldx = in_f > 1 ? xk.stride(0) : B;
  } else {
    ldx = rows_of(x, B, in_f, xk);
  }
  TORCH_CHECK(ldx >= 0, "ks: negative strides are not supported");

  args.x = xk.data_ptr();
  args.w = wc.data_ptr();
  args.y = y.data_ptr();
  args.ldx = ldx;
  const cudaError_t err = matmul(args, c10::cuda::getCurrentCUDAStream()  /* == at::cuda::getCurrentCUDAStream() */);
  TORCH_CHECK(err == cudaSuccess, "ks::matmul: CUDA kernel launch failed for ", pattern_str(p),
              ", B=", B, ", dtype ", x.scalar_type(), ", batch_last=", batch_last, ": ",
              cudaGetErrorString(err));
  return y;
}


// Fused kernel (ks_wgrad.cu) for 16-bit batch-first inputs it serves; the ATen permute + bmm path
// otherwise (fp32, batch-last, d not 4 or a multiple of 8, unaligned rows; benchmarks/NOTES.md).
at::Tensor weight_grad_cuda(const at::Tensor& grad_y, const at::Tensor& x, at::IntArrayRef pattern,
                            bool batch_last) {
  int64_t B = 0;
  const Pattern p = check_weight_grad(grad_y, x, pattern, batch_last, &B);
  TORCH_CHECK(x.is_cuda(), "ks: x must be a CUDA tensor here, got ", x.device());
  const auto st = x.scalar_type();
  if (batch_last || B == 0 || !(st == at::kHalf || st == at::kBFloat16))
    return weight_grad_aten(grad_y, x, pattern, batch_last);
  const auto [a, b, c, d] = p;
  TORCH_CHECK(b <= INT32_MAX && c <= INT32_MAX && d <= INT32_MAX && a <= INT32_MAX,
              "ks: pattern dims must fit in 32 bits, got ", pattern_str(p));
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor gk, xk;
  WgradArgs args{};
  args.ldg = rows_of(grad_y, B, a * b * d, gk);
  args.ldx = rows_of(x, B, a * c * d, xk);
  TORCH_CHECK(args.ldg >= 0 && args.ldx >= 0, "ks: negative strides are not supported");
  at::Tensor dw = at::empty({a, b, c, d}, x.options());
  args.gy = gk.data_ptr();
  args.x = xk.data_ptr();
  args.dw = dw.data_ptr();
  args.batch = B;
  args.a = static_cast<int>(a);
  args.b = static_cast<int>(b);
  args.c = static_cast<int>(c);
  args.d = static_cast<int>(d);
  args.dtype = to_dtype(st);
  const int64_t ws_floats = weight_grad_workspace(args);
  if (ws_floats < 0) return weight_grad_aten(grad_y, x, pattern, batch_last);
  at::Tensor ws = at::empty({ws_floats}, x.options().dtype(at::kFloat));
  args.ws = ws.data_ptr<float>();
  const cudaError_t err = weight_grad(args, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "ks::weight_grad: CUDA kernel launch failed for ", pattern_str(p),
              ", B=", B, ", dtype ", st, ": ", cudaGetErrorString(err));
  return dw;
}

}  // namespace
}  // namespace ks

TORCH_LIBRARY_IMPL(ks, CUDA, m) {
  m.impl("matmul", &ks::matmul_cuda);
  m.impl("weight_grad", &ks::weight_grad_cuda);
}
