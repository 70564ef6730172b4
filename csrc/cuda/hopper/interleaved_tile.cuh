// The shared-memory tile of 16-bit interleaved rows that the interleaved GEMM's consumers read
// (and that the fused chain's first factor writes, hopper/chain_gemm.cu): boxes of [rows][64 elements] with the
// 128-byte swizzle, as TMA writes them; per-plane (k, k+1) pairs sorted out of 2d-element runs by
// byte permutes; the row permutation that keeps a warp's 4-, 8- and 16-byte accesses free of bank
// conflicts. Device code only; bare nvcc compiles it.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace ks {
namespace hopper {

// The physical row (0..7) of fragment row r within each 8-row group: lanes that load or store in
// the same shared-memory phase must hit different 16-byte chunks of the 128-byte swizzle. Lane
// (r, q) accesses words 2dq/2 + const of its row; the chunk index is XORed with the row.
template <int D>
__device__ __forceinline__ int row_perm(int r) {
  // 8-byte accesses, 4 rows per phase: q's chunks differ by 3 between lanes that share a word
  // offset (d = 6) or are one chunk apart (d = 2), so even rows in one phase, odd in the other.
  if constexpr (D == 2 || D == 6) return 2 * (r % 4) + r / 4;
  // 16-byte accesses, 2 rows per phase: the 4 q of one row cover one of each chunk pair {y, y^4}
  // (d = 4: chunks +0..3; d = 12: +0, 3, 6, 9), so the phase's other row is 4 away.
  else if constexpr (D == 4 || D == 12) return r / 2 + 4 * (r % 2);
  // d = 8: 2 x 16 bytes per (row, k pair), even and odd chunks already apart; d = 3: 4-byte
  // accesses, one phase per warp, words 3q + w of 8 rows: distinct mod 4, so distinct banks.
  else return r;
}

// Byte offset of element e (< 64) of row `row` in a [rows][64] 16-bit box with the 128-byte swizzle.
__device__ __forceinline__ uint32_t swizzled(int row, int e) {
  return static_cast<uint32_t>(row * 128 + (((e >> 3) ^ (row & 7)) << 4) + (e & 7) * 2);
}

// __byte_perm selector of a (lo, hi) 16-bit pair from the lo_half of the first word and the
// hi_half of the second (half 0 = bits 0-15).
__host__ __device__ constexpr uint32_t pair_selector(int lo_half, int hi_half) {
  return (lo_half ? 0x32u : 0x10u) | (hi_half ? 0x7600u : 0x5400u);
}

template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  } else {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
}

// The two 16-bit values of a word (pack2's inverse), in fp32.
template <typename T>
__device__ __forceinline__ void unpack2(uint32_t w, float& lo, float& hi) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w));
    lo = f.x, hi = f.y;
  } else {
    const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w));
    lo = f.x, hi = f.y;
  }
}

// Shared-memory loads and stores of W = 1, 2 or 4 consecutive 32-bit words (4W-byte aligned).
template <int W>
__device__ __forceinline__ void lds(uint32_t addr, uint32_t* v) {
  if constexpr (W == 1)
    asm volatile("ld.shared.u32 %0, [%1];" : "=r"(v[0]) : "r"(addr));
  else if constexpr (W == 2)
    asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];" : "=r"(v[0]), "=r"(v[1]) : "r"(addr));
  else
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v[0]), "=r"(v[1]), "=r"(v[2]), "=r"(v[3]) : "r"(addr));
}

template <int W>
__device__ __forceinline__ void sts(uint32_t addr, const uint32_t* v) {
  if constexpr (W == 1)
    asm volatile("st.shared.u32 [%0], %1;" ::"r"(addr), "r"(v[0]) : "memory");
  else if constexpr (W == 2)
    asm volatile("st.shared.v2.u32 [%0], {%1, %2};" ::"r"(addr), "r"(v[0]), "r"(v[1]) : "memory");
  else
    asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};" ::"r"(addr), "r"(v[0]), "r"(v[1]), "r"(v[2]), "r"(v[3])
                 : "memory");
}

// The raw words of one k16 step's A fragments: for fragment position p (rows row0 (p even) and
// row0 + 8, k = 16 ks + 2q + 8 (p / 2)) the 2d elements (k, k + 1) x all planes, element t of the
// run = (k + t / d, plane t % d), from [rows][64] boxes box_bytes apart starting at `boxes`, in
// aligned LW-word loads (4 LW bytes; they never cross a 16-byte chunk).
template <int D, int LW>
__device__ __forceinline__ void load_pair_runs(uint32_t boxes, int box_bytes, int row0, int q, int ks,
                                               uint32_t (&raw)[4][D]) {
#pragma unroll
  for (int p = 0; p < 4; ++p) {
    const int row = row0 + 8 * (p & 1);
    const int e = (16 * ks + 2 * q + 8 * (p >> 1)) * D;  // element within the stage's row
#pragma unroll
    for (int v = 0; v < D / LW; ++v) {
      const int ev = e + 2 * LW * v;
      lds<LW>(boxes + (ev / 64) * box_bytes + swizzled(row, ev % 64), &raw[p][LW * v]);
    }
  }
}

// The per-plane A fragments (mma.m16n8k16's A layout: one (k, k + 1) pair per register) sorted
// out of load_pair_runs' words: plane g's pair is elements g and d + g of each run.
template <int D>
__device__ __forceinline__ void sort_pairs(const uint32_t (&raw)[4][D], uint32_t (&frag)[D][4]) {
#pragma unroll
  for (int p = 0; p < 4; ++p)
#pragma unroll
    for (int g = 0; g < D; ++g)
      frag[g][p] = __byte_perm(raw[p][g / 2], raw[p][(D + g) / 2], pair_selector(g % 2, (D + g) % 2));
}

}  // namespace hopper
}  // namespace ks
