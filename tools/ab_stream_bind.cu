// tools/ab_stream.py's binding: one variant of the stream kernel (its own ks_stream.cu and ks_plan.h,
// found first on the include path; the other headers from the checkout) as a torch extension.
#include "ks_stream.cu"
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>

static ks::MatmulArgs args_of(torch::Tensor x, torch::Tensor w, torch::Tensor y, int64_t a, int64_t b, int64_t c, int64_t d) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2 && x.stride(1) == 1 && y.is_contiguous(), "x (rows, features) and y contiguous");
  return ks::MatmulArgs{x.data_ptr(), w.data_ptr(), y.data_ptr(), x.size(0), x.stride(0), (int)a, (int)b, (int)c, (int)d, false,
                        x.scalar_type() == at::kBFloat16 ? ks::DType::BF16 : ks::DType::F16, false};
}

// y = x K^T for w of pattern (a, b, c, d), batch-first.
void run(torch::Tensor x, torch::Tensor w, torch::Tensor y, int64_t a, int64_t b, int64_t c, int64_t d) {
  const cudaError_t e = ks::detail::stream_matmul(args_of(x, w, y, a, b, c, d), nullptr, 0, at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(e == cudaSuccess, "stream kernel: ", cudaGetErrorString(e));
}

// The chain w1 (a1, b1, c1, 1) -> w2 (1, b, c, d) in one launch, GELU (activation 2) in the epilogue.
void run_chain(torch::Tensor x, torch::Tensor w1, torch::Tensor w2, torch::Tensor y, int64_t b, int64_t c, int64_t d) {
  ks::detail::StreamFirstFactor f{w1.data_ptr(), (int)w1.size(0), (int)w1.size(1), (int)w1.size(2)};
  const cudaError_t e = ks::detail::stream_matmul(args_of(x, w2, y, 1, b, c, d), nullptr, 2, at::cuda::getCurrentCUDAStream(), &f);
  TORCH_CHECK(e == cudaSuccess, "stream chain: ", cudaGetErrorString(e));
}

// The variant's grid for the case, 0 where it does not serve it (tools/ab_stream.py's common call).
int64_t blocks(int64_t a, int64_t b, int64_t c, int64_t d, int64_t batch) {
  ks::StreamShape s;
  return ks::stream_shape(a, b, c, d, batch, ks::detail::sm_count(), &s) ? s.blocks : 0;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("run", &run);
  m.def("run_chain", &run_chain);
  m.def("blocks", &blocks);
}
