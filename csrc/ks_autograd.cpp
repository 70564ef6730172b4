// Autograd for the ks ops, in C++: the Autograd kernels of ks::matmul, ks::weight_grad and
// ks::chain. They were torch.library.register_autograd's Python Functions, which cost ~100 us of
// host time per call even with no gradient wanted (a Python kernel on every dispatch); these cost
// what ATen's own autograd kernels do. Every derivative is again a ks op (both ops are bilinear):
//   matmul(x, w):        dx = matmul(gy, w^T)          dw = weight_grad(gy, x)
//   weight_grad(gy, x):  dgy = matmul(x, G)            dx = matmul(gy, G^T)      (G: cotangent of w)
// where w^T = w.transpose(1, 2) is the weight tensor of K^T, pattern (a, c, b, d). The weight
// gradient is asked for with pattern (-1, b, c, d): a taken from x, so that a rank holding some of
// the blocks (DTensor, ks_ops.distributed) computes its own. ks::chain keeps only its inputs and
// recomputes the intermediates it needs (a fused chain kernel never writes them).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/FuncTorchTLS.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <vector>

#include "ks_checks.h"

namespace ks {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// torch.func's grad / jvp / jacrev / jacfwd / hessian would need a forward-mode rule these
// Functions do not have; functorch refuses C++ autograd Functions under its transforms with a
// generic message, so ask it first and name the op and what works instead. (vmap never reaches
// here: the ops' vmap rules, ks_ops/ops.py, run them on plain tensors.)
void refuse_func_differentiation(const char* op) {
  const auto& functorch = at::functorch::functorchTLSAccessor();
  if (!functorch) return;
  try {
    functorch->checkSupportsCppAutogradFunction();
  } catch (const c10::Error&) {
    TORCH_CHECK(false, op,
                ": torch.func's differentiation transforms (grad, jvp, jacrev, jacfwd, hessian) are not supported "
                "by the ks ops yet; use torch.autograd.grad / .backward() (reverse mode works, gradients of "
                "every order), torch.func.vmap, or the JVP of matmul(x, w) written as matmul(t_x, w) + "
                "matmul(x, t_w)");
  }
}

at::Tensor matmul_op(const at::Tensor& x, const at::Tensor& w, bool batch_last) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("ks::matmul", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, bool)>();
  return op.call(x, w, batch_last);
}

at::Tensor weight_grad_op(const at::Tensor& gy, const at::Tensor& x, at::IntArrayRef pattern, bool batch_last) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("ks::weight_grad", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef, bool)>();
  return op.call(gy, x, pattern, batch_last);
}

at::Tensor chain_op(const at::Tensor& x, at::TensorList factors, const std::optional<at::Tensor>& bias,
                    c10::string_view activation) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("ks::chain", "")
          .typed<at::Tensor(const at::Tensor&, at::TensorList, const std::optional<at::Tensor>&, c10::string_view)>();
  return op.call(x, factors, bias, activation);
}

// The weight gradient's pattern for w: (-1, b, c, d).
std::vector<int64_t> local_pattern(const at::Tensor& w) { return {-1, w.size(1), w.size(2), w.size(3)}; }

struct MatmulFunction : torch::autograd::Function<MatmulFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, bool batch_last) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["batch_last"] = batch_last;
    ctx->save_for_backward({x, w});
    return matmul_op(x, w, batch_last);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const bool bl = ctx->saved_data["batch_last"].toBool();
    const at::Tensor& gy = grads[0];
    at::Tensor gx, gw;
    if (ctx->needs_input_grad(0)) gx = matmul_op(gy, saved[1].transpose(1, 2), bl);
    if (ctx->needs_input_grad(1)) gw = weight_grad_op(gy, saved[0], local_pattern(saved[1]), bl);
    return {gx, gw, at::Tensor()};
  }
};

struct WeightGradFunction : torch::autograd::Function<WeightGradFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& gy, const at::Tensor& x, at::IntArrayRef pattern,
                            bool batch_last) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["batch_last"] = batch_last;
    ctx->save_for_backward({gy, x});
    return weight_grad_op(gy, x, pattern, batch_last);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const bool bl = ctx->saved_data["batch_last"].toBool();
    const at::Tensor& gw = grads[0];
    at::Tensor d_gy, d_x;
    if (ctx->needs_input_grad(0)) d_gy = matmul_op(saved[1], gw, bl);
    if (ctx->needs_input_grad(1)) d_x = matmul_op(saved[0], gw.transpose(1, 2), bl);
    return {d_gy, d_x, at::Tensor(), at::Tensor()};
  }
};

at::Tensor activation_backward(const at::Tensor& grad, const at::Tensor& z, Activation act) {
  switch (act) {
    case Activation::Relu: return at::threshold_backward(grad, z, 0);
    case Activation::Gelu: return at::gelu_backward(grad, z, "none");
    case Activation::GeluTanh: return at::gelu_backward(grad, z, "tanh");
    case Activation::Silu: return at::silu_backward(grad, z);
    case Activation::None: break;
  }
  return grad;
}

// ks::chain: z = h_n + bias with h_0 = x, h_i = matmul(h_{i-1}, w_i); y = act(z).
struct ChainFunction : torch::autograd::Function<ChainFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, at::TensorList factors,
                            const std::optional<at::Tensor>& bias, c10::string_view activation) {
    at::AutoDispatchBelowADInplaceOrView guard;
    const bool has_bias = bias.has_value() && bias->defined();
    ctx->saved_data["activation"] = std::string(activation);
    ctx->saved_data["has_bias"] = has_bias;
    ctx->saved_data["n"] = static_cast<int64_t>(factors.size());
    std::vector<at::Tensor> keep{x};
    keep.insert(keep.end(), factors.begin(), factors.end());
    if (has_bias) keep.push_back(*bias);
    ctx->save_for_backward(keep);
    return chain_op(x, factors, bias, activation);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const int64_t n = ctx->saved_data["n"].toInt();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const Activation act = parse_activation(ctx->saved_data["activation"].toStringRef());
    const at::Tensor& x = saved[0];
    const std::vector<at::Tensor> factors(saved.begin() + 1, saved.begin() + 1 + n);
    // Inputs, as autograd numbers them: x, the n factors, then the bias when one was given.
    const bool need_x = ctx->needs_input_grad(0);
    std::vector<bool> need_w(n);
    for (int64_t i = 0; i < n; ++i) need_w[i] = ctx->needs_input_grad(1 + i);
    const bool need_b = has_bias && ctx->needs_input_grad(1 + n);

    std::vector<at::Tensor> hs{x};
    for (int64_t i = 0; i + 1 < n; ++i) hs.push_back(matmul_op(hs.back(), factors[i], false));
    at::Tensor g = grads[0];
    if (act != Activation::None) {
      at::Tensor z = matmul_op(hs.back(), factors.back(), false);
      if (has_bias) z = z + saved[1 + n];
      g = activation_backward(g, z, act);
    }
    at::Tensor grad_b = need_b ? g.reshape({-1, g.size(-1)}).sum(0) : at::Tensor();
    std::vector<at::Tensor> grad_w(n);
    // Walk back only as far as a gradient is wanted: factor i's input gradient is needed when x's
    // is, or when an earlier factor's weight gradient is.
    for (int64_t i = n - 1; i >= 0; --i) {
      if (need_w[i]) grad_w[i] = weight_grad_op(g, hs[i], local_pattern(factors[i]), false);
      bool earlier = need_x;
      for (int64_t k = 0; k < i; ++k) earlier = earlier || need_w[k];
      if (!earlier) break;
      g = matmul_op(g, factors[i].transpose(1, 2), false);
    }
    // One entry per forward argument: x, each factor, the bias slot, the activation.
    variable_list out{need_x ? g : at::Tensor()};
    out.insert(out.end(), grad_w.begin(), grad_w.end());
    out.push_back(grad_b);
    out.push_back(at::Tensor());
    return out;
  }
};

at::Tensor matmul_autograd(const at::Tensor& x, const at::Tensor& w, bool batch_last) {
  refuse_func_differentiation("ks::matmul");
  return MatmulFunction::apply(x, w, batch_last);
}

at::Tensor weight_grad_autograd(const at::Tensor& gy, const at::Tensor& x, at::IntArrayRef pattern, bool batch_last) {
  refuse_func_differentiation("ks::weight_grad");
  return WeightGradFunction::apply(gy, x, pattern, batch_last);
}

at::Tensor chain_autograd(const at::Tensor& x, at::TensorList factors, const std::optional<at::Tensor>& bias,
                          c10::string_view activation) {
  refuse_func_differentiation("ks::chain");
  return ChainFunction::apply(x, factors, bias, activation);
}

}  // namespace
}  // namespace ks

TORCH_LIBRARY_IMPL(ks, Autograd, m) {
  m.impl("matmul", &ks::matmul_autograd);
  m.impl("weight_grad", &ks::weight_grad_autograd);
  m.impl("chain", &ks::chain_autograd);
}
