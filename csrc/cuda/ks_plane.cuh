// Plane kernels (round 6): 16-bit, batch-first x, d in {2, 4} or d % 8 == 0, sm_90+.
//
// Per (i, l) the product is a GEMM  y(n, i, j, l) = sum_k x(n, i, k, l) * w[i, j, k, l]  ("plane" l).
// A 16-byte piece of x or w (a "chunk") holds 8 elements that are contiguous in memory: for
// d % 8 == 0 one k and 8 consecutive l, for d = 4 two k and all 4 l, for d = 2 four k and both l.
// So a block owns L = min(d, 8) planes at once (the l values of one chunk), and the layout change
// that the tensor cores need (rows contiguous per (l, k)) is done in shared memory by the
// hardware's 8x8 transposes: ldmatrix (raw chunks -> registers) then stmatrix.trans (registers ->
// per-plane tiles), two warp instructions per 256 elements, instead of per-element byte shuffles.
//
//   global --cp.async ring--> raw[row][chunk] --ldmatrix/stmatrix.trans--> T[l][k][row]
//          --ldmatrix.trans--> mma.sync m16n8k16 (fp32 accumulators, one warp = one plane's
//          64 x 32 tile) --stmatrix.trans--> E[l][j][row] --ldmatrix.trans--> y (4-byte stores
//          of the (l, l+1) or (j, l) pairs that are adjacent in y).
//
// Every tile buffer is swizzled (16-byte chunk index XOR a function of (l, k)) so that all the
// 8-row matrix accesses above are free of bank conflicts. Blocks are persistent: the cp.async
// ring runs ahead across tile boundaries, so the next tile's loads are in flight during the
// epilogue. No torch types: compiles with bare nvcc.
#pragma once
#include <cstdint>
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include "ks_tile.cuh"  // cp_async16, cp_async_commit/wait, MmaOp

namespace ks {
namespace detail {

struct PlaneParams {
  const void* x;
  const void* w;
  void* y;
  int64_t batch, ldx;  // x row stride (elements)
  int a, b, c, d;
  int tiles_m, tiles_j, groups_l;  // groups_l = d / L
  int nk;                          // k-steps per tile
  int tiles;                       // tiles_m * tiles_j * groups_l * a  (< 2^31)
  int ncols, mchunk, units;        // w-resident kernel: columns (i, j-tile, l-group), m-tiles per
                                   // unit of work, units = ncols * ceil(tiles_m / mchunk)
};

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void ldsm_x4(uint32_t* r, uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t* r, uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void stsm_x4_t(uint32_t addr, const uint32_t* r) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1,%2,%3,%4};" ::"r"(addr),
               "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3])
               : "memory");
#endif
}

__device__ __forceinline__ void cp_async16_u(uint32_t saddr, const void* gmem, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(saddr), "l"(gmem), "r"(src_bytes));
}

template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}
template <> __device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  const __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// DC: chunk class = planes per block (2, 4, or 8 for every d % 8 == 0). Warp tile WM x WN of one
// plane; BM/BN rows of x/w per plane; BK k per ring stage.
template <typename T_, int DC, int BM_, int BN_, int BK_, int WM, int WN, int STAGES_>
struct PlaneCfg {
  using T = T_;
  static constexpr int L = DC, BM = BM_, BN = BN_, BK = BK_, STAGES = STAGES_;
  static constexpr int SL = 8 / L;        // k per chunk
  static constexpr int KC = BK / SL;      // chunks per row and stage
  static constexpr int OC = BN / SL;      // y chunks per row of the tile
  static constexpr int WARPS_M = BM / WM, WARPS_N = BN / WN;
  static constexpr int WARPS = L * WARPS_M * WARPS_N;
  static constexpr int NT = 32 * WARPS;
  static constexpr int MF = WM / 16, NF = WN / 8;
  static constexpr int RCX = BM / 8, RCW = BN / 8;  // 16-byte chunks per T row (rows contiguous)
  static constexpr int RAW = (BM + BN) * KC * 16;   // bytes of one ring stage (x then w)
  static constexpr int TXB = L * BK * RCX * 16, TWB = L * BK * RCW * 16;
  static constexpr int EB = L * BN * RCX * 16;
  static constexpr int SMEM = STAGES * RAW + TXB + TWB + EB;
  static constexpr int UX = BM * KC / NT, UW = BN * KC / NT;  // cp.async chunks per thread
  static constexpr int JO = RCX * OC / 4;                     // write-out jobs (4 matrices each)
  static_assert(L == 2 || L == 4 || L == 8, "chunk class");
  static_assert(KC % 8 == 0 && RCX % 8 == 0 && RCW % 8 == 0, "swizzles need 8 chunks per row");
  static_assert(NT % KC == 0 && (BM * KC) % NT == 0 && (BN * KC) % NT == 0, "loader");
  static_assert(JO % WARPS == 0, "write-out jobs");  // transposition jobs: see transpose_stage
  static_assert(WM % 16 == 0 && WN % 16 == 0 && BK % 16 == 0 && NF % 2 == 0, "warp tile");
  static_assert(SMEM <= 227 * 1024, "shared memory");
};

// (l, k) of element r (0..7) of chunk kc; the same map gives (l, j) of a y chunk.
template <int L>
__device__ __forceinline__ void chunk_elem(int kc, int r, int& l, int& k) {
  l = r & (L - 1);
  k = kc * (8 / L) + r / L;
}
// Chunk position of (l, k, row chunk rc) in a T/E buffer with RC chunks per row and bkr rows per
// plane: the XOR makes both 8 consecutive k at one l and the 8 (l, k) of one chunk hit 8 different
// bank groups.
template <int L, int RC>
__device__ __forceinline__ uint32_t tpos(int l, int k, int rc, int bkr) {
  return (uint32_t)((l * bkr + k) * RC + (rc ^ ((k ^ (l * (8 / L))) & 7)));
}

// raw[row][chunk] (ROWS rows of one ring stage) -> T[l][k0 + k][row] (RC chunks per row, bkr rows
// per plane): jobs of 4 matrices (8 rows x one chunk) spread over the warps.
template <class P, int ROWS, int RC>
__device__ __forceinline__ void transpose_stage(uint32_t raw, uint32_t tbase, int bkr, int k0, int warp, int lane) {
  constexpr int KC = P::KC, J = ROWS * KC / 32;
  static_assert(J % P::WARPS == 0, "transposition jobs");
#pragma unroll
  for (int q = 0; q < J / P::WARPS; ++q) {
    const int job = warp + q * P::WARPS;
    const int rg = job / (KC / 4), kq = job % (KC / 4);
    const int kc = kq * 4 + (lane >> 3), r = lane & 7;
    uint32_t v[4];
    ldsm_x4(v, raw + ((rg * 8 + r) * KC + (kc ^ r)) * 16);
    int l, k;
    chunk_elem<P::L>(kc, r, l, k);
    stsm_x4_t(tbase + tpos<P::L, RC>(l, k0 + k, rg, bkr) * 16, v);
  }
}

// One ring stage of tensor-core work for the warp's plane wl: A from T_x (rows k of the stage at
// kx0, bkr_x per plane), B from T_w (kw0, bkr_w).
template <class P>
__device__ __forceinline__ void mma_stage(float (&acc)[P::MF][P::NF][4], uint32_t s_tx, int bkr_x, int kx0,
                                          uint32_t s_tw, int bkr_w, int kw0, int wl, int wm0, int wn0, int lane) {
  const int mi = lane >> 3, r = lane & 7;
#pragma unroll
  for (int ks = 0; ks < P::BK / 16; ++ks) {
    uint32_t bf[P::NF / 2][4];
#pragma unroll
    for (int np = 0; np < P::NF / 2; ++np) {
      const int k = kw0 + ks * 16 + (mi & 1) * 8 + r;
      ldsm_x4_t(bf[np], s_tw + tpos<P::L, P::RCW>(wl, k, (wn0 >> 3) + np * 2 + (mi >> 1), bkr_w) * 16);
    }
#pragma unroll
    for (int mf = 0; mf < P::MF; ++mf) {
      uint32_t af[4];
      const int k = kx0 + ks * 16 + (mi >> 1) * 8 + r;
      ldsm_x4_t(af, s_tx + tpos<P::L, P::RCX>(wl, k, (wm0 >> 3) + mf * 2 + (mi & 1), bkr_x) * 16);
#pragma unroll
      for (int nf = 0; nf < P::NF; ++nf)
        MmaOp<typename P::T>::run(acc[mf][nf], af, bf[nf >> 1][(nf & 1) * 2], bf[nf >> 1][(nf & 1) * 2 + 1]);
    }
  }
}

// Accumulators of tile (i, lg, mt, jt) -> E[l][j][row] (stmatrix.trans) -> y, 4-byte stores of the
// element pairs adjacent in y. Contains the block barrier between the two halves.
template <class P>
__device__ __forceinline__ void plane_epilogue(const float (&acc)[P::MF][P::NF][4], uint32_t s_e, const PlaneParams& p,
                                               int i, int lg, int mt, int jt, int wl, int wm0, int wn0, int warp,
                                               int lane) {
  using T = typename P::T;
  constexpr int L = P::L, BM = P::BM, BN = P::BN;
  {
    const int mi = lane >> 3, r = lane & 7;
#pragma unroll
    for (int mf = 0; mf < P::MF; ++mf)
#pragma unroll
      for (int nf = 0; nf < P::NF; nf += 2) {
        uint32_t v[4] = {pack2<T>(acc[mf][nf][0], acc[mf][nf][1]), pack2<T>(acc[mf][nf][2], acc[mf][nf][3]),
                         pack2<T>(acc[mf][nf + 1][0], acc[mf][nf + 1][1]),
                         pack2<T>(acc[mf][nf + 1][2], acc[mf][nf + 1][3])};
        const int j = wn0 + (nf + (mi >> 1)) * 8 + r;
        stsm_x4_t(s_e + tpos<L, P::RCX>(wl, j, (wm0 >> 3) + mf * 2 + (mi & 1), BN) * 16, v);
      }
  }
  __syncthreads();
  const int g = lane >> 2, q = lane & 3, d = p.d;
  const int64_t ab_d = (int64_t)p.a * p.b * d;
  T* y = static_cast<T*>(p.y) + (int64_t)i * p.b * d + (L == 8 ? lg * 8 : 0);
#pragma unroll
  for (int s = 0; s < P::JO / P::WARPS; ++s) {
    const int job = warp + s * P::WARPS;
    const int mc = job / (P::OC / 4), ocq = job % (P::OC / 4);
    uint32_t v[4];
    {
      int l, jl;
      chunk_elem<L>(ocq * 4 + (lane >> 3), lane & 7, l, jl);
      ldsm_x4_t(v, s_e + tpos<L, P::RCX>(l, jl, mc, BN) * 16);
    }
    const int64_t n = (int64_t)mt * BM + mc * 8 + g;
    if (n < p.batch) {
      T* yr = y + n * ab_d;
#pragma unroll
      for (int m = 0; m < 4; ++m) {
        int l, jl;
        chunk_elem<L>(ocq * 4 + m, 2 * q, l, jl);
        const int j = jt * BN + jl;
        if (j < p.b) *reinterpret_cast<uint32_t*>(yr + (int64_t)j * d + l) = v[m];
      }
    }
  }
}

// cp.async of the U 16-byte chunks of this thread (column kc, rows row0 + s * NT / KC) of one operand
// into a raw stage at `base` (swizzled [row][chunk]); row s of the operand is at ptr + s * step,
// + kb for the k-step; rows s >= rows, or a k-step past c (kin false), are zero-filled.
template <class P, int U>
__device__ __forceinline__ void cp_rows(uint32_t base, const char* ptr, int64_t step, int rows, int64_t kb, bool kin,
                                        int kc, int row0) {
  constexpr int KC = P::KC, RSTEP = P::NT / P::KC;
#pragma unroll
  for (int s = 0; s < U; ++s) {
    const int row = row0 + s * RSTEP;
    const bool ok = s < rows && kin;
    cp_async16_u(base + (row * KC + (kc ^ (row & 7))) * 16, ok ? ptr + s * step + kb : ptr, ok ? 16 : 0);
  }
}

template <class P>
__device__ __forceinline__ void zero_acc(float (&acc)[P::MF][P::NF][4]) {
#pragma unroll
  for (int mf = 0; mf < P::MF; ++mf)
#pragma unroll
    for (int nf = 0; nf < P::NF; ++nf)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mf][nf][e] = 0.f;
}

// Consumer step of an S-stage cp.async ring: waits until the oldest stage has landed for every
// thread (after which shared memory read by the previous step and the oldest slot are free),
// refills the freed slot through issue(slot) and returns the landed stage's address.
struct Ring {
  int slot_c, slot_l;  // next slot to consume, next slot to fill
  uint32_t base, stage_bytes;
  template <int S, class Issue>
  __device__ __forceinline__ uint32_t next(Issue&& issue) {
    cp_async_wait<S - 2>();
    __syncthreads();
    issue(slot_l);
    slot_l = slot_l + 1 == S ? 0 : slot_l + 1;
    const uint32_t raw = base + slot_c * stage_bytes;
    slot_c = slot_c + 1 == S ? 0 : slot_c + 1;
    return raw;
  }
};

template <class P>
__global__ void __launch_bounds__(P::NT, 1) ks_plane_kernel(const PlaneParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using T = typename P::T;
  constexpr int L = P::L, BM = P::BM, BN = P::BN, BK = P::BK, S = P::STAGES, KC = P::KC;
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t s_raw = smem_addr(smem);
  const uint32_t s_tx = s_raw + S * P::RAW, s_tw = s_tx + P::TXB, s_e = s_tw + P::TWB;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wl = warp / (P::WARPS_M * P::WARPS_N);  // this warp's plane
  const int wmn = warp % (P::WARPS_M * P::WARPS_N);
  const int wm0 = (wmn / P::WARPS_N) * (BM / P::WARPS_M), wn0 = (wmn % P::WARPS_N) * (BN / P::WARPS_N);
  const int64_t cd = (int64_t)p.c * p.d;
  const int d = p.d;

  // ---- loader: thread -> chunk column kc and rows row0 + s * (NT / KC) of x and w
  const int ld_kc = tid % KC, ld_row0 = tid / KC;
  constexpr int RSTEP = P::NT / KC;
  const int ld_kofs = ld_kc * P::SL;  // first k of the chunk, relative to the stage
  // Loader state of the tile being loaded: row pointers are base + s * step (64-bit), rows valid
  // while s < *_rows (so a handful of registers whatever UX/UW).
  const char* xp = nullptr;
  const char* wp = nullptr;
  const int64_t xstep = (int64_t)RSTEP * p.ldx * 2, wstep = (int64_t)RSTEP * cd * 2;
  int x_rows = 0, w_rows = 0;
  int t_load = blockIdx.x, k_load = 0;

  auto decode = [&](int t, int& i, int& lg, int& mt, int& jt) {
    lg = t % p.groups_l;
    const int u = t / p.groups_l;
    const int per_i = p.tiles_m * p.tiles_j;
    i = u / per_i;
    const int v = u - i * per_i;
    constexpr int GM = 8;  // grouped raster: GM m-tiles x all j-tiles, so a wave shares x and w in L2
    const int group = v / (GM * p.tiles_j);
    const int m_first = group * GM;
    const int gsz = min(GM, p.tiles_m - m_first);
    const int rem = v - group * GM * p.tiles_j;
    mt = m_first + rem % gsz;
    jt = rem / gsz;
  };
  auto set_pointers = [&](int t) {
    int i, lg, mt, jt;
    decode(t, i, lg, mt, jt);
    // chunk kc of a row starts at element (L == 8 ? l0 + kc*d : kc*8) of the row's (i) slab
    const int64_t cofs = L == 8 ? (int64_t)lg * 8 + (int64_t)ld_kc * d : (int64_t)ld_kc * 8;
    const int64_t n0 = (int64_t)mt * BM + ld_row0;
    const int j0 = jt * BN + ld_row0;
    xp = static_cast<const char*>(p.x) + (n0 * p.ldx + i * cd + cofs) * 2;
    wp = static_cast<const char*>(p.w) + (((int64_t)i * p.b + j0) * cd + cofs) * 2;
    const int64_t xr = p.batch - n0, wr = p.b - j0;  // rows left from this thread's first
    x_rows = xr <= 0 ? 0 : (int)((xr + RSTEP - 1) / RSTEP);
    w_rows = wr <= 0 ? 0 : (int)((wr + RSTEP - 1) / RSTEP);
  };
  // Issues ring stage `slot` for (t_load, k_load) (or an empty group past the last tile).
  auto issue = [&](int slot) {
    if (t_load < p.tiles) {
      const bool kin = k_load * BK + ld_kofs < p.c;
      const int64_t kb = (int64_t)k_load * BK * d * 2;  // bytes
      const uint32_t base = s_raw + slot * P::RAW;
      cp_rows<P, P::UX>(base, xp, xstep, x_rows, kb, kin, ld_kc, ld_row0);
      cp_rows<P, P::UW>(base + BM * KC * 16, wp, wstep, w_rows, kb, kin, ld_kc, ld_row0);
      if (++k_load == p.nk) {
        k_load = 0;
        t_load += gridDim.x;
        if (t_load < p.tiles) set_pointers(t_load);
      }
    }
    cp_async_commit();
  };

  if (t_load < p.tiles) set_pointers(t_load);
#pragma unroll
  for (int s = 0; s < S - 1; ++s) issue(s);
  Ring ring{0, S - 1, s_raw, (uint32_t)P::RAW};

  for (int t = blockIdx.x; t < p.tiles; t += gridDim.x) {
    float acc[P::MF][P::NF][4];
    zero_acc<P>(acc);
    for (int kt = 0; kt < p.nk; ++kt) {
      const uint32_t raw = ring.next<S>(issue);  // stage kt
      transpose_stage<P, BM, P::RCX>(raw, s_tx, BK, 0, warp, lane);
      transpose_stage<P, BN, P::RCW>(raw + BM * KC * 16, s_tw, BK, 0, warp, lane);
      __syncthreads();
      mma_stage<P>(acc, s_tx, BK, 0, s_tw, BK, 0, wl, wm0, wn0, lane);
    }
    int i, lg, mt, jt;
    decode(t, i, lg, mt, jt);
    plane_epilogue<P>(acc, s_e, p, i, lg, mt, jt, wl, wm0, wn0, warp, lane);
  }
  cp_async_wait<0>();
#endif
}


// w-resident variant (c <= ~96): a unit of work is a column (i, j-tile, l-group) and a run of
// `mchunk` m-tiles; the block transposes the column's whole w slab T_w[l][0..c)[j] into shared
// memory once, then walks the run streaming only x. Per k-step it moves about half of the
// streaming kernel's bytes through L2 and shared memory, since w is no longer re-read for every
// m-tile. Units are ordered column-fastest, so the blocks running at one time share x rows (all
// j-tiles and l-groups of an m-run) in L2. The ring runs ahead across m-tiles and units.
template <class P>
__global__ void __launch_bounds__(P::NT, 1) ks_plane_wres_kernel(const PlaneParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int L = P::L, BM = P::BM, BN = P::BN, BK = P::BK, S = P::STAGES, KC = P::KC;
  constexpr int RAWS = (BM > BN ? BM : BN) * KC * 16;  // a stage holds x rows or w rows
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t s_raw = smem_addr(smem);
  const uint32_t s_tx = s_raw + S * RAWS, s_e = s_tx + P::TXB, s_tw = s_e + P::EB;
  const int cpad = p.nk * BK;  // rows per plane of the resident T_w

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wl = warp / (P::WARPS_M * P::WARPS_N);
  const int wmn = warp % (P::WARPS_M * P::WARPS_N);
  const int wm0 = (wmn / P::WARPS_N) * (BM / P::WARPS_M), wn0 = (wmn % P::WARPS_N) * (BN / P::WARPS_N);
  const int64_t cd = (int64_t)p.c * p.d;
  const int d = p.d;

  auto decode = [&](int col, int& i, int& lg, int& jt) {
    lg = col % p.groups_l;
    const int u = col / p.groups_l;
    jt = u % p.tiles_j;
    i = u / p.tiles_j;
  };

  // ---- loader cursor: column lc, phase (0: w slab, 1: x of m-tile lm), k-step lk
  const int ld_kc = tid % KC, ld_row0 = tid / KC;
  constexpr int RSTEP = P::NT / KC;
  const int ld_kofs = ld_kc * P::SL;
  const char* xp = nullptr;
  const char* wp = nullptr;
  const int64_t xstep = (int64_t)RSTEP * p.ldx * 2, wstep = (int64_t)RSTEP * cd * 2;
  int x_rows = 0, w_rows = 0;
  int lu = blockIdx.x, lphase = 0, lm = 0, lm_end = 0, lk = 0;
  int64_t xcol = 0;  // element offset of (i, l-group, chunk) within an x row

  auto set_unit = [&](int u) {
    int i, lg, jt;
    decode(u % p.ncols, i, lg, jt);
    lm = u / p.ncols * p.mchunk;
    lm_end = min(lm + p.mchunk, p.tiles_m);
    const int64_t cofs = L == 8 ? (int64_t)lg * 8 + (int64_t)ld_kc * d : (int64_t)ld_kc * 8;
    const int j0 = jt * BN + ld_row0;
    wp = static_cast<const char*>(p.w) + (((int64_t)i * p.b + j0) * cd + cofs) * 2;
    w_rows = p.b - j0 <= 0 ? 0 : (p.b - j0 + RSTEP - 1) / RSTEP;
    xcol = i * cd + cofs;
  };
  auto set_mtile = [&](int mt) {
    const int64_t n0 = (int64_t)mt * BM + ld_row0;
    xp = static_cast<const char*>(p.x) + (n0 * p.ldx + xcol) * 2;
    const int64_t xr = p.batch - n0;
    x_rows = xr <= 0 ? 0 : (int)((xr + RSTEP - 1) / RSTEP);
  };
  auto issue = [&](int slot) {
    if (lu < p.units) {
      const bool kin = lk * BK + ld_kofs < p.c;
      const int64_t kb = (int64_t)lk * BK * d * 2;
      const uint32_t base = s_raw + slot * RAWS;
      if (lphase == 0) cp_rows<P, P::UW>(base, wp, wstep, w_rows, kb, kin, ld_kc, ld_row0);
      else cp_rows<P, P::UX>(base, xp, xstep, x_rows, kb, kin, ld_kc, ld_row0);
      if (++lk == p.nk) {
        lk = 0;
        if (lphase == 0) {
          lphase = 1;
          set_mtile(lm);
        } else if (++lm < lm_end) {
          set_mtile(lm);
        } else {
          lu += gridDim.x;
          lphase = 0;
          if (lu < p.units) set_unit(lu);
        }
      }
    }
    cp_async_commit();
  };

  if (lu < p.units) set_unit(lu);
#pragma unroll
  for (int s = 0; s < S - 1; ++s) issue(s);
  Ring ring{0, S - 1, s_raw, (uint32_t)RAWS};
  auto next_stage = [&]() { return ring.next<S>(issue); };

  for (int u = blockIdx.x; u < p.units; u += gridDim.x) {
    int i, lg, jt;
    decode(u % p.ncols, i, lg, jt);
    const int m0 = u / p.ncols * p.mchunk, m1 = min(m0 + p.mchunk, p.tiles_m);
#pragma unroll 1
    for (int kt = 0; kt < p.nk; ++kt)  // read by the first m-tile's mma after its barriers
      transpose_stage<P, BN, P::RCW>(next_stage(), s_tw, cpad, kt * BK, warp, lane);
    for (int mt = m0; mt < m1; ++mt) {
      float acc[P::MF][P::NF][4];
      zero_acc<P>(acc);
      for (int kt = 0; kt < p.nk; ++kt) {
        transpose_stage<P, BM, P::RCX>(next_stage(), s_tx, BK, 0, warp, lane);
        __syncthreads();
        mma_stage<P>(acc, s_tx, BK, 0, s_tw, cpad, kt * BK, wl, wm0, wn0, lane);
      }
      plane_epilogue<P>(acc, s_e, p, i, lg, mt, jt, wl, wm0, wn0, warp, lane);
    }
  }
  cp_async_wait<0>();
#endif
}

}  // namespace detail
}  // namespace ks
