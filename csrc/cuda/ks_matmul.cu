// ks::matmul on CUDA: picks a kernel and a tile configuration at run time (one build serves
// every pattern) and launches it on the caller's stream. No torch types, no allocation, no
// host synchronization: safe under CUDA graph capture.
//
//   batch <= 16 : ks_gemv_* -- one warp per (i, j) streams the contiguous c*d slab of w once and
//                 reduces over k with shuffles (decode-like sizes are bound by reading w).
//   otherwise   : ks_tile_kernel (ks_tile.cuh) -- fused output-stationary tiles; mma.sync for
//                 fp16/bf16 (and tf32 when allowed), register-tiled FMA for strict fp32.
#include <cstdint>
#include <climits>
#include <cstdlib>

#include "ks_dispatch.h"
#include "ks_kernels.h"

namespace ks {
namespace detail {

// ---------------------------------------------------------------------------------------------
// Small batch (B <= NB <= 16).
struct GemvParams {
  const void* x;
  const void* w;
  void* y;
  int64_t batch, ldx;
  int a, b, c, d;
  int batch_last;
  int x_vec;    // batch-first x rows allow 16-byte loads
  int ngroups;  // row groups of NB rows (each a warp / thread of its own)
};

template <typename T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ void unpack(const uint4& v, float* f) {
  if constexpr (sizeof(T) == 4) {
    f[0] = __uint_as_float(v.x); f[1] = __uint_as_float(v.y);
    f[2] = __uint_as_float(v.z); f[3] = __uint_as_float(v.w);
  } else {
    const T* h = reinterpret_cast<const T*>(&v);
#pragma unroll
    for (int e = 0; e < 8; ++e) f[e] = to_float<T>(h[e]);
  }
}

// One warp per slab w[i, j, :, :] (c*d contiguous elements); requires d a power of two with
// d <= 32*V, (c*d) % V == 0 and w 16-byte aligned. Lane element e of flat position g has
// l = g % d, the same at every step, so partial sums reduce by l at the end.
template <typename T, int NB>
__global__ void __launch_bounds__(256) ks_gemv_vec_kernel(const GemvParams p) {
  constexpr int V = 16 / sizeof(T);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t wid = (int64_t)blockIdx.x * 8 + warp;
  if (wid >= (int64_t)p.a * p.b * p.ngroups) return;
  const int64_t slab = wid / p.ngroups;
  const int n0 = (int)(wid - slab * p.ngroups) * NB;
  const int64_t i = slab / p.b;
  const int d = p.d;
  const int64_t cd = (int64_t)p.c * d;
  const int B = (int)p.batch - n0;  // rows of this group: n0 .. n0 + min(NB, B) - 1
  const T* ws = static_cast<const T*>(p.w) + slab * cd;
  const T* x = static_cast<const T*>(p.x) + (p.batch_last ? (int64_t)n0 : n0 * p.ldx);
  T* y = static_cast<T*>(p.y) + (p.batch_last ? (int64_t)n0 : n0 * (int64_t)p.a * p.b * d);
  float acc[NB][V];
#pragma unroll
  for (int n = 0; n < NB; ++n)
#pragma unroll
    for (int e = 0; e < V; ++e) acc[n][e] = 0.f;

  for (int64_t g0 = (int64_t)lane * V; g0 < cd; g0 += 32 * V) {
    float wf[V];
    unpack<T>(ldg16(ws + g0), wf);
#pragma unroll
    for (int n = 0; n < NB; ++n) {
      if (n < B) {
        float xf[V];
        if (p.x_vec) {
          unpack<T>(ldg16(x + n * p.ldx + i * cd + g0), xf);
        } else if (!p.batch_last) {
          const T* xp = x + n * p.ldx + i * cd + g0;
#pragma unroll
          for (int e = 0; e < V; ++e) xf[e] = to_float<T>(xp[e]);
        } else {
          const T* xp = x + (i * cd + g0) * p.ldx + n;
#pragma unroll
          for (int e = 0; e < V; ++e) xf[e] = to_float<T>(xp[e * p.ldx]);
        }
#pragma unroll
        for (int e = 0; e < V; ++e) acc[n][e] = fmaf(xf[e], wf[e], acc[n][e]);
      }
    }
  }

  const int64_t ab = (int64_t)p.a * p.b;
  if (d <= V) {
    // Fold the lane's V partials onto l = e (e < d), then sum over all lanes.
#pragma unroll
    for (int wdt = V / 2; wdt >= 1; wdt /= 2) {
      if (d <= wdt) {
#pragma unroll
        for (int n = 0; n < NB; ++n)
#pragma unroll
          for (int e = 0; e < wdt; ++e) acc[n][e] += acc[n][e + wdt];
      }
    }
#pragma unroll
    for (int off = 16; off >= 1; off /= 2)
#pragma unroll
      for (int n = 0; n < NB; ++n)
#pragma unroll
        for (int e = 0; e < V; ++e)
          if (e < d) acc[n][e] += __shfl_xor_sync(0xffffffffu, acc[n][e], off);
    if (lane == 0) {
#pragma unroll
      for (int n = 0; n < NB; ++n)
#pragma unroll
        for (int e = 0; e < V; ++e)
          if (n < B && e < d) {
            const int64_t row = slab * d + e;  // (i*b + j)*d + l
            const int64_t at = p.batch_last ? row * p.batch + n : n * ab * d + row;
            y[at] = from_float<T>(acc[n][e]);
          }
    }
  } else {
    // Lanes q = lane % (d/V) share the l set {q*V + e}; sum over the other lane bits.
    const int q = d / V;
#pragma unroll
    for (int off = 16; off >= 1; off /= 2)
      if (off >= q) {
#pragma unroll
        for (int n = 0; n < NB; ++n)
#pragma unroll
          for (int e = 0; e < V; ++e) acc[n][e] += __shfl_xor_sync(0xffffffffu, acc[n][e], off);
      }
    if (lane < q) {
#pragma unroll
      for (int n = 0; n < NB; ++n)
#pragma unroll
        for (int e = 0; e < V; ++e)
          if (n < B) {
            const int64_t row = slab * d + lane * V + e;
            const int64_t at = p.batch_last ? row * p.batch + n : n * ab * d + row;
            y[at] = from_float<T>(acc[n][e]);
          }
    }
  }
}

// Any pattern: one thread per output column (i, j, l), all B rows.
template <typename T, int NB>
__global__ void __launch_bounds__(256) ks_gemv_scalar_kernel(const GemvParams p) {
  const int64_t tg = (int64_t)blockIdx.x * 256 + threadIdx.x;
  const int64_t bd = (int64_t)p.b * p.d;
  if (tg >= (int64_t)p.a * bd * p.ngroups) return;
  const int64_t t = tg % (p.a * bd);  // output column; consecutive threads share the row group
  const int n0 = (int)(tg / (p.a * bd)) * NB;
  const int64_t i = t / bd;
  const int64_t r = t - i * bd;
  const int64_t j = r / p.d;
  const int l = (int)(r - j * p.d);
  const int d = p.d, c = p.c;
  const int B = (int)p.batch - n0;
  const int64_t cd = (int64_t)c * d;
  const T* wp = static_cast<const T*>(p.w) + (i * p.b + j) * cd + l;
  const T* x = static_cast<const T*>(p.x) + (p.batch_last ? (int64_t)n0 : n0 * p.ldx);
  float acc[NB];
#pragma unroll
  for (int n = 0; n < NB; ++n) acc[n] = 0.f;
  for (int k = 0; k < c; ++k) {
    const float wv = to_float<T>(wp[(int64_t)k * d]);
    const int64_t f = i * cd + (int64_t)k * d + l;  // x feature index
#pragma unroll
    for (int n = 0; n < NB; ++n)
      if (n < B) {
        const T xv = p.batch_last ? x[f * p.ldx + n] : x[n * p.ldx + f];
        acc[n] = fmaf(to_float<T>(xv), wv, acc[n]);
      }
  }
  T* y = static_cast<T*>(p.y) + (p.batch_last ? (int64_t)n0 : n0 * (int64_t)p.a * bd);
  const int64_t ab = (int64_t)p.a * p.b;
#pragma unroll
  for (int n = 0; n < NB; ++n)
    if (n < B) y[p.batch_last ? t * p.batch + n : n * ab * d + t] = from_float<T>(acc[n]);
}

template <typename T, int NB>
cudaError_t launch_gemv_nb(GemvParams p, bool vec, cudaStream_t s) {
  p.ngroups = (int)((p.batch + NB - 1) / NB);
  if (vec) {
    const int64_t slabs = (int64_t)p.a * p.b * p.ngroups;
    const int64_t blocks = (slabs + 7) / 8;
    if (blocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
    ks_gemv_vec_kernel<T, NB><<<(unsigned)blocks, 256, 0, s>>>(p);
  } else {
    const int64_t cols = (int64_t)p.a * p.b * p.d * p.ngroups;
    const int64_t blocks = (cols + 255) / 256;
    if (blocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
    ks_gemv_scalar_kernel<T, NB><<<(unsigned)blocks, 256, 0, s>>>(p);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_gemv(const GemvParams& p, bool vec, cudaStream_t s) {
  // Rows split in groups of NB over warps (threads): more parallel work for B = 2..16.
  if (p.batch <= 1) return launch_gemv_nb<T, 1>(p, vec, s);
  if (p.batch <= 2) return launch_gemv_nb<T, 2>(p, vec, s);
  return launch_gemv_nb<T, 4>(p, vec, s);
}

// Which kernel a 16-bit batch-first product goes to: the plane kernels need their preconditions
// (see ks_dispatch.h) and sm_90; the w-resident one is taken wherever its slab fits (c <= 96).
// Otherwise the tile kernels keep the classes where they measured faster than the streaming plane
// kernel on the H200 (round 6, full grid, same run): short K loops of d = 4 with b, c <= 64
// (per-tile overhead); 8 < d < 64 with c <= 128 (measured on d = 16: 1.03-1.3x). (Round 6 also
// kept d = 4, b = 192 there, when the plane kernel padded it to 256 columns; it now takes 64-wide
// blocks.)
enum PlaneMode : int { kPlaneNone = 0, kPlaneStream = 1, kPlaneWRes = 2 };
// tiles: the plane configuration's tile count (set when the mode is not kPlaneNone).
inline int plane_mode(const MatmulArgs& g, int64_t& tiles) {
  const int b = g.b, c = g.c, d = g.d;
  if (!(d == 4 || d % 8 == 0)) return kPlaneNone;
  if ((int64_t)c * d % 8 != 0 || !aligned16(g.x) || !aligned16(g.w) || g.ldx % 8 != 0) return kPlaneNone;
  if ((reinterpret_cast<uintptr_t>(g.y) & 3) != 0) return kPlaneNone;
  tiles = plane_tiles(g.batch, g.a, b, d);
  if (tiles >= 0x7fffffffLL || !has_sm90()) return kPlaneNone;
  if (plane_wres_fits(b, c, d)) return kPlaneWRes;
  if (d == 4 && b <= 64 && c <= 64) return kPlaneNone;
  if (d > 8 && d < 64 && c <= 128) return kPlaneNone;
  return kPlaneStream;
}

}  // namespace detail

cudaError_t matmul(const MatmulArgs& args, cudaStream_t stream) {
  using namespace detail;
  const int64_t B = args.batch;
  const int a = args.a, b = args.b, c = args.c, d = args.d;
  if (B < 0 || a <= 0 || b <= 0 || c <= 0 || d <= 0 || args.ldx < 0) return cudaErrorInvalidValue;
  if (B == 0) return cudaSuccess;
  const int esz = args.dtype == DType::F32 ? 4 : 2;
  const int V = 16 / esz;
  const int64_t cd = (int64_t)c * d;

  if (B <= 16) {
    GemvParams g{args.x, args.w, args.y, B, args.ldx, a, b, c, d, args.batch_last ? 1 : 0, 0, 1};
    const bool vec = aligned16(args.w) && pow2(d) && d <= 32 * V && cd % V == 0;
    g.x_vec = vec && !args.batch_last && aligned16(args.x) && args.ldx % V == 0;
    switch (args.dtype) {
      case DType::F32: return launch_gemv<float>(g, vec, stream);
      case DType::F16: return launch_gemv<__half>(g, vec, stream);
      case DType::BF16: return launch_gemv<__nv_bfloat16>(g, vec, stream);
    }
    return cudaErrorInvalidValue;
  }

  // Round 6: 16-bit batch-first with chunk-shaped l groups goes to the plane kernels
  // (ks_plane.cuh).
  if (esz == 2 && !args.batch_last) {
    int64_t tiles = 0;
    const int mode = plane_mode(args, tiles);
    if (mode != kPlaneNone) {
      PlaneParams q{args.x, args.w, args.y, B, args.ldx, a, b, c, d, 0, 0, 0, 0, 0, 0, 0, 0};
      q.tiles = (int)tiles;
      const bool wres = mode == kPlaneWRes;
      return args.dtype == DType::BF16 ? launch_plane_bf16(q, wres, stream) : launch_plane_f16(q, wres, stream);
    }
  }

  // Tile configuration: l-group L and block width BN (see ks_tile_16.cu / ks_tile_32.cu).
  const bool simt = args.dtype == DType::F32 && !args.allow_tf32;
  int L;
  if (esz == 2) L = d == 1 ? 1 : d == 2 ? 2 : d <= 4 ? 4 : 8;
  else L = d == 1 ? 1 : d == 2 ? 2 : 4;
  int BN;
  if (simt) {  // least padding among the widths compiled for this L (ties: the wider block)
    BN = 0;
    int64_t best = INT64_MAX;
    for (int cand : {128, 64, 48}) {
      if (L >= 4 && cand == 128) continue;
      const int64_t waste = ((b + cand - 1) / cand) * (int64_t)cand - b;
      if (waste < best) { best = waste; BN = cand; }
    }
  } else {
    BN = (L >= 4 || b <= 64) ? 64 : 128;
    if (esz == 2 && L >= 4) {
      // Tall 512-thread blocks (one per SM; BN class 564 in ks_tile_16.cu): BM 64 for
      // L = 8 halves the w re-reads per flop of the 32-row planes (1.03-2.3x on the grid's
      // d >= 16 patterns, round 5); for L = 4 (BM 128) only where c is not a multiple of 32,
      // i.e. where their BK 16 wastes less of the K loop than BK 32 (elsewhere 0.92-0.96x).
      // Only with >= 4 tiles per SM.
      const int64_t bm = L == 4 ? 128 : 64;
      const int64_t tiles = (B + bm - 1) / bm * a * ((b + 63) / 64) * ((d + L - 1) / L);
      if (tiles >= 4 * (int64_t)sm_count() && (L == 8 || c % 32 != 0)) BN = 564;
    }
  }

  TileParams p{};
  p.x = args.x; p.w = args.w; p.y = args.y;
  p.batch = B; p.a = a; p.b = b; p.c = c; p.d = d;
  p.batch_last = args.batch_last ? 1 : 0;
  if (!args.batch_last) {
    p.x_sm = args.ldx; p.x_si = cd; p.x_sk = d; p.x_sl = 1;
    p.y_sm = (int64_t)a * b * d;
  } else {
    p.x_sm = 1; p.x_si = cd * args.ldx; p.x_sk = (int64_t)d * args.ldx; p.x_sl = args.ldx;
    p.y_sm = 1;
  }
  // Load classes (ks_tile.cuh): fast = 16-byte pieces in the pattern's own order; gen = 16-byte
  // pieces of whole (k,l) runs for any d <= L (L >= 4 configurations); else scalar.
  bool shape_fast;
  if (L == 1) shape_fast = d == 1 && c % V == 0;
  else if (2 * L <= V) shape_fast = d == L && cd % V == 0;
  else shape_fast = d % V == 0;
  const bool shape_gen = L >= 4 && d <= L && cd % V == 0;
  const bool w_al = aligned16(args.w);
  const bool x_al = aligned16(args.x) && args.ldx % V == 0;
  if (w_al && x_al && shape_fast) p.variant = args.batch_last ? kFastBL : kFastBF;
  else if (w_al && x_al && shape_gen) p.variant = args.batch_last ? kGenBL : kGenBF;
  else p.variant = kScalar;
  // y runs start 16-byte aligned?
  p.y_pair = !args.batch_last && d == 1 && (reinterpret_cast<uintptr_t>(args.y) % (2 * esz)) == 0 &&
             p.y_sm % 2 == 0 && (a == 1 || b % 2 == 0);
  if (!aligned16(args.y)) p.y_vec = 0;
  else if (args.batch_last) p.y_vec = B % V == 0;
  else p.y_vec = p.y_sm % V == 0 && (L >= d ? ((int64_t)b * d) % V == 0 : (d % V == 0 && L % V == 0));

  switch (args.dtype) {
    case DType::F16: return launch_tile_f16(p, L, BN, stream);
    case DType::BF16: return launch_tile_bf16(p, L, BN, stream);
    case DType::F32:
      return args.allow_tf32 ? launch_tile_tf32(p, L, BN, stream) : launch_tile_f32(p, L, BN, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace ks
