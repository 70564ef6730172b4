// sm_90 plane GEMM with an interleaving epilogue: the batch-first product for d > 1 reads its planes
// from the transposed copy xt (B, a, d, c) and writes y (B, a, b, d) directly, without the second
// transposition pass of the Transposed plan.
//
// Problem: for each plane p = i*d + l, Y_p (B x b) = X_p (B x c) W_p^T, X_p = xt[:, i, l, :]
// (K-major, row stride a*d*c), W_p = wp[i, l] (b x c, K-major), and Y_p lands in y at
// y[n, i*b*d + j*d + l]: element stride d. A block computing one plane could only write 2-byte
// pieces of y. So the G blocks of a thread-block cluster (G = ks_plan.h's plane_group(d), up to 16)
// take G neighbouring planes of one (row tile, column tile), each runs an ordinary wgmma GEMM on
// its plane (TMA loads, mbarrier ring, one producer warp, two consumer warpgroups of 64 x 128
// each), stages its tile in shared memory, and after a cluster barrier every block gathers a slice
// of rows from all G tiles through distributed shared memory: 8 columns x G planes, which are
// contiguous in y when G == d.
//
// Mainloop: BM x BN = 128 x 128 tiles, BK = 64 (one 128-byte swizzle row), kStages deep.
// Epilogue: bf16/fp16 tile in shared memory (over the stage buffers), cluster gather, 16-byte
// stores where the runs allow.
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../../ks_plan.h"
#include "plane_gemm.h"
#include "interleave_epilogue.cuh"
#include "ptx.cuh"

namespace ks {
namespace hopper {
namespace {

constexpr int kBM = 128, kBN = 128, kBK = 64, kStages = 3;
// Warpgroups 0 and 1 consume (wgmma), warp 8 produces (one thread issues the TMA loads). Two blocks
// per SM (~98 KB of shared memory each, <= 113 registers): one block's epilogue and cluster
// exchange overlap the other's mainloop.
constexpr int kConsumerThreads = 256;
constexpr int kThreads = kConsumerThreads + 32;
constexpr int kBlocksPerSM = 2;
constexpr int kTileStride = kBN + 8;  // epilogue tile row stride (elements): conflict-free pairs
constexpr int kStageBytes = (kBM + kBN) * kBK * 2;
constexpr int kSmemBytes = kStages * kStageBytes + 2 * kStages * 8 + 1024;  // + barriers + alignment
static_assert(kBM * kTileStride * 2 <= kStages * kBM * kBK * 2, "epilogue tile must fit the A stages");

struct Shape {
  int64_t c;
  InterleaveShape out;  // B, b, d, y's row stride and alignment
};

template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (sizeof(T) == 2 && std::is_same<T, __nv_bfloat16>::value) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  } else {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
}

template <typename T, int G>
__global__ void __launch_bounds__(kThreads, kBlocksPerSM)
    plane_gemm_kernel(const __grid_constant__ CUtensorMap tm_x, const __grid_constant__ CUtensorMap tm_w,
                      T* __restrict__ y, const Shape s) {
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  T* a_stage = reinterpret_cast<T*>(smem);
  T* b_stage = a_stage + kStages * kBM * kBK;
  uint64_t* full = reinterpret_cast<uint64_t*>(b_stage + kStages * kBN * kBK);
  uint64_t* empty = full + kStages;
  T* tile = a_stage;  // the epilogue tile, once the mainloop is done with the stages

  const int plane = blockIdx.x;  // i*d + l; the cluster holds planes plane0 .. plane0 + G - 1
  const int j0 = blockIdx.y * kBN;
  const int64_t m0 = static_cast<int64_t>(blockIdx.z) * kBM;
  const int k_tiles = static_cast<int>((s.c + kBK - 1) / kBK);

  if (threadIdx.x == 0) {
    for (int i = 0; i < kStages; ++i) {
      mbarrier_init(&full[i], 1);
      mbarrier_init(&empty[i], kConsumerThreads / 32);  // one arrival per consumer warp
    }
    fence_barrier_init();
  }
  __syncthreads();

  if (threadIdx.x >= kConsumerThreads) {
    if (threadIdx.x == kConsumerThreads) {
      tma_prefetch_descriptor(&tm_x);
      tma_prefetch_descriptor(&tm_w);
      for (int kt = 0; kt < k_tiles; ++kt) {
        const int st = kt % kStages;
        mbarrier_wait(&empty[st], ((kt / kStages) & 1) ^ 1);
        mbarrier_arrive_expect_tx(&full[st], kStageBytes);
        tma_load_3d(a_stage + st * kBM * kBK, &tm_x, &full[st], kt * kBK, static_cast<int>(m0), plane);
        tma_load_3d(b_stage + st * kBN * kBK, &tm_w, &full[st], kt * kBK, j0, plane);
      }
    }
    __syncwarp();
    cluster_sync();  // the tiles are staged
    cluster_sync();  // the peers are done reading them
    return;
  }

  // Consumers: warpgroup 0 owns tile rows 0..63, warpgroup 1 rows 64..127.
  const int cw = threadIdx.x / 128;
  const int t = threadIdx.x;  // 0..255
  const int lane = threadIdx.x % 32, warp = (threadIdx.x / 32) % 4;
  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.f;

  for (int kt = 0; kt < k_tiles; ++kt) {
    const int st = kt % kStages;
    mbarrier_wait(&full[st], (kt / kStages) & 1);
    const uint64_t da = wgmma_desc_k128(smem_u32(a_stage + st * kBM * kBK + cw * 64 * kBK));
    const uint64_t db = wgmma_desc_k128(smem_u32(b_stage + st * kBN * kBK));
    wgmma_fence();
    fence_registers(acc);
#pragma unroll
    for (int kk = 0; kk < kBK / 16; ++kk)  // +32 bytes per k16 step = +2 in the address field
      wgmma_m64n128k16<std::is_same<T, __nv_bfloat16>::value>(acc, da + 2 * kk, db + 2 * kk);
    wgmma_commit();
    // Keep this k-tile's wgmmas in flight; the previous k-tile's are done, so its stage is free.
    wgmma_wait<1>();
    fence_registers(acc);
    __syncwarp();
    if (kt > 0 && lane == 0) mbarrier_arrive(&empty[(kt - 1) % kStages]);
  }
  wgmma_wait<0>();
  fence_registers(acc);
  // (The last stage needs no release: the producer issues no more loads.)

  // Stage this plane's tile (rounded to T) over the A stages, once both warpgroups are done.
  named_barrier(1, kConsumerThreads);
  {
    const int r = cw * 64 + warp * 16 + lane / 4;
    const int col = 2 * (lane % 4);
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      *reinterpret_cast<uint32_t*>(tile + r * kTileStride + 8 * i + col) = pack2<T>(acc[4 * i], acc[4 * i + 1]);
      *reinterpret_cast<uint32_t*>(tile + (r + 8) * kTileStride + 8 * i + col) =
          pack2<T>(acc[4 * i + 2], acc[4 * i + 3]);
    }
  }
  cluster_sync();

  // Gather: block `rank` writes the items it == rank (mod G) of the (row, 8-column chunk) grid;
  // each item is 8 columns of all G planes, read from the G tiles.
  const uint32_t rank = cluster_rank();
  const int plane0 = plane - static_cast<int>(rank);
  const int64_t i_blk = plane0 / s.out.d, l0 = plane0 % s.out.d;
  const uint32_t tile_addr = smem_u32(tile);
  constexpr int kChunks = kBN / 8;
  for (int it = static_cast<int>(rank) * kConsumerThreads + t; it < kBM * kChunks; it += G * kConsumerThreads) {
    const int m = it / kChunks, jc = it % kChunks;
    const int64_t n = m0 + m;
    const int64_t j = j0 + 8 * jc;
    if (n >= s.out.B || j >= s.out.b) continue;
    const uint32_t src = tile_addr + (m * kTileStride + 8 * jc) * 2;
    auto load = [src](int g) { return load_cluster_v4(map_to_rank(src, g)); };
    store_item<T, G>(load, y + n * s.out.ldy + i_blk * s.out.b * s.out.d + l0, j,
                     static_cast<int>(s.out.b - j < 8 ? s.out.b - j : 8), s.out);
  }
  cluster_sync();  // keep this block's tile alive until every peer has read it
}

using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                 const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                 CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

EncodeTiled encode_fn() {
  static EncodeTiled fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) !=
            cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      p = nullptr;
    return reinterpret_cast<EncodeTiled>(p);
  }();
  return fn;
}

// A (rows x cols) K-major matrix per plane, `planes` planes: dims (cols, rows, planes).
bool encode_planes(CUtensorMap* map, const void* base, bool bf16, int64_t cols, int64_t rows, int64_t planes,
                   int64_t row_stride, int64_t plane_stride, int box_rows) {
  EncodeTiled fn = encode_fn();
  if (!fn) return false;
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows),
                              static_cast<cuuint64_t>(planes)};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(row_stride * 2), static_cast<cuuint64_t>(plane_stride * 2)};
  const cuuint32_t box[3] = {kBK, static_cast<cuuint32_t>(box_rows), 1};
  const cuuint32_t elem[3] = {1, 1, 1};
  return fn(map, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 3,
            const_cast<void*>(base), dims, strides, box, elem, CU_TENSOR_MAP_INTERLEAVE_NONE,
            CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

template <typename T, int G>
cudaError_t launch(const PlaneGemmArgs& g, cudaStream_t stream) {
  CUtensorMap tm_x, tm_w;
  if (!encode_planes(&tm_x, g.xt, g.bf16, g.c, g.B, g.a * g.d, g.a * g.d * g.c, g.c, kBM) ||
      !encode_planes(&tm_w, g.wp, g.bf16, g.c, g.b, g.a * g.d, g.c, g.b * g.c, kBN))
    return cudaErrorInvalidValue;
  auto kernel = plane_gemm_kernel<T, G>;
  // The kernel's attributes, once per device (not on every call: host time at small sizes).
  static std::atomic<uint64_t> configured{0};
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return e;
  const uint64_t bit = uint64_t(1) << (device & 63);
  if (!(configured.load() & bit)) {
    e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
    if (e == cudaSuccess && G > 8)  // clusters of 9..16 blocks are "non-portable" (sm_90 has them)
      e = cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
    if (e != cudaSuccess) return e;
    configured.fetch_or(bit);
  }
  const Shape s{g.c, InterleaveShape{g.B, g.b, g.d, g.ldy, reinterpret_cast<uintptr_t>(g.y) % 16 == 0 && g.ldy % 8 == 0}};
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(static_cast<unsigned>(g.a * g.d), static_cast<unsigned>((g.b + kBN - 1) / kBN),
                     static_cast<unsigned>((g.B + kBM - 1) / kBM));
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = kSmemBytes;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = G;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cudaLaunchKernelEx(&cfg, kernel, tm_x, tm_w, static_cast<T*>(g.y), s);
}

template <typename T>
cudaError_t launch_for_group(const PlaneGemmArgs& g, int G, cudaStream_t stream) {
  switch (G) {
    case 2: return launch<T, 2>(g, stream);
    case 3: return launch<T, 3>(g, stream);
    case 4: return launch<T, 4>(g, stream);
    case 6: return launch<T, 6>(g, stream);
    case 8: return launch<T, 8>(g, stream);
    case 12: return launch<T, 12>(g, stream);
    case 16: return launch<T, 16>(g, stream);
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

bool plane_gemm_fits(int64_t B, int64_t a, int64_t b, int64_t c, int64_t d) {
  // Grid limits, and TMA's coordinates are 32-bit.
  return a * d <= 0x7fffffff && (b + kBN - 1) / kBN <= 65535 && (B + kBM - 1) / kBM <= 65535 &&
         B <= 0x7fffffff && c <= 0x7fffffff;
}

cudaError_t plane_gemm_interleaved(const PlaneGemmArgs& g, cudaStream_t stream) {
  if (g.B == 0 || g.b == 0) return cudaSuccess;
  const int G = ks::plane_group(g.d);
  return g.bf16 ? launch_for_group<__nv_bfloat16>(g, G, stream) : launch_for_group<__half>(g, G, stream);
}

}  // namespace hopper
}  // namespace ks
