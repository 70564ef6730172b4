// Internal: the tile-kernel launchers of each dtype (one translation unit each, so that a
// parallel build compiles them side by side) and the configuration classes they accept.
#pragma once
#include <cstdlib>
#include <cuda_runtime.h>

#include "ks_plane.cuh"
#include "ks_tile.cuh"

namespace ks {
namespace detail {

// Integer value of environment variable `name` (A/B switches of the dispatch), or `fallback`
// when unset. Callers read it once into a static.
inline int env_int(const char* name, int fallback) {
  const char* e = std::getenv(name);
  return e == nullptr ? fallback : std::atoi(e);
}

// lcls: block l-group size L (1, 2, 4 or 8); ncls: block width BN class (48, 64 or 128).
cudaError_t launch_tile_bf16(const TileParams& p, int L, int BN, cudaStream_t s);
cudaError_t launch_tile_f16(const TileParams& p, int L, int BN, cudaStream_t s);
cudaError_t launch_tile_tf32(const TileParams& p, int L, int BN, cudaStream_t s);
cudaError_t launch_tile_f32(const TileParams& p, int L, int BN, cudaStream_t s);

// Plane kernels (ks_plane.cuh, sm_90+): 16-bit batch-first x with d == 4 or d % 8 == 0,
// 16-byte aligned x (ldx % 8 == 0) and w, c * d % 8 == 0; p.tiles = plane_tiles(...) < 2^31.
// wres: the w-resident kernel, for which plane_wres_fits(b, c, d) must hold.
int64_t plane_tiles(int64_t batch, int a, int b, int d);
bool plane_wres_fits(int b, int c, int d);
cudaError_t launch_plane_bf16(PlaneParams p, bool wres, cudaStream_t s);
cudaError_t launch_plane_f16(PlaneParams p, bool wres, cudaStream_t s);

}  // namespace detail
}  // namespace ks
