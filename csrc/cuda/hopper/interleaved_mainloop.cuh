// The consumer mainloop of the interleaved GEMM: one warpgroup's 64 rows x (BN columns x D planes)
// of fp32 accumulators over a tile's k loop, A fragments built in registers from interleaved rows
// in shared memory (interleaved_tile.cuh), B = the planes of w streamed in stages. Shared by the
// interleaved kernel (x streamed in the same stages as w) and the fused chain's second factor (x =
// the intermediate resident in shared memory). Device code only; bare nvcc compiles it.
#pragma once
#include <cstdint>
#include <type_traits>

#include "interleaved_tile.cuh"
#include "ptx.cuh"

namespace ks {
namespace hopper {

// The tile shape of one mainloop: accumulators, A-fragment loads, the w tiles' layout.
template <int D_, int BN_, int BK_, int FragSets_>
struct MainloopShape {
  static constexpr int D = D_;
  static constexpr int kBN = BN_;                // columns per plane
  static constexpr int kBK = BK_;                // k per stage: kBK / 16 steps
  static constexpr int kFragSets = FragSets_;    // A-fragment sets (see below)
  static constexpr int kWSwizzle = kBK * 2;      // the w tiles' rows: 128, 64 or 32 bytes
  static constexpr int kWPlaneBytes = kBN * kBK * 2;
  // Bytes per A-fragment load: the 2d elements (k, k + 1) x all planes start 4d bytes apart (k even).
  static constexpr int kLoadWords = D % 4 == 0 ? 4 : D % 2 == 0 ? 2 : 1;
  static constexpr int kSteps = kBK / 16;
};

// acc += A B over k_tiles stages. Callbacks (all inlined):
//   next_stage() -> st: waits until stage st is full and returns it (stages in order);
//   x_of(kt, st) -> the shared address of k tile kt's interleaved x boxes ([rows][64], box_bytes
//     apart; element e of a row at box e / 64);
//   w_of(st) -> the shared address of stage st's w tiles (D planes [kBN][kBK], kWPlaneBytes apart);
//   release(st): the warpgroup no longer reads stage st (called once its last wgmma completed).
// Two sets of A fragments (kFragSets = 2): step s builds set s % 2 while step s - 1's wgmmas still
// read the other; wgmma_wait<1> after each step leaves only the newest step in flight. With one set
// the step's loads still overlap the previous step's wgmmas.
template <typename T, typename S, typename NextStage, typename XOf, typename WOf, typename Release>
__device__ __forceinline__ void interleaved_mainloop(float (&acc)[S::D][S::kBN / 2], int k_tiles, int row0, int q,
                                                     int box_bytes, NextStage&& next_stage, XOf&& x_of, WOf&& w_of,
                                                     Release&& release) {
  constexpr int D = S::D;
  constexpr bool kBf16 = std::is_same<T, __nv_bfloat16>::value;
  uint32_t frag[S::kFragSets][D][4];
  int pending = -1;  // the stage of the step in flight when that step was its stage's last

  // One k16 step: fragments of step ks of stage st into set `buf`, then its D wgmmas.
  auto step = [&](int st, int kt, int ks, auto buf_c, bool last_of_stage) {
    constexpr int buf = decltype(buf_c)::value % S::kFragSets;
    const uint32_t xb = x_of(kt, st);
    const uint32_t wb = w_of(st);
    uint32_t raw[4][D];  // the (k, k + 1) x all planes runs of the 4 fragment positions
    load_pair_runs<D, S::kLoadWords>(xb, box_bytes, row0, q, ks, raw);
    if constexpr (S::kFragSets == 1) {  // the previous step's wgmmas still read the one set
      wgmma_wait<0>();
#pragma unroll
      for (int g = 0; g < D; ++g) fence_registers(acc[g]);
      if (pending >= 0) release(pending);
      pending = -1;
    }
#pragma unroll
    for (int g = 0; g < D; ++g) fence_registers(frag[buf][g]);
    sort_pairs<D>(raw, frag[buf]);
    // The descriptors too are computed before the fence: an address computed between two
    // wgmmas of the step serialises them (ptxas C7513).
    uint64_t desc[D];
#pragma unroll
    for (int g = 0; g < D; ++g) {
      desc[g] = wgmma_desc_k<S::kWSwizzle>(wb + g * S::kWPlaneBytes) + 2 * ks;
      asm volatile("" : "+l"(desc[g]));
    }
    wgmma_fence();
#pragma unroll
    for (int g = 0; g < D; ++g) {
      fence_registers(acc[g]);
      fence_registers(frag[buf][g]);
    }
#pragma unroll
    for (int g = 0; g < D; ++g) wgmma_rs<kBf16, S::kBN>(acc[g], frag[buf][g], desc[g]);
    wgmma_commit();
    wgmma_wait<1>();  // the previous step is done: its fragments and, if it ended a stage, its stage
#pragma unroll
    for (int g = 0; g < D; ++g) {
      fence_registers(acc[g]);
      fence_registers(frag[buf][g]);
    }
    if (pending >= 0) release(pending);
    pending = last_of_stage ? st : -1;
  };
  // Consecutive steps alternate fragment sets; with one step per stage, stages go in pairs.
  using B0 = std::integral_constant<int, 0>;
  using B1 = std::integral_constant<int, 1>;
  if constexpr (S::kSteps % 2 == 0) {
    for (int kt = 0; kt < k_tiles; ++kt) {
      const int st = next_stage();
      // Not unrolled: with four steps unrolled (d = 3) ptxas moves fragment builds between the
      // wgmmas of a step and serialises them (C7513).
#pragma unroll 1
      for (int ks = 0; ks < S::kSteps; ks += 2) {
        step(st, kt, ks, B0{}, false);
        step(st, kt, ks + 1, B1{}, ks + 2 == S::kSteps);
      }
    }
  } else {
    static_assert(S::kSteps == 1, "steps per stage");
    int kt = 0;
    for (; kt + 1 < k_tiles; kt += 2) {
      step(next_stage(), kt, 0, B0{}, true);
      step(next_stage(), kt + 1, 0, B1{}, true);
    }
    if (kt < k_tiles) step(next_stage(), kt, 0, B0{}, true);
  }
  wgmma_wait<0>();
#pragma unroll
  for (int g = 0; g < D; ++g) {
    fence_registers(acc[g]);
#pragma unroll
    for (int b = 0; b < S::kFragSets; ++b) fence_registers(frag[b][g]);
  }
  if (pending >= 0) release(pending);
}

// The epilogue's view of those accumulators: a consumer thread's run s, half h (fragment row
// row0 + 8h) holds the 2d consecutive outputs (8s + 2q) d .. + 2d - 1 of its tile row (element t is
// column 8s + 2q + t / d of plane t % d). Rounds them to T and hands them on in groups of
// kLoadWords words: put(e, words), e = the group's first output within the tile row.
template <typename T, typename S, typename Put>
__device__ __forceinline__ void pack_run(const float (&acc)[S::D][S::kBN / 2], int s, int h, int q, Put&& put) {
  constexpr int D = S::D, LW = S::kLoadWords;
  auto out = [&](int t) { return acc[t % D][4 * s + 2 * h + t / D]; };
  uint32_t v[D];
#pragma unroll
  for (int m = 0; m < D; ++m) v[m] = pack2<T>(out(2 * m), out(2 * m + 1));
  const int e = (8 * s + 2 * q) * D;
#pragma unroll
  for (int w = 0; w < D / LW; ++w) put(e + 2 * LW * w, &v[LW * w]);
}

}  // namespace hopper
}  // namespace ks
