// The plane GEMM's epilogue store: one item is (row n, 8 columns from j) of G neighbouring planes
// l0 .. l0 + G - 1, eight T values per plane (a 16-byte load each, `load(g)`), written to
// y[n, i*b*d + j'*d + l0 + g] for j' = j .. j + 7: one run of 8*G elements when G == d, else 8 runs
// of G elements d apart. 16-byte stores wherever the runs and y's alignment allow.
#pragma once
#include <cstdint>
#include <cstring>

#include "ptx.cuh"

namespace ks {
namespace hopper {

// What the epilogue needs to know of the product (element counts).
struct InterleaveShape {
  int64_t B, b, d;
  int64_t ldy;   // y's row stride
  bool vec_ok;   // y's base and ldy allow 16-byte vectors where the runs are whole vectors
};

// Stores N consecutive elements from `v` at `dst`, in vectors of VW elements.
template <typename T, int VW, int N>
__device__ __forceinline__ void store_run(T* dst, const T (&v)[N]) {
  static_assert(N % VW == 0, "run length");
#pragma unroll
  for (int e = 0; e < N; e += VW) {
    if constexpr (VW == 8) {
      uint4 u;
      memcpy(&u, &v[e], 16);
      *reinterpret_cast<uint4*>(dst + e) = u;
    } else if constexpr (VW == 4) {
      uint2 u;
      memcpy(&u, &v[e], 8);
      *reinterpret_cast<uint2*>(dst + e) = u;
    } else if constexpr (VW == 2) {
      uint32_t u;
      memcpy(&u, &v[e], 4);
      *reinterpret_cast<uint32_t*>(dst + e) = u;
    } else {
      dst[e] = v[e];
    }
  }
}

__host__ __device__ constexpr int largest_pow2_divisor(int g) { return g % 8 == 0 ? 8 : g % 4 == 0 ? 4 : g % 2 == 0 ? 2 : 1; }

// One item: `load(g)` returns plane g's 8 values; `row` points at y[n, i*b*d + l0]; columns
// j .. j + jn - 1 exist (jn <= 8).
template <typename T, int G, typename Load>
__device__ __forceinline__ void store_item(const Load& load, T* row, int64_t j, int jn, const InterleaveShape& s) {
  if constexpr (G % 8 == 0) {
    // Passes of 8 planes (fewer live registers): (j', g0 .. g0 + 7) is one 16-byte vector of y.
#pragma unroll
    for (int g0 = 0; g0 < G; g0 += 8) {
      T v[8][8];
#pragma unroll
      for (int g = 0; g < 8; ++g) {
        const uint4 u = load(g0 + g);
        memcpy(v[g], &u, 16);
      }
#pragma unroll
      for (int jj = 0; jj < 8; ++jj) {
        if (jj >= jn) break;
        T out[8];
#pragma unroll
        for (int g = 0; g < 8; ++g) out[g] = v[g][jj];
        if (s.vec_ok)
          store_run<T, 8>(row + (j + jj) * s.d + g0, out);
        else
          store_run<T, 1>(row + (j + jj) * s.d + g0, out);
      }
    }
  } else {
    T v[G][8];
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const uint4 u = load(g);
      memcpy(v[g], &u, 16);
    }
    if (G == s.d && s.vec_ok && (s.b * s.d) % 8 == 0 && jn == 8) {
      // The run is (j', g) for j' < 8, g < G: 16-byte vector e holds its elements 8e .. 8e + 7.
#pragma unroll
      for (int e = 0; e < G; ++e) {
        T out[8];
#pragma unroll
        for (int q = 0; q < 8; ++q) out[q] = v[(8 * e + q) % G][(8 * e + q) / G];
        store_run<T, 8>(row + j * s.d + 8 * e, out);
      }
    } else {
#pragma unroll
      for (int jj = 0; jj < 8; ++jj) {
        if (jj >= jn) break;
        T run[G];
#pragma unroll
        for (int g = 0; g < G; ++g) run[g] = v[g][jj];
        if (s.vec_ok)
          store_run<T, largest_pow2_divisor(G)>(row + (j + jj) * s.d, run);
        else
          store_run<T, 1>(row + (j + jj) * s.d, run);
      }
    }
  }
}

}  // namespace hopper
}  // namespace ks
