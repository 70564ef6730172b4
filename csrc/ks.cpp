// The ks operator library: schemas (the one registry of every ks op) and the CPU kernels.
#include <Python.h>
#include <ATen/ATen.h>
#include <torch/library.h>

#include "ks_aten.h"
#include "ks_checks.h"

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
  return g.view({a, d, b, c}).permute({0, 2, 3, 1}).contiguous();
}

}  // namespace ks

TORCH_LIBRARY(ks, m) {
  m.def("matmul(Tensor x, Tensor w, *, bool batch_last=False) -> Tensor");
  m.def("weight_grad(Tensor grad_y, Tensor x, int[] pattern, *, bool batch_last=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(ks, CPU, m) {
  m.impl("matmul", &ks::matmul_aten);
  m.impl("weight_grad", &ks::weight_grad_aten);
}

// A plain module: importing ks_ops._C runs the registrations above.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "ks_ops native ops", -1, nullptr};
  return PyModule_Create(&module_def);
}
