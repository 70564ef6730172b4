// Internal: the tile-kernel launchers of each dtype (one translation unit each, so that a
// parallel build compiles them side by side) and the configuration classes they accept.
#pragma once
#include <cuda_runtime.h>

#include "ks_tile.cuh"

namespace ks {
namespace detail {

// lcls: block l-group size L (1, 2, 4 or 8); ncls: block width BN class (48, 64 or 128).
cudaError_t launch_tile_bf16(const TileParams& p, int L, int BN, cudaStream_t s);
cudaError_t launch_tile_f16(const TileParams& p, int L, int BN, cudaStream_t s);
cudaError_t launch_tile_tf32(const TileParams& p, int L, int BN, cudaStream_t s);
cudaError_t launch_tile_f32(const TileParams& p, int L, int BN, cudaStream_t s);

}  // namespace detail
}  // namespace ks
