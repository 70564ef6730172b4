// Plane kernels (ks_plane.cuh) for float16 and bfloat16, batch-first, with their configurations.
#include <cstdlib>

#include "ks_dispatch.h"

namespace ks {
namespace detail {

namespace {
template <class P>
cudaError_t launch_plane(PlaneParams p, cudaStream_t stream) {
  p.tiles_m = (int)((p.batch + P::BM - 1) / P::BM);
  p.tiles_j = cdiv(p.b, P::BN);
  p.groups_l = p.d / P::L;
  p.nk = cdiv(p.c, P::BK);
  auto kern = ks_plane_kernel<P>;
  static bool attr_set[64] = {false};  // per device
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return e;
  if (dev >= 64 || !attr_set[dev]) {
    e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, P::SMEM);
    if (e != cudaSuccess) return e;
    if (dev < 64) attr_set[dev] = true;
  }
  // Persistent (one block per SM, the ring runs across tiles) unless KS_PLANE_GRID=1: one block
  // per tile, dispatched in tile order by the hardware.
  static const bool per_tile = [] {
    const char* e = std::getenv("KS_PLANE_GRID");
    return e != nullptr && std::atoi(e) == 1;
  }();
  const int grid = per_tile || p.tiles < sm_count() ? p.tiles : sm_count();
  kern<<<grid, P::NT, P::SMEM, stream>>>(p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_16(const PlaneParams& p, cudaStream_t s) {
  // PlaneCfg<T, L, BM, BN, BK, WM, WN, STAGES>: 8 warps, one per (plane, 64 x 64 warp tile);
  // 184-192 KB of shared memory (ring + transposed tiles + epilogue staging). Round 6 measured
  // 64 x 64 warp tiles 1.04x faster (geometric mean over the grid) than 16 warps of 64 x 32:
  // a third less shared-memory traffic for the fragments.
  if (p.d % 8 == 0) return launch_plane<PlaneCfg<T, 8, 64, 64, 16, 64, 64, 3>>(p, s);
  if (p.d == 4) {
    if (p.b <= 64) return launch_plane<PlaneCfg<T, 4, 128, 64, 16, 64, 64, 4>>(p, s);
    return launch_plane<PlaneCfg<T, 4, 64, 128, 16, 64, 64, 4>>(p, s);
  }
  return cudaErrorInvalidConfiguration;
}
}  // namespace

// Block columns of the configuration launch_16 picks for (b, d).
int plane_bn(int b, int d) { return d == 4 && b > 64 ? 128 : 64; }

// Tiles of the configuration launch_16 would pick (the caller keeps the count below 2^31).
int64_t plane_tiles(int64_t batch, int a, int b, int d) {
  const int bn = plane_bn(b, d), l = d == 4 ? 4 : 8, bm = d == 4 && b <= 64 ? 128 : 64;
  return (batch + bm - 1) / bm * ((b + bn - 1) / bn) * (d / l) * (int64_t)a;
}

cudaError_t launch_plane_bf16(PlaneParams p, cudaStream_t s) { return launch_16<__nv_bfloat16>(p, s); }
cudaError_t launch_plane_f16(PlaneParams p, cudaStream_t s) { return launch_16<__half>(p, s); }

}  // namespace detail
}  // namespace ks
