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

#include <cstdint>
#include <utility>
#include <vector>
#include <c10/cuda/CUDAStream.h>

#include "hopper/chain_gemm.h"
#include "hopper/interleaved_gemm.h"
#include "ks_cublas_plans.h"
#include "ks_kernels.h"

namespace ks {
namespace {

// cuBLAS data and compute types of a dtype: fp32 accumulation, TF32 inputs for float32 where
// torch allows them.
std::pair<cudaDataType_t, cublasComputeType_t> cublas_types(at::ScalarType st) {
  switch (st) {
    case at::kFloat:
      return {CUDA_R_32F, at::globalContext().allowTF32CuBLAS() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F};
    case at::kHalf: return {CUDA_R_16F, CUBLAS_COMPUTE_32F};
    case at::kBFloat16: return {CUDA_R_16BF, CUBLAS_COMPUTE_32F};
    default: TORCH_CHECK(false, "ks::matmul (cuBLAS plan): no plan for dtype ", st);
  }
}

// C = op(A) op(B) over `batches` planes, alpha 1, beta 0, fp32 accumulation (TF32 inputs where
// allowed for float32), on torch's cuBLAS handle (current stream, torch's workspace). cuBLAS is
// called directly: ATen's bgemm wrappers are not exported from libtorch_cuda.
void bgemm(char ta, char tb, int64_t m, int64_t n, int64_t k, const at::Tensor& A, int64_t a_off,
           int64_t lda, int64_t sa, const at::Tensor& B, int64_t b_off, int64_t ldb, int64_t sb,
           at::Tensor& C, int64_t c_off, int64_t ldc, int64_t sc, int64_t batches) {
  for (const int64_t v : {m, n, k, lda, ldb, ldc, batches})
    TORCH_CHECK(v <= INT32_MAX, "ks::matmul (cuBLAS plan): a GEMM dimension exceeds 2^31 - 1");
  const auto [t, compute] = cublas_types(C.scalar_type());
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
// lda = d*ldx, ldb = c, ldc = d*B. The a*d planes have no common stride (two levels, i and l):
// one pointer-array batched call (the pointers written by a small kernel: one launch instead of
// min(a, d) GEMM launches).
void strided_batch_last(const at::Tensor& x, int64_t ldx, const at::Tensor& w, at::Tensor& y,
                        int64_t B) {
  const int64_t a = w.size(0), b = w.size(1), c = w.size(2), d = w.size(3);
  const at::Tensor wp = planes_of(w);
  // cuBLAS cannot see the alignment of pointers it reads from device memory: the pointer-array
  // call needs every plane 16-byte aligned. Otherwise, and when a or d is 1 (the planes then have
  // one stride), one strided-batched call per index of the shorter of a and d.
  const int64_t esz = x.element_size();
  const bool aligned = reinterpret_cast<uintptr_t>(x.const_data_ptr()) % 16 == 0 && (ldx * esz) % 16 == 0 &&
                       (B * esz) % 16 == 0 && (b * c * esz) % 16 == 0;
  if (a == 1 || d == 1 || !aligned) {
    if (a <= d) {
      for (int64_t i = 0; i < a; ++i)
        bgemm('n', 'n', B, b, c, x, i * c * d * ldx, d * ldx, ldx, wp, i * d * b * c, c, b * c, y,
              i * b * d * B, d * B, B, d);
    } else {
      for (int64_t l = 0; l < d; ++l)
        bgemm('n', 'n', B, b, c, x, l * ldx, d * ldx, c * d * ldx, wp, l * b * c, c, d * b * c, y,
              l * B, d * B, b * d * B, a);
    }
    return;
  }
  for (const int64_t v : {B, b, c, d * ldx, d * B, a * d})
    TORCH_CHECK(v <= INT32_MAX, "ks::matmul (cuBLAS plan): a GEMM dimension exceeds 2^31 - 1");
  const int64_t n = a * d;
  at::Tensor ptrs = at::empty({3 * n}, x.options().dtype(at::kLong));
  const cudaStream_t s = c10::cuda::getCurrentCUDAStream();
  const detail::PlanePointers g{a, b, c, d, ldx, B, esz};
  void** p = reinterpret_cast<void**>(ptrs.mutable_data_ptr<int64_t>());
  const cudaError_t e = detail::plane_pointers(x.const_data_ptr(), wp.const_data_ptr(), y.mutable_data_ptr(), g,
                                               const_cast<const void**>(p), s);
  TORCH_CHECK(e == cudaSuccess, "ks::matmul (strided plan): pointer kernel failed: ", cudaGetErrorString(e));
  const auto [t, compute] = cublas_types(y.scalar_type());
  const float alpha = 1.f, beta = 0.f;
  const cublasStatus_t st = cublasGemmBatchedEx(
      at::cuda::getCurrentCUDABlasHandle(), CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(B), static_cast<int>(b),
      static_cast<int>(c), &alpha, const_cast<const void* const*>(p), t, static_cast<int>(d * ldx), const_cast<const void* const*>(p + n), t, static_cast<int>(c), &beta,
      p + 2 * n, t, static_cast<int>(d * B),
      static_cast<int>(n), compute, CUBLAS_GEMM_DEFAULT);
  TORCH_CHECK(st == CUBLAS_STATUS_SUCCESS, "ks::matmul (strided plan): cublasGemmBatchedEx failed (status ",
              static_cast<int>(st), ")");
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

// K's diagonal blocks densified in l (a, b*d, c*d), in one launch.
static at::Tensor densified(const at::Tensor& w) {
  const int64_t a = w.size(0), b = w.size(1), c = w.size(2), d = w.size(3);
  const at::Tensor wc = w.contiguous();
  at::Tensor out = at::empty({a, b * d, c * d}, w.options());
  const cudaError_t e = detail::densify_blocks(wc.const_data_ptr(), out.mutable_data_ptr(), a, b, c, d,
                                               static_cast<int>(w.element_size()), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(e == cudaSuccess, "ks::matmul (blockdense plan): densifying w failed: ", cudaGetErrorString(e));
  return out;
}

void block_dense(const at::Tensor& x, int64_t ldx, const at::Tensor& w, at::Tensor& y, int64_t B,
                 bool batch_last) {
  const at::Tensor wb = densified(w);
  if (!batch_last) {
    blocks_batch_first(x, ldx, wb, y, B);
    return;
  }
  // Y_i (bd x B) = Wb_i (bd x cd) X_i (cd x B), rows of x and y in place; column-major
  // Y_i^T = X_i^T Wb_i^T with lda = ldx, ldb = cd, ldc = B, batched over i.
  const int64_t a = wb.size(0), rows = wb.size(1), cols = wb.size(2);
  bgemm('n', 'n', B, rows, cols, x, 0, ldx, cols * ldx, wb, 0, cols, rows * cols, y, 0, B, rows * B, a);
}

// Batch-first, any d: x (B, a, c, d) -> xt (B, a, d, c), so that plane (i, l) is a K-major
// (B x c) matrix at offset (i*d + l)*c with row stride a*d*c; one GEMM over the a*d planes into
// yt (B, a, d, b); yt -> y (B, a, b, d).
namespace {
// x (B, a, c, d) -> xt (B, a, d, c): the first pass of both transposed plans.
at::Tensor transposed_rows(const at::Tensor& x, const at::Tensor& w, int64_t B) {
  const int64_t a = w.size(0), c = w.size(2), d = w.size(3);
  const at::Tensor xc = x.contiguous();
  at::Tensor xt = at::empty({B, a, d, c}, x.options());
  check_transpose(detail::transpose_batched(xc.const_data_ptr(), xt.mutable_data_ptr(), B * a,
                                            static_cast<int>(c), static_cast<int>(d),
                                            static_cast<int>(x.element_size()), c10::cuda::getCurrentCUDAStream()),
                  "x");
  return xt;
}
}  // namespace

void transposed_batch_first(const at::Tensor& x, const at::Tensor& w, at::Tensor& y, int64_t B) {
  const int64_t a = w.size(0), b = w.size(1), c = w.size(2), d = w.size(3);
  const int esz = static_cast<int>(x.element_size());
  const cudaStream_t s = c10::cuda::getCurrentCUDAStream();
  const at::Tensor xt = transposed_rows(x, w, B);
  const at::Tensor wp = planes_of(w);
  at::Tensor yt = at::empty({B, a, d, b}, x.options());
  bgemm('t', 'n', b, B, c, wp, 0, c, b * c, xt, 0, a * d * c, c, yt, 0, a * d * b, b, a * d);
  check_transpose(detail::transpose_batched(yt.const_data_ptr(), y.mutable_data_ptr(), B * a,
                                            static_cast<int>(d), static_cast<int>(b), esz, s),
                  "y");
}

// Batch-first 16-bit, sm_90a, d in {2, 3, 4, 6, 8, 12}: the wgmma GEMM on x's and y's rows as they lie
// (hopper/interleaved_gemm.cu). Its TMA maps want x's rows 16-byte aligned (else one copy of x)
// and the weight planes' rows padded to 8 elements.
void interleaved_batch_first(const at::Tensor& x, const at::Tensor& w, at::Tensor& y, int64_t B) {
  const int64_t a = w.size(0), b = w.size(1), c = w.size(2), d = w.size(3);
  TORCH_CHECK(hopper::interleaved_gemm_fits(B, a, b, c, d), "ks::matmul (interleaved plan): B=", B,
              " with pattern (", a, ",", b, ",", c, ",", d, ") exceeds TMA's 32-bit coordinates");
  at::Tensor xk = x.contiguous();
  if (reinterpret_cast<uintptr_t>(xk.const_data_ptr()) % 16 != 0) xk = xk.clone();  // fresh: aligned
  const int64_t c8 = hopper::interleaved_padded_c(c);
  at::Tensor wp;
  if (c8 == c) {
    wp = planes_of(w);
  } else {
    wp = at::zeros({a, d, b, c8}, w.options());
    wp.narrow(3, 0, c).copy_(w.permute({0, 3, 1, 2}));
  }
  TORCH_CHECK(y.is_contiguous() && reinterpret_cast<uintptr_t>(y.const_data_ptr()) % 16 == 0,
              "ks::matmul (interleaved plan): y must be contiguous and 16-byte aligned");
  const hopper::InterleavedGemmArgs g{xk.const_data_ptr(), wp.const_data_ptr(), y.mutable_data_ptr(), B, a, b, c, d,
                                      a * c * d, x.scalar_type() == at::kBFloat16};
  const cudaError_t e = hopper::interleaved_gemm(g, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(e == cudaSuccess, "ks::matmul (interleaved plan): the kernel failed: ", cudaGetErrorString(e));
}

bool fused_chain_serves(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w2) {
  if (x.scalar_type() != at::kBFloat16 && x.scalar_type() != at::kHalf) return false;
  if (w1.dim() != 4 || w2.dim() != 4 || x.dim() < 1) return false;
  const int64_t in = x.size(-1), B = in > 0 ? x.numel() / in : 0;
  return hopper::chain_gemm_serves(B, w1.size(0), w1.size(1), w1.size(2), w1.size(3), w2.size(0), w2.size(1),
                                   w2.size(2), w2.size(3));
}

// The fused chain (hopper/chain_gemm.cu): x's rows and the bias contiguous and 16-byte aligned (else one copy),
// w1 as it lies (contiguous (a1, 64, c1, 1) is K-major per block), w2's planes (d2, b2, c2).
at::Tensor fused_chain(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w2,
                       const std::optional<at::Tensor>& bias, int activation) {
  TORCH_CHECK(fused_chain_serves(x, w1, w2), "ks::chain (fused plan): the fused chain kernel does not serve x ",
              x.sizes(), " with factors ", w1.sizes(), " and ", w2.sizes(),
              " (it takes 16-bit (a1, 64, c1, 1) then (1, b2, c2, d2), d2 in {2, 3, 4}, a1 * 64 <= 384)");
  const int64_t in = x.size(-1), B = x.numel() / in, d2 = w2.size(3), out_f = w2.size(1) * d2;
  at::Tensor xk = x.contiguous();
  if (reinterpret_cast<uintptr_t>(xk.const_data_ptr()) % 16 != 0) xk = xk.clone();  // fresh: aligned
  const at::Tensor w1c = w1.contiguous(), w2p = planes_of(w2);
  at::Tensor bc = bias ? bias->contiguous() : at::Tensor();
  if (bias && reinterpret_cast<uintptr_t>(bc.const_data_ptr()) % 16 != 0) bc = bc.clone();  // 16-byte bias loads
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out_f;
  at::Tensor y = at::empty(shape, x.options());
  const hopper::ChainGemmArgs g{xk.const_data_ptr(), w1c.const_data_ptr(), w2p.const_data_ptr(),
                                bias ? bc.const_data_ptr() : nullptr, y.mutable_data_ptr(), B, w1.size(0),
                                w1.size(2), w2.size(1), w2.size(2), d2, in, activation,
                                x.scalar_type() == at::kBFloat16};
  const cudaError_t e = hopper::chain_gemm(g, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(e == cudaSuccess, "ks::chain (fused plan): the kernel failed: ", cudaGetErrorString(e));
  return y;
}

}  // namespace ks
