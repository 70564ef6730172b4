// sm_90a fused chain: y = act(F2(F1(x)) + bias) for F1 = (a1, 64, c1, 1), F2 = (1, b2, c2, d2)
// (the form of the `auto` and paper chains), one pass over x and y; the intermediate H (a1 * 64
// features per row) stays in shared memory.
//
// Per row tile of 128 rows (persistent blocks; warpgroup 0 produces, 1 and 2 consume 64 rows each):
// - phase 1, per block i1 of F1: H[:, 64 i1 .. 64 i1 + 63] = X[:, c1 i1 ..] W1_i1^T, a plain GEMM
//   (d1 = 1: x's rows and w1 are K-major as they lie): TMA boxes of x [128][64] and w1 [64][64],
//   shared-memory wgmma m64n64k16. Its accumulators are written as H box i1, in exactly the
//   layout TMA gives the interleaved kernel for x: [128 rows][64 features], 128-byte swizzle.
// - phase 2: the interleaved kernel's consumer (interleaved_gemm.cu) with H as its x: per column
//   tile of F2, A fragments of all d2 planes built in registers from H (row_perm, load_pair_runs,
//   sort_pairs of interleaved_tile.cuh),
//   register-A wgmma against w2's planes streamed by TMA; the epilogue adds the bias, applies the
//   activation and stores y's rows by TMA, box by box through two staging buffers per warpgroup.
// A warp reads in phase 2 only the 16 rows it wrote in phase 1 (row_perm permutes within them), so
// __syncwarp orders the phases; A reaches wgmma through registers, not the async proxy.
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <type_traits>

#include "../activation.cuh"
#include "chain_gemm.h"
#include "interleaved_tile.cuh"
#include "ptx.cuh"
#include "tensor_map.h"

namespace ks {
namespace hopper {
namespace {

// Tile shapes: pure functions of d2 (FlashAttention's tile_size.h style).
template <int D>
struct ChainTiles {
  static_assert(D == 2 || D == 4, "fused chain: d2");
  static constexpr int kBM = 128;                  // rows: two consumer warpgroups of 64
  static constexpr int kB1 = 64;                   // F1's b: block i1's outputs are one H box
  static constexpr int kK1 = 64;                   // F1's k per stage (128-byte boxes)
  static constexpr int kHMax = 384;                // H features in shared memory: 6 boxes
  static constexpr int kHBytes = kHMax / 64 * kBM * 128;
  static constexpr int kXBytes = kBM * kK1 * 2;
  static constexpr int kW1Bytes = kB1 * kK1 * 2;
  static constexpr int kStageA = kXBytes + kW1Bytes;
  static constexpr int kStagesA = 2;
  static constexpr int kBN = 256 / D;              // F2's columns j per plane: 256 outputs per row
  static constexpr int kBK = 64 / D;               // F2's k per stage: one H box (kBK * d2 = 64)
  static constexpr int kWSwizzle = kBK * 2;        // w2 tiles' rows: 64 or 32 bytes
  static constexpr int kW2PlaneBytes = kBN * kBK * 2;
  static constexpr int kW2Bytes = D * kW2PlaneBytes;
  static constexpr int kStagesB = 32768 / kW2Bytes;  // 2 (d2 = 2) or 4 (d2 = 4)
  static constexpr int kYBoxes = 4;                // 256 outputs per row: 4 boxes of 64
  static constexpr int kYBuf = 64 * 128;           // one staging box [64 rows][64] per warpgroup
  static constexpr int kLoadWords = D == 4 ? 4 : 2;  // A-fragment loads: the 2d-element run
  static constexpr int kSmemBytes =
      1024 + kHBytes + kStagesA * kStageA + kStagesB * kW2Bytes + 4 * kYBuf + 2 * (kStagesA + kStagesB) * 8;
  static_assert(kSmemBytes <= 232448, "shared memory per block");
  static_assert(kBK % 16 == 0 && kBN % 8 == 0, "tile shape");
};

constexpr int kThreads = 384;

struct ChainProb {
  int m_tiles, a1, k1_tiles, n_tiles, k2_tiles, out_f, activation;
};

template <typename T>
__device__ __forceinline__ float load_f(const T* p) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value)
    return __bfloat162float(*p);
  else
    return __half2float(*p);
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads, 1)
    chain_kernel(const __grid_constant__ CUtensorMap tm_x, const __grid_constant__ CUtensorMap tm_w1,
                 const __grid_constant__ CUtensorMap tm_w2, const __grid_constant__ CUtensorMap tm_y,
                 const T* __restrict__ bias, const ChainProb pr) {
  using C = ChainTiles<D>;
  constexpr bool kBf16 = std::is_same<T, __nv_bfloat16>::value;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  uint8_t* hs = smem;                                   // [kHMax / 64][kBM][64]
  uint8_t* as = hs + C::kHBytes;                        // [kStagesA][x box | w1 box]
  uint8_t* bs = as + C::kStagesA * C::kStageA;          // [kStagesB][D][kBN][kBK]
  uint8_t* ys = bs + C::kStagesB * C::kW2Bytes;         // [2 warpgroups][2 buffers][64][64]
  uint64_t* full_a = reinterpret_cast<uint64_t*>(ys + 4 * C::kYBuf);
  uint64_t* empty_a = full_a + C::kStagesA;
  uint64_t* full_b = empty_a + C::kStagesA;
  uint64_t* empty_b = full_b + C::kStagesB;

  if (threadIdx.x == 0) {
    for (int s = 0; s < C::kStagesA; ++s) {
      mbarrier_init(&full_a[s], 1);
      mbarrier_init(&empty_a[s], 8);  // one arrival per consumer warp
    }
    for (int s = 0; s < C::kStagesB; ++s) {
      mbarrier_init(&full_b[s], 1);
      mbarrier_init(&empty_b[s], 8);
    }
    fence_barrier_init();
  }
  __syncthreads();

  const int wg = threadIdx.x / 128;
  if (wg == 0) {  // producer: phase 1's x and w1 boxes, then phase 2's w2 tiles, tile after tile
    setmaxnreg_dec<40>();
    if (threadIdx.x == 0) {
      tma_prefetch_descriptor(&tm_x);
      tma_prefetch_descriptor(&tm_w1);
      tma_prefetch_descriptor(&tm_w2);
      uint32_t ia = 0, ib = 0;
      for (int t = blockIdx.x; t < pr.m_tiles; t += gridDim.x) {
        for (int i1 = 0; i1 < pr.a1; ++i1)
          for (int kt = 0; kt < pr.k1_tiles; ++kt, ++ia) {
            const int st = static_cast<int>(ia % C::kStagesA);
            mbarrier_wait(&empty_a[st], ((ia / C::kStagesA) & 1) ^ 1);
            mbarrier_arrive_expect_tx(&full_a[st], C::kStageA);
            tma_load_3d(as + st * C::kStageA, &tm_x, &full_a[st], kt * C::kK1, i1, t * C::kBM);
            tma_load_3d(as + st * C::kStageA + C::kXBytes, &tm_w1, &full_a[st], kt * C::kK1, 0, i1);
          }
        for (int n = 0; n < pr.n_tiles; ++n)
          for (int kt = 0; kt < pr.k2_tiles; ++kt, ++ib) {
            const int st = static_cast<int>(ib % C::kStagesB);
            mbarrier_wait(&empty_b[st], ((ib / C::kStagesB) & 1) ^ 1);
            mbarrier_arrive_expect_tx(&full_b[st], C::kW2Bytes);
            tma_load_3d(bs + st * C::kW2Bytes, &tm_w2, &full_b[st], kt * C::kBK, n * C::kBN, 0);
          }
      }
    }
  } else {
    setmaxnreg_inc<232>();
    const int cw = wg - 1;  // rows 64*cw .. 64*cw + 63 of the tile
    const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
    const int q = lane % 4, r = lane / 4, rho = row_perm<D>(r);
    const int row0 = cw * 64 + warp * 16 + rho;  // phase 2's fragment rows row0, row0 + 8
    const uint32_t hb = smem_u32(hs);
    uint32_t ia = 0, ib = 0;
    auto release = [&](uint64_t* bar) {
      __syncwarp();
      if (lane == 0) mbarrier_arrive(bar);
    };

    for (int t = blockIdx.x; t < pr.m_tiles; t += gridDim.x) {
      // Phase 1: H box i1 = X_i1 W1_i1^T for this warpgroup's 64 rows. (The previous tile's phase 2
      // read only this warp's rows, and its last wgmmas completed: the __syncwarp in release.)
      for (int i1 = 0; i1 < pr.a1; ++i1) {
        float acc1[32];
#pragma unroll
        for (int e = 0; e < 32; ++e) acc1[e] = 0.f;
        for (int kt = 0; kt < pr.k1_tiles; ++kt, ++ia) {
          const int st = static_cast<int>(ia % C::kStagesA);
          mbarrier_wait(&full_a[st], (ia / C::kStagesA) & 1);
          const uint32_t xa = smem_u32(as + st * C::kStageA) + cw * 64 * 128;
          const uint32_t wa = smem_u32(as + st * C::kStageA + C::kXBytes);
          wgmma_fence();
          fence_registers(acc1);
#pragma unroll
          for (int ks = 0; ks < C::kK1 / 16; ++ks)
            wgmma_m64n64k16_ss<kBf16>(acc1, wgmma_desc_k<128>(xa) + 2 * ks, wgmma_desc_k<128>(wa) + 2 * ks);
          wgmma_commit();
          wgmma_wait<0>();
          fence_registers(acc1);
          release(&empty_a[st]);
        }
        // Accumulator (row warp*16 + r + 8h, column 8s + 2q + {0, 1}) = acc1[4s + 2h + {0, 1}].
        const uint32_t hbox = hb + i1 * (C::kBM * 128);
#pragma unroll
        for (int s = 0; s < 8; ++s)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const uint32_t v[1] = {pack2<T>(acc1[4 * s + 2 * h], acc1[4 * s + 2 * h + 1])};
            sts<1>(hbox + swizzled(cw * 64 + warp * 16 + r + 8 * h, 8 * s + 2 * q), v);
          }
      }
      __syncwarp();  // phase 2's loads of these rows come from other lanes of this warp

      // Phase 2: per column tile n of F2, all d2 planes of 128 rows x kBN columns.
      for (int n = 0; n < pr.n_tiles; ++n) {
        float acc[D][C::kBN / 2];
#pragma unroll
        for (int g = 0; g < D; ++g)
#pragma unroll
          for (int e = 0; e < C::kBN / 2; ++e) acc[g][e] = 0.f;
        for (int kt = 0; kt < pr.k2_tiles; ++kt, ++ib) {
          const int st = static_cast<int>(ib % C::kStagesB);
          mbarrier_wait(&full_b[st], (ib / C::kStagesB) & 1);
          const uint32_t xb = hb + kt * (C::kBM * 128);  // H box kt: k = kt*kBK .. + kBK-1, all planes
          const uint32_t wb = smem_u32(bs + st * C::kW2Bytes);
#pragma unroll
          for (int ks = 0; ks < C::kBK / 16; ++ks) {
            uint32_t raw[4][D], frag[D][4];  // as the interleaved kernel builds them from x
            load_pair_runs<D, C::kLoadWords>(xb, C::kBM * 128, row0, q, ks, raw);  // within box kt
            sort_pairs<D>(raw, frag);
            wgmma_fence();
#pragma unroll
            for (int g = 0; g < D; ++g) {
              fence_registers(acc[g]);
              fence_registers(frag[g]);
            }
#pragma unroll
            for (int g = 0; g < D; ++g)
              wgmma_rs<kBf16, C::kBN>(acc[g], frag[g], wgmma_desc_k<C::kWSwizzle>(wb + g * C::kW2PlaneBytes) + 2 * ks);
            wgmma_commit();
            wgmma_wait<0>();
#pragma unroll
            for (int g = 0; g < D; ++g) {
              fence_registers(acc[g]);
              fence_registers(frag[g]);
            }
          }
          release(&empty_b[st]);
        }

        // Epilogue: outputs (n*kBN + j)*d2 + l of this warpgroup's rows, + bias, activation, rounded
        // to T, box by box (64 outputs) through two staging buffers, TMA stores clipped at b2*d2, B.
        const int col0 = n * C::kBN * D;
#pragma unroll
        for (int bx = 0; bx < C::kYBoxes; ++bx) {
          const uint32_t buf = smem_u32(ys + (cw * 2 + (bx & 1)) * C::kYBuf);
          if (threadIdx.x % 128 == 0) bulk_wait_read<1>();  // the store that read buf two boxes ago
          named_barrier(1 + cw, 128);
#pragma unroll
          for (int s = bx * 8 / D; s < (bx + 1) * 8 / D; ++s)
#pragma unroll
            for (int h = 0; h < 2; ++h) {  // rows row0 and row0 + 8
              // Elements t = 0 .. 2d-1 of the run at (j, plane 0), j = 8 s + 2 q: (j + t / d, plane t % d).
              const int e = (8 * s + 2 * q) * D;
              float z[2 * D];
#pragma unroll
              for (int k = 0; k < 2 * D; ++k) {
                const int f = col0 + e + k;
                z[k] = acc[k % D][4 * s + 2 * h + k / D] + (bias != nullptr && f < pr.out_f ? load_f(bias + f) : 0.f);
                z[k] = activate(z[k], pr.activation);
              }
              uint32_t v[D];
#pragma unroll
              for (int m = 0; m < D; ++m) v[m] = pack2<T>(z[2 * m], z[2 * m + 1]);
              const int row = warp * 16 + rho + 8 * h;
#pragma unroll
              for (int w = 0; w < D / C::kLoadWords; ++w)
                sts<C::kLoadWords>(buf + swizzled(row, e % 64 + 2 * C::kLoadWords * w), &v[C::kLoadWords * w]);
            }
          fence_proxy_async_shared();
          named_barrier(1 + cw, 128);
          if (threadIdx.x % 128 == 0) {  // one bulk group per box, empty past b2*d2: wait_read<1> above
            if (col0 + bx * 64 < pr.out_f)  // then always finds the group of this buffer's last use
              tma_store_3d(&tm_y, ys + (cw * 2 + (bx & 1)) * C::kYBuf, col0 + bx * 64, 0, t * C::kBM + cw * 64);
            bulk_commit();
          }
        }
      }
    }
    if (threadIdx.x % 128 == 0) bulk_wait<0>();  // the staging buffers outlive the stores
  }
}

template <typename T, int D>
cudaError_t launch(const ChainGemmArgs& g, cudaStream_t stream) {
  using C = ChainTiles<D>;
  const int64_t out_f = g.b2 * D;
  CUtensorMap tm_x, tm_w1, tm_w2, tm_y;
  // x: (c1, a1, B) with row stride ldx; w1: (c1, 64, a1); w2 planes: (c2, b2, d2); y: (b2*d2, 1, B).
  const int64_t x_dims[3] = {g.c1, g.a1, g.B}, x_strides[2] = {g.c1, g.ldx};
  const int64_t w1_dims[3] = {g.c1, C::kB1, g.a1}, w1_strides[2] = {g.c1, C::kB1 * g.c1};
  const int64_t w2_dims[3] = {g.c2, g.b2, D}, w2_strides[2] = {g.c2, g.b2 * g.c2};
  const int64_t y_dims[3] = {out_f, 1, g.B}, y_strides[2] = {out_f, out_f};
  const uint32_t x_box[3] = {C::kK1, 1, C::kBM}, w1_box[3] = {C::kK1, C::kB1, 1}, w2_box[3] = {C::kBK, C::kBN, D},
                 y_box[3] = {64, 1, 64};
  if (!encode_tile_map(&tm_x, g.x, g.bf16, x_dims, x_strides, x_box, 128) ||
      !encode_tile_map(&tm_w1, g.w1, g.bf16, w1_dims, w1_strides, w1_box, 128) ||
      !encode_tile_map(&tm_w2, g.w2p, g.bf16, w2_dims, w2_strides, w2_box, C::kWSwizzle) ||
      !encode_tile_map(&tm_y, g.y, g.bf16, y_dims, y_strides, y_box, 128))
    return cudaErrorInvalidValue;

  auto kernel = chain_kernel<T, D>;
  static std::atomic<uint64_t> configured{0};  // attributes once per device
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return e;
  const uint64_t bit = uint64_t(1) << (device & 63);
  if (!(configured.load() & bit)) {
    e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmemBytes);
    if (e != cudaSuccess) return e;
    configured.fetch_or(bit);
  }
  int sms = 0;
  e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (e != cudaSuccess) return e;

  ChainProb pr{};
  pr.m_tiles = static_cast<int>((g.B + C::kBM - 1) / C::kBM);
  pr.a1 = static_cast<int>(g.a1);
  pr.k1_tiles = static_cast<int>((g.c1 + C::kK1 - 1) / C::kK1);
  pr.n_tiles = static_cast<int>((g.b2 + C::kBN - 1) / C::kBN);
  pr.k2_tiles = static_cast<int>(g.c2 / C::kBK);  // c2 * d2 = 64 a1: whole H boxes
  pr.out_f = static_cast<int>(out_f);
  pr.activation = g.activation;
  const int grid = pr.m_tiles < sms ? pr.m_tiles : sms;
  kernel<<<grid, kThreads, C::kSmemBytes, stream>>>(tm_x, tm_w1, tm_w2, tm_y, static_cast<const T*>(g.bias), pr);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_for_d(const ChainGemmArgs& g, cudaStream_t stream) {
  switch (g.d2) {
    case 2: return launch<T, 2>(g, stream);
    case 4: return launch<T, 4>(g, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

bool chain_gemm_serves(int64_t B, int64_t a1, int64_t b1, int64_t c1, int64_t d1, int64_t a2, int64_t b2, int64_t c2,
                       int64_t d2) {
  const int64_t lim = 0x7fffffff;
  return d1 == 1 && a2 == 1 && b1 == 64 && (d2 == 2 || d2 == 4) && a1 * b1 == c2 * d2 && a1 * b1 <= 384 &&
         c1 % 8 == 0 && (b2 * d2) % 8 == 0 && B <= lim && c1 <= lim && b2 * d2 <= lim;
}

cudaError_t chain_gemm(const ChainGemmArgs& g, cudaStream_t stream) {
  if (g.B == 0) return cudaSuccess;
  return g.bf16 ? launch_for_d<__nv_bfloat16>(g, stream) : launch_for_d<__half>(g, stream);
}

}  // namespace hopper
}  // namespace ks
