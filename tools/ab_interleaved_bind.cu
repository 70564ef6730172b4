// tools/ab_stream.py --kernel interleaved's binding: one variant of the interleaved wgmma GEMM (its own
// hopper/interleaved_gemm.cu and headers, found first on the include path; the rest from the checkout)
// as a torch extension.
#include "interleaved_gemm.cu"
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>

// y = x K^T, batch-first, for w of pattern (a, b, c, d) given as its planes wp (a, d, b, c8) (ab_stream.py
// prepared()); x (rows, a c d) and y contiguous and 16-byte aligned, as the op hands them over.
void run(torch::Tensor x, torch::Tensor wp, torch::Tensor y, int64_t a, int64_t b, int64_t c, int64_t d) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2 && x.is_contiguous() && y.is_contiguous() && wp.is_contiguous(),
              "x (rows, features), y and the planes contiguous");
  TORCH_CHECK(wp.dim() == 4 && wp.size(0) == a && wp.size(1) == d && wp.size(2) == b &&
                  wp.size(3) == ks::hopper::interleaved_padded_c(c), "planes (a, d, b, c8)");
  const ks::hopper::InterleavedGemmArgs g{x.data_ptr(), wp.data_ptr(), y.data_ptr(), x.size(0), a, b, c, d, a * c * d,
                                          x.scalar_type() == at::kBFloat16};
  const cudaError_t e = ks::hopper::interleaved_gemm(g, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(e == cudaSuccess, "interleaved kernel: ", cudaGetErrorString(e));
}

// 0 where the kernel cannot take the case (TMA's strides, its plane counts), else -1: the grid is
// the variant's own business (a persistent grid of at most one block per SM).
int64_t blocks(int64_t a, int64_t b, int64_t c, int64_t d, int64_t batch) {
  const bool planes = d == 2 || d == 3 || d == 4 || d == 6 || d == 8 || d == 12;
  return planes && (c * d) % 8 == 0 && (b * d) % 8 == 0 && ks::hopper::interleaved_gemm_fits(batch, a, b, c, d) ? -1 : 0;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("run", &run);
  m.def("blocks", &blocks);
}
