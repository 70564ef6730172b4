// Layout helpers of the cuBLAS plans (ks_cublas_plans.cpp).
//
// Batched transposition out[r][q][p] = in[r][p][q] (r < R, p < P, q < Q; both contiguous): the
// layout change of the Transposed plan (x rows (a, c, d) -> (a, d, c), y rows (a, d, b) -> (a, b, d)).
// A block moves one tile through shared memory: M whole matrices when a matrix has at most
// kTileBytes bytes (then both its reads and its writes are one contiguous run), else a
// TP x TQ piece of one matrix that spans the whole short side where it is <= 64. Index
// arithmetic is incremental (one division per thread, none per element): a bandwidth-bound copy.
#include <algorithm>
#include <cstdint>

#include "ks_kernels.h"

namespace ks {
namespace detail {
namespace {

constexpr int kThreads = 256;
constexpr int kTileBytes = 8192;  // per tile, before the odd-stride padding

struct TransposeTile {
  int64_t R;
  int P, Q;
  int M, TP, TQ;  // matrices per tile, tile rows (p), tile columns (q)
  int tiles_p, tiles_q;
  int S;          // shared-memory row stride (TQ rounded up to odd: conflict-free column reads)
};

template <typename T>
__global__ void __launch_bounds__(kThreads) ks_transpose_kernel(const T* __restrict__ in,
                                                                T* __restrict__ out,
                                                                const TransposeTile g) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* tile = reinterpret_cast<T*>(smem_raw);
  const int64_t t_idx = blockIdx.x;
  int64_t r0;
  int p0 = 0, q0 = 0;
  if (g.M > 1) {
    r0 = t_idx * g.M;
  } else {
    const int64_t per = (int64_t)g.tiles_p * g.tiles_q;
    r0 = t_idx / per;
    const int rem = (int)(t_idx - r0 * per);
    p0 = (rem / g.tiles_q) * g.TP;
    q0 = (rem % g.tiles_q) * g.TQ;
  }
  const int64_t PQ = (int64_t)g.P * g.Q;
  const int mats = g.M > 1 ? (int)min((int64_t)g.M, g.R - r0) : 1;
  // Rows of the tile: rho = mm * TP + p (with TP == P when M > 1).
  const int rows_in = g.M > 1 ? mats * g.P : min(g.TP, g.P - p0);
  const int cols_in = min(g.TQ, g.Q - q0);
  const T* src = in + r0 * PQ + (int64_t)p0 * g.Q + q0;
  {
    int rho = threadIdx.x / g.TQ, q = threadIdx.x % g.TQ;
    const int step_r = kThreads / g.TQ, step_q = kThreads % g.TQ;
    for (; rho < rows_in; rho += step_r, q += step_q) {
      if (q >= g.TQ) { q -= g.TQ; ++rho; if (rho >= rows_in) break; }
      if (q < cols_in) tile[rho * g.S + q] = src[(int64_t)rho * g.Q + q];
    }
  }
  __syncthreads();
  // Output rows sigma = mm * TQ + q (TQ == Q when M > 1), each a run over p.
  const int rows_out = g.M > 1 ? mats * g.Q : cols_in;
  const int cols_out = g.M > 1 ? g.P : min(g.TP, g.P - p0);
  T* dst = out + r0 * PQ + (int64_t)q0 * g.P + p0;
  int sigma = threadIdx.x / g.TP, p = threadIdx.x % g.TP;
  const int step_s = kThreads / g.TP, step_p = kThreads % g.TP;
  // (mm, q) of sigma, advanced with sigma.
  int mm = sigma / g.TQ, q = sigma % g.TQ;
  const int dmm = step_s / g.TQ, dq = step_s % g.TQ;
  for (; sigma < rows_out;) {
    if (p < cols_out) dst[(int64_t)sigma * g.P + p] = tile[(mm * g.TP + p) * g.S + q];
    sigma += step_s; p += step_p; mm += dmm; q += dq;
    if (q >= g.TQ) { q -= g.TQ; ++mm; }
    if (p >= g.TP) {
      p -= g.TP; ++sigma; ++q;
      if (q >= g.TQ) { q -= g.TQ; ++mm; }
    }
  }
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
  const int elems = kTileBytes / elem_size;
  int64_t tiles;
  if (PQ <= elems) {
    g.M = (int)std::min<int64_t>(R, elems / PQ);
    g.TP = P;
    g.TQ = Q;
    g.tiles_p = g.tiles_q = 1;
    tiles = (R + g.M - 1) / g.M;
  } else {
    // Whole rows of the short side, so that one side of the tile stays one contiguous run:
    // Q <= 64 -> all of q (the reads are contiguous), else P <= 64 -> all of p (the writes are),
    // else 64 x 64.
    g.M = 1;
    if (Q <= 64) {
      g.TQ = Q;
      g.TP = std::min(P, elems / Q);
    } else if (P <= 64) {
      g.TP = P;
      g.TQ = std::min(Q, std::max(64, elems / P / 32 * 32));
    } else {
      g.TP = g.TQ = 64;
    }
    g.tiles_p = (P + g.TP - 1) / g.TP;
    g.tiles_q = (Q + g.TQ - 1) / g.TQ;
    tiles = R * g.tiles_p * g.tiles_q;
  }
  // M > 1 keeps TP == P, TQ == Q, so the kernel's incremental (mm, q) walk stays exact.
  g.S = g.TQ | 1;
  if (tiles > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  const size_t smem = (size_t)g.M * g.TP * g.S * elem_size;
  const unsigned grid = (unsigned)tiles;
  switch (elem_size) {
    case 2:
      ks_transpose_kernel<uint16_t><<<grid, kThreads, smem, stream>>>(
          static_cast<const uint16_t*>(in), static_cast<uint16_t*>(out), g);
      break;
    default:
      ks_transpose_kernel<uint32_t><<<grid, kThreads, smem, stream>>>(
          static_cast<const uint32_t*>(in), static_cast<uint32_t*>(out), g);
  }
  return cudaGetLastError();
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
