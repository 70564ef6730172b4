// Plane kernels (ks_plane.cuh) for float16 and bfloat16, batch-first, with their configurations.
#include "ks_dispatch.h"

namespace ks {
namespace detail {

namespace {
// Tile counts and k-steps of configuration P.
template <class P>
void set_geometry(PlaneParams& p) {
  p.tiles_m = (int)((p.batch + P::BM - 1) / P::BM);
  p.tiles_j = cdiv(p.b, P::BN);
  p.groups_l = p.d / P::L;
  p.nk = cdiv(p.c, P::BK);
}

template <class P>
cudaError_t launch_plane(PlaneParams p, cudaStream_t stream) {
  set_geometry<P>(p);
  auto kern = ks_plane_kernel<P>;
  const cudaError_t e = allow_smem<ks_plane_kernel<P>>(P::SMEM);
  if (e != cudaSuccess) return e;
  // Persistent: one block per SM, the ring runs across tiles.
  const int grid = p.tiles < sm_count() ? p.tiles : sm_count();
  kern<<<grid, P::NT, P::SMEM, stream>>>(p);
  return cudaGetLastError();
}

// Shared memory of the w-resident kernel for cpad rows of T_w per plane.
template <class P>
constexpr int wres_smem(int cpad) {
  return P::STAGES * (P::BM > P::BN ? P::BM : P::BN) * P::KC * 16 + P::TXB + P::EB + P::L * cpad * P::RCW * 16;
}

template <class P>
cudaError_t launch_plane_wres(PlaneParams p, cudaStream_t stream) {
  set_geometry<P>(p);
  const int smem = wres_smem<P>(p.nk * P::BK);
  if (smem > kMaxSmem) return cudaErrorInvalidConfiguration;  // the caller checks plane_wres_fits
  p.ncols = p.a * p.groups_l * p.tiles_j;  // <= tiles < 2^31
  const int G = sm_count();
  // Runs of 8 m-tiles (loading the w slab costs about one m-tile's loads: 1/8 overhead), shorter
  // while that leaves fewer than two units per SM (load balance).
  auto units_of = [&](int mc) { return (int64_t)p.ncols * ((p.tiles_m + mc - 1) / mc); };
  p.mchunk = 8;
  while (p.mchunk > 1 && units_of(p.mchunk) < 2 * (int64_t)G) p.mchunk /= 2;
  p.units = (int)units_of(p.mchunk);  // <= tiles < 2^31
  const int grid = p.units < G ? p.units : G;
  auto kern = ks_plane_wres_kernel<P>;
  const cudaError_t e = allow_smem<ks_plane_wres_kernel<P>>(kMaxSmem);
  if (e != cudaSuccess) return e;
  kern<<<grid, P::NT, smem, stream>>>(p);
  return cudaGetLastError();
}

// Calls f with the configuration for (b, d): PlaneCfg<T, L, BM, BN, BK, WM, WN, STAGES>, 8 warps,
// one per (plane, 64 x 64 warp tile). Round 6 measured 64 x 64 warp tiles 1.04x faster (geometric
// mean over the grid) than 16 warps of 64 x 32: a third less shared-memory traffic for fragments.
// d = 4 takes 64-wide blocks (128 rows) where 128-wide ones would pad more columns (b <= 64,
// b = 192, ...).
template <typename T, class F>
auto with_cfg(int b, int d, F&& f) {
  if (d % 8 == 0) return f(PlaneCfg<T, 8, 64, 64, 16, 64, 64, 3>{});
  if ((b + 127) / 128 * 128 > (b + 63) / 64 * 64) return f(PlaneCfg<T, 4, 128, 64, 16, 64, 64, 4>{});
  return f(PlaneCfg<T, 4, 64, 128, 16, 64, 64, 4>{});
}

// The w-resident kernel serves d % 8 == 0 only: its d = 4 instantiations spilled 430-500 bytes
// per thread (255 registers) and were not measured.
template <typename T>
using WresCfg = PlaneCfg<T, 8, 64, 64, 16, 64, 64, 3>;

template <typename T>
cudaError_t launch_16(const PlaneParams& p, bool wres, cudaStream_t s) {
  if (wres && p.d % 8 == 0) return launch_plane_wres<WresCfg<T>>(p, s);
  if (wres) return cudaErrorInvalidConfiguration;
  return with_cfg<T>(p.b, p.d, [&](auto cfg) { return launch_plane<decltype(cfg)>(p, s); });
}
}  // namespace

int64_t plane_tiles(int64_t batch, int a, int b, int d) {
  return with_cfg<__nv_bfloat16>(b, d, [&](auto cfg) -> int64_t {
    using P = decltype(cfg);
    return (batch + P::BM - 1) / P::BM * ((b + P::BN - 1) / P::BN) * (d / P::L) * (int64_t)a;
  });
}
bool plane_wres_fits(int b, int c, int d) {
  using P = WresCfg<__nv_bfloat16>;
  return d % 8 == 0 && wres_smem<P>(cdiv(c, P::BK) * P::BK) <= kMaxSmem;
}

cudaError_t launch_plane_bf16(PlaneParams p, bool wres, cudaStream_t s) { return launch_16<__nv_bfloat16>(p, wres, s); }
cudaError_t launch_plane_f16(PlaneParams p, bool wres, cudaStream_t s) { return launch_16<__half>(p, wres, s); }

}  // namespace detail
}  // namespace ks
