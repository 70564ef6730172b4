// sm_90a fused chain: y = act(F2(F1(x)) + bias) for F1 = (a1, 64, c1, 1), F2 = (1, b2, c2, d2)
// (the form of the `auto` and paper chains), one pass over x and y; the intermediate H (a1 * 64
// features per row) stays in shared memory.
//
// A unit of work is a row tile of 128 rows and a run of F2's column tiles (persistent blocks;
// column_splits below sizes the runs). Warpgroup 0 produces (two threads, one stage ring each),
// warpgroups 1 and 2 consume, each from its own ring:
// - phase 1, per block i1 of F1: consumer p computes rows 64p .. 64p + 63 of H box i1 =
//   X[:, c1 i1 ..] W1_i1^T, a plain GEMM (d1 = 1: x's rows and w1 are K-major as they lie): TMA
//   boxes of x [64][64] and w1 [64][64], shared-memory wgmma m64n64k16. Its accumulators are
//   written in exactly the layout TMA gives the interleaved kernel for x: [128 rows][64 features],
//   128-byte swizzle.
// - phase 2, per pair of column tiles of 128 outputs: consumer p takes tile p of the pair for all
//   128 rows (two 64-row blocks), through the interleaved kernel's mainloop
//   (interleaved_mainloop.cuh) with H as its x, against w2's planes streamed by TMA. The two
//   consumers take turns on the tensor cores (FlashAttention 3's ping-pong): one runs its mainloop
//   while the other runs its epilogue. Epilogue per box of 64 outputs: the accumulators rounded to
//   T into a staging box (as the unfused chain rounds F2's output), then a pass over the box adds
//   the bias and applies the activation (8 contiguous outputs per thread, the activation chosen
//   once per box: a small loop, not one inlined copy per accumulator), and a TMA store; two
//   staging buffers per consumer.
// H is shared: a block barrier of the consumers before phase 1 (the previous unit's reads are
// done) and after it (every row written).
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
#include "ptx.cuh"
#include "tensor_map.h"

namespace ks {
namespace hopper {
namespace {

// Tile shapes: pure functions of d2 (FlashAttention's tile_size.h style).
template <int D>
struct ChainTiles {
  static_assert(D == 2 || D == 4, "fused chain: d2");
  static constexpr int kBM = 128;                  // rows per unit: two 64-row blocks
  static constexpr int kB1 = 64;                   // F1's b: block i1's outputs are one H box
  static constexpr int kK1 = 64;                   // F1's k per stage (128-byte boxes)
  static constexpr int kHMax = 384;                // H features in shared memory: 6 boxes
  static constexpr int kHBytes = kHMax / 64 * kBM * 128;
  static constexpr int kXBytes = 64 * kK1 * 2;     // a consumer's 64 rows
  static constexpr int kW1Bytes = kB1 * kK1 * 2;
  // F2: a consumer's tile is 128 outputs of 128 rows; k per stage = two H boxes (kBK * d2 = 128).
  // (At d2 = 4 ptxas spills 36 bytes: 128 accumulators + 2 x 32 fragment words; one fragment set
  // spilled 40.)
  using Loop = MainloopShape<D, 128 / D, 128 / D, 2, 2>;
  static constexpr int kW2Bytes = D * Loop::kWPlaneBytes;
  static constexpr int kSlotBytes = kXBytes + kW1Bytes;  // a stage of either phase
  static constexpr int kSlots = 3;                 // per consumer
  static constexpr int kYBuf = 64 * 128;           // one staging box [64 rows][64]
  static constexpr int kSmemBytes = 1024 + kHBytes + 2 * kSlots * kSlotBytes + 4 * kYBuf + 4 * kSlots * 8;
  static_assert(kW2Bytes <= kSlotBytes, "w2 tile in a stage");
  static_assert(kSmemBytes <= 232448, "shared memory per block");
};

constexpr int kThreads = 384;
// Named barriers: 1, 2 = a consumer's epilogue; 3, 4 = consumer 0's and 1's turn on the tensor
// cores; 5 = both consumers around phase 1.
constexpr int kBarTurn = 3, kBarH = 5;

struct ChainProb {
  int m_tiles, a1, k1_tiles, n_tiles, n_pairs, k2_tiles, out_f, activation;
  int splits, per_split;  // column-tile pairs: splits runs of per_split per row tile
};

// Bias + activation over one staging box [64 rows][64 outputs] (T, 128-byte swizzle) of a
// consumer: thread t takes 8 outputs (one 16-byte chunk) of rows t / 8 + 16 i; bias8 holds the
// chunk's 8 bias values.
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
  uint8_t* rings = hs + C::kHBytes;                     // [2 consumers][kSlots][x box | w1 box, or w2 tile]
  uint8_t* ys = rings + 2 * C::kSlots * C::kSlotBytes;  // [2 consumers][2 buffers][64][64]
  uint64_t* full = reinterpret_cast<uint64_t*>(ys + 4 * C::kYBuf);  // [2][kSlots]
  uint64_t* empty = full + 2 * C::kSlots;                           // [2][kSlots]
  const int64_t units = static_cast<int64_t>(pr.m_tiles) * pr.splits;

  if (threadIdx.x == 0) {
    for (int s = 0; s < 2 * C::kSlots; ++s) {
      mbarrier_init(&full[s], 1);
      mbarrier_init(&empty[s], 4);  // one arrival per warp of the ring's consumer
    }
    fence_barrier_init();
  }
  __syncthreads();

  const int wg = threadIdx.x / 128;
  if (wg == 0) {  // producers: thread 0 fills consumer 0's ring, thread 32 consumer 1's
    setmaxnreg_dec<40>();
    if (threadIdx.x % 32 == 0 && threadIdx.x < 64) {
      const int p = threadIdx.x / 32;
      if (p == 0) {
        tma_prefetch_descriptor(&tm_x);
        tma_prefetch_descriptor(&tm_w1);
        tma_prefetch_descriptor(&tm_w2);
      }
      uint8_t* ring = rings + p * C::kSlots * C::kSlotBytes;
      uint64_t* rfull = full + p * C::kSlots;
      uint64_t* rempty = empty + p * C::kSlots;
      uint32_t it = 0;
      auto slot = [&](uint32_t bytes) {
        const int st = static_cast<int>(it % C::kSlots);
        mbarrier_wait(&rempty[st], ((it / C::kSlots) & 1) ^ 1);
        mbarrier_arrive_expect_tx(&rfull[st], bytes);
        ++it;
        return st;
      };
      for (int64_t u = blockIdx.x; u < units; u += gridDim.x) {
        const int m = static_cast<int>(u / pr.splits), np0 = static_cast<int>(u % pr.splits) * pr.per_split;
        const int np1 = np0 + pr.per_split < pr.n_pairs ? np0 + pr.per_split : pr.n_pairs;
        for (int i1 = 0; i1 < pr.a1; ++i1)
          for (int kt = 0; kt < pr.k1_tiles; ++kt) {
            const int st = slot(C::kSlotBytes);
            uint8_t* dst = ring + st * C::kSlotBytes;
            tma_load_3d(dst, &tm_x, &rfull[st], kt * C::kK1, i1, m * C::kBM + 64 * p);
            tma_load_3d(dst + C::kXBytes, &tm_w1, &rfull[st], kt * C::kK1, 0, i1);
          }
        for (int np = np0; np < np1; ++np) {
          const int n = 2 * np + p;
          if (n >= pr.n_tiles) continue;  // the last pair's second tile past b2
          for (int kt = 0; kt < pr.k2_tiles; ++kt) {
            const int st = slot(C::kW2Bytes);
            tma_load_3d(ring + st * C::kSlotBytes, &tm_w2, &rfull[st], kt * L::kBK, n * L::kBN, 0);
          }
        }
      }
    }
  } else {
    setmaxnreg_inc<232>();
    const int p = wg - 1;  // consumer p: H rows 64p .. 64p + 63 in phase 1, tile p of each pair in phase 2
    const int t = threadIdx.x % 128, warp = t / 32, lane = t % 32;
    const int q = lane % 4, r = lane / 4, rho = row_perm<D>(r);
    const int row0 = warp * 16 + rho;  // phase 2's fragment rows row0 (+ 8) of each 64-row block
    const uint32_t hb = smem_u32(hs);
    uint8_t* ring = rings + p * C::kSlots * C::kSlotBytes;
    uint64_t* rfull = full + p * C::kSlots;
    uint64_t* rempty = empty + p * C::kSlots;
    uint32_t it = 0;
    auto next_stage = [&]() {
      const int st = static_cast<int>(it % C::kSlots);
      mbarrier_wait(&rfull[st], (it / C::kSlots) & 1);
      ++it;
      return st;
    };
    auto release = [&](int st) {
      __syncwarp();
      if (lane == 0) mbarrier_arrive(&rempty[st]);
    };
    if (pr.a1 % 2 == 1) {  // a stage of phase 2 takes two H boxes: the one past an odd a1 reads zeros
      const uint32_t z[4] = {0u, 0u, 0u, 0u};
#pragma unroll
      for (int i = 0; i < 4; ++i) sts<4>(hb + pr.a1 * (C::kBM * 128) + (64 * p + t / 2) * 128 + (t % 2) * 64 + 16 * i, z);
    }
    if (p == 1) named_barrier_arrive(kBarTurn, 256);  // consumer 0 takes the tensor cores first

    for (int64_t u = blockIdx.x; u < units; u += gridDim.x) {
      const int m = static_cast<int>(u / pr.splits), np0 = static_cast<int>(u % pr.splits) * pr.per_split;
      const int np1 = np0 + pr.per_split < pr.n_pairs ? np0 + pr.per_split : pr.n_pairs;
      named_barrier(kBarH, 256);  // both consumers are done reading H (the previous unit)
      // Phase 1: H box i1 = X_i1 W1_i1^T for this consumer's 64 rows.
      for (int i1 = 0; i1 < pr.a1; ++i1) {
        float acc1[32];
#pragma unroll
        for (int e = 0; e < 32; ++e) acc1[e] = 0.f;
        for (int kt = 0; kt < pr.k1_tiles; ++kt) {
          const int st = next_stage();
          const uint32_t xa = smem_u32(ring + st * C::kSlotBytes);
          const uint32_t wa = xa + C::kXBytes;
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
            sts<1>(hbox + swizzled(64 * p + warp * 16 + r + 8 * h, 8 * s + 2 * q), v);
          }
      }
      named_barrier(kBarH, 256);  // every row of H is written

      // Phase 2: tile n = 2 np + p of each pair: all d2 planes of 128 rows x kBN columns.
      for (int np = np0; np < np1; ++np) {
        const int n = 2 * np + p;
        const bool live = n < pr.n_tiles;  // the turns go on past b2: the other consumer counts on them
        float acc[2][D][L::kBN / 2];
        named_barrier(kBarTurn + p, 256);  // this consumer's turn on the tensor cores
        if (live) {
#pragma unroll
          for (int mb = 0; mb < 2; ++mb)
#pragma unroll
            for (int g = 0; g < D; ++g)
#pragma unroll
              for (int e = 0; e < L::kBN / 2; ++e) acc[mb][g][e] = 0.f;
          interleaved_mainloop<T, L>(
              acc, pr.k2_tiles, row0, q, C::kBM * 128, next_stage,
              [&](int kt, int) { return hb + 2 * kt * (C::kBM * 128); },  // H boxes 2kt, 2kt + 1
              [&](int st) { return smem_u32(ring + st * C::kSlotBytes); }, release);
        }
        named_barrier_arrive(kBarTurn + 1 - p, 256);  // the other consumer's turn
        if (!live) continue;

        // Epilogue: outputs n*128 .. n*128 + 127 of the unit's 128 rows, box by box (64 x 64).
#pragma unroll
        for (int bx = 0; bx < 4; ++bx) {
          const int mb = bx / 2, cb = bx % 2, col = n * 128 + cb * 64;
          const uint32_t buf = smem_u32(ys + (p * 2 + (bx & 1)) * C::kYBuf);
          float bias8[8];
          load_bias8(bias, col + (t % 8) * 8, pr.out_f, bias8);
          if (t == 0) bulk_wait_read<1>();  // the store that read buf two boxes ago
          named_barrier(1 + p, 128);
#pragma unroll
          for (int s = cb * 8 / D; s < (cb + 1) * 8 / D; ++s)
#pragma unroll
            for (int h = 0; h < 2; ++h) {  // rows row0 and row0 + 8 of block mb
              // Elements e = 0 .. 2d-1 of the run at (j, plane 0), j = 8 s + 2 q: (j + e / d, plane e % d).
              auto out = [&](int e) { return acc[mb][e % D][4 * s + 2 * h + e / D]; };
              uint32_t v[D];
#pragma unroll
              for (int k = 0; k < D; ++k) v[k] = pack2<T>(out(2 * k), out(2 * k + 1));
              const int row = row0 + 8 * h;
              const int e = (8 * s + 2 * q) * D;
#pragma unroll
              for (int w = 0; w < D / L::kLoadWords; ++w)
                sts<L::kLoadWords>(buf + swizzled(row, e % 64 + 2 * L::kLoadWords * w), &v[L::kLoadWords * w]);
            }
          named_barrier(1 + p, 128);  // the pass reads other threads' outputs
          switch (pr.activation) {
            case 1: bias_act_box<T, 1>(buf, t, bias8); break;
            case 2: bias_act_box<T, 2>(buf, t, bias8); break;
            case 3: bias_act_box<T, 3>(buf, t, bias8); break;
            case 4: bias_act_box<T, 4>(buf, t, bias8); break;
            default: bias_act_box<T, 0>(buf, t, bias8); break;
          }
          fence_proxy_async_shared();
          named_barrier(1 + p, 128);
          if (t == 0) {  // one bulk group per box, empty past b2*d2: wait_read<1> above
            if (col < pr.out_f)  // then always finds the group of this buffer's last use
              tma_store_3d(&tm_y, ys + (p * 2 + (bx & 1)) * C::kYBuf, col, 0, m * C::kBM + 64 * mb);
            bulk_commit();
          }
        }
      }
    }
    if (p == 0) named_barrier(kBarTurn, 256);  // consumer 1's last hand-over
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
  const uint32_t x_box[3] = {C::kK1, 1, 64}, w1_box[3] = {C::kK1, C::kB1, 1}, w2_box[3] = {L::kBK, L::kBN, D},
                 y_box[3] = {64, 1, 64};
  if (!encode_tile_map(&tm_x, g.x, g.bf16, x_dims, x_strides, x_box, 128) ||
      !encode_tile_map(&tm_w1, g.w1, g.bf16, w1_dims, w1_strides, w1_box, 128) ||
      !encode_tile_map(&tm_w2, g.w2p, g.bf16, w2_dims, w2_strides, w2_box, L::kWSwizzle) ||
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
  pr.n_tiles = static_cast<int>((g.b2 + L::kBN - 1) / L::kBN);
  pr.n_pairs = (pr.n_tiles + 1) / 2;
  pr.k2_tiles = static_cast<int>((g.c2 + L::kBK - 1) / L::kBK);  // c2 * d2 = 64 a1: H box pairs
  pr.out_f = static_cast<int>(out_f);
  pr.activation = g.activation;
  pr.splits = column_splits(pr.m_tiles, pr.n_pairs, sms, g.a1 * C::kB1 * g.c1, 256 * g.c2);
  pr.per_split = (pr.n_pairs + pr.splits - 1) / pr.splits;
  const int64_t units = static_cast<int64_t>(pr.m_tiles) * pr.splits;
  const int grid = static_cast<int>(units < sms ? units : sms);
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
