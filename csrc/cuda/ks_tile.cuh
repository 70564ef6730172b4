// Device code of the fused output-stationary KS kernels (no torch types).
//
// Per (i, l) the KS product is a GEMM  C_l[m, j] = sum_k A_l[m, k] * W_l[j, k]  with
//   m = batch row n, A_l[m, k] = x(n, i, k, l), W_l[j, k] = w[i, j, k, l], C_l[m, j] = y(n, i, j, l).
// A thread block owns the output tile  m in [m0, m0+BM), j in [j0, j0+BN), l in [l0, l0+L)
// (L independent GEMMs that share nothing but the block), loops over k in steps of BK and
// writes y once. x and w tiles are read straight from their strided layouts into registers
// (16-byte vectors where alignment allows, scalars otherwise), then stored to shared memory in
// one layout for every case:  tile[l][row][k]  (k contiguous, rows padded to SK elements), with
// the transposition (x is l- or n-contiguous, w is l-contiguous when d > 1) done in that store.
// Register-staged double buffering: the loads of tile kt+1 are in flight while tile kt computes.
// The output tile is staged in shared memory in y's own order and written with 16-byte stores.
#pragma once
#include <cstdint>
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

namespace ks {
namespace detail {

// How an operand tile is read from global memory (chosen on the host from strides/alignment).
enum LoadMode : int {
  kKVec = 0,     // k contiguous (d == 1): 16-byte vectors along k
  kKLVec = 1,    // l contiguous, whole l range in the block (d <= L, 2d | V): vectors along (k,l)
  kLVec = 2,     // l contiguous, V | d and V | L: pairs of vectors (k, k+1) along l
  kRVec = 3,     // rows contiguous (batch-last x): pairs of vectors (k, k+1) along rows
  kScalarL = 4,  // element pairs, l fastest across threads
  kScalarR = 5,  // element pairs, rows fastest across threads
  kKLGen = 6,    // l contiguous, whole l range in the block (d <= L, any d): vectors along (k,l)
};

// n / d for 0 <= n < 2^31 by a multiply-high and a shift (d fixed per launch): the tile index
// decode runs once per tile and must not cost 64-bit software divisions.
struct FastDiv {
  uint32_t d = 1, m = 1, s = 0;
  FastDiv() = default;
  explicit FastDiv(uint32_t div) : d(div) {
    s = 0;
    while ((1ull << s) < div) ++s;
    m = (uint32_t)(((1ull << 32) * ((1ull << s) - div)) / div + 1);
  }
  __device__ __forceinline__ uint32_t div(uint32_t n) const {
    return (uint32_t)(((uint64_t)__umulhi(n, m) + n) >> s);
  }
};

struct TileParams {
  const void* x;
  const void* w;
  void* y;
  int64_t batch;
  int a, b, c, d;
  int64_t x_sm, x_si, x_sk, x_sl;  // x element (n, i, k, l)
  int64_t y_sm;                    // y row stride (batch-first) -- batch-last rows are `batch`
  int tiles_n, tiles_l;
  int64_t tiles_m;
  int variant;      // Variant: fast batch-first, fast batch-last, or scalar loads
  int y_vec;        // every output run starts 16-byte aligned
  int y_pair;       // batch-first, d == 1: pairs (j, j+1) of y are 2*sizeof(T)-aligned
  int batch_last;
  int64_t tiles;    // tiles_m * tiles_n * tiles_l * a  (< 2^31)
  FastDiv fd_n, fd_l, fd_a;  // by tiles_n, tiles_l, a
};

__host__ __device__ constexpr int cdiv(int a, int b) { return (a + b - 1) / b; }

// Calls f(u) for this thread's work units u = tid + s * NT < UNITS, unrolled (the bound check
// compiles away when NT divides UNITS).
template <int UNITS, int NT, class F>
__device__ __forceinline__ void for_units(int tid, F&& f) {
#pragma unroll
  for (int s = 0; s < cdiv(UNITS, NT); ++s) {
    const int u = tid + s * NT;
    if (UNITS % NT == 0 || u < UNITS) f(u);
  }
}

__host__ __device__ constexpr int cmax(int a, int b) { return a > b ? a : b; }
__host__ __device__ constexpr int ilog2(int v) { return v <= 1 ? 0 : 1 + ilog2(v / 2); }

__device__ __forceinline__ uint4 ldg16(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// The same for data read once per call (the stream plan's w): kept out of L1.
__device__ __forceinline__ uint4 ldg16_no_l1(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

template <int SZ>
__device__ __forceinline__ uint32_t ldg_elem(const void* p) {
  if constexpr (SZ == 2) {
    unsigned short v;
    asm volatile("ld.global.nc.u16 %0, [%1];" : "=h"(v) : "l"(p));
    return v;
  } else {
    uint32_t v;
    asm volatile("ld.global.nc.u32 %0, [%1];" : "=r"(v) : "l"(p));
    return v;
  }
}

__device__ __forceinline__ uint32_t to_tf32(uint32_t bits) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(__uint_as_float(bits)));
  return r;
}

__device__ __forceinline__ uint32_t wget(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// Element e of a 16-byte vector, as raw bits in the low part of a word (e compile-time).
template <int SZ>
__device__ __forceinline__ uint32_t vget(const uint4& v, int e) {
  if constexpr (SZ == 2) {
    const uint32_t w = wget(v, e >> 1);
    return (e & 1) ? (w >> 16) : (w & 0xffffu);
  } else {
    return wget(v, e);
  }
}

// Packs elements e0 of u and e1 of v (16-bit) into one word, e0 in the low half.
__device__ __forceinline__ uint32_t pack16(const uint4& u, int e0, const uint4& v, int e1) {
  const uint32_t sel = ((e1 & 1) ? 0x7600u : 0x5400u) | ((e0 & 1) ? 0x32u : 0x10u);
  return __byte_perm(wget(u, e0 >> 1), wget(v, e1 >> 1), sel);
}

// A 16-byte vector with only its first n (< V) elements loaded (row tails).
template <int SZ>
__device__ __forceinline__ uint4 ld_partial(const char* p, int n) {
  constexpr int V = 16 / SZ;
  uint32_t w[4] = {0u, 0u, 0u, 0u};
#pragma unroll
  for (int e = 0; e < V; ++e) {
    if (e < n) {
      const uint32_t v = ldg_elem<SZ>(p + e * SZ);
      if constexpr (SZ == 2) w[e >> 1] |= v << (16 * (e & 1));
      else w[e] = v;
    }
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// Pair (k, k+1) of one (r, l) at element index idx of a compute tile (k even); lo/hi are the
// elements' bits.
template <int SZ>
__device__ __forceinline__ void st_pair(char* smem, int idx, uint32_t lo, uint32_t hi) {
  if constexpr (SZ == 2) *reinterpret_cast<uint32_t*>(smem + (size_t)idx * 2) = lo | (hi << 16);
  else *reinterpret_cast<uint2*>(smem + (size_t)idx * 4) = make_uint2(lo, hi);
}
// Pair (element e of u, element e2 of v) at idx.
template <int SZ>
__device__ __forceinline__ void st_pair_v(char* smem, int idx, const uint4& u, int e, const uint4& v, int e2) {
  if constexpr (SZ == 2) *reinterpret_cast<uint32_t*>(smem + (size_t)idx * 2) = pack16(u, e, v, e2);
  else st_pair<SZ>(smem, idx, vget<4>(u, e), vget<4>(v, e2));
}
// A 16-byte (k, l) run v of row r starting at k = kf (d == L, 2L | V) -> the [l][r][SK] compute
// tile: element e is (k = kf + e / L, l = e % L); pairs (k, k+1) of each l.
template <int SZ, int R, int L, int SK>
__device__ __forceinline__ void st_klvec(char* smem, int r, int kf, const uint4& v) {
  constexpr int V = 16 / SZ;
#pragma unroll
  for (int l = 0; l < L; ++l)
#pragma unroll
    for (int pp = 0; pp < V / (2 * L); ++pp) {
      const int e0 = 2 * pp * L + l;
      st_pair_v<SZ>(smem, (l * R + r) * SK + kf + 2 * pp, v, e0, v, e0 + L);
    }
}

// Global -> registers -> shared memory loader of one operand tile: R rows x BK k x L l, stored
// as smem[(l * R + r) * SK + k]. Element (r, k, l) of the operand is at
// base + r*s_r + k*s_k + l*s_l (elements); valid where r < rv, k < kv, l < lv, zero elsewhere.
// MODE is fixed at compile time (one kernel per layout class), so the address arithmetic of
// one mode only is live. kKLVec requires d == L; kScalarL/kScalarR pick their thread order at
// run time (lfast).
template <int SZ, int R, int BK, int L, int NT, int SK, int MODE>
struct TileLoader {
  static constexpr int V = 16 / SZ;
  static constexpr int PW = 2 * SZ / 4;  // words per (k, k+1) pair
  static constexpr bool SCALAR = MODE == kScalarL || MODE == kScalarR;
  static constexpr int UNITS = MODE == kKVec    ? R * BK / V
                               : MODE == kKLVec ? R * BK * L / V
                               : MODE == kLVec  ? R * (BK / 2) * (L / V)
                               : MODE == kRVec  ? (R / V) * (BK / 2) * L
                                                : R * (BK / 2) * L;
  static constexpr int WPU = (MODE == kKVec || MODE == kKLVec) ? 4 : (MODE == kLVec || MODE == kRVec) ? 8 : PW;
  static constexpr int UPT = cdiv(UNITS, NT);
  static constexpr bool FULL = UNITS % NT == 0;
  static_assert(MODE != kKVec || (L == 1 && BK % V == 0), "kKVec needs L == 1");
  static_assert(MODE != kKLVec || (2 * L <= V && V % (2 * L) == 0 && BK % V == 0), "kKLVec needs 2L | V");
  static_assert(MODE != kLVec || L % V == 0, "kLVec needs V | L");
  static_assert(MODE != kRVec || R % V == 0, "kRVec needs V | R");
  static_assert(SK % (16 / SZ) == 0, "rows must stay 16-byte aligned");

  uint32_t reg[UPT * WPU];

  __device__ __forceinline__ static void st_vec(char* smem, int idx, uint4 v) {
    *reinterpret_cast<uint4*>(smem + (size_t)idx * SZ) = v;
  }
  __device__ __forceinline__ void put4(int at, const uint4& v) {
    reg[at] = v.x; reg[at + 1] = v.y; reg[at + 2] = v.z; reg[at + 3] = v.w;
  }
  __device__ __forceinline__ uint4 get4(int at) const {
    return make_uint4(reg[at], reg[at + 1], reg[at + 2], reg[at + 3]);
  }
  __device__ __forceinline__ static void decode_scalar(int u, bool lfast, int& r, int& kp, int& l) {
    if (lfast) { l = u % L; const int t = u / L; kp = t % (BK / 2); r = t / (BK / 2); }
    else { r = u % R; const int t = u / R; kp = t % (BK / 2); l = t / (BK / 2); }
  }

  __device__ __forceinline__ void load(const void* base_, int64_t s_r, int64_t s_k, int64_t s_l,
                                       int rv, int kv, int lv, bool lfast, int tid) {
    const char* base = static_cast<const char*>(base_);
#pragma unroll
    for (int s = 0; s < UPT; ++s) {
      const int u = tid + s * NT;
      const bool in = FULL || u < UNITS;
      if constexpr (MODE == kKVec) {
        constexpr int UPR = BK / V;
        uint4 v = make_uint4(0, 0, 0, 0);
        const int r = u / UPR, k = (u % UPR) * V;
        if (in && r < rv && k < kv) v = ldg16(base + (r * s_r + k) * SZ);
        put4(4 * s, v);
      } else if constexpr (MODE == kKLVec) {
        // Row = (k, l) flattened, contiguous (d == L): vector g0 holds k = g0/L .. + V/L - 1.
        constexpr int UPR = BK * L / V;
        uint4 v = make_uint4(0, 0, 0, 0);
        const int r = u / UPR, g0 = (u % UPR) * V;
        if (in && r < rv && g0 / L < kv) v = ldg16(base + (r * s_r + g0) * SZ);
        put4(4 * s, v);
      } else if constexpr (MODE == kLVec) {
        constexpr int LQ = L / V;
        uint4 v0 = make_uint4(0, 0, 0, 0), v1 = v0;
        const int lq = u % LQ, t = u / LQ, kp = t % (BK / 2), r = t / (BK / 2);
        const int k = 2 * kp, l = lq * V;
        if (in && r < rv && k < kv && l < lv) {
          const char* p = base + (r * s_r + k * s_k + l) * SZ;
          v0 = ldg16(p);
          if (k + 1 < kv) v1 = ldg16(p + s_k * SZ);
        }
        put4(8 * s, v0);
        put4(8 * s + 4, v1);
      } else if constexpr (MODE == kRVec) {
        constexpr int RQ = R / V;
        uint4 v0 = make_uint4(0, 0, 0, 0), v1 = v0;
        const int rq = u % RQ, t = u / RQ, kp = t % (BK / 2), l = t / (BK / 2);
        const int k = 2 * kp, r0 = rq * V;
        if (in && r0 < rv && k < kv && l < lv) {
          const char* p = base + (r0 + k * s_k + l * s_l) * SZ;
          const int n = rv - r0;
          if (n >= V) {
            v0 = ldg16(p);
            if (k + 1 < kv) v1 = ldg16(p + s_k * SZ);
          } else {
            v0 = ld_partial<SZ>(p, n);
            if (k + 1 < kv) v1 = ld_partial<SZ>(p + s_k * SZ, n);
          }
        }
        put4(8 * s, v0);
        put4(8 * s + 4, v1);
      } else {
        uint32_t e0 = 0, e1 = 0;
        int r, kp, l;
        decode_scalar(u, lfast, r, kp, l);
        const int k = 2 * kp;
        if (in && r < rv && k < kv && l < lv) {
          const char* p = base + (r * s_r + k * s_k + l * s_l) * SZ;
          e0 = ldg_elem<SZ>(p);
          if (k + 1 < kv) e1 = ldg_elem<SZ>(p + s_k * SZ);
        }
        if constexpr (SZ == 2) reg[s] = e0 | (e1 << 16);
        else { reg[2 * s] = e0; reg[2 * s + 1] = e1; }
      }
    }
  }

  __device__ __forceinline__ void store(void* smem_, bool lfast, int tid) const {
    char* smem = static_cast<char*>(smem_);
#pragma unroll
    for (int s = 0; s < UPT; ++s) {
      const int u = tid + s * NT;
      if (!(FULL || u < UNITS)) continue;
      if constexpr (MODE == kKVec) {
        constexpr int UPR = BK / V;
        const int r = u / UPR, k = (u % UPR) * V;
        st_vec(smem, r * SK + k, get4(4 * s));
      } else if constexpr (MODE == kKLVec) {
        constexpr int UPR = BK * L / V;
        st_klvec<SZ, R, L, SK>(smem, u / UPR, (u % UPR) * V / L, get4(4 * s));
      } else if constexpr (MODE == kLVec) {
        constexpr int LQ = L / V;
        const int lq = u % LQ, t = u / LQ, kp = t % (BK / 2), r = t / (BK / 2);
        const uint4 v0 = get4(8 * s), v1 = get4(8 * s + 4);
#pragma unroll
        for (int e = 0; e < V; ++e) st_pair_v<SZ>(smem, ((lq * V + e) * R + r) * SK + 2 * kp, v0, e, v1, e);
      } else if constexpr (MODE == kRVec) {
        constexpr int RQ = R / V;
        const int rq = u % RQ, t = u / RQ, kp = t % (BK / 2), l = t / (BK / 2);
        const uint4 v0 = get4(8 * s), v1 = get4(8 * s + 4);
#pragma unroll
        for (int e = 0; e < V; ++e) st_pair_v<SZ>(smem, (l * R + rq * V + e) * SK + 2 * kp, v0, e, v1, e);
      } else {
        int r, kp, l;
        decode_scalar(u, lfast, r, kp, l);
        const int idx = (l * R + r) * SK + 2 * kp;
        if constexpr (SZ == 2) *reinterpret_cast<uint32_t*>(smem + (size_t)idx * 2) = reg[s];
        else st_pair<SZ>(smem, idx, reg[2 * s], reg[2 * s + 1]);
      }
    }
  }
};

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(a), "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }

// Asynchronous (cp.async, 16-byte) loader of one operand tile into a raw shared-memory stage in
// the operand's own global order, then (unless MODE == kKVec, whose raw order already is the
// compute order) transposed shared -> shared into the compute layout [l][r][SK] (k contiguous).
// Raw orders:  kKVec [r][SK] | kKLVec, kKLGen [r][RK] (flat (k,l) runs) | kLVec [r][k][L] |
//              kRVec [l][k][RM] (rows contiguous).
// Out-of-range 16-byte pieces are zero-filled by cp.async (source size 0 or partial).
template <int SZ, int R, int BK, int L, int NT, int SK, int MODE>
struct AsyncLoader {
  static constexpr int V = 16 / SZ;
  static constexpr int RK = BK * L + V;
  static constexpr int RM = R + V;
  static constexpr bool NATURAL = MODE == kKVec;
  static constexpr int RAW_EL = MODE == kKVec ? R * SK
                                : (MODE == kKLVec || MODE == kKLGen) ? R * RK
                                : MODE == kLVec ? R * BK * L
                                                : L * BK * RM;
  static constexpr int COMP_EL = NATURAL ? 0 : L * R * SK;
  static_assert(MODE == kKVec || MODE == kKLVec || MODE == kKLGen || MODE == kLVec || MODE == kRVec, "mode");
  static_assert(MODE != kKVec || (L == 1 && BK % V == 0), "kKVec needs L == 1");
  static_assert(MODE != kKLVec || (2 * L <= V && V % (2 * L) == 0 && BK % V == 0), "kKLVec needs 2L | V");
  static_assert(MODE != kKLGen || BK % V == 0, "kKLGen");
  static_assert(MODE != kLVec || L % V == 0, "kLVec needs V | L");
  static_assert(MODE != kRVec || R % V == 0, "kRVec needs V | R");

  __device__ __forceinline__ static void issue(char* raw, const char* base, int64_t s_r, int64_t s_k,
                                               int64_t s_l, int rv, int kv, int lv, int d, int tid) {
    if constexpr (MODE == kKVec) {
      constexpr int UPR = BK / V, UNITS = R * UPR;
      for_units<UNITS, NT>(tid, [&](int u) {
        const int r = u / UPR, k = (u % UPR) * V;
        const bool ok = r < rv && k < kv;
        cp_async16(raw + (r * SK + k) * SZ, ok ? base + (r * s_r + k) * SZ : base, ok ? 16 : 0);
      });
    } else if constexpr (MODE == kKLVec || MODE == kKLGen) {
      constexpr int UPR = BK * L / V, UNITS = R * UPR;
      const int run = BK * d, kvd = kv * d;  // this tile's (k,l) run per row, and its valid part
      for_units<UNITS, NT>(tid, [&](int u) {
        const int r = u / UPR, g0 = (u % UPR) * V;
        if (g0 < run) {
          const bool ok = r < rv && g0 < kvd;
          cp_async16(raw + (r * RK + g0) * SZ, ok ? base + (r * s_r + g0) * SZ : base, ok ? 16 : 0);
        }
      });
    } else if constexpr (MODE == kLVec) {
      constexpr int LQ = L / V, UNITS = R * BK * LQ;
      for_units<UNITS, NT>(tid, [&](int u) {
        const int lq = u % LQ, t = u / LQ, k = t % BK, r = t / BK;
        const bool ok = r < rv && k < kv && lq * V < lv;
        cp_async16(raw + ((r * BK + k) * L + lq * V) * SZ,
                   ok ? base + (r * s_r + k * s_k + lq * V) * SZ : base, ok ? 16 : 0);
      });
    } else {  // kRVec
      constexpr int RQ = R / V, UNITS = RQ * BK * L;
      for_units<UNITS, NT>(tid, [&](int u) {
        const int rq = u % RQ, t = u / RQ, k = t % BK, l = t / BK;
        const int n = rv - rq * V;
        const bool ok = k < kv && l < lv && n > 0;
        cp_async16(raw + ((l * BK + k) * RM + rq * V) * SZ,
                   ok ? base + (rq * V + k * s_k + l * s_l) * SZ : base, ok ? (n >= V ? 16 : n * SZ) : 0);
      });
    }
  }

  __device__ __forceinline__ static uint4 lds16(const char* p) { return *reinterpret_cast<const uint4*>(p); }

  __device__ __forceinline__ static void transpose(const char* raw, char* comp, int d, int tid) {
    if constexpr (MODE == kKLVec) {
      constexpr int UPR = BK * L / V, UNITS = R * UPR;
      for_units<UNITS, NT>(tid, [&](int u) {
        const int r = u / UPR, q = u % UPR;
        st_klvec<SZ, R, L, SK>(comp, r, q * V / L, lds16(raw + (r * RK + q * V) * SZ));
      });
    } else if constexpr (MODE == kKLGen) {
      constexpr int UPR = BK * L / V, UNITS = R * UPR;
      const int run = BK * d;
      for_units<UNITS, NT>(tid, [&](int u) {
        const int r = u / UPR, g0 = (u % UPR) * V;
        if (g0 < run) {
          const uint4 v = lds16(raw + (r * RK + g0) * SZ);
          int k = g0 / d, l = g0 - k * d;
#pragma unroll
          for (int e = 0; e < V; ++e) {
            const int idx = (l * R + r) * SK + k;
            if constexpr (SZ == 2) *reinterpret_cast<uint16_t*>(comp + (size_t)idx * 2) = (uint16_t)vget<2>(v, e);
            else *reinterpret_cast<uint32_t*>(comp + (size_t)idx * 4) = vget<4>(v, e);
            if (++l == d) { l = 0; ++k; }
          }
        }
      });
    } else if constexpr (MODE == kLVec) {
      constexpr int LQ = L / V, UNITS = R * (BK / 2) * LQ;
      for_units<UNITS, NT>(tid, [&](int u) {
        const int lq = u % LQ, t = u / LQ, kp = t % (BK / 2), r = t / (BK / 2);
        const char* p = raw + ((r * BK + 2 * kp) * L + lq * V) * SZ;
        const uint4 v0 = lds16(p), v1 = lds16(p + L * SZ);
#pragma unroll
        for (int e = 0; e < V; ++e) st_pair_v<SZ>(comp, ((lq * V + e) * R + r) * SK + 2 * kp, v0, e, v1, e);
      });
    } else if constexpr (MODE == kRVec) {
      constexpr int RQ = R / V, UNITS = (BK / 2) * RQ * L;
      for_units<UNITS, NT>(tid, [&](int u) {
        // k pairs fastest across lanes: consecutive words of the compute rows.
        const int kp = u % (BK / 2), t = u / (BK / 2), rq = t % RQ, l = t / RQ;
        const char* p = raw + ((l * BK + 2 * kp) * RM + rq * V) * SZ;
        const uint4 v0 = lds16(p), v1 = lds16(p + RM * SZ);
#pragma unroll
        for (int e = 0; e < V; ++e) st_pair_v<SZ>(comp, (l * R + rq * V + e) * SK + 2 * kp, v0, e, v1, e);
      });
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Tensor-core compute: warp tile WM x WN of one l plane; mma.sync m16n8k16 (fp16/bf16) or
// m16n8k8 tf32 (float). Shared tiles are [l][row][SK] with k contiguous.
template <typename T> struct MmaOp;
// fp16 and bf16 differ only in the PTX type name.
#define KS_MMA_16816(CT, PTXT)                                                                        \
  template <> struct MmaOp<CT> {                                                                     \
    __device__ __forceinline__ static void run(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) { \
      asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." PTXT "." PTXT                            \
                   ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"                         \
                   : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                                   \
                   : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));                    \
    }                                                                                                \
  };
KS_MMA_16816(__nv_bfloat16, "bf16")
KS_MMA_16816(__half, "f16")
#undef KS_MMA_16816
template <> struct MmaOp<float> {  // tf32
  __device__ __forceinline__ static void run(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

template <typename T> __device__ __forceinline__ T from_float_t(float v);
template <> __device__ __forceinline__ float from_float_t<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float_t<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float_t<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, const void* p) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

template <typename T, int BM_, int BN_, int BK_, int L_, int WM, int WN, int STAGES_>
struct MmaPolicy {
  static constexpr int STAGES = STAGES_;
  using Elem = T;
  static constexpr bool kTF32 = sizeof(T) == 4;
  static constexpr int BM = BM_, BN = BN_, BK = BK_, L = L_;
  static constexpr int WARPS_M = BM / WM, WARPS_N = BN / WN;
  static constexpr int NT = 32 * L * WARPS_M * WARPS_N;
  static constexpr int MINB = NT <= 128 ? 3 : NT <= 256 ? 2 : 1;  // 168 / 128 / 128 registers at most
  static constexpr int SK = BK + 8;  // 16-bit: 16-byte pad (ldmatrix conflict-free);
                                     // fp32: SK = 8 mod 32 words (LDS.64 fragments conflict-free)
  static constexpr int MF = WM / 16, NF = WN / 8;
  static_assert(WM % 16 == 0 && WN % 16 == 0 && BM % WM == 0 && BN % WN == 0, "tile");
  static_assert(!kTF32 || BK == 16, "tf32 tiles use BK = 16");

  float acc[MF][NF][4];
  int lw, wm0, wn0, lane;

  __device__ __forceinline__ void init(int tid) {
    const int warp = tid >> 5;
    lane = tid & 31;
    wn0 = (warp % WARPS_N) * WN;
    wm0 = ((warp / WARPS_N) % WARPS_M) * WM;
    lw = warp / (WARPS_N * WARPS_M);
#pragma unroll
    for (int a = 0; a < MF; ++a)
#pragma unroll
      for (int b = 0; b < NF; ++b)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[a][b][c] = 0.f;
  }

  __device__ __forceinline__ void compute(const T* sA, const T* sW, int kv, int lv, int nv) {
    if (lw >= lv) return;
    const int nvw = nv - wn0;
    if (nvw <= 0) return;
    const T* A = sA + lw * BM * SK;
    const T* W = sW + lw * BN * SK;
    if constexpr (!kTF32) {
#pragma unroll
      for (int ks = 0; ks < BK / 16; ++ks) {
        if (ks * 16 < kv) {
          uint32_t af[MF][4];
#pragma unroll
          for (int mf = 0; mf < MF; ++mf)
            ldmatrix_x4(af[mf], A + (wm0 + mf * 16 + (lane & 15)) * SK + ks * 16 + (lane >> 4) * 8);
#pragma unroll
          for (int np = 0; np < WN / 16; ++np) {
            if (np * 16 < nvw) {
              uint32_t bf[4];
              ldmatrix_x4(bf, W + (wn0 + np * 16 + (lane & 7) + ((lane >> 4) << 3)) * SK + ks * 16 +
                                  ((lane >> 3) & 1) * 8);
#pragma unroll
              for (int mf = 0; mf < MF; ++mf) {
                MmaOp<T>::run(acc[mf][2 * np], af[mf], bf[0], bf[1]);
                MmaOp<T>::run(acc[mf][2 * np + 1], af[mf], bf[2], bf[3]);
              }
            }
          }
        }
      }
    } else {
      const int g = lane >> 2, t = lane & 3;
#pragma unroll
      for (int ks = 0; ks < BK / 8; ++ks) {
        if (ks * 8 < kv) {
          // k permuted inside each k8 step (physical 2t, 2t+1 <-> logical t, t+4), the same for
          // both operands, so each fragment pair is one 8-byte load.
          uint32_t af[MF][4];
#pragma unroll
          for (int mf = 0; mf < MF; ++mf) {
            const uint2 lo = *reinterpret_cast<const uint2*>(A + (wm0 + mf * 16 + g) * SK + ks * 8 + 2 * t);
            const uint2 hi = *reinterpret_cast<const uint2*>(A + (wm0 + mf * 16 + g + 8) * SK + ks * 8 + 2 * t);
            af[mf][0] = to_tf32(lo.x); af[mf][1] = to_tf32(hi.x);
            af[mf][2] = to_tf32(lo.y); af[mf][3] = to_tf32(hi.y);
          }
#pragma unroll
          for (int nf = 0; nf < NF; ++nf) {
            if (nf * 8 < nvw) {
              const uint2 bb = *reinterpret_cast<const uint2*>(W + (wn0 + nf * 8 + g) * SK + ks * 8 + 2 * t);
              const uint32_t b0 = to_tf32(bb.x), b1 = to_tf32(bb.y);
#pragma unroll
              for (int mf = 0; mf < MF; ++mf) MmaOp<T>::run(acc[mf][nf], af[mf], b0, b1);
            }
          }
        }
      }
    }
  }

  // Batch-first, L == 1: writes the accumulators straight to y (row m at yrow + m*y_sm), in
  // pairs (j, j+1) where aligned.
  __device__ __forceinline__ void store_direct(T* yrow, int64_t y_sm, int rv, int nv, bool pair_ok) const {
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int mf = 0; mf < MF; ++mf)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int m = wm0 + mf * 16 + g + 8 * h;
        if (m >= rv) continue;
        T* yr = yrow + m * y_sm;
#pragma unroll
        for (int nf = 0; nf < NF; ++nf) {
          const int j = wn0 + nf * 8 + 2 * t;
          const float v0 = acc[mf][nf][2 * h], v1 = acc[mf][nf][2 * h + 1];
          if (pair_ok && j + 1 < nv) {
            if constexpr (sizeof(T) == 4) {
              *reinterpret_cast<float2*>(yr + j) = make_float2(v0, v1);
            } else {
              T pr[2] = {from_float_t<T>(v0), from_float_t<T>(v1)};
              *reinterpret_cast<uint32_t*>(yr + j) = *reinterpret_cast<const uint32_t*>(pr);
            }
          } else {
            if (j < nv) yr[j] = from_float_t<T>(v0);
            if (j + 1 < nv) yr[j + 1] = from_float_t<T>(v1);
          }
        }
      }
  }

  // Calls f(l, m, j, value) for every accumulator of this thread (l < lv only).
  template <class F>
  __device__ __forceinline__ void for_each(int lv, F&& f) const {
    if (lw >= lv) return;
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int mf = 0; mf < MF; ++mf)
#pragma unroll
      for (int nf = 0; nf < NF; ++nf)
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int e = 0; e < 2; ++e)
            f(lw, wm0 + mf * 16 + g + 8 * h, wn0 + nf * 8 + 2 * t + e, acc[mf][nf][2 * h + e]);
  }
};

// Strict fp32 SIMT: thread tile 8 (m) x TN (j) of one l plane, CT threads across j.
// L * BM == 128 rows of A per block: thread row-group rt -> (l = rt / (BM/8), m = rt % (BM/8)).
template <int BM_, int BN_, int L_, int TN, int CT, int STAGES_>
struct SimtPolicy {
  static constexpr int STAGES = STAGES_;
  using Elem = float;
  static constexpr int BM = BM_, BN = BN_, BK = 16, L = L_;
  static constexpr int TM = 8, RPT = BM / TM;
  static constexpr int NT = L * RPT * CT;
  static constexpr int MINB = NT <= 128 ? 3 : 1;
  static constexpr int SK = BK + 4;  // 80-byte rows: 16-byte loads of 8 consecutive rows conflict-free
  static_assert(BN == TN * CT && BM % TM == 0, "tile");

  float acc[TM][TN];
  int ct, l, mloc;

  __device__ __forceinline__ void init(int tid) {
    ct = tid % CT;
    const int rt = tid / CT;
    l = rt / RPT;
    mloc = rt % RPT;
#pragma unroll
    for (int r = 0; r < TM; ++r)
#pragma unroll
      for (int s = 0; s < TN; ++s) acc[r][s] = 0.f;
  }

  __device__ __forceinline__ void compute(const float* sA, const float* sW, int kv, int lv, int nv) {
    (void)nv;
    if (l >= lv) return;
    const float* A = sA + (l * BM + mloc) * SK;
    const float* W = sW + (l * BN + ct) * SK;
#pragma unroll
    for (int kq = 0; kq < BK / 4; ++kq) {
      if (kq * 4 < kv) {
        float4 bv[TN];
#pragma unroll
        for (int s = 0; s < TN; ++s) bv[s] = *reinterpret_cast<const float4*>(W + s * CT * SK + kq * 4);
#pragma unroll
        for (int r = 0; r < TM; ++r) {
          const float4 av = *reinterpret_cast<const float4*>(A + r * RPT * SK + kq * 4);
#pragma unroll
          for (int s = 0; s < TN; ++s) {
            float v = acc[r][s];
            v = fmaf(av.x, bv[s].x, v);
            v = fmaf(av.y, bv[s].y, v);
            v = fmaf(av.z, bv[s].z, v);
            v = fmaf(av.w, bv[s].w, v);
            acc[r][s] = v;
          }
        }
      }
    }
  }

  __device__ __forceinline__ void store_direct(float* yrow, int64_t y_sm, int rv, int nv, bool) const {
#pragma unroll
    for (int r = 0; r < TM; ++r) {
      const int m = mloc + r * RPT;
      if (m >= rv) continue;
#pragma unroll
      for (int s = 0; s < TN; ++s) {
        const int j = ct + s * CT;
        if (j < nv) yrow[m * y_sm + j] = acc[r][s];
      }
    }
  }

  template <class F>
  __device__ __forceinline__ void for_each(int lv, F&& f) const {
    if (l >= lv) return;
#pragma unroll
    for (int r = 0; r < TM; ++r)
#pragma unroll
      for (int s = 0; s < TN; ++s) f(l, mloc + r * RPT, ct + s * CT, acc[r][s]);
  }
};

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Layout classes: one kernel each, so that only one load mode's address arithmetic is live.
//   kFastBF / kFastBL: 16-byte cp.async loads, x in its batch-first / batch-last order;
//   kGenBF / kGenBL:   same, for d <= L that is not a fast case (d = 3, 5, 6, 7 ...);
//   kScalar:           register-staged element loads (misaligned or odd strides).
enum Variant : int { kFastBF = 0, kFastBL = 1, kScalar = 2, kGenBF = 3, kGenBL = 4 };

template <class P, int VARIANT>
struct Modes {
  using T = typename P::Elem;
  static constexpr int V = 16 / sizeof(T);
  static constexpr int L = P::L;
  static constexpr int FAST = L == 1 ? kKVec : (2 * L <= V ? kKLVec : kLVec);
  static constexpr int A = VARIANT == kFastBF ? FAST
                           : VARIANT == kGenBF ? kKLGen
                           : (VARIANT == kFastBL || VARIANT == kGenBL) ? kRVec
                                                                       : kScalarL;
  static constexpr int W = VARIANT == kScalar ? kScalarL : (VARIANT == kGenBF || VARIANT == kGenBL) ? kKLGen : FAST;
};

template <int VARIANT>
__host__ __device__ constexpr bool is_bl() { return VARIANT == kFastBL || VARIANT == kGenBL; }

// Shared memory of one block: cp.async ring + transposed compute tiles + epilogue staging
// (none where L == 1 batch-first writes y straight from registers); the scalar variant keeps
// its double buffer and stages the epilogue in it.
template <class P, int VARIANT>
struct SmemPlan {
  using T = typename P::Elem;
  static constexpr int SZ = sizeof(T), V = 16 / SZ;
  static constexpr int BM = P::BM, BN = P::BN, BK = P::BK, L = P::L, NT = P::NT, SK = P::SK;
  static constexpr size_t STAGE_BF = (size_t)BM * (BN * L + V) * SZ;
  static constexpr size_t STAGE_BL = (size_t)BN * L * (BM + V) * SZ;
  static constexpr bool DIRECT = VARIANT != kScalar && !is_bl<VARIANT>() && L == 1;
  __host__ __device__ static constexpr size_t stage_bytes() {
    return VARIANT == kScalar ? (STAGE_BF > STAGE_BL ? STAGE_BF : STAGE_BL)
           : DIRECT           ? 0
           : is_bl<VARIANT>() ? STAGE_BL
                              : STAGE_BF;
  }
  __host__ __device__ static constexpr size_t ring_bytes() {
    if constexpr (VARIANT == kScalar) {
      return 2ull * L * (BM + BN) * SK * SZ;
    } else {
      using MD = Modes<P, VARIANT>;
      using LA = AsyncLoader<SZ, BM, BK, L, NT, SK, MD::A>;
      using LW = AsyncLoader<SZ, BN, BK, L, NT, SK, MD::W>;
      return (size_t)P::STAGES * (LA::RAW_EL + LW::RAW_EL) * SZ;
    }
  }
  __host__ __device__ static constexpr size_t comp_bytes() {
    if constexpr (VARIANT == kScalar) {
      return 0;
    } else {
      using MD = Modes<P, VARIANT>;
      using LA = AsyncLoader<SZ, BM, BK, L, NT, SK, MD::A>;
      using LW = AsyncLoader<SZ, BN, BK, L, NT, SK, MD::W>;
      return (size_t)(LA::COMP_EL + LW::COMP_EL) * SZ;
    }
  }
  // Scalar: staging overlays the double buffer. Async: staging overlays the transposed compute
  // tiles (free between a tile's last multiply and the next step's transposition), never the
  // ring, whose next stages are in flight during the epilogue.
  __host__ __device__ static constexpr size_t stage_offset() { return VARIANT == kScalar ? 0 : ring_bytes(); }
  __host__ __device__ static constexpr size_t bytes() {
    return VARIANT == kScalar ? (ring_bytes() > stage_bytes() ? ring_bytes() : stage_bytes())
                              : ring_bytes() + (comp_bytes() > stage_bytes() ? comp_bytes() : stage_bytes());
  }
};

struct TileCoord {
  int64_t m0, i;
  int j0, l0, rv, nv, lv;
};

template <class P>
__device__ __forceinline__ TileCoord tile_coord(const TileParams& p, int64_t t64) {
  // Order: j-tile, l-group, i fastest; m-tile slowest: the tiles in flight together cover whole
  // rows of x and y (DRAM page locality) and share x sectors across l-groups.
  TileCoord tc;
  uint32_t t = (uint32_t)t64;
  uint32_t q = p.fd_n.div(t);
  const int jt = (int)(t - q * p.fd_n.d);
  t = q;
  q = p.fd_l.div(t);
  const int lt = (int)(t - q * p.fd_l.d);
  t = q;
  q = p.fd_a.div(t);
  tc.i = (int64_t)(t - q * p.fd_a.d);
  const int64_t mt = q;
  tc.m0 = mt * P::BM;
  tc.j0 = jt * P::BN;
  tc.l0 = lt * P::L;
  tc.rv = (int)(p.batch - tc.m0 < P::BM ? p.batch - tc.m0 : P::BM);
  tc.nv = min(P::BN, p.b - tc.j0);
  tc.lv = min(P::L, p.d - tc.l0);
  return tc;
}

// Writes the block's accumulators to y: straight from registers (batch-first, L == 1) or through
// the staging buffer cs in y's own order, then 16-byte coalesced stores where aligned.
template <class P, bool BL, bool DIRECT>
__device__ __forceinline__ void tile_epilogue(const P& pol, const TileParams& p, const TileCoord& tc,
                                              typename P::Elem* cs, int tid) {
  using T = typename P::Elem;
  constexpr int V = 16 / sizeof(T);
  constexpr int BM = P::BM, BN = P::BN, L = P::L, NT = P::NT;
  T* yg = static_cast<T*>(p.y);
  const int d = p.d, rv = tc.rv, nv = tc.nv, lv = tc.lv;
  if constexpr (DIRECT) {
    pol.store_direct(yg + tc.m0 * p.y_sm + tc.i * p.b + tc.j0, p.y_sm, rv, nv, p.y_pair != 0);
  } else if constexpr (!BL) {
    constexpr int RS = BN * L + V;  // staged (m, j, l) at m*RS + j*L + l
    __syncthreads();  // cs overlays the compute tiles: every warp has finished multiplying
    pol.for_each(lv, [&](int l, int m, int j, float v) { cs[m * RS + j * L + l] = from_float<T>(v); });
    __syncthreads();
    const int64_t ybase = tc.m0 * p.y_sm + (tc.i * p.b + tc.j0) * d + tc.l0;
    if (lv == L && L == d && p.y_vec) {
      // Row m: one contiguous run of nv*L elements.
      constexpr int CPR = BN * L / V;
      const int run = nv * L;
      for (int u = tid; u < BM * CPR; u += NT) {
        const int r = u / CPR, e0 = (u % CPR) * V;
        if (r < rv && e0 < run) {
          T* gp = yg + ybase + r * p.y_sm + e0;
          const T* sp = cs + r * RS + e0;
          if (e0 + V <= run) *reinterpret_cast<uint4*>(gp) = *reinterpret_cast<const uint4*>(sp);
          else for (int e = 0; e < run - e0; ++e) gp[e] = sp[e];
        }
      }
    } else if (lv == L && L < d && p.y_vec) {
      // (m, j): a run of L elements (L % V == 0 here).
      constexpr int CPR = L / V > 0 ? L / V : 1;
      for (int u = tid; u < BM * BN * CPR; u += NT) {
        const int ch = u % CPR, t = u / CPR, j = t % BN, r = t / BN;
        if (r < rv && j < nv) {
          *reinterpret_cast<uint4*>(yg + ybase + r * p.y_sm + (int64_t)j * d + ch * V) =
              *reinterpret_cast<const uint4*>(cs + r * RS + j * L + ch * V);
        }
      }
    } else {
      for (int u = tid; u < BM * BN * L; u += NT) {
        const int l = u % L, t = u / L, j = t % BN, r = t / BN;
        if (r < rv && j < nv && l < lv) yg[ybase + r * p.y_sm + (int64_t)j * d + l] = cs[r * RS + j * L + l];
      }
    }
  } else {
    constexpr int RS = BM + V;  // staged (j, l, m) at (j*L + l)*RS + m
    __syncthreads();  // cs overlays the compute tiles: every warp has finished multiplying
    pol.for_each(lv, [&](int l, int m, int j, float v) { cs[(j * L + l) * RS + m] = from_float<T>(v); });
    __syncthreads();
    const int64_t B = p.batch;
    const int64_t rbase = (tc.i * p.b + tc.j0) * d + tc.l0;  // y row of (j, l) = rbase + j*d + l
    if (p.y_vec) {
      constexpr int CPR = BM / V;
      for (int u = tid; u < BN * L * CPR; u += NT) {
        const int e0 = (u % CPR) * V, q = u / CPR, l = q % L, j = q / L;
        if (j < nv && l < lv && e0 < rv) {
          T* gp = yg + (rbase + (int64_t)j * d + l) * B + tc.m0 + e0;
          const T* sp = cs + q * RS + e0;
          if (e0 + V <= rv) *reinterpret_cast<uint4*>(gp) = *reinterpret_cast<const uint4*>(sp);
          else for (int e = 0; e < rv - e0; ++e) gp[e] = sp[e];
        }
      }
    } else {
      for (int u = tid; u < BN * L * BM; u += NT) {
        const int m = u % BM, q = u / BM, l = q % L, j = q / L;
        if (j < nv && l < lv && m < rv) yg[(rbase + (int64_t)j * d + l) * B + tc.m0 + m] = cs[q * RS + m];
      }
    }
  }
}

template <class P, int VARIANT>
__global__ void __launch_bounds__(P::NT, VARIANT == kScalar ? 1 : P::MINB) ks_tile_kernel(const TileParams p) {
  using T = typename P::Elem;
  constexpr int SZ = sizeof(T);
  constexpr int BM = P::BM, BN = P::BN, BK = P::BK, L = P::L, NT = P::NT, SK = P::SK;
  using MD = Modes<P, VARIANT>;
  using SP = SmemPlan<P, VARIANT>;
  constexpr bool BL = is_bl<VARIANT>();

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* smem = reinterpret_cast<T*>(smem_raw);
  T* cs = reinterpret_cast<T*>(smem_raw + SP::stage_offset());
  const int tid = threadIdx.x;
  const int c = p.c, d = p.d;
  const int KT = cdiv(c, BK);
  const int64_t w_sr = (int64_t)c * d;
  P pol;

  if constexpr (VARIANT == kScalar) {
    // Register-staged double buffer, one tile after another (misaligned / odd layouts only).
    constexpr int A_EL = L * BM * SK, W_EL = L * BN * SK;
    using LA = TileLoader<SZ, BM, BK, L, NT, SK, MD::A>;
    using LW = TileLoader<SZ, BN, BK, L, NT, SK, MD::W>;
    const bool a_lfast = !p.batch_last;  // x element pairs: l (then k) fastest unless batch-last
    for (int64_t t = blockIdx.x; t < p.tiles; t += gridDim.x) {
      const TileCoord tc = tile_coord<P>(p, t);
      const T* xg = static_cast<const T*>(p.x) + tc.i * p.x_si + tc.m0 * p.x_sm + tc.l0 * p.x_sl;
      const T* wg = static_cast<const T*>(p.w) + (tc.i * p.b + tc.j0) * w_sr + tc.l0;
      pol.init(tid);
      LA la;
      LW lw;
      __syncthreads();  // the previous tile's epilogue has read the staging (= operand) smem
      la.load(xg, p.x_sm, p.x_sk, p.x_sl, tc.rv, min(BK, c), tc.lv, a_lfast, tid);
      lw.load(wg, w_sr, d, 1, tc.nv, min(BK, c), tc.lv, true, tid);
      la.store(smem, a_lfast, tid);
      lw.store(smem + A_EL, true, tid);
      __syncthreads();
      for (int kt = 0; kt < KT; ++kt) {
        const int cur = kt & 1;
        const bool more = kt + 1 < KT;
        if (more) {
          const int k1 = (kt + 1) * BK;
          const int kv1 = min(BK, c - k1);
          la.load(xg + k1 * p.x_sk, p.x_sm, p.x_sk, p.x_sl, tc.rv, kv1, tc.lv, a_lfast, tid);
          lw.load(wg + (int64_t)k1 * d, w_sr, d, 1, tc.nv, kv1, tc.lv, true, tid);
        }
        const T* sA = smem + cur * (A_EL + W_EL);
        pol.compute(sA, sA + A_EL, min(BK, c - kt * BK), tc.lv, tc.nv);
        if (more) {
          T* nA = smem + (cur ^ 1) * (A_EL + W_EL);
          la.store(nA, a_lfast, tid);
          lw.store(nA + A_EL, true, tid);
        }
        __syncthreads();
      }
      if (p.batch_last) tile_epilogue<P, true, false>(pol, p, tc, cs, tid);
      else tile_epilogue<P, false, false>(pol, p, tc, cs, tid);
    }
  } else {
    // Persistent blocks: tiles blockIdx.x, +gridDim.x, ... flattened into one stream of
    // (tile, k-step) steps; a cp.async ring of STAGES raw stages keeps steps s+1 .. s+STAGES-1
    // in flight while step s is transposed (if its raw order is not the compute order) and
    // multiplied, across tile boundaries, so one tile's epilogue overlaps the next one's loads.
    constexpr int S = P::STAGES;
    using LA = AsyncLoader<SZ, BM, BK, L, NT, SK, MD::A>;
    using LW = AsyncLoader<SZ, BN, BK, L, NT, SK, MD::W>;
    constexpr int STAGE_EL = LA::RAW_EL + LW::RAW_EL;
    T* compA = smem + S * STAGE_EL;
    T* compW = compA + LA::COMP_EL;
    char* ring = reinterpret_cast<char*>(smem);
    const int64_t my_tiles = p.tiles > blockIdx.x ? (p.tiles - blockIdx.x + gridDim.x - 1) / gridDim.x : 0;
    const int64_t nsteps = my_tiles * KT;

    // Issue side: the tile whose stages are being requested.
    int64_t is = 0;  // next step to issue
    int islot = 0;   // its ring slot (is % S)
    int ikt = KT;    // its k-step within the issue tile (KT: decode the next tile first)
    int64_t itile = (int64_t)blockIdx.x - gridDim.x;
    const T* ixg = nullptr;
    const T* iwg = nullptr;
    int irv = 0, inv = 0, ilv = 0;
    auto issue_next = [&]() {
      if (is < nsteps) {
        if (ikt == KT) {
          itile += gridDim.x;
          const TileCoord tc = tile_coord<P>(p, itile);
          ixg = static_cast<const T*>(p.x) + tc.i * p.x_si + tc.m0 * p.x_sm + tc.l0 * p.x_sl;
          iwg = static_cast<const T*>(p.w) + (tc.i * p.b + tc.j0) * w_sr + tc.l0;
          irv = tc.rv; inv = tc.nv; ilv = tc.lv;
          ikt = 0;
        }
        const int k0 = ikt * BK, kv = min(BK, c - k0);
        char* st = ring + islot * (STAGE_EL * SZ);
        LA::issue(st, reinterpret_cast<const char*>(ixg + k0 * p.x_sk), p.x_sm, p.x_sk, p.x_sl, irv, kv, ilv, d, tid);
        LW::issue(st + LA::RAW_EL * SZ, reinterpret_cast<const char*>(iwg + (int64_t)k0 * d), w_sr, d, 1, inv, kv, ilv, d, tid);
        ++ikt;
      }
      ++is;
      if (++islot == S) islot = 0;
      cp_async_commit();
    };
#pragma unroll
    for (int s = 0; s < S - 1; ++s) issue_next();

    int64_t ctile = blockIdx.x;
    TileCoord tc = tile_coord<P>(p, ctile);
    int kt = 0, cslot = 0;
    pol.init(tid);
    for (int64_t step = 0; step < nsteps; ++step) {
      cp_async_wait<S - 2>();
      __syncthreads();  // step landed for every thread; step-1 fully consumed
      issue_next();
      const T* st = smem + cslot * STAGE_EL;
      if (++cslot == S) cslot = 0;
      if constexpr (!LA::NATURAL || !LW::NATURAL) {
        if constexpr (!LA::NATURAL) LA::transpose(reinterpret_cast<const char*>(st), reinterpret_cast<char*>(compA), d, tid);
        if constexpr (!LW::NATURAL) LW::transpose(reinterpret_cast<const char*>(st + LA::RAW_EL), reinterpret_cast<char*>(compW), d, tid);
        __syncthreads();
      }
      pol.compute(LA::NATURAL ? st : compA, LW::NATURAL ? st + LA::RAW_EL : compW, min(BK, c - kt * BK), tc.lv, tc.nv);
      if (++kt == KT) {
        tile_epilogue<P, BL, SP::DIRECT>(pol, p, tc, cs, tid);
        kt = 0;
        ctile += gridDim.x;
        if (ctile < p.tiles) tc = tile_coord<P>(p, ctile);
        pol.init(tid);
      }
    }
    cp_async_wait<0>();
  }
}

inline int sm_count() {
  static int cache[64] = {0};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 132;
  if (dev < 64 && cache[dev]) return cache[dev];
  int n = 0;
  if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n <= 0) n = 132;
  if (dev < 64) cache[dev] = n;
  return n;
}

template <class P, int VARIANT>
cudaError_t launch_variant(const TileParams& q, cudaStream_t stream) {
  constexpr size_t smem = SmemPlan<P, VARIANT>::bytes();
  static_assert(smem <= 227 * 1024, "shared memory");
  auto kern = ks_tile_kernel<P, VARIANT>;
  static int blocks_per_sm[64] = {0};  // per device: attribute set and occupancy read once
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return e;
  int per_sm = dev < 64 ? blocks_per_sm[dev] : 0;
  if (per_sm == 0) {
    if (smem > 48 * 1024) {
      e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
      if (e != cudaSuccess) return e;
    }
    e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, P::NT, smem);
    if (e != cudaSuccess) return e;
    if (per_sm < 1) per_sm = 1;
    if (dev < 64) blocks_per_sm[dev] = per_sm;
  }
  const int64_t resident = (int64_t)per_sm * sm_count();
  const int64_t gx = q.tiles < resident ? q.tiles : resident;
  kern<<<dim3((unsigned)gx), P::NT, smem, stream>>>(q);
  return cudaGetLastError();
}

// Host side: launches one tile configuration (p.variant picks the load class). GEN: whether the
// configuration has the kGenBF/kGenBL kernels (L >= 4).
template <class P, bool GEN>
cudaError_t launch_tile(const TileParams& p, cudaStream_t stream) {
  TileParams q = p;
  q.tiles_m = (p.batch + P::BM - 1) / P::BM;
  q.tiles_n = cdiv(p.b, P::BN);
  q.tiles_l = cdiv(p.d, P::L);
  q.tiles = q.tiles_m * q.tiles_n * q.tiles_l * p.a;
  if (q.tiles <= 0) return cudaSuccess;
  if (q.tiles >= 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  q.fd_n = FastDiv((uint32_t)q.tiles_n);
  q.fd_l = FastDiv((uint32_t)q.tiles_l);
  q.fd_a = FastDiv((uint32_t)p.a);
  switch (p.variant) {
    case kFastBF: return launch_variant<P, kFastBF>(q, stream);
    case kFastBL: return launch_variant<P, kFastBL>(q, stream);
    case kGenBF:
      if constexpr (GEN) return launch_variant<P, kGenBF>(q, stream);
      break;
    case kGenBL:
      if constexpr (GEN) return launch_variant<P, kGenBL>(q, stream);
      break;
    default: break;
  }
  return launch_variant<P, kScalar>(q, stream);
}

}  // namespace detail
}  // namespace ks
