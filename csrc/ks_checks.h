// Input validation shared by every ks::matmul / ks::weight_grad / ks::chain kernel (CPU and CUDA), so that
// bad input gets the same plain-words error whatever the device.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <array>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace ks {

using Pattern = std::array<int64_t, 4>;  // (a, b, c, d)

inline std::string pattern_str(const Pattern& p) {
  std::ostringstream s;
  s << "pattern (a,b,c,d)=(" << p[0] << "," << p[1] << "," << p[2] << "," << p[3] << ")";
  return s.str();
}

inline std::string shape_str(const at::Tensor& t) {
  std::ostringstream s;
  s << t.sizes();
  return s.str();
}

inline void check_float_dtype(const at::Tensor& t, const char* name) {
  const auto dt = t.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
              "ks: ", name, " must be float32, float64, float16 or bfloat16, got ", dt);
}

// Validates w and returns its pattern.
inline Pattern check_weights(const at::Tensor& w) {
  TORCH_CHECK(w.dim() == 4, "ks: w must be 4-D (a,b,c,d) carrying the pattern, got shape ",
              shape_str(w));
  check_float_dtype(w, "w");
  const Pattern p = {w.size(0), w.size(1), w.size(2), w.size(3)};
  TORCH_CHECK(p[0] > 0 && p[1] > 0 && p[2] > 0 && p[3] > 0,
              "ks: w's dims (a,b,c,d) must be positive, got ", pattern_str(p));
  return p;
}

// x's feature size for the product and its batch size; errors name the pattern and shapes.
inline int64_t check_operand(const at::Tensor& x, const Pattern& p, int64_t features,
                             bool batch_last, const char* name, const char* what) {
  if (batch_last) {
    TORCH_CHECK(x.dim() == 2, "ks: batch-last ", name, " must be 2-D (", what, "=", features,
                ", B) for ", pattern_str(p), ", got shape ", shape_str(x));
    TORCH_CHECK(x.size(0) == features, "ks: batch-last ", name, " has ", x.size(0),
                " rows but ", pattern_str(p), " needs ", what, "=", features, " (shape ",
                shape_str(x), ")");
    return x.size(1);
  }
  TORCH_CHECK(x.dim() >= 1, "ks: ", name, " must have at least 1 dim (..., ", what, "=", features,
              ") for ", pattern_str(p), ", got a 0-d tensor");
  TORCH_CHECK(x.size(-1) == features, "ks: ", name, " last dim is ", x.size(-1), " but ",
              pattern_str(p), " needs ", what, "=", features, " (shape ", shape_str(x), ")");
  return features == 0 ? 0 : x.numel() / features;
}

// Forward-mode AD (torch.autograd.forward_ad) is not carried by the ops' autograd (registered
// through torch.library.register_autograd, which runs the plain kernel when no input requires
// grad): a dual input would lose its tangent without a word. Refuse it instead. (torch.func.jvp
// unwraps its tensors before the kernel and is not caught here: benchmarks/NOTES.md, drop-in.)
inline void check_no_forward_ad(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(!t.defined() || !t._fw_grad(/*level=*/0).defined(), op, ": ", name,
              " carries a forward-mode AD tangent (torch.autograd.forward_ad), which the ks ops do not "
              "support yet: it would be dropped. Use reverse mode (backward / torch.autograd.grad), or "
              "compute the JVP of y = matmul(x, w) as matmul(t_x, w) + matmul(x, t_w) with ks_ops.matmul");
}

inline void check_same(const at::Tensor& x, const at::Tensor& w, const char* xn, const char* wn) {
  TORCH_CHECK(x.scalar_type() == w.scalar_type(), "ks: ", xn, " and ", wn,
              " must have the same dtype, got ", xn, " ", x.scalar_type(), " and ", wn, " ",
              w.scalar_type());
  TORCH_CHECK(x.device() == w.device(), "ks: ", xn, " and ", wn,
              " must be on the same device, got ", xn, " on ", x.device(), " and ", wn, " on ",
              w.device());
}

// ks::matmul(x, w, batch_last): returns the pattern and the batch size B.
inline Pattern check_matmul(const at::Tensor& x, const at::Tensor& w, bool batch_last,
                            int64_t* batch) {
  const Pattern p = check_weights(w);
  check_float_dtype(x, "x");
  check_same(x, w, "x", "w");
  check_no_forward_ad(x, "ks::matmul", "x");
  check_no_forward_ad(w, "ks::matmul", "w");
  *batch = check_operand(x, p, p[0] * p[2] * p[3], batch_last, "x", "a*c*d");
  return p;
}

// The product of `factors`, or an error naming the pattern when it overflows int64 (a pattern
// given as a list of ints, not carried by a tensor, can hold any values).
inline int64_t checked_product(const Pattern& p, std::initializer_list<int64_t> factors, const char* what) {
  int64_t prod = 1;
  for (const int64_t f : factors)
    TORCH_CHECK(!__builtin_mul_overflow(prod, f, &prod), "ks: ", pattern_str(p), " is too large: ", what,
                " overflows a 64-bit integer");
  return prod;
}

// ks::weight_grad(grad_y, x, pattern, batch_last): returns the pattern and B.
inline Pattern check_weight_grad(const at::Tensor& grad_y, const at::Tensor& x,
                                 at::IntArrayRef pattern, bool batch_last, int64_t* batch) {
  TORCH_CHECK(pattern.size() == 4, "ks: pattern must have 4 entries (a,b,c,d), got ",
              pattern.size());
  Pattern p = {pattern[0], pattern[1], pattern[2], pattern[3]};
  TORCH_CHECK((p[0] > 0 || p[0] == -1) && p[1] > 0 && p[2] > 0 && p[3] > 0,
              "ks: pattern entries must be positive (a may be -1: taken from x), got ", pattern_str(p));
  if (p[0] == -1) {
    // a from x's features: what a backward on a block-sharded x (DTensor, ks_ops.distributed)
    // needs, where each rank holds a/W whole blocks and the pattern argument cannot say so.
    TORCH_CHECK(x.dim() >= (batch_last ? 2 : 1), "ks: x must have at least ", batch_last ? 2 : 1, " dims, got ",
                shape_str(x));
    const int64_t features = batch_last ? x.size(0) : x.size(-1);
    const int64_t cd = checked_product(p, {p[2], p[3]}, "c*d");
    TORCH_CHECK(features > 0 && features % cd == 0, "ks: pattern ", pattern_str(p), " takes a from x's ",
                features, " features, which are not a positive multiple of c*d=", cd);
    p[0] = features / cd;
  }
  check_float_dtype(x, "x");
  check_float_dtype(grad_y, "grad_y");
  check_same(grad_y, x, "grad_y", "x");
  check_no_forward_ad(x, "ks::weight_grad", "x");
  check_no_forward_ad(grad_y, "ks::weight_grad", "grad_y");
  checked_product(p, {p[0], p[1], p[2], p[3]}, "a*b*c*d (the size of the weight gradient)");
  const int64_t in_f = checked_product(p, {p[0], p[2], p[3]}, "a*c*d");
  const int64_t out_f = checked_product(p, {p[0], p[1], p[3]}, "a*b*d");
  const int64_t bx = check_operand(x, p, in_f, batch_last, "x", "a*c*d");
  const int64_t by = check_operand(grad_y, p, out_f, batch_last, "grad_y", "a*b*d");
  TORCH_CHECK(bx == by && (batch_last || x.sizes().slice(0, x.dim() - 1).equals(
                                             grad_y.sizes().slice(0, grad_y.dim() - 1))),
              "ks: x ", shape_str(x), " and grad_y ", shape_str(grad_y),
              " must have the same batch dims for ", pattern_str(p));
  *batch = bx;
  return p;
}

// The epilogue of ks::chain, applied after the bias (ks::chain's `activation` names, in order).
enum class Activation : int { None = 0, Relu = 1, Gelu = 2, GeluTanh = 3, Silu = 4 };
constexpr const char* kActivationNames[] = {"none", "relu", "gelu", "gelu_tanh", "silu"};

inline Activation parse_activation(const std::string& name) {
  for (int i = 0; i < 5; ++i)
    if (name == kActivationNames[i]) return static_cast<Activation>(i);
  TORCH_CHECK(false, "ks::chain: activation must be one of none, relu, gelu, gelu_tanh, silu, got '", name, "'");
}

// ks::chain(x, factors, bias, activation): batch-first x (..., in) through the factors in order
// (the first listed applied first), then the bias (out,), then the activation. Returns the
// patterns; every factor, the bias and x share x's dtype and device.
inline std::vector<Pattern> check_chain(const at::Tensor& x, at::TensorList factors,
                                        const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(!factors.empty(), "ks::chain: factors is empty; give at least one (a,b,c,d) weight tensor");
  check_float_dtype(x, "x");
  check_no_forward_ad(x, "ks::chain", "x");
  for (const at::Tensor& f : factors) check_no_forward_ad(f, "ks::chain", "a factor");
  if (bias) check_no_forward_ad(*bias, "ks::chain", "bias");
  std::vector<Pattern> ps;
  for (size_t i = 0; i < factors.size(); ++i) {
    const Pattern p = check_weights(factors[i]);
    const std::string name = "factors[" + std::to_string(i) + "]";
    check_same(x, factors[i], "x", name.c_str());
    if (i > 0) {
      const Pattern& q = ps.back();
      TORCH_CHECK(q[0] * q[1] * q[3] == p[0] * p[2] * p[3], "ks::chain: factors[", i - 1, "] (",
                  pattern_str(q), ") gives ", q[0] * q[1] * q[3], " features but factors[", i, "] (",
                  pattern_str(p), ") takes ", p[0] * p[2] * p[3]);
    }
    ps.push_back(p);
  }
  check_operand(x, ps.front(), ps.front()[0] * ps.front()[2] * ps.front()[3], false, "x", "a*c*d of factors[0]");
  if (bias) {
    const Pattern& q = ps.back();
    const int64_t out_f = q[0] * q[1] * q[3];
    check_same(x, *bias, "x", "bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out_f, "ks::chain: bias must have shape (", out_f,
                ",) (a*b*d of the last factor, ", pattern_str(q), "), got ", shape_str(*bias));
  }
  return ps;
}

}  // namespace ks
