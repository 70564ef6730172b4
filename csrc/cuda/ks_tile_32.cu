// float32 tile kernels: TF32 tensor cores (mma.sync m16n8k8, operands rounded to tf32 with
// cvt.rna at fragment load) and strict fp32 on the FMA units (register-tiled SIMT).
#include "ks_dispatch.h"

namespace ks {
namespace detail {

cudaError_t launch_tile_tf32(const TileParams& p, int L, int BN, cudaStream_t s) {
  switch (L * 1000 + BN) {
    case 1064: return launch_tile<MmaPolicy<float, 128, 64, 16, 1, 32, 64, 4>, false>(p, s);
    case 1128: return launch_tile<MmaPolicy<float, 128, 128, 16, 1, 32, 64, 4>, false>(p, s);
    case 2064: return launch_tile<MmaPolicy<float, 64, 64, 16, 2, 32, 64, 2>, false>(p, s);
    case 2128: return launch_tile<MmaPolicy<float, 64, 128, 16, 2, 32, 64, 4>, false>(p, s);
    case 4064: return launch_tile<MmaPolicy<float, 64, 64, 16, 4, 32, 64, 3>, true>(p, s);
    default: return cudaErrorInvalidConfiguration;
  }
}

cudaError_t launch_tile_f32(const TileParams& p, int L, int BN, cudaStream_t s) {
  // SimtPolicy<BM, BN, L, TN, CT, STAGES>: L * BM = 128 rows of x per block, 8 x TN outputs per
  // thread, CT threads across j.
  switch (L * 1000 + BN) {
    case 1048: return launch_tile<SimtPolicy<128, 48, 1, 6, 8, 4>, false>(p, s);
    case 1064: return launch_tile<SimtPolicy<128, 64, 1, 8, 8, 4>, false>(p, s);
    case 1128: return launch_tile<SimtPolicy<128, 128, 1, 8, 16, 6>, false>(p, s);
    case 2048: return launch_tile<SimtPolicy<64, 48, 2, 6, 8, 3>, false>(p, s);
    case 2064: return launch_tile<SimtPolicy<64, 64, 2, 8, 8, 2>, false>(p, s);
    case 2128: return launch_tile<SimtPolicy<64, 128, 2, 8, 16, 3>, false>(p, s);
    case 4048: return launch_tile<SimtPolicy<32, 48, 4, 6, 8, 2>, true>(p, s);
    case 4064: return launch_tile<SimtPolicy<32, 64, 4, 8, 8, 2>, true>(p, s);
    default: return cudaErrorInvalidConfiguration;
  }
}

}  // namespace detail
}  // namespace ks
