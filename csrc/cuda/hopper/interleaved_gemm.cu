// sm_90a GEMM on the interleaved layout itself: batch-first y = x K^T for d in {2, 3, 4, 6, 8, 12},
// reading x's rows and writing y's rows once, with no transposition pass on either side.
//
// Plane l of block i is Y_il (B x b) = X_il (B x c) W_il^T with X_il[n, k] = x[n, i*c*d + k*d + l]:
// its K dimension has element stride d, which no wgmma shared-memory layout describes. So:
// - TMA brings x's rows as they lie: boxes of 64 consecutive elements (k, l) of block i;
// - each consumer thread builds the wgmma A fragments of all d planes from its own loads: the 2*d
//   consecutive elements (two k of all d planes) that feed all d fragments come in aligned 4-, 8-
//   or 16-byte loads, sorted into (k, k+1) pairs per plane with byte permutes, and wgmma reads A
//   from registers;
// - the weight planes (the (a, d, b, c) copy, K-major) come by TMA as usual;
// - a block holds the accumulators of all d planes for 128 rows and 256 / d (192 / d for d = 3,
//   6, 12) columns j each, so a row's outputs (j, l) for its columns are one contiguous run of y:
//   the epilogue stages them in shared memory and TMA stores 512- (384-) byte row runs, clipped at
//   the block's and the batch's end.
// Rows of a warp's fragment are permuted (row_perm) so that both the fragment loads and the
// epilogue's staging stores are free of shared-memory bank conflicts.
//
// Structure: persistent blocks (one per SM) over the tiles (column tile, row tile, block i), the
// column tile varying fastest so that the blocks sharing an x tile run together (tile_at); warpgroup 0
// produces (one thread issues TMA loads into a ring of stages), warpgroups 1 and 2 consume, 64
// rows each, and store their own halves; the next tile's loads run during the epilogue. Where it
// measured faster (cluster_size), clusters of 4 blocks on 4 column tiles of one row tile share x's
// tiles: each brings a quarter of the rows into all four by TMA multicast.
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <type_traits>

#include "interleaved_gemm.h"
#include "interleaved_mainloop.cuh"
#include "interleaved_tile.cuh"
#include "launch.h"
#include "ptx.cuh"
#include "tensor_map.h"

namespace ks {
namespace hopper {
namespace {

// Tile shapes: pure functions of d (FlashAttention's tile_size.h style). A row's accumulators
// for one tile are kCols = kBN * d consecutive outputs of y: 256 for d = 2, 4, 8, and 192 for
// d = 3, 6, 12, so that both the x stage (kBK * d elements) and the y tile are whole 64-element
// boxes (a 128-byte swizzled TMA box) and kBN, kBK are multiples of 8 and 16.
template <int D>
struct Tiles {
  static_assert(D == 2 || D == 3 || D == 4 || D == 6 || D == 8 || D == 12, "interleaved GEMM: d");
  static constexpr bool kPow2 = (D & (D - 1)) == 0;
  static constexpr int kBM = 128;                   // rows: two consumer warpgroups of 64
  static constexpr int kCols = kPow2 ? 256 : 192;   // accumulators per row: kBN columns j x d planes
  static constexpr int kBN = kCols / D;             // 128, 64, 32 (d = 2, 4, 8); 64, 32, 16 (d = 3, 6, 12)
  static constexpr int kBK = kPow2 ? (D == 2 ? 32 : 16) : 192 / D;  // k per stage
  static constexpr int kXCols = kBK * D;            // x elements per row per stage (64, 128 or 192)
  static constexpr int kXBoxes = kXCols / 64;       // 128-byte swizzled boxes [kBM][64]
  static constexpr int kXBytes = kBM * kXCols * 2;
  static constexpr int kWBytes = D * kBN * kBK * 2;  // the weight tiles: D planes [kBN][kBK]
  static constexpr int kStageBytes = kXBytes + kWBytes;
  static constexpr int kYBoxes = kCols / 64;        // per warpgroup: boxes [64 rows][64 elements]
  static constexpr int kYBytes = 2 * kYBoxes * 64 * 64 * 2;
  // As many stages as fit, at most 4 (6 at d = 4; d = 3, 6: two stages of 64 and 32 k).
  static constexpr int kStagesFit = (232448 - 1024 - kYBytes - 64) / kStageBytes;
  static constexpr int kStages = D == 4 ? 6 : kStagesFit < 4 ? kStagesFit : 4;
  // A-fragment sets: two (one built while the other's wgmmas run) where registers allow. At d = 12
  // two sets (96 words) beside 96 accumulators made ptxas serialise every wgmma (C7512); with one
  // set the step's loads still overlap the previous step's wgmmas, and it ran 0.79-0.92x the time
  // (H100, results/interleaved7_h100_d12_oneset_ab_*.json).
  using Loop = MainloopShape<D, kBN, kBK, D == 12 ? 1 : 2>;
  static constexpr int kSmemBytes = 1024 + kStages * kStageBytes + kYBytes + 2 * kStages * 8;
  static_assert(kSmemBytes <= 232448, "shared memory per block");
  static_assert(kStages >= 2, "stages");
  static_assert(kXCols % 64 == 0 && kBK % 16 == 0 && kBN % 8 == 0 && kCols % 64 == 0, "tile shape");
};

constexpr int kThreads = 384;  // warpgroup 0 produces, 1 and 2 consume

struct Prob {
  int64_t tiles;        // (column group, row tile, block i) triples
  int m_tiles, n_groups, n_tiles, k_tiles, a;
  int cs;               // blocks per cluster: the column tiles of one group, sharing x's tiles
};

struct Tile {
  int m, i, n;
};

// Column groups fastest (the clusters that share an x tile run together), then row tiles, block i
// slowest: the weight planes of block i (d*b*c elements) stay in L2 while every row tile passes.
// (Block i in the middle re-read all of w from DRAM for every row tile: 3.5x the floor on
// (24, 512, 512, 4).) Block `rank` of a cluster takes column tile group * cs + rank.
__device__ __forceinline__ Tile tile_at(int64_t t, const Prob& p, int rank) {
  Tile u;
  u.n = static_cast<int>(t % p.n_groups) * p.cs + rank;
  const int64_t r = t / p.n_groups;
  u.m = static_cast<int>(r % p.m_tiles);
  u.i = static_cast<int>(r / p.m_tiles);
  return u;
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads, 1)
    interleaved_kernel(const __grid_constant__ CUtensorMap tm_x, const __grid_constant__ CUtensorMap tm_w,
                       const __grid_constant__ CUtensorMap tm_y, const Prob pr) {
  using C = Tiles<D>;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  uint8_t* xs = smem;                                  // [kStages][kXBoxes][kBM][64]
  uint8_t* ws = xs + C::kStages * C::kXBytes;          // [kStages][D][kBN][kBK]
  uint8_t* ys = ws + C::kStages * C::kWBytes;          // [2 warpgroups][kYBoxes][64][64]
  uint64_t* full = reinterpret_cast<uint64_t*>(ys + C::kYBytes);
  uint64_t* empty = full + C::kStages;

  if (threadIdx.x == 0) {
    for (int s = 0; s < C::kStages; ++s) {
      mbarrier_init(&full[s], 1);
      mbarrier_init(&empty[s], 8 * pr.cs);  // one arrival per consumer warp of the cluster
    }
    fence_barrier_init();
  }
  if (pr.cs > 1)
    cluster_sync();  // the peers' barriers are initialised before any multicast or remote arrival
  else
    __syncthreads();
  const int rank = static_cast<int>(blockIdx.x % pr.cs);  // 1-d grid: a cluster is cs consecutive blocks
  const int64_t t0 = blockIdx.x / pr.cs, t_step = gridDim.x / pr.cs;

  const int wg = threadIdx.x / 128;
  if (wg == 0) {  // producer
    setmaxnreg_dec<40>();
    if (threadIdx.x == 0) {
      tma_prefetch_descriptor(&tm_x);
      tma_prefetch_descriptor(&tm_w);
      // With a cluster, each block brings rows [rank, rank + 1) * kBM / cs of every x box into the
      // same place in all the cluster's blocks (so x comes from L2 once per cluster, not once per
      // column tile); its stage is free once the consumers of every block released it.
      const int slice = C::kBM / pr.cs;
      const uint16_t all = static_cast<uint16_t>((1u << pr.cs) - 1);
      uint32_t it = 0;
      for (int64_t t = t0; t < pr.tiles; t += t_step) {
        const Tile u = tile_at(t, pr, rank);
        for (int kt = 0; kt < pr.k_tiles; ++kt, ++it) {
          const int st = static_cast<int>(it % C::kStages);
          mbarrier_wait(&empty[st], ((it / C::kStages) & 1) ^ 1);
          mbarrier_arrive_expect_tx(&full[st], C::kStageBytes);
#pragma unroll
          for (int bx = 0; bx < C::kXBoxes; ++bx) {
            uint8_t* dst = xs + st * C::kXBytes + bx * C::kBM * 128 + rank * slice * 128;
            const int k0 = kt * C::kXCols + bx * 64, n0 = u.m * C::kBM + rank * slice;
            if (pr.cs > 1)
              tma_load_3d_multicast(dst, &tm_x, &full[st], k0, u.i, n0, all);
            else
              tma_load_3d(dst, &tm_x, &full[st], k0, u.i, n0);
          }
          tma_load_3d(ws + st * C::kWBytes, &tm_w, &full[st], kt * C::kBK, u.n * C::kBN, u.i * D);
        }
      }
    }
  } else {
    setmaxnreg_inc<232>();
    const int cw = wg - 1;                     // rows 64*cw .. 64*cw + 63 of the tile
    const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
    const int q = lane % 4, rho = row_perm<D>(lane / 4);
    const int row0 = cw * 64 + warp * 16 + rho;  // fragment rows r and r + 8: physical row0, row0 + 8
    const uint32_t ystage = smem_u32(ys + cw * (C::kYBytes / 2));
    uint32_t it = 0;

    // Releases stage st to the producers of every block of the cluster (their multicasts write it).
    auto release = [&](int st) {
      __syncwarp();
      if (pr.cs == 1) {
        if (lane == 0) mbarrier_arrive(&empty[st]);
      } else if (lane < pr.cs) {
        mbarrier_arrive_cluster(&empty[st], lane);
      }
    };

    for (int64_t t = t0; t < pr.tiles; t += t_step) {
      const Tile u = tile_at(t, pr, rank);
      float acc[D][C::kBN / 2];
#pragma unroll
      for (int g = 0; g < D; ++g)
#pragma unroll
        for (int e = 0; e < C::kBN / 2; ++e) acc[g][e] = 0.f;
      // (At d = 8 ptxas serialises the wgmmas anyway for want of registers: 128 accumulators +
      // 2 x 32 fragment registers + the loaded words exceed what setmaxnreg 232-240 leaves; 192
      // accumulators per row there avoided that but ran 1.10-1.22x slower: 24 columns per plane
      // re-read x from L2 a third more often; results/interleaved6_h100_d8cols192_d12oneset_ab_*.json.)
      interleaved_mainloop<T, typename C::Loop>(
          acc, pr.k_tiles, row0, q, C::kBM * 128,
          [&]() {
            const int st = static_cast<int>(it % C::kStages);
            mbarrier_wait(&full[st], (it / C::kStages) & 1);
            ++it;
            return st;
          },
          [&](int, int st) { return smem_u32(xs + st * C::kXBytes); },
          [&](int st) { return smem_u32(ws + st * C::kWBytes); }, release);

      // Epilogue: this warpgroup's 64 x (kBN * D) outputs, rounded to T, into its staging boxes
      // (once the previous tile's TMA store has read them), then TMA stores of 4 boxes.
      if (threadIdx.x % 128 == 0) bulk_wait_read<0>();
      named_barrier(1 + cw, 128);
#pragma unroll
      for (int s = 0; s < C::kBN / 8; ++s)
#pragma unroll
        for (int h = 0; h < 2; ++h) {  // rows row0 and row0 + 8
          const int row = warp * 16 + rho + 8 * h;
          pack_run<T, typename C::Loop>(acc, s, h, q, [&](int e, const uint32_t* v) {
            sts<C::Loop::kLoadWords>(ystage + (e / 64) * (64 * 128) + swizzled(row, e % 64), v);
          });
        }
      fence_proxy_async_shared();
      named_barrier(1 + cw, 128);
      if (threadIdx.x % 128 == 0 && u.n < pr.n_tiles) {  // a cluster's last group may overhang b
#pragma unroll
        for (int bx = 0; bx < C::kYBoxes; ++bx)
          tma_store_3d(&tm_y, ys + cw * (C::kYBytes / 2) + bx * 64 * 128, u.n * C::kBN * D + bx * 64, u.i,
                       u.m * C::kBM + cw * 64);
        bulk_commit();
      }
    }
    if (threadIdx.x % 128 == 0) bulk_wait<0>();  // the staging buffers outlive the stores
  }
  // No block leaves while a peer may still multicast into its stages or arrive on its barriers.
  if (pr.cs > 1) cluster_sync();
}

// Blocks per cluster: 4 column tiles share each x tile (x's L2 reads fall 4x) where that measured
// faster: d = 4 with long k loops (c*d >= 2048) and >= 8 column tiles, 0.82-0.90x the time of one
// block per tile at (2, 1024, 1024, 4) and (24, 512, 512, 4) (H100,
// benchmarks/results/interleaved4_h100_cluster_ab_*.json). Elsewhere it lost (up to 1.46x): the
// cluster's blocks advance in lockstep stage by stage, only 120 of 132 SMs hold clusters of 4, and
// at d = 6, 8, 12 the consumers are bound by their fragment builds and serialised wgmmas, not by x.
constexpr int cluster_size(int d, int64_t c, int n_tiles) { return d == 4 && c * d >= 2048 && n_tiles >= 8 ? 4 : 1; }

template <typename T, int D>
cudaError_t launch(const InterleavedGemmArgs& g, cudaStream_t stream) {
  using C = Tiles<D>;
  const int64_t c8 = interleaved_padded_c(g.c);
  const int n_tiles = static_cast<int>((g.b + C::kBN - 1) / C::kBN);
  const int cs = cluster_size(D, g.c, n_tiles);
  CUtensorMap tm_x, tm_w, tm_y;
  // x: (c*d, a, B) with row stride ldx; w planes: (c8, b, a*d); y: (b*d, a, B).
  const int64_t x_dims[3] = {g.c * D, g.a, g.B}, x_strides[2] = {g.c * D, g.ldx};
  const int64_t w_dims[3] = {c8, g.b, g.a * D}, w_strides[2] = {c8, g.b * c8};
  const int64_t y_dims[3] = {g.b * D, g.a, g.B}, y_strides[2] = {g.b * D, g.a * g.b * D};
  const uint32_t x_box[3] = {64, 1, static_cast<uint32_t>(C::kBM / cs)}, w_box[3] = {C::kBK, C::kBN, D}, y_box[3] = {64, 1, 64};
  if (!encode_tile_map(&tm_x, g.x, g.bf16, x_dims, x_strides, x_box, 128) ||
      !encode_tile_map(&tm_w, g.wp, g.bf16, w_dims, w_strides, w_box, C::Loop::kWSwizzle) ||
      !encode_tile_map(&tm_y, g.y, g.bf16, y_dims, y_strides, y_box, 128))
    return cudaErrorInvalidValue;

  auto kernel = interleaved_kernel<T, D>;
  static std::atomic<uint64_t> configured{0};
  int device = 0;
  cudaError_t e = device_with_smem(kernel, C::kSmemBytes, configured, &device);
  if (e != cudaSuccess) return e;

  Prob pr{};
  pr.m_tiles = static_cast<int>((g.B + C::kBM - 1) / C::kBM);
  pr.n_tiles = n_tiles;
  pr.cs = cs;
  pr.n_groups = (n_tiles + cs - 1) / cs;
  pr.k_tiles = static_cast<int>((g.c + C::kBK - 1) / C::kBK);
  pr.a = static_cast<int>(g.a);
  pr.tiles = static_cast<int64_t>(pr.m_tiles) * pr.n_groups * pr.a;

  cudaLaunchConfig_t cfg{};
  cudaLaunchAttribute cluster[1];
  cluster[0].id = cudaLaunchAttributeClusterDimension;
  cluster[0].val.clusterDim.x = static_cast<unsigned>(cs);
  cluster[0].val.clusterDim.y = cluster[0].val.clusterDim.z = 1;
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = C::kSmemBytes;
  cfg.stream = stream;
  cfg.attrs = cluster;
  cfg.numAttrs = cs > 1 ? 1 : 0;
  // Resident clusters (one block per SM; a cluster's blocks share a GPC), asked once per device
  // and cluster size: a runtime query, but not free at small sizes.
  static std::atomic<int> resident[64][5];
  int clusters = resident[device & 63][cs].load();
  if (clusters == 0) {
    if (cs == 1) {
      e = cudaDeviceGetAttribute(&clusters, cudaDevAttrMultiProcessorCount, device);
    } else {
      cfg.gridDim = dim3(static_cast<unsigned>(cs));
      e = cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg);
    }
    if (e != cudaSuccess) return e;
    if (clusters < 1) return cudaErrorInvalidConfiguration;
    resident[device & 63][cs].store(clusters);
  }
  cfg.gridDim = dim3(static_cast<unsigned>((pr.tiles < clusters ? pr.tiles : clusters) * cs));
  e = cudaLaunchKernelEx(&cfg, kernel, tm_x, tm_w, tm_y, pr);
  if (e != cudaSuccess) return e;
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_for_d(const InterleavedGemmArgs& g, cudaStream_t stream) {
  switch (g.d) {
    case 2: return launch<T, 2>(g, stream);
    case 3: return launch<T, 3>(g, stream);
    case 4: return launch<T, 4>(g, stream);
    case 6: return launch<T, 6>(g, stream);
    case 8: return launch<T, 8>(g, stream);
    case 12: return launch<T, 12>(g, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

bool hopper_kernels_built() {
  // setup.py defines it when the arch list holds 9.0a (it turns a plain 9.0 into 9.0a).
#ifdef KS_OPS_SM90A
  return true;
#else
  return false;
#endif
}

bool interleaved_gemm_fits(int64_t B, int64_t a, int64_t b, int64_t c, int64_t d) {
  const int64_t lim = 0x7fffffff;
  return B <= lim && a <= lim && a * d <= lim && b * d <= lim && c * d <= lim;
}

cudaError_t interleaved_gemm(const InterleavedGemmArgs& g, cudaStream_t stream) {
  if (g.B == 0 || g.b == 0 || g.a == 0) return cudaSuccess;
  return g.bf16 ? launch_for_d<__nv_bfloat16>(g, stream) : launch_for_d<__half>(g, stream);
}

}  // namespace hopper
}  // namespace ks
