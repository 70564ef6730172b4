// Plain C++/CUDA interface of the ks_ops CUDA kernels. No torch types: the kernels compile
// with bare nvcc (`nvcc -c -arch=sm_90 csrc/cuda/ks_matmul.cu`), and the torch binding
// (ks_cuda_binding.cpp) only fills these structs and forwards the current stream.
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

namespace ks {

enum class DType : int { F32 = 0, F16 = 1, BF16 = 2 };

// Pattern (a,b,c,d): K (abd x acd) with K[i*bd + j*d + l, i*cd + k*d + l] = w[i,j,k,l],
// w contiguous (a,b,c,d).
//   batch-first: x (batch, acd) rows of stride ldx (inner stride 1) -> y (batch, abd), y = x K^T,
//                y contiguous (row stride abd).
//   batch-last:  x (acd, batch) rows of stride ldx (inner stride 1) -> y (abd, batch), y = K x,
//                y contiguous (row stride batch).
struct MatmulArgs {
  const void* x;
  const void* w;
  void* y;
  int64_t batch;   // B >= 0
  int64_t ldx;     // row stride of x in elements
  int a, b, c, d;
  bool batch_last;
  DType dtype;
  bool allow_tf32;  // F32 only: tensor cores in TF32 allowed
};

// Launches on `stream`; returns the launch's error (cudaSuccess for batch == 0, nothing launched).
cudaError_t matmul(const MatmulArgs& args, cudaStream_t stream);

// Weight gradient, batch-first:  dw[i,j,k,l] = sum_n gy(n, i, j, l) * x(n, i, k, l)  with gy
// (batch, abd) rows of stride ldg and x (batch, acd) rows of stride ldx (inner strides 1), dw
// contiguous (a,b,c,d). The fused kernel (ks_wgrad.cu) serves 16-bit inputs with d == 4 or
// d % 8 == 0, b*d and c*d multiples of 8, 16-byte aligned rows, on sm_90+; it splits the batch
// over blocks, writes fp32 partial sums to `ws` and reduces them in a fixed order (deterministic).
struct WgradArgs {
  const void* gy;
  const void* x;
  void* dw;
  float* ws;        // weight_grad_workspace(args) floats
  int64_t batch;    // B >= 1
  int64_t ldg, ldx;
  int a, b, c, d;
  DType dtype;
  int64_t split_rows;  // batch rows per block, set by weight_grad_workspace
};

// Plans the fused kernel for `args` (sizes, strides, pointers, dtype): sets args.split_rows and
// returns the floats of workspace it needs, or -1 when it does not serve these arguments (the
// caller then takes the ATen bmm path). weight_grad then launches that plan.
int64_t weight_grad_workspace(WgradArgs& args);
cudaError_t weight_grad(const WgradArgs& args, cudaStream_t stream);

// out[r][q][p] = in[r][p][q] for r < R, p < P, q < Q, both contiguous, elements of elem_size
// bytes (2 or 4): the layout change of the Transposed plan (ks_layout.cu).
namespace detail {
cudaError_t transpose_batched(const void* in, void* out, int64_t R, int P, int Q, int elem_size,
                              cudaStream_t stream);

// K's diagonal blocks densified in l, (a, b*d, c*d) contiguous, from contiguous w (a,b,c,d):
// the BlockDense plan's weights in one launch (ks_layout.cu); 2- or 4-byte elements.
cudaError_t densify_blocks(const void* w, void* out, int64_t a, int64_t b, int64_t c, int64_t d,
                           int elem_size, cudaStream_t stream);

// ks::chain's epilogue: z = act(z + bias) in place, z contiguous (rows, features), bias
// (features,) or null, act a ks::Activation value (ks_epilogue.cu).
cudaError_t bias_activation(void* z, const void* bias, int64_t rows, int64_t features, int activation,
                            DType dtype, cudaStream_t stream);

// The Stream plan (ks_stream.cu; 16-bit, sm_90, batch * stream_cols(d) <= 128, both layouts,
// w 16-byte aligned): w read once as it lies, bias (a*b*d elements, or null) and activation (a
// ks::Activation value) applied before the one rounding to y. cudaErrorNotSupported, with nothing
// launched, where its preconditions fail (ks_plan.h stream_shape, w's alignment).
//
// With `first` (ks::chain of two factors at decode sizes, one launch): args.x is the chain's input
// and args.w / the pattern its second factor F2 = (1, b, c, d <= 8); each block computes the slice
// of the intermediate h = x K1^T its K slice reads, from first->w = F1 = (a1, b1, c1, 1) (c1 a
// multiple of 8, b1 of 32, a1 * b1 = c * d), rounded to 16 bits as the unfused chain rounds it.
// Batch-first only; x's rows and F1 16-byte aligned, else cudaErrorNotSupported.
struct StreamFirstFactor {
  const void* w;
  int a, b, c;
};
cudaError_t stream_matmul(const MatmulArgs& args, const void* bias, int activation, cudaStream_t stream,
                          const StreamFirstFactor* first = nullptr);

// Pointer arrays (3 * a * d: A, then B, then C) of the batch-last Strided plan's batched GEMM,
// written on the device so that the plan stays capturable in a CUDA graph (ks_layout.cu).
struct PlanePointers {
  int64_t a, b, c, d, ldx, batch, esz;
};
cudaError_t plane_pointers(const void* x, const void* wp, void* y, const PlanePointers& g,
                           const void** ptrs, cudaStream_t stream);
}  // namespace detail

}  // namespace ks
