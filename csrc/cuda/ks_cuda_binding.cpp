// CUDA registration of the ks ops: a thin layer that validates with the shared checks, asks the
// rule (ks_plan.h) for a plan and runs it on the current stream: the fused kernels
// (csrc/cuda/ks_matmul.cu, through ks::MatmulArgs), the cuBLAS plans (ks_cublas_plans.cpp) or
// ATen's permute + bmm / dense paths.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>
#include <string>

#include "hopper/interleaved_gemm.h"
#include "ks_aten.h"
#include "ks_checks.h"
#include "ks_cublas_plans.h"
#include "ks_kernels.h"
#include "ks_plan.h"

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

Precision precision_of(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return Precision::F64;
    case at::kHalf: return Precision::F16;
    case at::kBFloat16: return Precision::BF16;
    default: return at::globalContext().allowTF32CuBLAS() ? Precision::TF32 : Precision::F32;
  }
}

int device_sm(const at::Tensor& x) {
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(x.device().index());
  return prop->major * 10 + prop->minor;
}

// The arguments of the kernels behind MatmulArgs (ks_matmul.cu, ks_stream.cu) for y, allocated by
// the caller; `wc` and `xk` keep alive the contiguous copies made here (only where needed).
// The pattern, batch and dtype part of MatmulArgs (pointers and ldx: the callers).
MatmulArgs problem_args(const Pattern& p, int64_t B, bool batch_last, at::ScalarType st) {
  const auto [a, b, c, d] = p;
  MatmulArgs args{};
  args.batch = B;
  args.a = static_cast<int>(a);
  args.b = static_cast<int>(b);
  args.c = static_cast<int>(c);
  args.d = static_cast<int>(d);
  args.batch_last = batch_last;
  args.dtype = to_dtype(st);
  args.allow_tf32 = at::globalContext().allowTF32CuBLAS();
  return args;
}

MatmulArgs kernel_args(const at::Tensor& x, const at::Tensor& w, at::Tensor& y, const Pattern& p, int64_t B,
                       bool batch_last, at::Tensor& wc, at::Tensor& xk) {
  const auto [a, b, c, d] = p;
  const int64_t in_f = a * c * d;
  MatmulArgs args = problem_args(p, B, batch_last, x.scalar_type());
  wc = w.contiguous();
  // x rows (features for batch-first, batch for batch-last) must be unit-stride; copy only then.
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
  return args;
}

void check_launch(cudaError_t err, const char* what, const Pattern& p, int64_t B, const at::Tensor& x, bool batch_last) {
  TORCH_CHECK(err == cudaSuccess, "ks::matmul: ", what, " launch failed for ", pattern_str(p), ", B=", B,
              ", dtype ", x.scalar_type(), ", batch_last=", batch_last, ": ", cudaGetErrorString(err));
}

// The fused kernels (ks_matmul.cu) on y, allocated by the caller.
void run_fused(const at::Tensor& x, const at::Tensor& w, at::Tensor& y, const Pattern& p,
               int64_t B, bool batch_last) {
  at::Tensor wc, xk;
  const MatmulArgs args = kernel_args(x, w, y, p, B, batch_last, wc, xk);
  check_launch(matmul(args, c10::cuda::getCurrentCUDAStream()), "CUDA kernel", p, B, x, batch_last);
}

// What ks::chain asks of its last factor's product: the bias and the activation, which the Stream
// plan applies in its epilogue (`applied` tells the caller); other plans leave them to the caller.
struct FactorEpilogue {
  std::optional<at::Tensor> bias;
  Activation act = Activation::None;
  bool applied = false;
};

// The Stream plan (ks_stream.cu) on y. False, with nothing launched, where its kernel does not
// serve these arguments (w's alignment) and `must` is false.
bool run_stream(const at::Tensor& x, const at::Tensor& w, at::Tensor& y, const Pattern& p, int64_t B,
                bool batch_last, FactorEpilogue* epi, bool must) {
  at::Tensor wc, xk, bc;
  const MatmulArgs args = kernel_args(x, w, y, p, B, batch_last, wc, xk);
  if (epi && epi->bias) bc = epi->bias->contiguous();
  const int act = epi ? static_cast<int>(epi->act) : 0;
  const cudaError_t err = detail::stream_matmul(args, bc.defined() ? bc.const_data_ptr() : nullptr, act,
                                                c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err != cudaErrorNotSupported || !must,
              "ks::matmul: plan 'stream' does not serve these arguments (w must be 16-byte aligned)");
  if (err == cudaErrorNotSupported) return false;
  check_launch(err, "stream kernel", p, B, x, batch_last);
  if (epi) epi->applied = true;
  return true;
}

// Runs ks::matmul with `plan` (the rule's choice when none is given).
// epi: ks::chain's bias and activation for this product (the last factor's), applied here where
// the plan can (epi->applied), else left to the caller.
at::Tensor run_matmul(const at::Tensor& x, const at::Tensor& w, bool batch_last,
                      std::optional<Plan> forced, FactorEpilogue* epi = nullptr) {
  int64_t B = 0;
  const Pattern p = check_matmul(x, w, batch_last, &B);
  TORCH_CHECK(x.is_cuda(), "ks: x must be a CUDA tensor here, got ", x.device());
  const auto [a, b, c, d] = p;
  TORCH_CHECK(b <= INT32_MAX && c <= INT32_MAX && d <= INT32_MAX && a <= INT32_MAX,
              "ks: pattern dims must fit in 32 bits, got ", pattern_str(p));
  c10::cuda::CUDAGuard guard(x.device());
  Problem q{a, b, c, d, B, precision_of(x.scalar_type()), batch_last, device_sm(x)};
  q.sm90a_kernels = hopper::hopper_kernels_built();
  const Plan plan = forced ? *forced : choose_plan(q);
  TORCH_CHECK(plan_serves(plan, q), "ks::matmul: plan '", plan_name(plan), "' does not serve ",
              pattern_str(p), batch_last ? " batch-last" : " batch-first", " in ", x.scalar_type());
  if (plan == Plan::Bmm) return matmul_aten(x, w, batch_last);
  if (plan == Plan::Dense) return matmul_dense(x, w, batch_last);

  const int64_t in_f = a * c * d, out_f = a * b * d;
  at::Tensor y;
  if (batch_last) {
    y = at::empty({out_f, B}, x.options());
  } else {
    auto shape = x.sizes().vec();
    shape.back() = out_f;
    y = at::empty(shape, x.options());
  }
  if (B == 0 || out_f == 0) return y;
  if (plan == Plan::Stream && run_stream(x, w, y, p, B, batch_last, epi, forced.has_value())) return y;
  if (plan == Plan::Fused || plan == Plan::Stream) {  // Stream: where its kernel does not serve w
    run_fused(x, w, y, p, B, batch_last);
    return y;
  }
  if (plan == Plan::Transposed) {
    transposed_batch_first(x, w, y, B);
    return y;
  }
  if (plan == Plan::Interleaved) {
    interleaved_batch_first(x, w, y, B);
    return y;
  }
  // Strided / BlockDense read x in place: unit inner stride, row stride ldx.
  at::Tensor xk;
  int64_t ldx = 0;
  if (batch_last) {
    xk = (x.stride(1) == 1 && x.stride(0) >= B) || B == 1 ? x : x.contiguous();
    ldx = xk.stride(0) >= B ? xk.stride(0) : B;
  } else {
    ldx = rows_of(x, B, in_f, xk);
    if (ldx < in_f) {  // cuBLAS needs ld >= the row length
      xk = xk.contiguous();
      ldx = in_f;
    }
  }
  if (plan == Plan::Strided && batch_last) strided_batch_last(xk, ldx, w, y, B);
  else if (plan == Plan::Strided) strided_batch_first_d1(xk, ldx, w, y, B);
  else block_dense(xk, ldx, w, y, B, batch_last);
  return y;
}

at::Tensor matmul_cuda(const at::Tensor& x, const at::Tensor& w, bool batch_last) {
  return run_matmul(x, w, batch_last, std::nullopt);  // float64: the rule's bmm plan
}

at::Tensor matmul_plan_cuda(const at::Tensor& x, const at::Tensor& w, c10::string_view plan,
                            bool batch_last) {
  const int idx = plan_index(std::string(plan).c_str());
  TORCH_CHECK(idx >= 0, "ks::_matmul_plan: unknown plan '", plan, "'");
  return run_matmul(x, w, batch_last, static_cast<Plan>(idx));
}

// ks::chain's plan 'factors': every factor by the rule's plan, then the bias and the activation: in
// the last factor's epilogue where its plan is Stream, else in one pass (ks_epilogue.cu; float64
// through ATen). Arguments checked by the caller.
at::Tensor chain_factors(const at::Tensor& x, at::TensorList factors, const std::optional<at::Tensor>& bias,
                         Activation act) {
  at::Tensor h = x;
  FactorEpilogue epi{bias, act};
  for (size_t f = 0; f < factors.size(); ++f)  // a new tensor each
    h = run_matmul(h, factors[f], false, std::nullopt, f + 1 == factors.size() ? &epi : nullptr);
  if (epi.applied || (!bias && act == Activation::None)) return h;
  if (h.scalar_type() == at::kDouble) {
    bias_activation_aten(h, bias, static_cast<int>(act));
    return h;
  }
  const int64_t out_f = h.size(-1);
  const at::Tensor bc = bias ? bias->contiguous() : at::Tensor();
  const cudaError_t err = detail::bias_activation(h.data_ptr(), bias ? bc.const_data_ptr() : nullptr,
                                                  h.numel() / out_f, out_f,  // out_f > 0: patterns are positive
                                                  static_cast<int>(act), to_dtype(h.scalar_type()),
                                                  c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "ks::chain: CUDA epilogue launch failed: ", cudaGetErrorString(err));
  return h;
}

// The problem of one factor of a batch-first chain applied to rows of x (for the rule).
Problem chain_factor_problem(const at::Tensor& x, const at::Tensor& w) {
  const int64_t in = x.size(-1), B = in > 0 ? x.numel() / in : 0;
  Problem q{w.size(0), w.size(1), w.size(2), w.size(3), B, precision_of(x.scalar_type()), false, device_sm(x)};
  q.sm90a_kernels = hopper::hopper_kernels_built();
  return q;
}

// ks::chain of two factors in one Stream launch (ks_stream.cu with StreamFirstFactor): each block
// computes the slice of F1's output its K slice of F2 reads; bias and activation in its epilogue.
// False, with nothing launched, where the kernel does not serve the arguments and `must` is false.
bool run_stream_chain(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w2,
                      const std::optional<at::Tensor>& bias, Activation act, at::Tensor* out, bool must) {
  const int64_t in = x.size(-1), B = in > 0 ? x.numel() / in : 0;
  const Pattern p2{w2.size(0), w2.size(1), w2.size(2), w2.size(3)};
  auto shape = x.sizes().vec();
  shape.back() = p2[0] * p2[1] * p2[3];
  at::Tensor y = at::empty(shape, x.options());
  if (B == 0) {
    *out = y;
    return true;
  }
  at::Tensor xk, bc;
  const at::Tensor w1c = w1.contiguous(), w2c = w2.contiguous();
  MatmulArgs args = problem_args(p2, B, false, x.scalar_type());
  args.ldx = rows_of(x, B, in, xk);  // the chain's input: a1 * c1 features
  TORCH_CHECK(args.ldx >= 0, "ks: negative strides are not supported");
  args.x = xk.data_ptr();
  args.w = w2c.data_ptr();
  args.y = y.data_ptr();
  const detail::StreamFirstFactor first{w1c.const_data_ptr(), static_cast<int>(w1.size(0)),
                                        static_cast<int>(w1.size(1)), static_cast<int>(w1.size(2))};
  if (bias) bc = bias->contiguous();
  const cudaError_t err = detail::stream_matmul(args, bc.defined() ? bc.const_data_ptr() : nullptr,
                                                static_cast<int>(act), c10::cuda::getCurrentCUDAStream(), &first);
  TORCH_CHECK(err != cudaErrorNotSupported || !must,
              "ks::_chain_plan: plan 'stream' does not serve these arguments (16-bit, sm_90, batch-first; "
              "F1 = (a1, b1, c1, 1) with b1 % 32 == 0 and c1 % 8 == 0, F2 = (1, b2, c2, d2 <= 8) at rows x d2 <= 64-128; x's "
              "rows and both factors 16-byte aligned)");
  if (err == cudaErrorNotSupported) return false;
  check_launch(err, "stream chain kernel", p2, B, x, false);
  *out = y;
  return true;
}

// Which ks::chain path: the rule's, or one named by ks::_chain_plan.
enum class ChainPath { Rule, Factors, Fused, Stream };

// ks::chain: the fused kernel (hopper/chain_gemm.cu) or one Stream launch (decode sizes) where the
// rule (ks_plan.h, choose_fused_chain / choose_stream_chain) picks them and the kernel serves the
// arguments; the factors one by one otherwise. A named path runs or says why it cannot.
at::Tensor run_chain(const at::Tensor& x, at::TensorList factors, const std::optional<at::Tensor>& bias,
                     c10::string_view activation, ChainPath path) {
  const Activation act = parse_activation(std::string(activation));
  check_chain(x, factors, bias);
  TORCH_CHECK(x.is_cuda(), "ks: x must be a CUDA tensor here, got ", x.device());
  c10::cuda::CUDAGuard guard(x.device());
  if (path == ChainPath::Fused) {
    TORCH_CHECK(hopper::hopper_kernels_built() && device_sm(x) == 90,
                "ks::_chain_plan: plan 'fused' needs an sm_90 GPU and a build with the sm_90a kernels");
    TORCH_CHECK(factors.size() == 2, "ks::_chain_plan: plan 'fused' takes 2 factors, got ", factors.size());
    return fused_chain(x, factors[0], factors[1], bias, static_cast<int>(act));  // checks that it serves
  }
  if (path == ChainPath::Stream) {
    TORCH_CHECK(factors.size() == 2, "ks::_chain_plan: plan 'stream' takes 2 factors, got ", factors.size());
    const Problem f1 = chain_factor_problem(x, factors[0]), f2 = chain_factor_problem(x, factors[1]);
    TORCH_CHECK(f1.d == 1 && f2.a == 1 && f2.d <= 8 && plan_serves(Plan::Stream, f2),
                "ks::_chain_plan: plan 'stream' does not serve ", pattern_str({f1.a, f1.b, f1.c, f1.d}), " -> ",
                pattern_str({f2.a, f2.b, f2.c, f2.d}), " at ", f2.batch, " rows in ", x.scalar_type());
    at::Tensor y;
    run_stream_chain(x, factors[0], factors[1], bias, act, &y, true);
    return y;
  }
  if (path == ChainPath::Rule && factors.size() == 2) {
    const Problem f1 = chain_factor_problem(x, factors[0]), f2 = chain_factor_problem(x, factors[1]);
    if (choose_fused_chain(f1, f2) && fused_chain_serves(x, factors[0], factors[1]))
      return fused_chain(x, factors[0], factors[1], bias, static_cast<int>(act));
    at::Tensor y;
    if (choose_stream_chain(f1, f2) && run_stream_chain(x, factors[0], factors[1], bias, act, &y, false)) return y;
  }
  return chain_factors(x, factors, bias, act);
}

at::Tensor chain_cuda(const at::Tensor& x, at::TensorList factors, const std::optional<at::Tensor>& bias,
                      c10::string_view activation) {
  return run_chain(x, factors, bias, activation, ChainPath::Rule);
}

// The fused kernel (ks_wgrad.cu) where the rule (ks_plan.h, choose_weight_grad_plan) picks it and
// the kernel serves the arguments (alignment); the ATen permute + bmm path otherwise.
// fused: nullopt = where the fused kernel serves; true = the fused kernel or an error; false = bmm.
at::Tensor run_weight_grad(const at::Tensor& grad_y, const at::Tensor& x, at::IntArrayRef pattern,
                           bool batch_last, std::optional<bool> fused) {
  int64_t B = 0;
  const Pattern p = check_weight_grad(grad_y, x, pattern, batch_last, &B);
  TORCH_CHECK(x.is_cuda(), "ks: x must be a CUDA tensor here, got ", x.device());
  const auto st = x.scalar_type();
  const bool fused_dtype = st == at::kHalf || st == at::kBFloat16;
  TORCH_CHECK(!(fused && *fused) || (fused_dtype && !batch_last),
              "ks::weight_grad: the fused plan serves 16-bit batch-first inputs only");
  if ((fused && !*fused) || batch_last || B == 0 || !fused_dtype)
    return weight_grad_aten(grad_y, x, pattern, batch_last);
  const auto [a, b, c, d] = p;
  TORCH_CHECK(b <= INT32_MAX && c <= INT32_MAX && d <= INT32_MAX && a <= INT32_MAX,
              "ks: pattern dims must fit in 32 bits, got ", pattern_str(p));
  c10::cuda::CUDAGuard guard(x.device());
  const Problem q{a, b, c, d, B, precision_of(st), batch_last, device_sm(x)};
  if (!fused && choose_weight_grad_plan(q) == Plan::Bmm) return weight_grad_aten(grad_y, x, pattern, batch_last);
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
  TORCH_CHECK(ws_floats >= 0 || !fused, "ks::weight_grad: the fused plan does not serve ",
              pattern_str(p), " (d must be 4 or a multiple of 8, b*d and c*d multiples of 8, rows "
              "16-byte aligned, sm_90)");
  if (ws_floats < 0) return weight_grad_aten(grad_y, x, pattern, batch_last);
  at::Tensor ws = at::empty({ws_floats}, x.options().dtype(at::kFloat));
  args.ws = ws.data_ptr<float>();
  const cudaError_t err = weight_grad(args, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "ks::weight_grad: CUDA kernel launch failed for ", pattern_str(p),
              ", B=", B, ", dtype ", st, ": ", cudaGetErrorString(err));
  return dw;
}

at::Tensor weight_grad_cuda(const at::Tensor& grad_y, const at::Tensor& x, at::IntArrayRef pattern,
                            bool batch_last) {
  return run_weight_grad(grad_y, x, pattern, batch_last, std::nullopt);
}

// Private: "fused" or "bmm" (benchmarks and tests time and check both paths).
at::Tensor weight_grad_plan_cuda(const at::Tensor& grad_y, const at::Tensor& x, at::IntArrayRef pattern,
                                 c10::string_view plan, bool batch_last) {
  const std::string name(plan);
  TORCH_CHECK(name == "fused" || name == "bmm", "ks::_weight_grad_plan: plan must be 'fused' or 'bmm', got '",
              name, "'");
  return run_weight_grad(grad_y, x, pattern, batch_last, name == "fused");
}

// ks::_chain_plan: 'factors' runs the factors one by one (each by the rule's plan); 'fused' the fused
// 2-factor kernel (hopper/chain_gemm.cu), 'stream' the 2-factor Stream launch (ks_stream.cu), or an
// error naming why it cannot run.
at::Tensor chain_plan_cuda(const at::Tensor& x, at::TensorList factors, const std::optional<at::Tensor>& bias,
                           c10::string_view activation, c10::string_view plan) {
  const std::string name(plan);
  TORCH_CHECK(name == "factors" || name == "fused" || name == "stream",
              "ks::_chain_plan: plan must be 'factors', 'fused' or 'stream', got '", name, "'");
  const ChainPath path = name == "fused" ? ChainPath::Fused : name == "stream" ? ChainPath::Stream : ChainPath::Factors;
  return run_chain(x, factors, bias, activation, path);
}

}  // namespace
}  // namespace ks

TORCH_LIBRARY_IMPL(ks, CUDA, m) {
  m.impl("matmul", &ks::matmul_cuda);
  m.impl("weight_grad", &ks::weight_grad_cuda);
  m.impl("chain", &ks::chain_cuda);
  m.impl("_matmul_plan", &ks::matmul_plan_cuda);
  m.impl("_weight_grad_plan", &ks::weight_grad_plan_cuda);
  m.impl("_chain_plan", &ks::chain_plan_cuda);
}
