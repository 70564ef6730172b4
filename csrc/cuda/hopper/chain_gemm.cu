// sm_90a fused chain: y = act(F2(F1(x)) + bias) for F1 = (a1, 64, c1, 1), F2 = (1, b2, c2, d2)
// (the form of the `auto` and paper chains), one pass over x and y; the intermediate H (a1 * 64
// features per row) stays in shared memory.
//
// A unit of work is a row tile of 128 rows and a run of F2's column tiles (persistent blocks;
// warpgroup 0 produces, 1 and 2 consume 64 rows each; column_splits below sizes the runs):
// - phase 1, per block i1 of F1: H[:, 64 i1 .. 64 i1 + 63] = X[:, c1 i1 ..] W1_i1^T, a plain GEMM
//   (d1 = 1: x's rows and w1 are K-major as they lie): TMA boxes of x [128][64] and w1 [64][64],
//   shared-memory wgmma m64n64k16. Its accumulators are written as H box i1, in exactly the
//   layout TMA gives the interleaved kernel for x: [128 rows][64 features], 128-byte swizzle.
// - phase 2, per column tile: the interleaved kernel's mainloop (interleaved_mainloop.cuh) with H
//   as its x, against w2's planes streamed by TMA. Epilogue per box of 64 outputs: the
//   accumulators rounded to T into a staging box (as the unfused chain rounds F2's output), then
//   a pass over the box adds the bias and applies the activation (8 contiguous outputs per thread,
//   the activation chosen once per box: a small loop, not one inlined copy per accumulator), and a
//   TMA store; two staging buffers per warpgroup.
// Both phases stream through one ring of stages (x + w1 boxes, or one w2 tile).
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
#include "interleaved_mainloop.cuh"
#include "interleaved_tile.cuh"
#include "launch.h"
#include "ptx.cuh"
#include "tensor_map.h"

namespace ks {
namespace hopper {
namespace {

// Tile shapes: pure functions of d2 (FlashAttention's tile_size.h style).
template <int D>
struct ChainTiles {
  static_assert(D == 2 || D == 3 || D == 4, "fused chain: d2");
  static constexpr int kBM = 128;                  // rows: two consumer warpgroups of 64
  static constexpr int kB1 = 64;                   // F1's b: block i1's outputs are one H box
  static constexpr int kK1 = 64;                   // F1's k per stage (128-byte boxes)
  static constexpr int kHMax = 384;                // H features in shared memory: 6 boxes
  static constexpr int kHBytes = kHMax / 64 * kBM * 128;
  static constexpr int kXBytes = kBM * kK1 * 2;
  static constexpr int kW1Bytes = kB1 * kK1 * 2;
  // F2 as the interleaved kernel tiles it: 256 outputs per row and column tile, k per stage = one
  // H box (kBK * d2 = 64 features) for d2 = 2, 4; 192 outputs and three H boxes (kBK = 64) for d2 = 3.
  static constexpr int kCols = D == 3 ? 192 : 256;
  static constexpr int kXBoxes = D == 3 ? 3 : 1;   // H boxes per stage
  using Loop = MainloopShape<D, kCols / D, kXBoxes * 64 / D, 2>;
  static constexpr int kW2Bytes = D * Loop::kWPlaneBytes;
  static constexpr int kSlotBytes = kXBytes + kW1Bytes;  // a stage of either phase
  static constexpr int kSlots = 4;
  static constexpr int kYBoxes = kCols / 64;       // outputs per row and tile: boxes of 64
  static constexpr int kYBuf = 64 * 128;           // one staging box [64 rows][64] per warpgroup
  static constexpr int kSmemBytes = 1024 + kHBytes + kSlots * kSlotBytes + 4 * kYBuf + 2 * kSlots * 8;
  static_assert(kW2Bytes <= kSlotBytes, "w2 tile in a stage");
  static_assert(kSmemBytes <= 232448, "shared memory per block");
};

constexpr int kThreads = 384;

struct ChainProb {
  int m_tiles, a1, k1_tiles, n_tiles, k2_tiles, out_f, activation;
  int splits, per_split;  // column tiles: splits runs of per_split per row tile
};

// Bias + activation over one staging box [64 rows][64 outputs] (T, 128-byte swizzle) of a
// warpgroup: thread t takes 8 outputs (one 16-byte chunk) of rows t / 8 + 16 i; `col` is the
// chunk's first output feature, bias8 its 8 bias values.
template <typename T, int ACT>
__device__ __forceinline__ void bias_act_box(uint32_t buf, int t, const float (&bias8)[8]) {
#pragma unroll 1
  for (int i = 0; i < 4; ++i) {
    const uint32_t addr = buf + swizzled(t / 8 + 16 * i, (t % 8) * 8);
    uint32_t v[4];
    lds<4>(addr, v);
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      float lo, hi;
      unpack2<T>(v[w], lo, hi);
      v[w] = pack2<T>(activate<ACT, true>(lo + bias8[2 * w]), activate<ACT, true>(hi + bias8[2 * w + 1]));
    }
    sts<4>(addr, v);
  }
}

template <typename T>
__device__ __forceinline__ void load_bias8(const T* bias, int col, int out_f, float (&b)[8]) {
  if (bias != nullptr && col < out_f) {  // out_f % 8 == 0, bias 16-byte aligned (the host checks)
    const uint4 raw = *reinterpret_cast<const uint4*>(bias + col);
    unpack2<T>(raw.x, b[0], b[1]);
    unpack2<T>(raw.y, b[2], b[3]);
    unpack2<T>(raw.z, b[4], b[5]);
    unpack2<T>(raw.w, b[6], b[7]);
  } else {
#pragma unroll
    for (int e = 0; e < 8; ++e) b[e] = 0.f;
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads, 1)
    chain_kernel(const __grid_constant__ CUtensorMap tm_x, const __grid_constant__ CUtensorMap tm_w1,
                 const __grid_constant__ CUtensorMap tm_w2, const __grid_constant__ CUtensorMap tm_y,
                 const T* __restrict__ bias, const ChainProb pr) {
  using C = ChainTiles<D>;
  using L = typename C::Loop;
  constexpr bool kBf16 = std::is_same<T, __nv_bfloat16>::value;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  uint8_t* hs = smem;                                   // [kHMax / 64][kBM][64]
  uint8_t* ring = hs + C::kHBytes;                      // [kSlots][x box | w1 box], or [kSlots][w2 tile]
  uint8_t* ys = ring + C::kSlots * C::kSlotBytes;       // [2 warpgroups][2 buffers][64][64]
  uint64_t* full = reinterpret_cast<uint64_t*>(ys + 4 * C::kYBuf);
  uint64_t* empty = full + C::kSlots;
  const int64_t units = static_cast<int64_t>(pr.m_tiles) * pr.splits;

  if (threadIdx.x == 0) {
    for (int s = 0; s < C::kSlots; ++s) {
      mbarrier_init(&full[s], 1);
      mbarrier_init(&empty[s], 8);  // one arrival per consumer warp
    }
    fence_barrier_init();
  }
  __syncthreads();

  const int wg = threadIdx.x / 128;
  if (wg == 0) {  // producer: per unit, phase 1's x and w1 boxes, then phase 2's w2 tiles
    setmaxnreg_dec<40>();
    if (threadIdx.x == 0) {
      tma_prefetch_descriptor(&tm_x);
      tma_prefetch_descriptor(&tm_w1);
      tma_prefetch_descriptor(&tm_w2);
      uint32_t it = 0;
      auto slot = [&](uint32_t bytes) {
        const int st = static_cast<int>(it % C::kSlots);
        mbarrier_wait(&empty[st], ((it / C::kSlots) & 1) ^ 1);
        mbarrier_arrive_expect_tx(&full[st], bytes);
        ++it;
        return st;
      };
      for (int64_t u = blockIdx.x; u < units; u += gridDim.x) {
        const int m = static_cast<int>(u / pr.splits), n0 = static_cast<int>(u % pr.splits) * pr.per_split;
        const int n1 = n0 + pr.per_split < pr.n_tiles ? n0 + pr.per_split : pr.n_tiles;
        for (int i1 = 0; i1 < pr.a1; ++i1)
          for (int kt = 0; kt < pr.k1_tiles; ++kt) {
            const int st = slot(C::kSlotBytes);
            uint8_t* dst = ring + st * C::kSlotBytes;
            tma_load_3d(dst, &tm_x, &full[st], kt * C::kK1, i1, m * C::kBM);
            tma_load_3d(dst + C::kXBytes, &tm_w1, &full[st], kt * C::kK1, 0, i1);
          }
        for (int n = n0; n < n1; ++n)
          for (int kt = 0; kt < pr.k2_tiles; ++kt) {
            const int st = slot(C::kW2Bytes);
            tma_load_3d(ring + st * C::kSlotBytes, &tm_w2, &full[st], kt * L::kBK, n * L::kBN, 0);
          }
      }
    }
  } else {
    setmaxnreg_inc<232>();
    const int cw = wg - 1;  // rows 64*cw .. 64*cw + 63 of the tile
    const int t = threadIdx.x % 128, warp = t / 32, lane = t % 32;
    const int q = lane % 4, r = lane / 4, rho = row_perm<D>(r);
    const int row0 = cw * 64 + warp * 16 + rho;  // phase 2's fragment rows row0, row0 + 8
    const uint32_t hb = smem_u32(hs);
    uint32_t it = 0, yb = 0;  // stages consumed, staging boxes written
    auto next_stage = [&]() {
      const int st = static_cast<int>(it % C::kSlots);
      mbarrier_wait(&full[st], (it / C::kSlots) & 1);
      ++it;
      return st;
    };
    auto release = [&](int st) {
      __syncwarp();
      if (lane == 0) mbarrier_arrive(&empty[st]);
    };

    for (int64_t u = blockIdx.x; u < units; u += gridDim.x) {
      const int m = static_cast<int>(u / pr.splits), n0 = static_cast<int>(u % pr.splits) * pr.per_split;
      const int n1 = n0 + pr.per_split < pr.n_tiles ? n0 + pr.per_split : pr.n_tiles;
      // Phase 1: H box i1 = X_i1 W1_i1^T for this warpgroup's 64 rows. (The previous unit's phase 2
      // read only this warp's rows, and its last wgmmas completed: the mainloop's final wait.)
      for (int i1 = 0; i1 < pr.a1; ++i1) {
        float acc1[32];
#pragma unroll
        for (int e = 0; e < 32; ++e) acc1[e] = 0.f;
        for (int kt = 0; kt < pr.k1_tiles; ++kt) {
          const int st = next_stage();
          const uint32_t xa = smem_u32(ring + st * C::kSlotBytes) + cw * 64 * 128;
          const uint32_t wa = smem_u32(ring + st * C::kSlotBytes + C::kXBytes);
          wgmma_fence();
          fence_registers(acc1);
#pragma unroll
          for (int ks = 0; ks < C::kK1 / 16; ++ks)
            wgmma_m64n64k16_ss<kBf16>(acc1, wgmma_desc_k<128>(xa) + 2 * ks, wgmma_desc_k<128>(wa) + 2 * ks);
          wgmma_commit();
          wgmma_wait<0>();
          fence_registers(acc1);
          release(st);
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
      for (int n = n0; n < n1; ++n) {
        float acc[D][L::kBN / 2];
#pragma unroll
        for (int g = 0; g < D; ++g)
#pragma unroll
          for (int e = 0; e < L::kBN / 2; ++e) acc[g][e] = 0.f;
        interleaved_mainloop<T, L>(
            acc, pr.k2_tiles, row0, q, C::kBM * 128, next_stage,
            [&](int kt, int) { return hb + kt * C::kXBoxes * (C::kBM * 128); },  // k = kt*kBK .., all planes
            [&](int st) { return smem_u32(ring + st * C::kSlotBytes); }, release);

        // Epilogue: outputs (n*kBN + j)*d2 + l of this warpgroup's rows, box by box (64 outputs; the
        // staging buffers alternate box after box, across tiles too).
        const int col0 = n * L::kBN * D;
#pragma unroll
        for (int bx = 0; bx < C::kYBoxes; ++bx, ++yb) {
          const uint32_t buf = smem_u32(ys + (cw * 2 + (yb & 1)) * C::kYBuf);
          float bias8[8];
          load_bias8(bias, col0 + bx * 64 + (t % 8) * 8, pr.out_f, bias8);
          if (t == 0) bulk_wait_read<1>();  // the store that read buf two boxes ago
          named_barrier(1 + cw, 128);
          // The runs (8s + 2q) d .. + 2d - 1 that reach into box bx (at d2 = 3 some straddle two boxes:
          // each word goes to its own).
#pragma unroll
          for (int s = 64 * bx / (8 * D); s <= (64 * bx + 63) / (8 * D) && s < L::kBN / 8; ++s)
#pragma unroll
            for (int h = 0; h < 2; ++h) {  // rows row0 and row0 + 8
              const int row = warp * 16 + rho + 8 * h;
              pack_run<T, L>(acc, s, h, q, [&](int e, const uint32_t* v) {
                if (D != 3 || e / 64 == bx) sts<L::kLoadWords>(buf + swizzled(row, e % 64), v);
              });
            }
          named_barrier(1 + cw, 128);  // the pass reads other threads' outputs
          switch (pr.activation) {
            case 1: bias_act_box<T, 1>(buf, t, bias8); break;
            case 2: bias_act_box<T, 2>(buf, t, bias8); break;
            case 3: bias_act_box<T, 3>(buf, t, bias8); break;
            case 4: bias_act_box<T, 4>(buf, t, bias8); break;
            default: bias_act_box<T, 0>(buf, t, bias8); break;
          }
          fence_proxy_async_shared();
          named_barrier(1 + cw, 128);
          if (t == 0) {  // one bulk group per box, empty past b2*d2: wait_read<1> above
            if (col0 + bx * 64 < pr.out_f)  // then always finds the group of this buffer's last use
              tma_store_3d(&tm_y, ys + (cw * 2 + (yb & 1)) * C::kYBuf, col0 + bx * 64, 0, m * C::kBM + cw * 64);
            bulk_commit();
          }
        }
      }
    }
    if (t == 0) bulk_wait<0>();  // the staging buffers outlive the stores
  }
}

// Column tiles per unit: a row tile's column tiles split over `splits` blocks, each recomputing
// phase 1 (a1*64*c1 MACs per row, against 256*c2 per column tile), so that few row tiles still
// fill the GPU: the split count minimises rounds of units x work per unit (plus a fixed cost per
// unit of half a column tile: pipeline fill and the last epilogue). Ties go to fewer splits.
int column_splits(int m_tiles, int n_tiles, int sms, int64_t phase1_macs, int64_t tile_macs) {
  int best = 1;
  int64_t best_cost = -1;
  for (int s = 1; s <= n_tiles; ++s) {
    const int per = (n_tiles + s - 1) / s;
    if ((s - 1) * per >= n_tiles) continue;  // a split with no tiles
    const int64_t rounds = (static_cast<int64_t>(m_tiles) * s + sms - 1) / sms;
    const int64_t cost = rounds * (phase1_macs + per * tile_macs + tile_macs / 2);
    if (best_cost < 0 || cost < best_cost) best = s, best_cost = cost;
  }
  return best;
}

template <typename T, int D>
cudaError_t launch(const ChainGemmArgs& g, cudaStream_t stream) {
  using C = ChainTiles<D>;
  using L = typename C::Loop;
  const int64_t out_f = g.b2 * D;
  CUtensorMap tm_x, tm_w1, tm_w2, tm_y;
  // x: (c1, a1, B) with row stride ldx; w1: (c1, 64, a1); w2 planes: (c2, b2, d2); y: (b2*d2, 1, B).
  const int64_t x_dims[3] = {g.c1, g.a1, g.B}, x_strides[2] = {g.c1, g.ldx};
  const int64_t w1_dims[3] = {g.c1, C::kB1, g.a1}, w1_strides[2] = {g.c1, C::kB1 * g.c1};
  const int64_t w2_dims[3] = {g.c2, g.b2, D}, w2_strides[2] = {g.c2, g.b2 * g.c2};
  const int64_t y_dims[3] = {out_f, 1, g.B}, y_strides[2] = {out_f, out_f};
  const uint32_t x_box[3] = {C::kK1, 1, C::kBM}, w1_box[3] = {C::kK1, C::kB1, 1}, w2_box[3] = {L::kBK, L::kBN, D},
                 y_box[3] = {64, 1, 64};
  if (!encode_tile_map(&tm_x, g.x, g.bf16, x_dims, x_strides, x_box, 128) ||
      !encode_tile_map(&tm_w1, g.w1, g.bf16, w1_dims, w1_strides, w1_box, 128) ||
      !encode_tile_map(&tm_w2, g.w2p, g.bf16, w2_dims, w2_strides, w2_box, L::kWSwizzle) ||
      !encode_tile_map(&tm_y, g.y, g.bf16, y_dims, y_strides, y_box, 128))
    return cudaErrorInvalidValue;

  auto kernel = chain_kernel<T, D>;
  static std::atomic<uint64_t> configured{0};
  int device = 0;
  cudaError_t e = device_with_smem(kernel, C::kSmemBytes, configured, &device);
  if (e != cudaSuccess) return e;
  int sms = 0;
  e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (e != cudaSuccess) return e;

  ChainProb pr{};
  pr.m_tiles = static_cast<int>((g.B + C::kBM - 1) / C::kBM);
  pr.a1 = static_cast<int>(g.a1);
  pr.k1_tiles = static_cast<int>((g.c1 + C::kK1 - 1) / C::kK1);
  pr.n_tiles = static_cast<int>((g.b2 + L::kBN - 1) / L::kBN);
  pr.k2_tiles = static_cast<int>(g.c2 / L::kBK);  // c2 * d2 = 64 a1: whole stages (chain_gemm_serves)
  pr.out_f = static_cast<int>(out_f);
  pr.activation = g.activation;
  pr.splits = column_splits(pr.m_tiles, pr.n_tiles, sms, g.a1 * C::kB1 * g.c1, C::kCols * g.c2);
  pr.per_split = (pr.n_tiles + pr.splits - 1) / pr.splits;
  const int64_t units = static_cast<int64_t>(pr.m_tiles) * pr.splits;
  const int grid = static_cast<int>(units < sms ? units : sms);
  kernel<<<grid, kThreads, C::kSmemBytes, stream>>>(tm_x, tm_w1, tm_w2, tm_y, static_cast<const T*>(g.bias), pr);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_for_d(const ChainGemmArgs& g, cudaStream_t stream) {
  switch (g.d2) {
    case 2: return launch<T, 2>(g, stream);
    case 3: return launch<T, 3>(g, stream);
    case 4: return launch<T, 4>(g, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

bool chain_gemm_serves(int64_t B, int64_t a1, int64_t b1, int64_t c1, int64_t d1, int64_t a2, int64_t b2, int64_t c2,
                       int64_t d2) {
  const int64_t lim = 0x7fffffff;
  // (At d2 = 3, a1 * 64 = 3 c2 makes a1 a multiple of 3: whole stages of three H boxes.)
  return d1 == 1 && a2 == 1 && b1 == 64 && (d2 == 2 || d2 == 3 || d2 == 4) && a1 * b1 == c2 * d2 && a1 * b1 <= 384 &&
         c1 % 8 == 0 && (b2 * d2) % 8 == 0 && B <= lim && c1 <= lim && b2 * d2 <= lim;
}

cudaError_t chain_gemm(const ChainGemmArgs& g, cudaStream_t stream) {
  if (g.B == 0) return cudaSuccess;
  return g.bf16 ? launch_for_d<__nv_bfloat16>(g, stream) : launch_for_d<__half>(g, stream);
}

}  // namespace hopper
}  // namespace ks
