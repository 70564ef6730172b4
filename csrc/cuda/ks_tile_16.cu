// Tensor-core (mma.sync m16n8k16, fp32 accumulate) tile kernels for float16 and bfloat16.
#include "ks_dispatch.h"

namespace ks {
namespace detail {

namespace {
template <typename T>
cudaError_t launch_16(const TileParams& p, int L, int BN, cudaStream_t s) {
  // Warp tile 32 x 64. MmaPolicy<T, BM, BN, BK, L, WM, WN, STAGES>; shared memory per block is
  // sized for 2-3 resident blocks per SM (at most 168 / 128 registers for 128 / 256 threads) (see ks_tile.cuh tile_smem_bytes).
  switch (L * 1000 + BN) {
    case 1064: return launch_tile<MmaPolicy<T, 128, 64, 32, 1, 32, 64, 4>, false>(p, s);
    case 1128: return launch_tile<MmaPolicy<T, 128, 128, 32, 1, 32, 64, 3>, false>(p, s);
    case 2064: return launch_tile<MmaPolicy<T, 64, 64, 32, 2, 32, 64, 2>, false>(p, s);
    case 2128: return launch_tile<MmaPolicy<T, 64, 128, 32, 2, 32, 64, 2>, false>(p, s);
    case 4064: return launch_tile<MmaPolicy<T, 64, 64, 32, 4, 32, 64, 2>, true>(p, s);
    case 8064: return launch_tile<MmaPolicy<T, 32, 64, 16, 8, 32, 64, 3>, true>(p, s);
    // Round 5: 512-thread blocks (one per SM) with twice the rows per l plane, so that w is
    // re-read from L2 half as often per flop, and a deeper ring (BK 16).
    case 4564: return launch_tile<MmaPolicy<T, 128, 64, 16, 4, 32, 64, 4>, true>(p, s);
    case 8564: return launch_tile<MmaPolicy<T, 64, 64, 16, 8, 32, 64, 4>, true>(p, s);
    default: return cudaErrorInvalidConfiguration;
  }
}
}  // namespace

cudaError_t launch_tile_bf16(const TileParams& p, int L, int BN, cudaStream_t s) {
  return launch_16<__nv_bfloat16>(p, L, BN, s);
}
cudaError_t launch_tile_f16(const TileParams& p, int L, int BN, cudaStream_t s) {
  return launch_16<__half>(p, L, BN, s);
}

}  // namespace detail
}  // namespace ks
