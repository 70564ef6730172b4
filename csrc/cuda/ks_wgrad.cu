// Fused weight gradient of ks::matmul: 16-bit, batch-first, d == 4 or d % 8 == 0, sm_90+.
//
// Per plane (i, l) the gradient is a GEMM whose reduction runs over the batch rows:
//   dw[i, j, k, l] = sum_n gy(n, i, j, l) * x(n, i, k, l).
// A block owns the output tile (i, l-group of L planes, BJ values of j, BKO of k) and one slice of
// the batch (split-K over rows, so that small outputs still fill the GPU). Per ring stage it
// cp.asyncs RN rows of gy and x as 16-byte chunks straight from their strided layouts (a chunk
// holds the L planes of one j, or of two j when d = 4), turns each row's chunks into per-plane
// rows with the 8x8 hardware transposes (ldmatrix of 8 chunks, stmatrix.trans: T[l][n][j]), and
// runs the forward plane kernel's mma_stage on them: A = gy plane (m = j), B = x plane (n = k),
// the stage's RN rows being the reduction depth. Each block writes its fp32 partial tile to a
// workspace; a second kernel sums the splits in a fixed order (deterministic, no atomics) and
// writes dw in its (a, b, c, d) order. No torch types: compiles with bare nvcc.
#include "ks_dispatch.h"
#include "ks_kernels.h"

namespace ks {
namespace detail {

// L planes per block; output tile BJ x BKO per plane; RN batch rows per ring stage; warp tile
// WM x WN of one plane. The names mma_stage reads: BK (reduction depth of a stage), MF, NF, L,
// RCX / RCW (16-byte chunks per T row of its A / B operand).
template <typename T_, int L_, int BJ_, int BKO_, int RN, int WM, int WN, int STAGES_>
struct WgradCfg {
  using T = T_;
  static constexpr int L = L_, BJ = BJ_, BKO = BKO_, BK = RN, STAGES = STAGES_;
  static constexpr int SL = 8 / L;                     // j (or k) per chunk
  static constexpr int KCG = BJ / SL, KCX = BKO / SL;  // chunks per raw row of gy, x
  static constexpr int WARPS_M = BJ / WM, WARPS_N = BKO / WN;
  static constexpr int WARPS = L * WARPS_M * WARPS_N, NT = 32 * WARPS;
  static constexpr int MF = WM / 16, NF = WN / 8;
  static constexpr int RCX = BJ / 8, RCW = BKO / 8;    // A = gy planes T_g[l][n][j], B = x planes
  static constexpr int RAW = RN * (KCG + KCX) * 16;    // one ring stage: gy rows then x rows
  static constexpr int TGB = L * RN * RCX * 16, TXB = L * RN * RCW * 16;
  static constexpr int SMEM = STAGES * RAW + TGB + TXB;
  static constexpr int UG = RN * KCG / NT, UX = RN * KCX / NT;  // cp.async chunks per thread
  static_assert(L == 4 || L == 8, "chunk class");
  static_assert(KCG % 8 == 0 && KCX % 8 == 0 && RCX % 8 == 0 && RCW % 8 == 0, "swizzles need 8 chunks per row");
  static_assert(NT % KCG == 0 && NT % KCX == 0 && UG >= 1 && UX >= 1, "loader");
  static_assert((RN * KCG / 32) % WARPS == 0 && (RN * KCX / 32) % WARPS == 0, "transposition jobs");
  static_assert(RN % 16 == 0 && WM % 16 == 0 && WN % 16 == 0 && NF % 2 == 0, "warp tile");
  static_assert(SMEM <= kMaxSmem, "shared memory");
};

struct WgradParams {
  const void* gy;
  const void* x;
  float* ws;
  int64_t batch, ldg, ldx;
  int a, b, c, d;
  int groups_l, tiles_j, tiles_k, tiles;  // tiles = a * groups_l * tiles_j * tiles_k
  int splits;                             // blocks = splits * tiles < 2^31
  int64_t split_rows;                     // batch rows per split, a multiple of RN
};

// Position of tile-local index q (j or k) in a T row: a chunk of d = 4 holds two consecutive j,
// so the transposition puts the even j of 8 chunks in one 16-byte T chunk and the odd in the next.
template <int SL>
__host__ __device__ __forceinline__ int tpos_of(int q) {
  if (SL == 1) return q;
  return (q & ~15) + ((q & 1) << 3) + ((q & 15) >> 1);
}

// raw[n][chunk] (RN rows of KC chunks) -> T[l][n][RC chunks]: a matrix is 8 chunks of one row
// (its rows) by their 8 (l, j) elements; stmatrix.trans writes element e = (l, jsub) of the 8
// chunks as one 16-byte T chunk of plane l.
template <class P, int KC, int RC>
__device__ __forceinline__ void transpose_rows(uint32_t raw, uint32_t tbase, int warp, int lane) {
  constexpr int J = P::BK * KC / 32, G = KC / 8;
  const int r = lane & 7;
  const int l = r & (P::L - 1), jsub = r / P::L;
#pragma unroll
  for (int q = 0; q < J / P::WARPS; ++q) {
    const int mat = (warp + q * P::WARPS) * 4 + (lane >> 3);
    const int n = mat / G, cg = mat % G;
    uint32_t v[4];
    ldsm_x4(v, raw + (n * KC + ((cg * 8 + r) ^ (n & 7))) * 16);
    stsm_x4_t(tbase + tpos<P::L, RC>(l, n, cg * P::SL + jsub, P::BK) * 16, v);
  }
}

// cp.async of this thread's U chunks (column kc, rows row0 + s * (NT / KC)) of one operand into
// a ring stage; rows at or past `left` and chunks past the tile's j (k) range are zero-filled.
// (The plane kernels' cp_rows with a KC parameter does the same; using it here measured 1.4%
// slower over the grid, round 9d in benchmarks/NOTES.md, so the kernel keeps this form.)
template <class P, int KC, int U>
__device__ __forceinline__ void cp_chunks(uint32_t base, const char* ptr, int64_t step, const void* any, bool col_ok,
                                          int64_t left, int kc, int row0) {
  constexpr int RSTEP = P::NT / KC;
#pragma unroll
  for (int s = 0; s < U; ++s) {
    const int row = row0 + s * RSTEP;
    const bool ok = col_ok && row < left;
    cp_async16_u(base + (row * KC + (kc ^ (row & 7))) * 16, ok ? ptr + s * step : any, ok ? 16 : 0);
  }
}

template <class P>
__global__ void __launch_bounds__(P::NT, 1) ks_wgrad_kernel(const WgradParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int L = P::L, BJ = P::BJ, BKO = P::BKO, RN = P::BK, S = P::STAGES, KCG = P::KCG, KCX = P::KCX;
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t s_raw = smem_addr(smem);
  const uint32_t s_tg = s_raw + S * P::RAW, s_tx = s_tg + P::TGB;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wl = warp / (P::WARPS_M * P::WARPS_N);
  const int wmn = warp % (P::WARPS_M * P::WARPS_N);
  const int wm0 = (wmn / P::WARPS_N) * (BJ / P::WARPS_M), wn0 = (wmn % P::WARPS_N) * (BKO / P::WARPS_N);

  // block -> (split, tile); tiles of one split run side by side and share gy / x rows in L2.
  const int t = blockIdx.x % p.tiles, split = blockIdx.x / p.tiles;
  int u = t;
  const int kt = u % p.tiles_k;
  u /= p.tiles_k;
  const int jt = u % p.tiles_j;
  u /= p.tiles_j;
  const int lg = u % p.groups_l, i = u / p.groups_l;
  const int64_t n0 = (int64_t)split * p.split_rows;
  const int64_t n1 = min(p.batch, n0 + p.split_rows);
  const int steps = (int)((n1 - n0 + RN - 1) / RN);

  // Loader: a thread owns chunk column gk (xk) of gy (x) and rows row0 + s * (NT / KC).
  const int d = p.d, j0 = jt * BJ, k0 = kt * BKO;
  const int gk = tid % KCG, grow0 = tid / KCG, xk = tid % KCX, xrow0 = tid / KCX;
  const int64_t gcol = (int64_t)i * p.b * d + (L == 8 ? (int64_t)(j0 + gk) * d + lg * 8 : (int64_t)j0 * d + gk * 8);
  const int64_t xcol = (int64_t)i * p.c * d + (L == 8 ? (int64_t)(k0 + xk) * d + lg * 8 : (int64_t)k0 * d + xk * 8);
  const bool g_ok = j0 + gk * P::SL < p.b, x_ok = k0 + xk * P::SL < p.c;
  const char* gp = static_cast<const char*>(p.gy) + ((n0 + grow0) * p.ldg + gcol) * 2;
  const char* xp = static_cast<const char*>(p.x) + ((n0 + xrow0) * p.ldx + xcol) * 2;
  const int64_t gstep = (int64_t)(P::NT / KCG) * p.ldg * 2, xstep = (int64_t)(P::NT / KCX) * p.ldx * 2;
  int st_load = 0;

  auto issue = [&](int slot) {
    if (st_load < steps) {
      const uint32_t base = s_raw + slot * P::RAW;
      const int64_t left = n1 - n0 - (int64_t)st_load * RN;  // rows of this stage inside the split
      cp_chunks<P, KCG, P::UG>(base, gp, gstep, p.gy, g_ok, left, gk, grow0);
      cp_chunks<P, KCX, P::UX>(base + RN * KCG * 16, xp, xstep, p.x, x_ok, left, xk, xrow0);
      gp += (int64_t)RN * p.ldg * 2;
      xp += (int64_t)RN * p.ldx * 2;
      ++st_load;
    }
    cp_async_commit();
  };

#pragma unroll
  for (int s = 0; s < S - 1; ++s) issue(s);
  Ring ring{0, S - 1, s_raw, (uint32_t)P::RAW};
  float acc[P::MF][P::NF][4];
  zero_acc<P>(acc);
  for (int st = 0; st < steps; ++st) {
    const uint32_t raw = ring.next<S>(issue);  // stage st
    transpose_rows<P, KCG, P::RCX>(raw, s_tg, warp, lane);
    transpose_rows<P, KCX, P::RCW>(raw + RN * KCG * 16, s_tx, warp, lane);
    __syncthreads();
    mma_stage<P>(acc, s_tg, RN, 0, s_tx, RN, 0, wl, wm0, wn0, lane);
  }
  cp_async_wait<0>();

  // Partial tile of plane wl -> workspace [block][l][jpos][kpos] (full 32-byte sectors per row).
  float* out = p.ws + ((int64_t)blockIdx.x * L + wl) * (BJ * BKO);
  const int g = lane >> 2, q = lane & 3;
#pragma unroll
  for (int mf = 0; mf < P::MF; ++mf)
#pragma unroll
    for (int nf = 0; nf < P::NF; ++nf) {
      float* o = out + (wm0 + mf * 16 + g) * BKO + wn0 + nf * 8 + 2 * q;
      *reinterpret_cast<float2*>(o) = make_float2(acc[mf][nf][0], acc[mf][nf][1]);
      *reinterpret_cast<float2*>(o + 8 * BKO) = make_float2(acc[mf][nf][2], acc[mf][nf][3]);
    }
#endif
}

// Sums the splits of the workspace and writes dw. A block holds 256 / SG outputs (i, j, l-group,
// k), k fastest (coalesced workspace reads), L planes each; its SG thread groups sum the splits
// s = g mod SG, then group 0 adds the SG partial sums in order (a fixed order: deterministic).
// SG = 8 when there are many splits shortens the serial chain of loads 8-fold.
template <class P, int SG>
__global__ void __launch_bounds__(256) ks_wgrad_reduce_kernel(const WgradParams p, typename P::T* dw) {
  using T = typename P::T;
  constexpr int L = P::L, BJ = P::BJ, BKO = P::BKO, TILE = L * BJ * BKO, OPB = 256 / SG;
  __shared__ float part[SG][L][OPB];
  const int o = threadIdx.x % OPB, sg = threadIdx.x / OPB;
  const int64_t total = (int64_t)p.a * p.b * p.groups_l * p.c;
  const int64_t idx = (int64_t)blockIdx.x * OPB + o;
  const bool valid = idx < total;
  int i = 0, j = 0, lg = 0, k = 0;
  float sum[L];
#pragma unroll
  for (int l = 0; l < L; ++l) sum[l] = 0.f;
  if (valid) {
    k = (int)(idx % p.c);
    int64_t r = idx / p.c;
    lg = (int)(r % p.groups_l);
    r /= p.groups_l;
    j = (int)(r % p.b), i = (int)(r / p.b);
    const int t = ((i * p.groups_l + lg) * p.tiles_j + j / BJ) * p.tiles_k + k / BKO;
    const int64_t split_stride = (int64_t)p.tiles * TILE;
    const float* src = p.ws + (int64_t)t * TILE + tpos_of<P::SL>(j % BJ) * BKO + tpos_of<P::SL>(k % BKO) +
                       sg * split_stride;
#pragma unroll 4  // several splits' loads in flight: the chain is latency-bound
    for (int s = sg; s < p.splits; s += SG, src += SG * split_stride)
#pragma unroll
      for (int l = 0; l < L; ++l) sum[l] += src[l * BJ * BKO];
  }
  if (SG > 1) {
#pragma unroll
    for (int l = 0; l < L; ++l) part[sg][l][o] = sum[l];
    __syncthreads();
    if (sg != 0) return;
#pragma unroll
    for (int l = 0; l < L; ++l) {
      sum[l] = part[0][l][o];
#pragma unroll
      for (int g = 1; g < SG; ++g) sum[l] += part[g][l][o];
    }
  }
  if (!valid) return;
  uint32_t packed[L / 2];
#pragma unroll
  for (int l = 0; l < L / 2; ++l) packed[l] = pack2<T>(sum[2 * l], sum[2 * l + 1]);
  T* out = dw + (((int64_t)i * p.b + j) * p.c + k) * p.d + lg * L;
  if (L == 8) *reinterpret_cast<uint4*>(out) = make_uint4(packed[0], packed[1], packed[2], packed[3]);
  else *reinterpret_cast<uint2*>(out) = make_uint2(packed[0], packed[1]);
}

namespace {

// Planes of 8 (d % 8 == 0) with 64 x 64 tiles, or of 4 (d = 4) with 128 values along the longer
// of b, c: one warp per (plane, 64 x 64 warp tile), 8 warps.
template <typename T, class F>
auto with_wgrad_cfg(int b, int c, int d, F&& f) {
  if (d % 8 == 0) return f(WgradCfg<T, 8, 64, 64, 16, 64, 64, 4>{});
  if (b > c) return f(WgradCfg<T, 4, 128, 64, 16, 64, 64, 4>{});
  return f(WgradCfg<T, 4, 64, 128, 16, 64, 64, 4>{});
}

// Geometry of configuration P and its split count: `split_rows` when given (> 0), else the one
// minimising a cost in ring-stage units: waves of blocks times (stages per block + ring fill and
// epilogue), plus the workspace traffic (written and read once per split) expressed as stages of
// the same bytes per SM, plus the reduction's serial chain over the splits. Returns the workspace
// floats, or -1 when the block count would not fit the grid.
template <class P>
int64_t plan(WgradParams& p, int64_t split_rows) {
  p.groups_l = p.d / P::L;
  p.tiles_j = cdiv(p.b, P::BJ);
  p.tiles_k = cdiv(p.c, P::BKO);
  const int64_t tiles = (int64_t)p.a * p.groups_l * p.tiles_j * p.tiles_k;
  if (tiles >= 0x7fffffffLL) return -1;
  p.tiles = (int)tiles;
  const int64_t steps = (p.batch + P::BK - 1) / P::BK;
  if (split_rows <= 0) {
    const int G = sm_count();
    const double tile_bytes = 8.0 * P::L * P::BJ * P::BKO;  // workspace write + read, per tile
    double best = 1e300;
    int64_t best_spb = steps;
    for (int64_t s = 1; s <= 512 && s <= steps; ++s) {
      const int64_t spb = (steps + s - 1) / s, splits = (steps + spb - 1) / spb;
      if (splits != s) continue;  // same as a smaller count
      const int64_t blocks = tiles * splits;
      if (blocks >= 0x7fffffffLL) break;
      const double cost = (double)((blocks + G - 1) / G) * (double)(spb + 4) +
                          (double)blocks * tile_bytes / ((double)G * P::RAW) + 0.1 * (double)((splits + 7) / 8);
      if (cost < best) best = cost, best_spb = spb;
    }
    split_rows = best_spb * P::BK;
  }
  p.split_rows = split_rows;
  const int64_t splits = (p.batch + split_rows - 1) / split_rows;
  if (split_rows % P::BK != 0 || tiles * splits >= 0x7fffffffLL) return -1;
  p.splits = (int)splits;
  return (int64_t)p.splits * p.tiles * P::L * P::BJ * P::BKO;
}

WgradParams params_of(const WgradArgs& g) {
  WgradParams p{};
  p.gy = g.gy;
  p.x = g.x;
  p.ws = g.ws;
  p.batch = g.batch;
  p.ldg = g.ldg;
  p.ldx = g.ldx;
  p.a = g.a, p.b = g.b, p.c = g.c, p.d = g.d;
  return p;
}

// The fused kernel's preconditions: what it can run at all (where it is worth running is the rule's
// call: csrc/ks_plan.h, choose_weight_grad_plan).
bool fused_serves(const WgradArgs& g) {
  if (g.dtype == DType::F32 || g.batch < 1 || !(g.d == 4 || g.d % 8 == 0)) return false;
  if ((int64_t)g.b * g.d % 8 != 0 || (int64_t)g.c * g.d % 8 != 0) return false;
  if (!aligned16(g.gy) || !aligned16(g.x) || !aligned16(g.dw) || g.ldg % 8 != 0 || g.ldx % 8 != 0) return false;
  if (g.ldg < (int64_t)g.a * g.b * g.d || g.ldx < (int64_t)g.a * g.c * g.d) return false;
  return has_sm90();
}

template <typename T>
cudaError_t launch_wgrad(const WgradArgs& g, cudaStream_t stream) {
  return with_wgrad_cfg<T>(g.b, g.c, g.d, [&](auto cfg) -> cudaError_t {
    using P = decltype(cfg);
    WgradParams p = params_of(g);
    if (plan<P>(p, g.split_rows) < 0) return cudaErrorInvalidConfiguration;
    cudaError_t e = allow_smem<ks_wgrad_kernel<P>>(P::SMEM);
    if (e != cudaSuccess) return e;
    ks_wgrad_kernel<P><<<p.splits * p.tiles, P::NT, P::SMEM, stream>>>(p);
    e = cudaGetLastError();
    if (e != cudaSuccess) return e;
    const int64_t outputs = (int64_t)p.a * p.b * p.groups_l * p.c;
    if (p.splits >= 8) {
      ks_wgrad_reduce_kernel<P, 8><<<(unsigned)((outputs + 31) / 32), 256, 0, stream>>>(p, static_cast<T*>(g.dw));
    } else {
      ks_wgrad_reduce_kernel<P, 1><<<(unsigned)((outputs + 255) / 256), 256, 0, stream>>>(p, static_cast<T*>(g.dw));
    }
    return cudaGetLastError();
  });
}

}  // namespace
}  // namespace detail

int64_t weight_grad_workspace(WgradArgs& args) {
  using namespace detail;
  if (!fused_serves(args)) return -1;
  return with_wgrad_cfg<__nv_bfloat16>(args.b, args.c, args.d, [&](auto cfg) {
    WgradParams p = params_of(args);
    const int64_t floats = plan<decltype(cfg)>(p, 0);
    args.split_rows = p.split_rows;
    return floats;
  });
}

cudaError_t weight_grad(const WgradArgs& args, cudaStream_t stream) {
  using namespace detail;
  if (args.ws == nullptr || args.split_rows <= 0 || !fused_serves(args)) return cudaErrorInvalidValue;
  return args.dtype == DType::BF16 ? launch_wgrad<__nv_bfloat16>(args, stream) : launch_wgrad<__half>(args, stream);
}

}  // namespace ks
