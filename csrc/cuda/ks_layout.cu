// Layout helpers of the cuBLAS plans (ks_cublas_plans.cpp).
//
// Batched transposition out[r][q][p] = in[r][p][q] (r < R, p < P, q < Q; both contiguous): the
// layout change of the Transposed plan (x rows (a, c, d) -> (a, d, c), y rows (a, d, b) -> (a, b, d)).
// A block moves one tile through shared memory: M whole matrices when a matrix is small (then its
// reads and its writes are each one contiguous run), else a TP x TQ piece of one matrix that spans
// the whole short side where it is <= 64. A bandwidth-bound copy, so what matters is bytes in
// flight: each thread issues up to kUnroll 16-byte loads before it writes any to shared memory
// (the first version moved one 2-byte element at a time and ran at ~27 % of copy bandwidth,
// benchmarks/NOTES.md); 16-byte stores on the way out. A side whose runs are not whole 16-byte
// vectors (odd sizes, unaligned pointers) moves single elements, in the same kernel.
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "ks_kernels.h"

namespace ks {
namespace detail {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;           // vectors in flight per thread and pass
constexpr int kTileBytes = 16384;    // per tile, before the shared-memory row padding

struct TransposeTile {
  int64_t R;
  int P, Q;
  int M, TP, TQ;  // matrices per tile, tile rows (p), tile columns (q); M > 1 only with TP == P, TQ == Q
  int tiles_p, tiles_q;
  int S;          // shared-memory row stride (>= TQ, odd: the column reads spread over the banks)
};

// Elements per 16-byte vector.
template <typename T>
constexpr int kVec = 16 / sizeof(T);

// VIN / VOUT: elements per global load / store (kVec<T>, or 1 where the runs do not allow vectors).
template <typename T, int VIN, int VOUT>
__global__ void __launch_bounds__(kThreads) ks_transpose_kernel(const T* __restrict__ in,
                                                                T* __restrict__ out,
                                                                const TransposeTile g) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* tile = reinterpret_cast<T*>(smem_raw);
  using VecIn = std::conditional_t<VIN == 1, T, uint4>;
  using VecOut = std::conditional_t<VOUT == 1, T, uint4>;
  // The tile: matrices r0 .. r0 + mats - 1, rows p0 .. p0 + tp - 1, columns q0 .. q0 + tq - 1.
  int64_t r0;
  int p0 = 0, q0 = 0;
  if (g.M > 1) {
    r0 = (int64_t)blockIdx.x * g.M;
  } else {
    const int64_t per = (int64_t)g.tiles_p * g.tiles_q;
    r0 = blockIdx.x / per;
    const int rem = (int)(blockIdx.x - r0 * per);
    p0 = (rem / g.tiles_q) * g.TP;
    q0 = (rem % g.tiles_q) * g.TQ;
  }
  const int mats = g.M > 1 ? (int)min((int64_t)g.M, g.R - r0) : 1;
  const int tp = min(g.TP, g.P - p0), tq = min(g.TQ, g.Q - q0);
  const int n = mats * tp * tq;  // elements of the tile
  const int64_t PQ = (int64_t)g.P * g.Q;

  // In: tile-linear t = row * tq + col (row = m * tp + p, col = q), at global
  // (p0 + row) * Q + q0 + col past matrix r0 (contiguous across rows where tq == Q), shared
  // memory row * S + col. A vector never crosses a run (the host picks VIN so).
  const T* src = in + r0 * PQ + (int64_t)p0 * g.Q + q0;
  constexpr int U = VIN == 1 ? 4 * kUnroll : kUnroll;  // single elements: more of them in flight
  for (int base = 0; base < n; base += kThreads * U * VIN) {
    VecIn v[U];
    int t0[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int t = base + (u * kThreads + threadIdx.x) * VIN;
      t0[u] = t;
      if (t < n) {
        const int row = t / tq, col = t - row * tq;
        v[u] = *reinterpret_cast<const VecIn*>(src + (int64_t)row * g.Q + col);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (t0[u] >= n) continue;
      int row = t0[u] / tq, col = t0[u] - row * tq;
      const T* e = reinterpret_cast<const T*>(&v[u]);
#pragma unroll
      for (int k = 0; k < VIN; ++k) {
        tile[row * g.S + col] = e[k];
        if (++col == tq) { col = 0; ++row; }
      }
    }
  }
  __syncthreads();
  // Out: tile-linear o = row * tp + col (row = m * tq + q, col = p), at global
  // (q0 + row) * P + p0 + col past matrix r0, from shared memory (m * tp + p) * S + q.
  T* dst = out + r0 * PQ + (int64_t)q0 * g.P + p0;
  for (int base = 0; base < n; base += kThreads * VOUT) {
    const int o = base + threadIdx.x * VOUT;
    if (o >= n) break;
    int row = o / tp, p = o - row * tp;
    int m = row / tq, q = row - m * tq;
    VecOut v;
    T* e = reinterpret_cast<T*>(&v);
#pragma unroll
    for (int k = 0; k < VOUT; ++k) {
      e[k] = tile[(m * tp + p) * g.S + q];
      if (++p == tp) {
        p = 0;
        if (++q == tq) { q = 0; ++m; }
      }
    }
    *reinterpret_cast<VecOut*>(dst + (int64_t)row * g.P + (o - row * tp)) = v;
  }
}

template <typename T>
cudaError_t launch_transpose(const void* in, void* out, const TransposeTile& g, bool vin, bool vout,
                             unsigned grid, size_t smem, cudaStream_t stream) {
  const T* i = static_cast<const T*>(in);
  T* o = static_cast<T*>(out);
  constexpr int V = kVec<T>;
  if (vin && vout) ks_transpose_kernel<T, V, V><<<grid, kThreads, smem, stream>>>(i, o, g);
  else if (vin) ks_transpose_kernel<T, V, 1><<<grid, kThreads, smem, stream>>>(i, o, g);
  else if (vout) ks_transpose_kernel<T, 1, V><<<grid, kThreads, smem, stream>>>(i, o, g);
  else ks_transpose_kernel<T, 1, 1><<<grid, kThreads, smem, stream>>>(i, o, g);
  return cudaGetLastError();
}

}  // namespace

cudaError_t transpose_batched(const void* in, void* out, int64_t R, int P, int Q, int elem_size,
                              cudaStream_t stream) {
  if (R < 0 || P <= 0 || Q <= 0 || !(elem_size == 2 || elem_size == 4))
    return cudaErrorInvalidValue;
  if (R == 0) return cudaSuccess;
  TransposeTile g{};
  g.R = R;
  g.P = P;
  g.Q = Q;
  const int64_t PQ = (int64_t)P * Q;
  const int V = 16 / elem_size;
  const int elems = kTileBytes / elem_size;
  const auto down = [V](int v) { return v >= V ? v / V * V : v; };  // to whole vectors
  const bool aligned = ((reinterpret_cast<uintptr_t>(in) | reinterpret_cast<uintptr_t>(out)) & 15) == 0;
  bool vin, vout;  // whole, aligned 16-byte vectors on the read / write side
  int64_t tiles;
  if (PQ <= elems) {  // whole matrices: reads and writes are each one contiguous run
    g.M = (int)std::min<int64_t>(R, elems / PQ);
    g.TP = P;
    g.TQ = Q;
    vin = vout = PQ % V == 0;
  } else {
    // Whole rows of the short side, so that one side of the tile stays one contiguous run:
    // Q <= 64 -> all of q (the reads are contiguous), else P <= 64 -> all of p (the writes are),
    // else 64 x (elems / 64).
    g.M = 1;
    if (Q <= 64) {
      g.TQ = Q;
      g.TP = down(std::min(P, elems / Q));
      vin = PQ % V == 0 && g.TP % V == 0;
      vout = P % V == 0 && g.TP % V == 0;
    } else if (P <= 64) {
      g.TP = P;
      g.TQ = down(std::min(Q, std::max(64, elems / P)));
      vin = Q % V == 0 && g.TQ % V == 0;
      vout = PQ % V == 0 && g.TQ % V == 0;
    } else {
      g.TP = 64;
      g.TQ = std::min(Q, elems / 64);
      vin = Q % V == 0;
      vout = P % V == 0;
    }
  }
  g.tiles_p = (P + g.TP - 1) / g.TP;
  g.tiles_q = (Q + g.TQ - 1) / g.TQ;
  tiles = g.M > 1 ? (R + g.M - 1) / g.M : R * g.tiles_p * g.tiles_q;
  g.S = g.TQ | 1;
  if (tiles > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  const size_t smem = (size_t)g.M * g.TP * g.S * elem_size;
  const unsigned grid = (unsigned)tiles;
  vin = vin && aligned;
  vout = vout && aligned;
  if (elem_size == 2) return launch_transpose<uint16_t>(in, out, g, vin, vout, grid, smem, stream);
  return launch_transpose<uint32_t>(in, out, g, vin, vout, grid, smem, stream);
}

namespace {
// out[i, j*d + l, k*d + l'] = (l == l') ? w[i, j, k, l] : 0, one thread per output element
// (written once, coalesced; w is small and cached).
template <typename T>
__global__ void __launch_bounds__(256) ks_densify_kernel(const T* __restrict__ w, T* __restrict__ out,
                                                         int64_t total, int64_t b, int64_t c, int64_t d) {
  const int64_t cd = c * d, blk = b * d * cd;
  for (int64_t f = (int64_t)blockIdx.x * 256 + threadIdx.x; f < total; f += (int64_t)gridDim.x * 256) {
    const int64_t i = f / blk, r = f - i * blk;
    const int64_t row = r / cd, col = r - row * cd;
    const int64_t j = row / d, l = row - j * d;
    const int64_t k = col / d, l2 = col - k * d;
    out[f] = l == l2 ? w[((i * b + j) * c + k) * d + l] : T(0);
  }
}

// Batch-last planes (i, l), index i*d + l, in cuBLAS column-major terms: A = x rows
// i*c*d + l (stride d*ldx), B = w planes (a, d, b, c), C = y rows i*b*d + l (stride d*B).
__global__ void ks_gemm_pointers_kernel(const char* x, const char* wp, char* y, PlanePointers g,
                                         const void** ptrs) {
  const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t n = (int64_t)g.a * g.d;
  if (idx >= n) return;
  const int64_t i = idx / g.d, l = idx - i * g.d;
  ptrs[idx] = x + ((i * g.c * g.d + l) * g.ldx) * g.esz;
  ptrs[n + idx] = wp + (idx * g.b * g.c) * g.esz;
  ptrs[2 * n + idx] = y + ((i * g.b * g.d + l) * g.batch) * g.esz;
}
}  // namespace

cudaError_t densify_blocks(const void* w, void* out, int64_t a, int64_t b, int64_t c, int64_t d,
                           int elem_size, cudaStream_t stream) {
  const int64_t total = a * b * c * d * d;
  if (total <= 0) return cudaSuccess;
  const unsigned grid = (unsigned)std::min<int64_t>((total + 255) / 256, 132 * 16);
  if (elem_size == 2) {
    ks_densify_kernel<uint16_t><<<grid, 256, 0, stream>>>(static_cast<const uint16_t*>(w),
                                                          static_cast<uint16_t*>(out), total, b, c, d);
  } else if (elem_size == 4) {
    ks_densify_kernel<uint32_t><<<grid, 256, 0, stream>>>(static_cast<const uint32_t*>(w),
                                                          static_cast<uint32_t*>(out), total, b, c, d);
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t plane_pointers(const void* x, const void* wp, void* y, const PlanePointers& g,
                           const void** ptrs, cudaStream_t stream) {
  const int64_t n = (int64_t)g.a * g.d;
  if (n <= 0) return cudaSuccess;
  const int64_t blocks = (n + 255) / 256;
  if (blocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  ks_gemm_pointers_kernel<<<(unsigned)blocks, 256, 0, stream>>>(
      static_cast<const char*>(x), static_cast<const char*>(wp), static_cast<char*>(y), g, ptrs);
  return cudaGetLastError();
}

}  // namespace detail
}  // namespace ks
