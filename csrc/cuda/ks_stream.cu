// The Stream plan: ks::matmul at decode-sized batches (B * Gp <= 128 below), 16-bit, sm_90, both layouts.
//
// At these sizes a product's time is its weight bytes read once, and the other plans all lose
// that: the gemv kernels re-read x for every (i, j) slab, and every plan that wants per-plane
// operands (bmm, interleaved, the tile kernels) copies w into planes on every call. This kernel
// reads w exactly once, as it lies, with 16-byte loads straight into mma.sync fragments:
//
//   For block i and a group of G planes (G = d for d <= 8, G = 8 for d % 8 == 0; ks_plan.h
//   stream_shape), the positions p = (k, l) of the group's planes are a K dimension in which
//   every row j of w is contiguous (16-byte chunks for G = 8). Then
//       y[n, i, j, l] = sum_p w[i, j, p] * X[p, (n, l)],   X[p, (n, l)] = x[n, i, p] if p % G == l else 0:
//   one GEMM with M = the b rows of w, N = B * Gp columns (row n, plane l; Gp = G rounded up to a
//   power of two, padding planes dropped) and K = c * G, G times the pattern's flops -- cheap
//   while B * Gp <= 128, where the tensor cores idle on w's bytes.
//
// Mainloop (per warp: 16 rows of w = one m16 tile, all N columns -- or a quarter of them where
// four warps share the tile because the grid is too small to fill the GPU (kCP) -- and the block's
// slice of K): each thread loads its rows' 16 bytes of a 32-position step (positions 8q .. 8q + 7, q = lane % 4);
// the step's two k16 MMAs read them as their A fragments after a relabelling of k inside the step
// (logical k {2q, 2q+1, 2q+8, 2q+9} of MMA s are positions 8q + 4s + {0..3}), which B's fragments
// follow: X's columns come from x rows staged once in shared memory, masked to plane l by a per-
// thread constant (columns are n * G + l, so a thread's plane is its column's lane % G). w's chunks
// go straight into registers 2 or 4 steps ahead of the MMAs (stream_shape's depth: 4 on one-wave
// grids); x's rows are one cp.async group.
//
// Split over K: where (i, group, row tiles) give fewer than two blocks per SM, a cluster of up to
// 8 blocks splits K (>= 32 positions each); each pushes the rows of its fp32 partial tile that rank
// r finishes into r's shared memory (st.async), and r sums them in rank order (deterministic), adds
// the bias, applies the activation and writes y. One launch, no workspace.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <atomic>
#include <cstdint>
#include <type_traits>

#include "activation.cuh"
#include "hopper/launch.h"
#include "hopper/ptx.cuh"
#include "ks_dispatch.h"
#include "ks_kernels.h"
#include "../ks_plan.h"

namespace ks {
namespace detail {
namespace {

struct StreamParams {
  const void* x;
  const void* w;
  void* y;
  const void* bias;  // (a*b*d,) or null
  int64_t batch, ldx;
  int a, b, c, d;
  int G, groups, K;    // planes per group, d / G, positions per unit (c * G)
  int Gp;              // columns per x row: G rounded up to a power of two (columns n * Gp + l)
  int chunk_stride;    // elements between consecutive 8-position chunks of a row (8, or d when G < d)
  int row_tiles;       // units per (i, group): ceil(b / (16 * warps))
  int split, k_slice;  // cluster size over K, positions per block (a multiple of 32)
  int nb;              // x rows staged (>= batch): N / G
  int xs_stride;       // elements between staged x rows (ks_plan.h stream_shape)
  int x_vec;           // batch-first x with 16-byte aligned rows
  int batch_last;
  int act;
};

// The chain's launch: x is the input of ks::chain's first factor w1 = (a1, b1, c1, 1), whose output
// each block stages for its K slice (stage_first_factor). A type of its own, so that the plain
// kernels' parameters, code and registers stay as they were.
struct StreamChainParams : StreamParams {
  const void* w1;
  int b1, c1;
};

template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T>
__device__ __forceinline__ void mma16816(float* acc, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  if constexpr (sizeof(T) == 2 && std::is_same<T, __half>::value) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  } else {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
}

// ks::chain's first factor F1 = (a1, b1, c1, 1) for this block's K slice of F2 = (1, b, c, d) with
// G = d: position pos of the slice is feature pos of the intermediate h, h[n, f] = sum_k
// w1[f, k] x[n, (f / b1) c1 + k], f = i1 b1 + j1 -- a GEMM with M = the slice's positions (rows of
// w1), N = x's rows n < nb, K = c1, done by the same m16n8k16 MMAs and k relabelling as the
// mainloop (both operands 16-byte loads of 8 consecutive k). A warp takes two m16 tiles (32
// positions, one group i1: b1 % 32 == 0) at a time and issues every load of SB 32-k steps before
// their MMAs, so that F1 costs a few L2 round trips per block (a scalar version with one dot per
// thread and a serial k loop measured 2-8x slower than F1's own launch, results/chain1_h100_*).
// Each h value is rounded to T (as the unfused chain stores it); zeros past the batch and K.
template <typename T, int NT>
__device__ __forceinline__ void stage_first_factor(const StreamChainParams& p, T* xs, int kbeg, int kend) {
  constexpr int SB = NT >= 8 ? 1 : 2;  // 32-k steps per round of loads (registers: (4 + NT) x SB uint4)
  const T* x = static_cast<const T*>(p.x);
  const T* w1 = static_cast<const T*>(p.w1);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int r = lane >> 2, q = lane & 3;
  const int tiles = p.k_slice >> 4, ksteps = (p.c1 + 31) >> 5;
  for (int t0 = 2 * warp; t0 < tiles; t0 += 2 * warps) {
    const int pos0 = kbeg + t0 * 16;  // a multiple of 32: the pair lies in group pos0 / b1
    const bool pin = pos0 < kend;
    const int64_t grp_col = pin ? (int64_t)(pos0 / p.b1) * p.c1 : 0;
    const T* wr[2][2];
    bool wok[2];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
      wok[mt] = pos0 + 16 * mt < kend;  // kend is a multiple of 16 (K = a1 b1)
#pragma unroll
      for (int h = 0; h < 2; ++h) wr[mt][h] = w1 + (int64_t)(wok[mt] ? pos0 + 16 * mt + 8 * h + r : 0) * p.c1 + q * 8;
    }
    const T* xr[NT];
    bool xok[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const int n = t * 8 + r;
      xok[t] = pin && n < p.batch;
      xr[t] = x + (xok[t] ? (int64_t)n * p.ldx + grp_col : 0) + q * 8;
    }
    float acc[2][NT][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int t = 0; t < NT; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mt][t][e] = 0.f;
    for (int s0 = 0; s0 < ksteps; s0 += SB) {
      uint4 A[SB][2][2], Bv[SB][NT];
#pragma unroll
      for (int sb = 0; sb < SB; ++sb) {
        const int k = (s0 + sb) * 32;
        const bool kin = s0 + sb < ksteps && k + q * 8 < p.c1;  // c1 % 8 == 0: whole chunks
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
          for (int h = 0; h < 2; ++h) A[sb][mt][h] = kin && wok[mt] ? ldg16(wr[mt][h] + k) : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int t = 0; t < NT; ++t) Bv[sb][t] = kin && xok[t] ? ldg16(xr[t] + k) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int sb = 0; sb < SB; ++sb)
#pragma unroll
        for (int t = 0; t < NT; ++t)
#pragma unroll
          for (int mt = 0; mt < 2; ++mt) {
            mma16816<T>(acc[mt][t], A[sb][mt][0].x, A[sb][mt][1].x, A[sb][mt][0].y, A[sb][mt][1].y, Bv[sb][t].x, Bv[sb][t].y);
            mma16816<T>(acc[mt][t], A[sb][mt][0].z, A[sb][mt][1].z, A[sb][mt][0].w, A[sb][mt][1].w, Bv[sb][t].z, Bv[sb][t].w);
          }
    }
    // C fragment: (position row r / r + 8 of tile mt, column n = 8t + 2q / 2q + 1); every position
    // of the slice and every row n < nb is written (zeros from zero operands past K and the batch).
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int t = 0; t < NT; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int n = t * 8 + 2 * q + (e & 1), pos = (t0 + mt) * 16 + r + (e >> 1) * 8;
          if (n < p.nb && t0 + mt < tiles) xs[n * p.xs_stride + pos] = from_f<T>(acc[mt][t][e]);
        }
  }
}

// One output: + bias, the activation ACT (ks_checks.h Activation; 16-bit output), one rounding.
template <typename T, int ACT>
__device__ __forceinline__ void put(const StreamParams& p, float z, int64_t f, int n) {
  if (p.bias) z += to_f(static_cast<const T*>(p.bias)[f]);
  const T v = from_f<T>(activate<ACT, true>(z));
  if (p.batch_last) static_cast<T*>(p.y)[f * p.batch + n] = v;
  else static_cast<T*>(p.y)[n * ((int64_t)p.a * p.b * p.d) + f] = v;
}

// m16 tiles per warp (rows of w: 16 kMT per warp). One: 64-row blocks, twice as many blocks and
// warps per SM as two tiles gave (at 16-32 rows 1.3-1.6x faster: (1, 2048, 512, 2) at 32 rows
// 20.7 -> 13.3 us, H100, benchmarks/results/stream5_h100_occupancy_ab.jsonl; equal at 1-4 rows).
constexpr int kMT = 1;

// The block's outputs. Without a split, straight from the accumulators (C fragment: rows r and
// r + 8 of each m16 tile, columns 2q and 2q + 1 of each n8 tile). With one, rank o of the cluster
// finishes rows [o * share, (o + 1) * share) of the tile: every block pushes those rows of its fp32
// partials into o's slots by st.async, whose bytes complete a transaction on o's barrier, and o
// waits on its own barrier only, then sums its slots in rank order (deterministic), (l, row)
// fastest, so that consecutive threads write consecutive features of y's rows where G = d. No
// cluster-wide barrier sits between the mainloop and y: pulling the partials through distributed
// shared memory needed two, whose fences and waits were 20-28 % of the stall samples at 1-16 rows
// (ncu, results/ncu10_h100). Shared memory after x's rows: slots [split][share][N + 2] floats (+2:
// the rows a warp stores hit different banks), then the barrier, which the kernel initialises at
// its start, expecting rows x N x 4 bytes. Index arithmetic by shifts: share, N and Gp are powers
// of two; columns of planes l >= G (G = 3, 5, 6, 7 padded to Gp) are dropped.
template <typename T, int NT, int ACT, int kCP>
__device__ __forceinline__ void epilogue(const StreamParams& p, float (&acc)[kMT][NT][4], unsigned char* smem,
                                         int rank, int rt, int i, int goff, int gshift) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, r = lane >> 2, q = lane & 3;
  const int mwarp = warp / kCP, col0 = (warp % kCP) * NT * 8;  // this warp's m16 tile and first column
  const int rows_per_block = (blockDim.x >> 5) / kCP * 16 * kMT, G = p.G, Gp = p.Gp;
  if (p.split == 1) {
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int j = rt * rows_per_block + mwarp * 16 * kMT + mt * 16 + h * 8 + r;
        if (j >= p.b) continue;
#pragma unroll
        for (int t = 0; t < NT; ++t)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int col = col0 + t * 8 + 2 * q + e, n = col >> gshift, l = col & (Gp - 1);
            if (n < p.batch && l < G) put<T, ACT>(p, acc[mt][t][2 * h + e], ((int64_t)i * p.b + j) * p.d + goff + l, n);
          }
      }
    return;
  }
  constexpr int N = NT * 8 * kCP, Np = N + 2;
  const int share = rows_per_block / p.split;  // a power of two
  const int sshift = __ffs(share) - 1;
  float* slots = reinterpret_cast<float*>(smem + 2 * (size_t)p.nb * p.xs_stride);
  uint64_t* bar = reinterpret_cast<uint64_t*>(slots + (size_t)rows_per_block * Np);
  hopper::cluster_wait();  // every block's barrier is initialised (arrived at the kernel's start)
  const uint32_t slots_at = hopper::smem_u32(slots), bar_at = hopper::smem_u32(bar);
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = mwarp * 16 * kMT + mt * 16 + h * 8 + r, owner = row >> sshift;
      const uint32_t dst = hopper::mapa(slots_at, owner) + ((rank * share + (row & (share - 1))) * Np + col0 + 2 * q) * 4;
      const uint32_t dst_bar = hopper::mapa(bar_at, owner);
#pragma unroll
      for (int t = 0; t < NT; ++t) hopper::st_async_f32x2(dst + t * 32, acc[mt][t][2 * h], acc[mt][t][2 * h + 1], dst_bar);
    }
  hopper::mbarrier_wait_cluster(bar, 0);  // every rank's rows for this block have landed
#pragma unroll 2
  for (int e = tid; e < share * N; e += blockDim.x) {
    const int l = e & (Gp - 1), rin = (e >> gshift) & (share - 1), n = e >> (gshift + sshift);
    const int j = rt * rows_per_block + rank * share + rin;
    if (n >= p.batch || j >= p.b || l >= G) continue;
    const float* src = slots + rin * Np + n * Gp + l;
    float z = src[0];
    for (int s = 1; s < p.split; ++s) z += src[s * share * Np];
    put<T, ACT>(p, z, ((int64_t)i * p.b + j) * p.d + goff + l, n);
  }
  // No barrier before leaving: a block leaves after every store into it has landed, and its own
  // stores go to blocks that wait for them.
}

// NT: n8 tiles per warp; kCP: warps per m16 tile (ks_plan.h StreamShape::col_parts), each with NT
// consecutive n8 tiles (N = 8 NT kCP columns >= B * Gp). Block = 32 * warps threads, 16 kMT rows
// per kCP warps.
// P: StreamParams, or StreamChainParams for ks::chain's launch (x is then the chain's input and
// the block stages its first factor's output for its K slice).
template <typename T, int NT, typename P, int kDepth, int kCP>
__global__ void __launch_bounds__(128) stream_kernel(const P p) {
  static_assert(kCP == 1 || !std::is_same<P, StreamChainParams>::value, "the chain's launch keeps kCP = 1");
  constexpr bool kFirst = std::is_same<P, StreamChainParams>::value;
  extern __shared__ __align__(16) unsigned char smem[];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int r = lane >> 2, q = lane & 3;
  const int rows_per_block = (blockDim.x >> 5) / kCP * 16 * kMT;
  const int mwarp = warp / kCP, col0 = (warp % kCP) * NT * 8;  // this warp's m16 tile and first column
  const int rank = blockIdx.x % p.split;
  const int unit = blockIdx.x / p.split;
  const int rt = unit % p.row_tiles, ig = unit / p.row_tiles;
  const int g = ig % p.groups, i = ig / p.groups;
  const int64_t cd = (int64_t)p.c * p.d;
  const int kbeg = rank * p.k_slice;
  const int kend = min(p.K, kbeg + p.k_slice);
  const int steps = kend > kbeg ? (kend - kbeg + 31) / 32 : 0;
  const int goff = g * p.G;  // element offset of the group's first plane in a (k, l) run

  // This thread's rows of w (two per m16 tile) and their first chunk (position kbeg + 8q).
  const T* w = static_cast<const T*>(p.w);
  const T* wrow[kMT][2];
  bool wok[kMT][2];
  const int j0 = rt * rows_per_block + mwarp * 16 * kMT;
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int j = j0 + mt * 16 + h * 8 + r;
      wok[mt][h] = j < p.b;
      wrow[mt][h] = w + ((int64_t)i * p.b + (wok[mt][h] ? j : 0)) * cd + goff;
    }
  // w's chunks go straight into registers (one 16-byte load per row and step), kDepth steps ahead
  // of the MMAs: shared memory holds only x, so that four or more blocks share an SM (the warps hide
  // each other's latencies; a cp.async ring of 6-12 steps measured 5-15 % slower for its lower
  // occupancy, benchmarks/NOTES.md).
  const int threads = blockDim.x;
  auto load_step = [&](uint4 (&A)[kMT][2], int s) {
    const int pos = kbeg + s * 32 + q * 8;
    const bool in = s < steps && pos < kend;
    const int64_t off = (int64_t)(pos >> 3) * p.chunk_stride;
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h)
        A[mt][h] = (in && wok[mt][h]) ? ldg16_no_l1(wrow[mt][h] + off) : make_uint4(0, 0, 0, 0);
  };
  uint4 A[kDepth][kMT][2];  // kDepth steps in flight
#pragma unroll
  for (int u = 0; u < kDepth; ++u) load_step(A[u], u);  // in flight while x is staged

  // The split's reduction barrier (epilogue): initialised now, expecting the slot bytes of every
  // rank; the cluster's wait in the epilogue makes it visible to the peers before they push.
  if (p.split > 1) {
    if (tid == 0) {
      constexpr int N = NT * 8 * kCP;
      uint64_t* bar = reinterpret_cast<uint64_t*>(smem + 2 * (size_t)p.nb * p.xs_stride +
                                                  (size_t)rows_per_block * (N + 2) * 4);
      hopper::mbarrier_init(bar, 1);
      hopper::mbarrier_arrive_expect_tx(bar, rows_per_block * N * 4);
      hopper::fence_barrier_init();
    }
    hopper::cluster_arrive_relaxed();
  }

  // x rows n < nb, positions [kbeg, kbeg + k_slice), as 8-position chunks (zeros past B and K),
  // copied asynchronously where rows are 16-byte aligned.
  T* xs = reinterpret_cast<T*>(smem);
  const int xs_stride = p.xs_stride;
  if constexpr (kFirst) {
    stage_first_factor<T, NT>(p, xs, kbeg, kend);
  } else {
    const int chunks = p.k_slice >> 3;
    const T* x = static_cast<const T*>(p.x);
#pragma unroll 4
    for (int e = tid; e < p.nb * chunks; e += threads) {
      const int n = e / chunks, ch = e - n * chunks;
      const int pos = kbeg + ch * 8;
      const bool in = n < p.batch && pos < kend;
      const int64_t f = (int64_t)i * cd + (int64_t)(pos >> 3) * p.chunk_stride + goff;  // 8 features f..f+7
      T* dst = xs + n * xs_stride + ch * 8;
      if (p.x_vec) {
        cp_async16(dst, in ? x + n * p.ldx + f : x, in ? 16 : 0);
      } else {
        uint4 v = make_uint4(0, 0, 0, 0);
        T* ve = reinterpret_cast<T*>(&v);
        if (in) {
#pragma unroll
          for (int t = 0; t < 8; ++t) ve[t] = p.batch_last ? x[(f + t) * p.ldx + n] : x[n * p.ldx + f + t];
        }
        *reinterpret_cast<uint4*>(dst) = v;
      }
    }
    cp_async_commit();
  }

  // B fragments: column t*8 + r is (row n, plane l) = ((t*8 + r) / Gp, r % Gp); of the 8 positions
  // p0 .. p0+7 (p0 = kbeg + 32 s + 8q) the thread keeps those of plane l, (p0 + e) % G == l: for G
  // a power of two (Gp = G, G | 8) the same every step; for G = 3, 5, 6, 7 it turns with p0 % G
  // (bits e0, e0 + G, ... of `pat`), and columns l >= G keep nothing.
  const int G = p.G, Gp = p.Gp, gshift = Gp == 1 ? 0 : Gp == 2 ? 1 : Gp == 4 ? 2 : 3;
  const int l_col = r & (Gp - 1);
  const bool turning = G != Gp;
  const uint32_t pat = G == 1 ? 0xFFu : G == 2 ? 0x55u : G == 3 ? 0x49u : G == 4 ? 0x11u : G == 5 ? 0x21u
                       : G == 6 ? 0x41u : G == 7 ? 0x81u : 0x01u;
  auto masks_at = [&](int s, uint32_t (&m)[4]) {
    uint32_t keep;
    if (!turning) {
      keep = (pat << l_col) & 0xFFu;
    } else {
      int e0 = l_col - (kbeg + s * 32 + q * 8) % G;
      if (e0 < 0) e0 += G;
      keep = l_col < G ? (pat << e0) & 0xFFu : 0u;
    }
#pragma unroll
    for (int wd = 0; wd < 4; ++wd)
      m[wd] = ((keep >> (2 * wd)) & 1u ? 0x0000FFFFu : 0u) | ((keep >> (2 * wd + 1)) & 1u ? 0xFFFF0000u : 0u);
  };
  uint32_t mask[4];
  masks_at(0, mask);
  const T* xcol[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) xcol[t] = xs + ((col0 + t * 8 + r) >> gshift) * xs_stride + q * 8;

  float acc[kMT][NT][4];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mt][t][e] = 0.f;
  cp_async_wait<0>();
  __syncthreads();

  auto compute_step = [&](const uint4 (&A)[kMT][2], int s) {
    if (turning) masks_at(s, mask);
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const uint4 xv = *reinterpret_cast<const uint4*>(xcol[t] + s * 32);
      const uint32_t b00 = xv.x & mask[0], b01 = xv.y & mask[1], b10 = xv.z & mask[2], b11 = xv.w & mask[3];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        mma16816<T>(acc[mt][t], A[mt][0].x, A[mt][1].x, A[mt][0].y, A[mt][1].y, b00, b01);
        mma16816<T>(acc[mt][t], A[mt][0].z, A[mt][1].z, A[mt][0].w, A[mt][1].w, b10, b11);
      }
    }
  };
  for (int s = 0; s < steps; s += kDepth) {
#pragma unroll
    for (int u = 0; u < kDepth; ++u)
      if (s + u < steps) {
        compute_step(A[u], s + u);
        load_step(A[u], s + u + kDepth);
      }
  }

  switch (p.act) {  // the epilogue's code once per activation, not a switch per output
    case 1: epilogue<T, NT, 1, kCP>(p, acc, smem, rank, rt, i, goff, gshift); break;
    case 2: epilogue<T, NT, 2, kCP>(p, acc, smem, rank, rt, i, goff, gshift); break;
    case 3: epilogue<T, NT, 3, kCP>(p, acc, smem, rank, rt, i, goff, gshift); break;
    case 4: epilogue<T, NT, 4, kCP>(p, acc, smem, rank, rt, i, goff, gshift); break;
    default: epilogue<T, NT, 0, kCP>(p, acc, smem, rank, rt, i, goff, gshift); break;
  }
}

template <typename T, int NT, typename P, int kDepth, int kCP>
cudaError_t launch_nt(const P& p, const StreamShape& sh, cudaStream_t stream) {
  auto kernel = stream_kernel<T, NT, P, kDepth, kCP>;
  static std::atomic<uint64_t> configured{0};
  int dev = 0;
  const cudaError_t e = hopper::device_with_smem(kernel, (int)kStreamMaxSmem, configured, &dev);
  if (e != cudaSuccess) return e;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(static_cast<unsigned>(sh.blocks), 1, 1);
  cfg.blockDim = dim3(32 * sh.warps, 1, 1);
  cfg.dynamicSmemBytes = static_cast<size_t>(sh.smem);
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = sh.split;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = sh.split > 1 ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, p);
}

template <typename T, int NT, typename P, int kCP = 1>
cudaError_t launch_depth(const P& p, const StreamShape& sh, cudaStream_t stream) {
  if constexpr (NT == 8) return launch_nt<T, NT, P, 2, kCP>(p, sh, stream);  // depth 2 only (stream_shape)
  else return sh.depth == 4 ? launch_nt<T, NT, P, 4, kCP>(p, sh, stream) : launch_nt<T, NT, P, 2, kCP>(p, sh, stream);
}

// P = StreamChainParams (the chain's launch) only up to 64 columns: stream_matmul checks.
template <typename T, typename P>
cudaError_t launch_t(const P& p, const StreamShape& sh, cudaStream_t stream) {
  if (sh.col_parts == 4) {  // 64-128 columns, a quarter per warp (stream_shape)
    if constexpr (std::is_same<P, StreamParams>::value) {
      if (sh.nt == 8) return launch_depth<T, 2, P, 4>(p, sh, stream);
      if (sh.nt == 16) return launch_depth<T, 4, P, 4>(p, sh, stream);
    }
    return cudaErrorInvalidValue;
  }
  if (sh.col_parts != 1) return cudaErrorInvalidValue;
  switch (sh.nt) {
    case 1: return launch_depth<T, 1>(p, sh, stream);
    case 2: return launch_depth<T, 2>(p, sh, stream);
    case 4: return launch_depth<T, 4>(p, sh, stream);
    case 8: return launch_depth<T, 8>(p, sh, stream);
    case 16:
      if constexpr (std::is_same<P, StreamParams>::value) return launch_depth<T, 16>(p, sh, stream);
      return cudaErrorInvalidValue;
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t stream_matmul(const MatmulArgs& g, const void* bias, int activation, cudaStream_t stream,
                          const StreamFirstFactor* first) {
  StreamShape sh;
  if (g.dtype == DType::F32 || !aligned16(g.w) || !stream_shape(g.a, g.b, g.c, g.d, g.batch, sm_count(), &sh, first != nullptr))
    return cudaErrorNotSupported;  // nothing launched: the caller may take another plan
  if (first && (g.batch_last || g.a != 1 || sh.group != g.d || sh.nt > 8 || first->c % 8 != 0 || first->b % 32 != 0 || !aligned16(first->w) ||
                !aligned16(g.x) || g.ldx % 8 != 0 || (int64_t)first->a * first->b != (int64_t)g.c * g.d))
    return cudaErrorNotSupported;
  StreamParams p{};
  p.x = g.x;
  p.w = g.w;
  p.y = g.y;
  p.bias = bias;
  p.batch = g.batch;
  p.ldx = g.ldx;
  p.a = g.a;
  p.b = g.b;
  p.c = g.c;
  p.d = g.d;
  p.G = sh.group;
  p.Gp = sh.cols;
  p.groups = g.d / sh.group;
  p.K = g.c * sh.group;
  p.chunk_stride = sh.group == g.d ? 8 : g.d;
  p.row_tiles = sh.row_tiles;
  p.split = sh.split;
  p.k_slice = sh.k_slice;
  p.nb = sh.nb;
  p.xs_stride = sh.xs_stride;
  p.x_vec = !g.batch_last && aligned16(g.x) && g.ldx % 8 == 0;
  p.batch_last = g.batch_last ? 1 : 0;
  p.act = activation;
  if (first) {
    StreamChainParams pc{};
    static_cast<StreamParams&>(pc) = p;
    pc.w1 = first->w;
    pc.b1 = first->b;
    pc.c1 = first->c;
    return g.dtype == DType::F16 ? launch_t<__half>(pc, sh, stream) : launch_t<__nv_bfloat16>(pc, sh, stream);
  }
  return g.dtype == DType::F16 ? launch_t<__half>(p, sh, stream) : launch_t<__nv_bfloat16>(p, sh, stream);
}

}  // namespace detail
}  // namespace ks
