// The cuBLAS plans of ks::matmul (ks_plan.h): each product as strided-batched GEMMs on the
// operands where they lie, or after a row-local transposition. cuBLAS's GEMMs run at ~1.1x the
// roofline floor on contiguous planes (../shared/notes/hopper_ks.md); these plans move no byte
// they do not need to, beyond what their name says.
//
// Column-major cuBLAS terms throughout: a row-major (r x s) matrix with row stride ld is the
// column-major (s x r) matrix with leading dimension ld.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>
#include <cublas_v2.h>
#include <c10/cuda/CUDAStream.h>

#include "ks_aten.h"
#include "ks_cublas_plans.h"
#include "ks_kernels.h"

namespace ks {
namespace {

// C = op(A) op(B) over `batches` planes, alpha 1, beta 0, fp32 accumulation (TF32 inputs where
// allowed for float32), on torch's cuBLAS handle (current stream, torch's workspace). cuBLAS is
// called directly: ATen's bgemm wrappers are not exported from libtorch_cuda.
void bgemm(char ta, char tb, int64_t m, int64_t n, int64_t k, const at::Tensor& A, int64_t a_off,
           int64_t lda, int64_t sa, const at::Tensor& B, int64_t b_off, int64_t ldb, int64_t sb,
           at::Tensor& C, int64_t c_off, int64_t ldc, int64_t sc, int64_t batches) {
  for (const int64_t v : {m, n, k, lda, ldb, ldc, batches})
    TORCH_CHECK(v <= INT32_MAX, "ks::matmul (cuBLAS plan): a GEMM dimension exceeds 2^31 - 1");
  cudaDataType_t t;
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  switch (C.scalar_type()) {
    case at::kFloat:
      t = CUDA_R_32F;
      if (at::globalContext().allowTF32CuBLAS()) compute = CUBLAS_COMPUTE_32F_FAST_TF32;
      break;
    case at::kHalf: t = CUDA_R_16F; break;
    case at::kBFloat16: t = CUDA_R_16BF; break;
    default: TORCH_CHECK(false, "ks::matmul (cuBLAS plan): no plan for dtype ", C.scalar_type());
  }
  const int64_t esz = C.element_size();
  const float alpha = 1.f, beta = 0.f;
  cublasHandle_t h = at::cuda::getCurrentCUDABlasHandle();
  const cublasStatus_t st = cublasGemmStridedBatchedEx(
      h, ta == 't' ? CUBLAS_OP_T : CUBLAS_OP_N, tb == 't' ? CUBLAS_OP_T : CUBLAS_OP_N,
      static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), &alpha,
      static_cast<const char*>(A.const_data_ptr()) + a_off * esz, t, static_cast<int>(lda), sa,
      static_cast<const char*>(B.const_data_ptr()) + b_off * esz, t, static_cast<int>(ldb), sb, &beta,
      static_cast<char*>(C.mutable_data_ptr()) + c_off * esz, t, static_cast<int>(ldc), sc,
      static_cast<int>(batches), compute, CUBLAS_GEMM_DEFAULT);
  TORCH_CHECK(st == CUBLAS_STATUS_SUCCESS, "ks::matmul (cuBLAS plan): cublasGemmStridedBatchedEx failed (status ",
              static_cast<int>(st), ") for m=", m, " n=", n, " k=", k, " batches=", batches);
}

// (a, d, b, c): plane (i, l) of w as a contiguous row-major (b x c) matrix.
at::Tensor planes_of(const at::Tensor& w) { return w.permute({0, 3, 1, 2}).contiguous(); }

void check_transpose(cudaError_t e, const char* what) {
  TORCH_CHECK(e == cudaSuccess, "ks::matmul (transposed plan): transposing ", what, " failed: ",
              cudaGetErrorString(e));
}

}  // namespace

// Batch-last, any d: Y_il (b x B) = W_il (b x c) X_il (c x B), X_il rows i*cd + k*d + l of x
// (stride d*ldx), Y_il rows of y likewise. As column-major GEMMs: Y_il^T = X_il^T W_il^T with
// lda = d*ldx, ldb = c, ldc = d*B. The planes are batched along the longer of a and d
// (uniform strides), one call per index of the shorter.
void strided_batch_last(const at::Tensor& x, int64_t ldx, const at::Tensor& w, at::Tensor& y,
                        int64_t B) {
  const int64_t a = w.size(0), b = w.size(1), c = w.size(2), d = w.size(3);
  const at::Tensor wp = planes_of(w);
  if (a <= d) {
    for (int64_t i = 0; i < a; ++i)
      bgemm('n', 'n', B, b, c, x, i * c * d * ldx, d * ldx, ldx, wp, i * d * b * c, c,
            b * c, y, i * b * d * B, d * B, B, d);
  } else {
    for (int64_t l = 0; l < d; ++l)
      bgemm('n', 'n', B, b, c, x, l * ldx, d * ldx, c * d * ldx, wp, l * b * c, c, d * b * c, y,
            l * B, d * B, b * d * B, a);
  }
}

// Batch-first with block matrices Wb (a, rows, cols), row-major: y[:, i*rows:(i+1)*rows] =
// x[:, i*cols:(i+1)*cols] Wb_i^T for every i, x rows of stride ldx, y contiguous. Column-major:
// Y_i^T (rows x B) = Wb_i (rows x cols) X_i^T with A = Wb_i^T's storage (op T, lda = cols).
static void blocks_batch_first(const at::Tensor& x, int64_t ldx, const at::Tensor& wb, at::Tensor& y,
                               int64_t B) {
  const int64_t a = wb.size(0), rows = wb.size(1), cols = wb.size(2);
  bgemm('t', 'n', rows, B, cols, wb, 0, cols, rows * cols, x, 0, ldx, cols, y, 0, a * rows, rows, a);
}

void strided_batch_first_d1(const at::Tensor& x, int64_t ldx, const at::Tensor& w, at::Tensor& y,
                            int64_t B) {
  TORCH_CHECK(w.size(3) == 1, "ks: the strided batch-first plan needs d == 1");
  const at::Tensor wc = w.contiguous();
  blocks_batch_first(x, ldx, wc.view({w.size(0), w.size(1), w.size(2)}), y, B);
}

void block_dense_batch_first(const at::Tensor& x, int64_t ldx, const at::Tensor& w, at::Tensor& y,
                             int64_t B) {
  blocks_batch_first(x, ldx, densify_blocks(w), y, B);
}

// Batch-first, any d: x (B, a, c, d) -> xt (B, a, d, c), so that plane (i, l) is a K-major
// (B x c) matrix at offset (i*d + l)*c with row stride a*d*c; one GEMM over the a*d planes into
// yt (B, a, d, b); yt -> y (B, a, b, d).
void transposed_batch_first(const at::Tensor& x, const at::Tensor& w, at::Tensor& y, int64_t B) {
  const int64_t a = w.size(0), b = w.size(1), c = w.size(2), d = w.size(3);
  TORCH_CHECK(c <= INT32_MAX && d <= INT32_MAX && b <= INT32_MAX, "ks: pattern dims too large");
  const at::Tensor xc = x.contiguous();
  const int esz = static_cast<int>(x.element_size());
  const cudaStream_t s = c10::cuda::getCurrentCUDAStream();
  at::Tensor xt = at::empty({B, a, d, c}, x.options());
  check_transpose(detail::transpose_batched(xc.const_data_ptr(), xt.mutable_data_ptr(), B * a,
                                            static_cast<int>(c), static_cast<int>(d), esz, s),
                  "x");
  const at::Tensor wp = planes_of(w);
  at::Tensor yt = at::empty({B, a, d, b}, x.options());
  bgemm('t', 'n', b, B, c, wp, 0, c, b * c, xt, 0, a * d * c, c, yt, 0, a * d * b, b, a * d);
  check_transpose(detail::transpose_batched(yt.const_data_ptr(), y.mutable_data_ptr(), B * a,
                                            static_cast<int>(d), static_cast<int>(b), esz, s),
                  "y");
}

}  // namespace ks
