// The ks operator library: schemas (the one registry of every ks op) and the CPU kernels.
#include <Python.h>
#include <string>
#include <ATen/ATen.h>
#include <torch/library.h>

#include "ks_aten.h"
#include "ks_checks.h"
#include "ks_plan.h"

namespace ks {

// Per (i, l) block the product is a (B x c)(c x b) GEMM; ATen's bmm runs the a*d of them.
at::Tensor matmul_aten(const at::Tensor& x, const at::Tensor& w, bool batch_last) {
  int64_t B = 0;
  const auto [a, b, c, d] = check_matmul(x, w, batch_last, &B);
  if (batch_last) {
    auto xb = x.reshape({a, c, d, B}).permute({0, 2, 1, 3}).reshape({a * d, c, B});
    auto wb = w.permute({0, 3, 1, 2}).reshape({a * d, b, c});
    auto y = at::bmm(wb, xb);  // (a*d, b, B)
    return y.view({a, d, b, B}).permute({0, 2, 1, 3}).contiguous().view({a * b * d, B});
  }
  auto xb = x.reshape({B, a, c, d}).permute({1, 3, 0, 2}).reshape({a * d, B, c});
  auto wb = w.permute({0, 3, 2, 1}).reshape({a * d, c, b});
  auto y = at::bmm(xb, wb);  // (a*d, B, b)
  auto out_shape = x.sizes().vec();
  out_shape.back() = a * b * d;
  return y.view({a, d, B, b}).permute({2, 0, 3, 1}).contiguous().view(out_shape);
}

at::Tensor densify_blocks(const at::Tensor& w) {
  const int64_t a = w.size(0), b = w.size(1), c = w.size(2), d = w.size(3);
  // diag_embed: [i, j, k, l, l'] = w[i, j, k, l] * (l == l'); rows (j, l), columns (k, l').
  return at::diag_embed(w).permute({0, 1, 3, 2, 4}).contiguous().view({a, b * d, c * d});
}

at::Tensor matmul_dense(const at::Tensor& x, const at::Tensor& w, bool batch_last) {
  int64_t B = 0;
  const auto [a, b, c, d] = check_matmul(x, w, batch_last, &B);
  at::Tensor k = at::zeros({a * b * d, a * c * d}, w.options());
  // K's diagonal blocks: view K as (a, bd, a, cd); its (i, :, i, :) diagonal is (bd, cd, a).
  k.view({a, b * d, a, c * d}).diagonal(0, 0, 2).copy_(densify_blocks(w).permute({1, 2, 0}));
  return batch_last ? at::mm(k, x) : at::linear(x, k);
}

// grad_w[i,j,k,l] = sum_n grad_y[n,i,j,l] x[n,i,k,l]: a*d GEMMs (b x B)(B x c), no dense K.
at::Tensor weight_grad_aten(const at::Tensor& grad_y, const at::Tensor& x,
                            at::IntArrayRef pattern, bool batch_last) {
  int64_t B = 0;
  const auto [a, b, c, d] = check_weight_grad(grad_y, x, pattern, batch_last, &B);
  at::Tensor gb, xb;
  if (batch_last) {
    gb = grad_y.reshape({a, b, d, B}).permute({0, 2, 1, 3}).reshape({a * d, b, B});
    xb = x.reshape({a, c, d, B}).permute({0, 2, 3, 1}).reshape({a * d, B, c});
  } else {
    gb = grad_y.reshape({B, a, b, d}).permute({1, 3, 2, 0}).reshape({a * d, b, B});
    xb = x.reshape({B, a, c, d}).permute({1, 3, 0, 2}).reshape({a * d, B, c});
  }
  auto g = at::bmm(gb, xb);  // (a*d, b, c)
  // A fresh (a,b,c,d) tensor with standard strides: .contiguous() keeps the permuted strides of
  // size-1 dims (d = 1), which DDP's gradient buckets reject with a warning and an extra copy.
  at::Tensor out = at::empty({a, b, c, d}, g.options());
  out.copy_(g.view({a, d, b, c}).permute({0, 2, 3, 1}));
  return out;
}

void bias_activation_aten(at::Tensor& z, const std::optional<at::Tensor>& bias, int activation) {
  if (bias) z.add_(*bias);
  switch (static_cast<Activation>(activation)) {
    case Activation::None: break;
    case Activation::Relu: z.relu_(); break;
    case Activation::Gelu: at::gelu_(z, "none"); break;
    case Activation::GeluTanh: at::gelu_(z, "tanh"); break;
    case Activation::Silu: at::silu_(z); break;
  }
}

// ks::chain on the CPU: the factors one after another (the permute + bmm kernel), each output a
// new tensor, then the epilogue in place on the last.
at::Tensor chain_cpu(const at::Tensor& x, at::TensorList factors, const std::optional<at::Tensor>& bias,
                     c10::string_view activation) {
  const Activation act = parse_activation(std::string(activation));
  check_chain(x, factors, bias);
  at::Tensor h = x;
  for (const at::Tensor& w : factors) h = matmul_aten(h, w, false);
  bias_activation_aten(h, bias, static_cast<int>(act));
  return h;
}

// ks::_chain_plan on the CPU: only 'factors' (the fused and stream chain kernels need an sm_90 GPU).
at::Tensor chain_plan_cpu(const at::Tensor& x, at::TensorList factors, const std::optional<at::Tensor>& bias,
                          c10::string_view activation, c10::string_view plan) {
  const std::string name(plan);
  TORCH_CHECK(name == "factors" || name == "fused" || name == "stream",
              "ks::_chain_plan: plan must be 'factors', 'fused' or 'stream', got '", name, "'");
  TORCH_CHECK(name == "factors", "ks::_chain_plan: plan '", name, "' needs a CUDA device (sm_90)");
  return chain_cpu(x, factors, bias, activation);
}

// ks::_matmul_plan on the CPU: the plans that need no GPU (bmm is the CPU kernel).
at::Tensor matmul_plan_cpu(const at::Tensor& x, const at::Tensor& w, c10::string_view plan,
                           bool batch_last) {
  const int idx = plan_index(std::string(plan).c_str());
  TORCH_CHECK(idx >= 0, "ks::_matmul_plan: unknown plan '", plan, "'");
  const Plan p = static_cast<Plan>(idx);
  TORCH_CHECK(p == Plan::Bmm || p == Plan::Dense, "ks::_matmul_plan: plan '", plan,
              "' needs a CUDA device; on the CPU the plans are 'bmm' and 'dense'");
  return p == Plan::Dense ? matmul_dense(x, w, batch_last) : matmul_aten(x, w, batch_last);
}

at::Tensor weight_grad_plan_cpu(const at::Tensor& grad_y, const at::Tensor& x, at::IntArrayRef pattern,
                                c10::string_view plan, bool batch_last) {
  TORCH_CHECK(std::string(plan) == "bmm", "ks::_weight_grad_plan: on the CPU the only plan is 'bmm', got '",
              plan, "'");
  return weight_grad_aten(grad_y, x, pattern, batch_last);
}

// The problem of ks::_plan_for / ks::_plan_serves (an sm_90 build with the sm_90a kernels).
// precision: 0 float64, 1 float32, 2 tf32, 3 float16, 4 bfloat16 (ks::Precision).
Problem problem_of(const char* op, at::IntArrayRef pattern, int64_t batch, int64_t precision, bool batch_last,
                   int64_t sm) {
  TORCH_CHECK(pattern.size() == 4, op, ": pattern must have 4 entries (a,b,c,d)");
  TORCH_CHECK(precision >= 0 && precision <= 4, op, ": precision must be 0..4, got ", precision);
  TORCH_CHECK(batch >= 0 && sm >= 0, op, ": batch and sm must be >= 0");
  for (const int64_t v : pattern) TORCH_CHECK(v > 0, op, ": pattern entries must be positive");
  return Problem{pattern[0], pattern[1], pattern[2], pattern[3], batch,
                 static_cast<Precision>(precision), batch_last, static_cast<int>(sm)};
}

// The rule (ks_plan.h) as an op, for tests and tools: the index of the plan in kPlanNames.
int64_t plan_for(at::IntArrayRef pattern, int64_t batch, int64_t precision, bool batch_last, int64_t sm) {
  return static_cast<int64_t>(choose_plan(problem_of("ks::_plan_for", pattern, batch, precision, batch_last, sm)));
}

// Whether the named plan can run the problem at all (ks_plan.h, plan_serves): for tools that time
// every plan.
bool plan_serves_op(c10::string_view plan, at::IntArrayRef pattern, int64_t batch, int64_t precision,
                    bool batch_last, int64_t sm) {
  const int idx = plan_index(std::string(plan).c_str());
  TORCH_CHECK(idx >= 0, "ks::_plan_serves: unknown plan '", plan, "'");
  return plan_serves(static_cast<Plan>(idx), problem_of("ks::_plan_serves", pattern, batch, precision, batch_last, sm));
}

// The chain rule (ks_plan.h, choose_fused_chain) as an op: whether ks::chain runs these two factors
// as one fused kernel (on an sm_90 build with the sm_90a kernels, batch-first; the kernel's own
// preconditions, 16-byte strides and 32-bit sizes, aside).
bool chain_fused_for(at::IntArrayRef first, at::IntArrayRef second, int64_t batch, int64_t precision, int64_t sm) {
  return choose_fused_chain(problem_of("ks::_chain_fused_for", first, batch, precision, false, sm),
                            problem_of("ks::_chain_fused_for", second, batch, precision, false, sm));
}

// Private (tests, ks_ops.ops.chain_plan_for): whether ks::chain runs this 2-factor chain in one
// Stream launch (decode sizes; choose_stream_chain).
bool chain_stream_for(at::IntArrayRef first, at::IntArrayRef second, int64_t batch, int64_t precision, int64_t sm) {
  return choose_stream_chain(problem_of("ks::_chain_stream_for", first, batch, precision, false, sm),
                             problem_of("ks::_chain_stream_for", second, batch, precision, false, sm));
}

}  // namespace ks

TORCH_LIBRARY(ks, m) {
  m.def("matmul(Tensor x, Tensor w, *, bool batch_last=False) -> Tensor");
  m.def("weight_grad(Tensor grad_y, Tensor x, int[] pattern, *, bool batch_last=False) -> Tensor");
  // A KSLinear in one op: batch-first x (..., in) through the factors (the first listed applied
  // first), then the bias, then the activation (none, relu, gelu, gelu_tanh, silu).
  m.def("chain(Tensor x, Tensor[] factors, Tensor? bias=None, str activation=\"none\") -> Tensor");
  // Private: ks::matmul run by the named plan (benchmarks, tests); and the rule's choice.
  m.def("_matmul_plan(Tensor x, Tensor w, str plan, *, bool batch_last=False) -> Tensor");
  m.def("_weight_grad_plan(Tensor grad_y, Tensor x, int[] pattern, str plan, *, bool batch_last=False) -> Tensor");
  // Private: ks::chain by 'factors' (each factor by the rule's plan, then the epilogue), 'fused'
  // (the fused 2-factor kernel, hopper/chain_gemm.cu) or 'stream' (one Stream launch, ks_stream.cu),
  // the last two where they serve.
  m.def("_chain_plan(Tensor x, Tensor[] factors, Tensor? bias, str activation, str plan) -> Tensor");
  m.def("_plan_for(int[] pattern, int batch, int precision, bool batch_last, int sm) -> int",
        &ks::plan_for);
  m.def("_plan_serves(str plan, int[] pattern, int batch, int precision, bool batch_last, int sm) -> bool",
        &ks::plan_serves_op);
  m.def("_chain_fused_for(int[] first, int[] second, int batch, int precision, int sm) -> bool",
        &ks::chain_fused_for);
  m.def("_chain_stream_for(int[] first, int[] second, int batch, int precision, int sm) -> bool",
        &ks::chain_stream_for);
}

TORCH_LIBRARY_IMPL(ks, CPU, m) {
  m.impl("matmul", &ks::matmul_aten);
  m.impl("weight_grad", &ks::weight_grad_aten);
  m.impl("chain", &ks::chain_cpu);
  m.impl("_matmul_plan", &ks::matmul_plan_cpu);
  m.impl("_weight_grad_plan", &ks::weight_grad_plan_cpu);
  m.impl("_chain_plan", &ks::chain_plan_cpu);
}

// A plain module: importing ks_ops._C runs the registrations above.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "ks_ops native ops", -1, nullptr};
  return PyModule_Create(&module_def);
}
