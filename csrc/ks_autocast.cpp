// Autocast for the ks ops (CPU and CUDA): under torch.autocast, ks::matmul and ks::chain run in the
// autocast dtype the way F.linear does -- float32 x, weights and bias are cast (float64 stays, as
// ATen's lower-precision policy leaves it), the autocast key is excluded and the op redispatched,
// so its autograd and device kernels see same-dtype inputs. Without this, the second factor of a
// KSLinear met a bf16 x and a float32 w and failed.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <optional>

namespace ks {
namespace {

template <c10::DeviceType DEV>
at::Tensor matmul_autocast(const at::Tensor& x, const at::Tensor& w, bool batch_last) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(at::autocast::get_autocast_dispatch_key_from_device_type(DEV));
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("ks::matmul", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, bool)>();
  const at::ScalarType dt = at::autocast::get_lower_precision_fp_from_device_type(DEV);
  return op.call(at::autocast::cached_cast(dt, x, DEV), at::autocast::cached_cast(dt, w, DEV), batch_last);
}

template <c10::DeviceType DEV>
at::Tensor chain_autocast(const at::Tensor& x, at::TensorList factors, const std::optional<at::Tensor>& bias,
                          c10::string_view activation) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(at::autocast::get_autocast_dispatch_key_from_device_type(DEV));
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("ks::chain", "")
          .typed<at::Tensor(const at::Tensor&, at::TensorList, const std::optional<at::Tensor>&, c10::string_view)>();
  const at::ScalarType dt = at::autocast::get_lower_precision_fp_from_device_type(DEV);
  const std::vector<at::Tensor> fs = at::autocast::cached_cast(dt, factors, DEV);
  return op.call(at::autocast::cached_cast(dt, x, DEV), fs, at::autocast::cached_cast(dt, bias, DEV), activation);
}

}  // namespace
}  // namespace ks

TORCH_LIBRARY_IMPL(ks, AutocastCPU, m) {
  m.impl("matmul", &ks::matmul_autocast<c10::DeviceType::CPU>);
  m.impl("chain", &ks::chain_autocast<c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(ks, AutocastCUDA, m) {
  m.impl("matmul", &ks::matmul_autocast<c10::DeviceType::CUDA>);
  m.impl("chain", &ks::chain_autocast<c10::DeviceType::CUDA>);
}
