// The one dispatch rule of ks::matmul: a pure function of the problem (pattern, batch, dtype,
// layout, device generation) that names the plan which runs it. No torch types, no device query,
// no environment: the CPU build compiles it too, so CI tests its decisions, and experiments pick a
// plan explicitly through the private op ks::_matmul_plan instead of switches.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>

namespace ks {

// Every way the op can run a product. The order is the ABI of ks::_plan_for's integer result
// (ks_ops/ops.py PLANS lists the same names in the same order).
enum class Plan : int {
  Fused = 0,       // the fused mma.sync / FMA / gemv kernels (csrc/cuda/ks_matmul.cu picks inside)
  Bmm = 1,         // the paper's method: permute x, ATen bmm over the a*d planes, permute y back
  Dense = 2,       // K materialized (abd x acd), one GEMM
  Strided = 3,     // cuBLAS batched GEMM on the planes where they lie (batch-last any d,
                   // batch-first d == 1): no copy of x or y
  BlockDense = 4,  // per block i, K's (bd x cd) diagonal block densified in l (one kernel); one
                   // strided-batched GEMM over i on x and y in place, d times the flops
  Transposed = 5,  // batch-first: x's rows transposed to (a, d, c), one strided-batched GEMM over
                   // the a*d planes, y's rows transposed back (ks_layout.cu)
  Interleaved = 6, // batch-first 16-bit on sm_90a, d in {2, 3, 4, 6, 8, 12}: the wgmma GEMM that reads x's rows
                   // and writes y's rows where they lie (csrc/cuda/hopper/interleaved_gemm.cu): one
                   // pass over each, the pattern's own flops
  Stream = 7,      // 16-bit on sm_90, decode-sized batches, both layouts: w read once as it lies, one launch
                   // (csrc/cuda/ks_stream.cu, stream_shape below)
};
constexpr int kNumPlans = 8;
constexpr const char* kPlanNames[kNumPlans] = {"fused",      "bmm",        "dense",       "strided",
                                               "blockdense", "transposed", "interleaved", "stream"};

inline const char* plan_name(Plan p) { return kPlanNames[static_cast<int>(p)]; }

// -1 when `name` names no plan.
inline int plan_index(const char* name) {
  for (int i = 0; i < kNumPlans; ++i)
    if (std::strcmp(name, kPlanNames[i]) == 0) return i;
  return -1;
}

enum class Precision : int { F64 = 0, F32 = 1, TF32 = 2, F16 = 3, BF16 = 4 };

inline bool is_16bit(Precision p) { return p == Precision::F16 || p == Precision::BF16; }

struct Problem {
  int64_t a, b, c, d;
  int64_t batch;
  Precision precision;
  bool batch_last;
  int sm;  // compute capability major * 10 + minor; 0 on the CPU
  // Whether the build holds the sm_90a (wgmma) kernels; ks::_plan_for describes such a build.
  bool sm90a_kernels = true;
};

// The Stream plan's launch (csrc/cuda/ks_stream.cu). Per block i and group of G planes (G = d for
// d <= 8, 8 for d % 8 == 0), the positions (k, l) of the group are one K dimension along
// which every row j of w is contiguous, and x's columns are spread over (row n, plane l): one GEMM
// of b x (B * Gp) x (c * G), G times the pattern's flops, which the tensor cores absorb while
// B * Gp <= 128 (Gp = G rounded up to a power of two; decode sizes are bound by w's bytes). Blocks
// of 16 * warps rows of w (one m16 tile per warp), or of 16 rows whose columns four warps share
// (col_parts); where the (i, group, row tile) units give fewer than two blocks per SM, clusters of
// `split` blocks share K (at least 32 positions each). Shared memory: the block's x rows (nb rows
// of k_slice positions), then, with a split, the slots its peers push their fp32 partials into.
constexpr int64_t kStreamMaxSmem = 160 * 1024;
constexpr int64_t kStreamMaxCols = 128;  // B * Gp

struct StreamShape {
  int group = 0;      // G
  int cols = 0;       // Gp = stream_cols(d): columns per x row
  int nt = 0;         // n8 tiles: N = 8 * nt >= B * Gp columns
  int nb = 0;         // x rows staged: N / G (>= B)
  int warps = 0;      // per block (128 threads at most)
  int col_parts = 0;  // warps sharing one m16 tile of w, each with nt / col_parts of the n8 tiles
  int row_tiles = 0;  // ceil(b / rows per block)
  int split = 0;      // blocks of a cluster over K (1, 2, 4 or 8)
  int k_slice = 0;    // K positions per block, a multiple of 32
  int xs_stride = 0;  // elements between staged x rows: 64 bytes mod 128, so that a quarter
                      // warp's 16-byte fragment loads (rows r, r + 1 x chunks q) hit distinct banks
  int depth = 0;      // 32-position steps of w in flight per thread: 4 where the grid is one
                      // wave (latency-bound), 2 where blocks queue (registers, occupancy)
  int64_t blocks = 0, smem = 0;
};

// G: every d up to 8, 8 for d % 8 == 0 (groups of 8 planes: 16-byte runs of each k), else 0.
inline int stream_group(int64_t d) { return d <= 8 ? static_cast<int>(d) : d % 8 == 0 ? 8 : 0; }

// Columns per row of x: G rounded up to a power of two (3 -> 4, 5, 6, 7 -> 8), so that a thread's
// plane is a constant of its lane; the padding planes' columns are computed on zeros and dropped.
inline int stream_cols(int64_t d) {
  const int g = stream_group(d);
  return g <= 1 ? g : g <= 2 ? 2 : g <= 4 ? 4 : 8;
}

// False where the kernel does not serve the problem (then no plan of this name runs it). `sms`
// only sets the split and the column parts; whether it serves does not depend on them. chain: the
// launch of ks::chain (ks_stream.cu stage_first_factor), whose blocks each recompute their share
// of the first factor, so it keeps one warp per m16 tile (more blocks would recompute more).
inline bool stream_shape(int64_t a, int64_t b, int64_t c, int64_t d, int64_t batch, int sms, StreamShape* out,
                         bool chain = false) {
  StreamShape s;
  s.group = stream_group(d);
  s.cols = stream_cols(d);
  const int64_t G = s.group;
  if (G == 0 || batch < 1 || batch * s.cols > kStreamMaxCols || (c * d) % 8 != 0) return false;
  if (a * b * d > 0x7fffffffLL || a * c * d > 0x7fffffffLL) return false;
  const int64_t cols = batch * s.cols;
  s.nt = cols <= 8 ? 1 : cols <= 16 ? 2 : cols <= 32 ? 4 : cols <= 64 ? 8 : 16;
  s.nb = static_cast<int>(8 * s.nt / s.cols);
  const int64_t warp_rows = 16;  // one m16 tile per warp (ks_stream.cu kMT)
  s.warps = b > 2 * warp_rows ? 4 : b > warp_rows ? 2 : 1;
  s.col_parts = 1;
  auto units_of = [&](int64_t rows) { return a * (d / G) * ((b + rows - 1) / rows); };
  // 64-128 columns where even a split of 8 leaves SMs idle ((1, 128, 128, 8) at 16 rows: 2 row
  // tiles x 8 = 16 blocks, each warp a serial stream of 16 n8 tiles x the k steps; ncu,
  // benchmarks/results/ncu10_h100): four warps share each m16 tile, a quarter of the columns each,
  // in blocks of 16 rows -- four times the warps on the same bytes of w (each warp loads its
  // tile's rows; the other three find them in L2).
  if (!chain && s.nt >= 8 && units_of(warp_rows * s.warps) * 8 < sms) {
    s.col_parts = 4;
    s.warps = 4;
  }
  const int64_t rows = warp_rows * s.warps / s.col_parts;
  s.row_tiles = static_cast<int>((b + rows - 1) / rows);
  const int64_t K = c * G, units = units_of(rows);
  auto size = [&](int split) {
    s.split = split;
    s.k_slice = static_cast<int>(((K + split - 1) / split + 31) / 32 * 32);
    s.xs_stride = s.k_slice + (s.k_slice % 64 == 0 ? 32 : 0);
    // x's rows, then with a split the reduction's slots (rows of N + 2 floats) and its barrier
    s.smem = 2 * s.nb * static_cast<int64_t>(s.xs_stride) + (split > 1 ? 4 * rows * (8 * s.nt + 2) + 8 : 0);
  };
  // split doubled while the blocks stay within two per SM and each keeps >= 32 positions: at
  // decode sizes the time is a few round trips of w's loads, and more blocks put more bytes in
  // flight ((1, 768, 192, 2) at one row 7.0 -> 4.7 us, (1, 128, 128, 3) at 16 rows 16.2 -> 9.1 us
  // against >= 128 positions and one block per SM; benchmarks/results/stream4_h100_split_depth_ab.jsonl;
  // two per SM: (1, 8192, 2048, 2) at 32 rows 93.8 -> 87.3 us, stream5_h100_occupancy_ab.jsonl).
  int split = 1;
  while (split < 8 && units * split <= 2 * sms && K >= 64 * split) split *= 2;
  size(split);
  while (s.smem > kStreamMaxSmem && split < 8) size(split *= 2);
  if (s.smem > kStreamMaxSmem) return false;
  s.blocks = units * s.split;
  if (s.blocks > 0x7fffffffLL) return false;
  // Four steps in flight: 0.9-1.2x the time of two on one-wave grids ((16, 64, 256, 1) ->
  // (1, 128, 128, 8) in one launch 11.7 -> 7.1 us), but 1.4x on (1, 8192, 2048, 2) at 16 rows (256
  // blocks: registers cut the blocks per SM); stream4_h100_split_depth_ab.jsonl, with two m16
  // tiles per warp. Not at nt = 8, where four steps of two tiles spilled; with one tile they
  // would fit (not measured yet).
  s.depth = s.blocks <= sms && s.nt / s.col_parts != 8 ? 4 : 2;
  *out = s;
  return true;
}

// The plane counts the interleaved kernel has tiles for (hopper/interleaved_gemm.cu).
inline bool interleaved_d(int64_t d) { return d == 2 || d == 3 || d == 4 || d == 6 || d == 8 || d == 12; }

// Whether plan p can run problem q at all (whatever its speed).
inline bool plan_serves(Plan p, const Problem& q) {
  switch (p) {
    case Plan::Fused: return q.sm > 0 && q.precision != Precision::F64;
    case Plan::Bmm:
    case Plan::Dense: return true;
    // cuBLAS plans: fp32 (strict or TF32), fp16, bf16.
    case Plan::Strided: return q.sm > 0 && q.precision != Precision::F64 && (q.batch_last || q.d == 1);
    case Plan::BlockDense: return q.sm > 0 && q.precision != Precision::F64;
    case Plan::Transposed: return q.sm > 0 && q.precision != Precision::F64 && !q.batch_last;
    // TMA: 16-byte strides for x's and y's blocks (c*d and b*d elements).
    case Plan::Interleaved:
      return q.sm == 90 && q.sm90a_kernels && is_16bit(q.precision) &&
             !q.batch_last && interleaved_d(q.d) && (q.c * q.d) % 8 == 0 && (q.b * q.d) % 8 == 0;
    case Plan::Stream: {
      StreamShape s;
      return q.sm >= 90 && is_16bit(q.precision) &&
             stream_shape(q.a, q.b, q.c, q.d, q.batch, 132, &s);
    }
  }
  return false;
}

// Flops per byte of copy bandwidth at which an sm_90 GEMM turns compute-bound: bf16/fp16
// ~760-780 TFLOP/s against 3.0 (H100) - 4.2 (H200) TB/s, TF32 ~400, strict fp32 (FFMA) ~51. One
// value between the two cards: the rule cannot tell them apart by compute capability.
inline double ridge_flops_per_byte(Precision p) {
  switch (p) {
    case Precision::BF16:
    case Precision::F16: return 220.0;
    case Precision::TF32: return 115.0;
    default: return 14.0;
  }
}

// Estimated cost of the BlockDense plan in bytes at copy bandwidth (flops / ridge): it reads x
// and writes y once, does d times the pattern's flops, and writes then reads the densified blocks.
inline double block_dense_cost(const Problem& q, double esz, double ridge) {
  const double B = static_cast<double>(q.batch), a = q.a, b = q.b, c = q.c, d = static_cast<double>(q.d);
  const double flops = 2.0 * B * a * b * c * d;
  const double blocks = esz * a * b * c * d * d;
  return std::max(d * flops / ridge, esz * B * a * (b + c) * d + blocks) + 2.0 * blocks;
}

// w's element count; "huge" weights (>= 2^24 elements, 32 MB in 16 bits) are where the rule's
// small-batch choices turn weight-bound (the 4096 -> 16384 MLP block's (1, 8192, 2048, 2)).
inline int64_t weight_elems(const Problem& q) { return q.a * q.b * q.c * q.d; }
constexpr int64_t kHugeWeight = int64_t{1} << 24;

// Where Stream is the rule's plan (it serves the problem): the batch sizes where it measured
// fastest on the H100 decode sweeps (results/stream2_h100_decode_plans.jsonl,
// stream3_h100_nt16_decode_plans.jsonl, oddd1_h100_decode_plans.jsonl, stream5_*; tools/eval_rule.py),
// refitted on results/stream8_h100_decode_plans.jsonl (bf16, 12 patterns, 1-64 rows, both layouts;
// the kernel with its columns split over four warps where the grid is small and the split's
// reduction by push, no cluster barrier left in the epilogue: 5-28 % faster than before on d = 2 at 1-32
// rows ((1, 768, 192, 2) at one row 4.44 -> 3.31 us), half the time or less on the 128 x 128
// planes of d = 3 and 8 at 8-32 rows ((1, 128, 128, 3) at 32 rows 9.55 -> 4.42 us);
// results/stream8_h100_push_ab.jsonl). The kernel serves B * Gp <= 128 columns:
// - at most 128 columns, the kernel's limit when stream8 was measured (explicit here, so that a
//   kernel serving more columns gets them from the rule only once they are measured);
// - d = 1 only for one row, and only batch-first: from 2 rows cuBLAS on w as it lies (Strided)
//   measured faster on 9 of 10 batch-first rows at 4 and 16 rows (by 5-40 %) and 2-4x at 64 (the
//   kernel's columns are rows there); batch-last it was 1.1-1.65x Strided at one row too;
// - d = 2 at one row, batch-first: the gemv kernel, within 5 % of stream or faster (stream8: 3.99
//   vs 3.82 us, 4.23 vs 4.22, 4.97 vs 5.52 on w of 0.3-2 M elements); batch-last stream (3.69 vs
//   4.11, 4.26 vs 4.59, 5.42 vs 5.19); huge w in both layouts the gemv kernel: 35.8 vs 37.2 us
//   batch-first, 35.6 vs 37.5 batch-last (hot; stream5 1.07-1.10x), and 1.08-1.15x faster cold
//   (33.9 vs 36.6 us, 32.5 vs 37.5: results/stream6_h100_fc2_f1_ab.jsonl), as a model's 32 MB layer
//   is read;
// - batch-first to 16 rows every d it serves (Gp = 8 only to 16; stream8, all 12 patterns: the
//   next plan 1.24-5.4x its time at 16 rows, 1.7-7.3x at 4; at one row 1.09-5.5x but for d = 2);
// - batch-first 17-32 rows: d = 2 (stream8: 1.32-1.64x faster than Interleaved at 24-32 rows on w
//   of 0.3-2 M elements; huge w a tie with the gemv kernel, 97.6 vs 94.0 and 99.7 vs 94.2 us,
//   where stream5 had stream 1.05x ahead at 32) and d = 3 (1.18-1.78x faster than Interleaved on
//   all 6 rows: (1, 128, 128, 3) 4.87 vs 8.51 us at 24 rows, (1, 768, 192, 3) 8.50 vs 10.05,
//   (2, 512, 512, 3) 12.66 vs 18.06; on stream5, before the column split, 0.87-1.10x at 32);
//   d = 4, which no decode sweep has, stays on Interleaved where it serves;
// - batch-first 33-64 rows, d = 2 only where w < 2^19 elements: (1, 768, 192, 2) (2^18 + 2^15)
//   1.15-1.20x faster than Interleaved at 48-64 rows (7.7 vs 8.9 us), but (1, 1536, 384, 2) and
//   (1, 2048, 512, 2) 1.18-1.21x slower (15.0 vs 12.8, 19.5 vs 16.1 at 48); stream's time grows
//   ~2x faster with w than Interleaved's there, crossing at ~0.6 M elements;
// - batch-last to 16 rows for d = 2 (stream8: 1.05-1.17x faster than Strided at 16 rows on the
//   three w of 0.3-2 M elements; on stream5 it won one of them by 1.06x and lost two by 1.08-1.2x),
//   w < 2^18 elements ((1, 128, 128, 3) 4.68 vs 5.40 us, (1, 128, 128, 8) 5.58 vs 8.90 at 16
//   rows; but on w of 0.44-3.5 M elements, d = 3, 6, 7, 32, Strided 1.22-2.6x faster) and huge w
//   ((1, 8192, 2048, 2) 95.7 vs 118.8 us; 1.85x the gemv kernel's time at 24); to 4 rows otherwise
//   (Strided won or tied all 6 such patterns at 8 rows on stream5); from 17 rows not (stream 4-6 %
//   faster on (1, 128, 128, 3) only, on the rest 1.14-4.4x the best plan's time). stream8 has no
//   rows at 2 or 8: 5-15 rows follow the 4 and 16 row ends (on stream5, before the column split
//   and the push, Strided was faster at 8 rows on (1, 128, 128, 8): 6.16 vs 7.93 us).
// in_chain: F2 of a 2-factor chain fused with its first factor (choose_stream_chain), where the
// launch it saves outweighs the gemv kernel's 1-2.5 us edge at one row (the 384-1024 blocks' fc1
// chains: 6.0-7.2 us in one launch against 10.7-11 for the gemv kernel's two).
inline bool stream_takes(const Problem& q, bool in_chain = false) {
  const int64_t w = weight_elems(q);
  const bool huge_w = w >= kHugeWeight;
  if (q.batch * stream_cols(q.d) > 128) return false;
  if (q.d == 1 && (q.batch > 1 || q.batch_last)) return false;
  if (q.d == 2 && q.batch == 1 && !in_chain && (huge_w || !q.batch_last)) return false;
  if (q.batch_last && q.batch > (q.d == 2 || huge_w || w < (int64_t{1} << 18) ? 16 : 4)) return false;
  if (!q.batch_last && q.batch > 16 &&
      !(q.d == 3 || (q.d == 2 && (q.batch <= 32 || w < (int64_t{1} << 19)))))
    return false;
  return plan_serves(Plan::Stream, q);
}

// The rule (benchmarks/NOTES.md, "Plans"; fitted on H100 sweeps with every plan timed: the
// seeded 48-pattern sample of the paper's grid at B = 256, 4096 and 25088 and half of the
// 376-pattern grid at 25088, bf16; fp32 / tf32 on the sample):
// - the CPU and float64: the ATen permute + bmm method;
// - 16-bit on sm_90 at decode sizes (stream_takes): Stream, w read once as it lies;
// - B <= 16: the fused kernels (weight-streaming gemv) for the rest, but 16-bit d = 1 and
//   batch-last on sm_90 (Strided); 17-512 rows batch-first: Interleaved where it measured best;
// - batch-last, and batch-first d = 1: Strided -- cuBLAS on the planes where they lie, 1.2-1.6x
//   the floor;
// - batch-first d in {2, 3, 4, 6, 8, 12}, 16-bit, sm_90a, B >= 1024: the Interleaved kernel for
//   mid-sized planes (below);
// - batch-first d > 1: the fused kernels where they measured best -- 16-bit with their
//   chunk-shaped d (2, 4, 8k) and small planes: b*c*d <= 2^20 at B <= 512, b*c*d <= 2^19 with
//   d % 8 == 0 at any B (beyond, their accumulators of 4-8 planes per block cap the tile and the
//   flops per L2 byte); strict fp32 with planes of at most 128 x 128, d = 2 or 4 | d, d <= 64
//   (else Transposed);
// - otherwise BlockDense or Transposed, whichever costs fewer bytes at copy bandwidth: Transposed
//   moves x and y three times at the pattern's own flops, BlockDense once at d times the flops.
inline Plan choose_plan(const Problem& q) {
  if (q.sm == 0 || q.precision == Precision::F64) return Plan::Bmm;
  if (stream_takes(q)) return Plan::Stream;
  const bool half = is_16bit(q.precision);
  const bool huge_w = weight_elems(q) >= kHugeWeight;
  // Small batches: the gemv kernel, but cuBLAS on w as it lies (Strided, below) for 16-bit d = 1
  // and batch-last from 2 rows on sm_90 -- 1.3-22x faster than the gemv kernel batch-last at 4-16
  // rows (at one row the gemv kernel won batch-last d = 2 by 1.4-2x).
  if (q.batch <= 16 && !(half && q.sm >= 90 && (q.d == 1 || (q.batch_last && q.batch > 1)))) return Plan::Fused;
  // 17-512 rows, batch-first (results/mid1_h100_plans.jsonl, plans10_h100_*.jsonl; H100):
  // - 17-64 rows: the Interleaved kernel wherever it serves (and stream_takes did not take the
  //   problem: d = 2 and 3 to 32 rows, d = 2 with w < 2^19 to 64) but d = 12 (not measured there) --
  //   best on 11 of 13 rows of the decode sweeps it was fitted on and on 13 of 16 of the MLP
  //   factors after (by 1.2-1.9x over the gemv kernel or Transposed), but for huge w;
  // - 65-512 rows, d = 2, 4, 8 (and 6 with the planes the B >= 1024 rule takes; d = 3 was mixed,
  //   12 not measured): where b >= c, the planes are not small (b c / (b + c) >= 50) and w < 2^23
  //   elements -- best or within 5 % on the a = 1 MLP factors; it lost where b < c (few column
  //   tiles over a long k loop: (1, 512, 2048, 2) 1.52x Transposed), on small planes (BlockDense)
  //   and to the gemv kernel's 8 planes per block with w of 2^23 or more ((32, 256, 256, 8) 1.14x);
  // - huge w (>= 2^24 elements, e.g. (1, 8192, 2048, 2), the 4096 -> 16384 MLP block's big factor):
  //   the gemv kernel for its chunk-shaped d (2, 4, 8), 1.1-1.5x faster than the others to 256
  //   rows (batch-last measured to 64); with d = 12 or 16 it ran 1.35-9.7x Transposed's time.
  if (!q.batch_last && q.batch < 1024 && !huge_w && plan_serves(Plan::Interleaved, q)) {
    const double planes = static_cast<double>(q.b) * static_cast<double>(q.c) / static_cast<double>(q.b + q.c);
    const int64_t w = weight_elems(q);
    if (q.batch <= 64 && q.d != 12) return Plan::Interleaved;
    const bool shape = q.d == 2 || q.d == 4 || q.d == 8 ? planes >= 50.0
                       : q.d == 6 && planes >= 32.0 && planes < 300.0 && w >= 65536;
    if (q.batch <= 512 && shape && q.b >= q.c && w < (int64_t{1} << 23)) return Plan::Interleaved;
  }
  if (huge_w && half && q.sm >= 90 && (q.d == 2 || q.d == 4 || q.d == 8) && q.batch <= (q.batch_last ? 64 : 256))
    return Plan::Fused;
  // Strided runs at 1.2-1.6x the floor. BlockDense measured 1.07-1.3x slower than it on the
  // batch-last sweep even where its estimate was within 2 % of the floor's, so it is not taken here.
  if (q.batch_last || q.d == 1) return Plan::Strided;
  const int64_t dq = q.d;
  // The interleaved wgmma kernel (sm_90a), d = 2, 4, 8: one pass over x and y at 0.55-0.95x the
  // best other plan wherever b*c/(b+c) is between the small planes' 50 (c = 48 wastes a third of
  // its k steps, small b of its column tiles: BlockDense wins) and the compute-bound end (its
  // register-fed wgmmas run at ~40 % of cuBLAS's rate: Transposed wins at b = c = 1024), from
  // B = 1024 (at 256 it won on only 6 of 20 rows; 512-4096 not measured apart).
  //
  // d = 3, 6, 12 (192 accumulators per row: 64, 32, 16 columns per plane) from planes of 32 (the
  // b or c = 48 rows at d = 6 measured 0.43-1.07x the best other plan) with w of at least 64 Ki
  // elements (below, BlockDense ties or wins by a launch); d = 12 only below 200: its 16 columns
  // per plane re-read x b / 16 times and it loses to Transposed beyond ((6, 256, 1024, 12), planes
  // 205: a tie; (4, 768, 768, 12): 2x). Where taken it measured 0.42-1.07x the best other plan at
  // B = 1024-25088 (plans12; the 1.07: (32, 48, 192, 6) at 25088 against BlockDense); d = 12 with
  // one fragment set then gained 8-21 % more ((4, 384, 384, 12): 2201 vs Transposed's 2343 us).
  if (plan_serves(Plan::Interleaved, q) && q.batch >= 1024) {
    const double planes = static_cast<double>(q.b) * static_cast<double>(q.c) / static_cast<double>(q.b + q.c);
    if (dq == 2 || dq == 4 || dq == 8) {
      if (planes >= 50.0 && planes < (dq == 8 ? 300.0 : 480.0)) return Plan::Interleaved;
    } else if (planes >= 32.0 && q.a * q.b * q.c * dq >= 65536) {
      if (planes < (dq == 12 ? 200.0 : dq == 6 ? 300.0 : 480.0)) return Plan::Interleaved;
    }
  }
  const bool chunk_d = dq == 2 || dq == 4 || dq % 8 == 0;
  const double bcd = static_cast<double>(q.b) * static_cast<double>(q.c) * static_cast<double>(dq);
  if (half && chunk_d && ((q.batch <= 512 && bcd <= 1048576.0) || (dq % 8 == 0 && bcd <= 524288.0)))
    return Plan::Fused;
  if (q.precision == Precision::F32) {  // FFMA: d-fold flops are never cheap, BlockDense never won
    const int64_t bc = q.b * q.c;
    const bool small_planes = (dq == 2 || dq % 4 == 0) && dq <= 64 && (bc <= 96 * 96 || (dq <= 4 && bc <= 128 * 128));
    return small_planes ? Plan::Fused : Plan::Transposed;
  }
  const double esz = half ? 2.0 : 4.0;
  const double ridge = ridge_flops_per_byte(q.precision);
  const double B = static_cast<double>(q.batch), a = q.a, b = q.b, c = q.c, d = static_cast<double>(dq);
  const double flops = 2.0 * B * a * b * c * d;
  const double xy = esz * B * a * (b + c) * d;  // x read + y written
  const double transposed = 3.0 * xy + flops / ridge;
  return block_dense_cost(q, esz, ridge) <= transposed ? Plan::BlockDense : Plan::Transposed;
}

// The weight gradient's rule (ks::weight_grad; the plans are Fused, the kernel of ks_wgrad.cu, and
// Bmm, ATen's permute + bmm): the fused kernel for 16-bit batch-first products with d = 4 or
// d % 8 == 0 on sm_90+, except large planes. There the per-plane GEMMs are big enough for bmm's
// one-plane-per-block tiles to pay for its permutations, while the fused kernel's 8 planes of
// 64 x 64 per block re-read grad_y and x from L2 c/64 and b/64 times (half-sector chunks for
// d > 8). Measured (H200, bf16, B = 25088, benchmarks/NOTES.md round 9): bmm 1.05-1.4x faster at
// b = c >= 768 with d = 16 and at b = c = 1024 with d = 64; fused 1.33x faster at b = c = 768 with
// d = 64. (The kernel adds alignment preconditions of its own: ks_wgrad.cu, fused_serves.)
inline Plan choose_weight_grad_plan(const Problem& q) {
  const bool half = is_16bit(q.precision);
  if (q.sm < 90 || !half || q.batch_last || q.batch < 1 || !(q.d == 4 || q.d % 8 == 0)) return Plan::Bmm;
  const int64_t bc = q.b * q.c;
  if (q.d % 8 == 0 && (bc >= 1024 * 1024 || (q.d < 64 && bc >= 768 * 768))) return Plan::Bmm;
  return Plan::Fused;
}

// ks::chain of two factors: the fused kernel (hopper/chain_gemm.cu; the intermediate stays in
// shared memory, bias and activation in its epilogue) for 16-bit batch-first chains of its form,
// F1 = (a1, 64, c1, 1) then F2 = (1, b2, c2, d2 in {2, 3, 4}) with a1 * 64 <= 384: the `auto` and
// paper chains of layers up to 384 wide, e.g. ViT-S/16's fc1 and fc2; the factors one by one otherwise.
// (The binding also asks the kernel's own preconditions: 16-byte strides, 32-bit sizes.) From
// 1024 rows: on ViT-S/16's fc1 chain with GELU it took 0.64-1.0x the time of the factors plus the
// epilogue kernel at 1024-25216 rows and tied at 128-1024 (H100, bf16, results/chain2_h100_*,
// chain4_h100_d3_ab.json); at decode sizes it lost (one block per column tile, each recomputing
// phase 1 over a serial k loop): the ViT-S MLP block at 1 token took 31.5 us with it, 24.4 without
// (results/mlp1_h100_blocks.jsonl against session 5's run).
inline bool choose_fused_chain(const Problem& f1, const Problem& f2) {
  const bool half = is_16bit(f1.precision);
  return f1.sm == 90 && f1.sm90a_kernels && half && !f1.batch_last && f1.batch >= 1024 && f1.d == 1 && f1.b == 64 &&
         f1.a * 64 <= 384 &&
         f2.a == 1 && (f2.d == 2 || f2.d == 3 || f2.d == 4) && f1.a * f1.b == f2.c * f2.d;
}

// ks::chain of two factors at decode sizes in one Stream launch (ks_stream.cu, StreamChainParams):
// each block computes the slice of F1's output that its K slice of F2 reads (by MMAs, two m16
// tiles of one group i1 at a time: b1 % 32 == 0), so the chain is one launch instead of F1's GEMM
// plus F2's. Its form: F1 = (a1, b1, c1, 1) with c1 a multiple of 8, F2 = (1, b2, c2, d2 <= 8)
// streamed at up to 64 columns (rows x Gp) -- the `auto` chains' shape. Every row tile of F2
// re-reads its K slice's rows of w1, k_slice x c1 elements a block (the "share"), and F1's work
// grows with the rows. H100, bf16, CUDA graphs (benchmarks/results/chain3_h100_split_depth.jsonl):
// - fc1-type chains ((h/64, 64, 64, 1) -> (1, 2h, h/2, 2), h = 384-1024; shares 4-8 K): 6.0-7.2
//   us at 1-4 rows against the two launches' 8.5-11 (dense Linear + GELU 5.7-6.8), 1.05-1.4x
//   faster to 16 rows; with one m16 tile per warp 1.3-1.5x at 32 rows against two launches
//   whose F2 ran on the interleaved kernel (chain4_h100_one_tile.jsonl), 1.06-1.2x against F2 on
//   stream (chain5_h100_chain.jsonl);
// - fc2-type ((h/64, 64, 256, 1) -> (1, 128, 128, h/128); shares 16-32 K): 1.2-1.4x faster at one
//   row, even at two, 1.5-2x slower from 8;
// - the 4096 block's fc1 (share 131 K): 1.1x slower at every size.
inline bool choose_stream_chain(const Problem& f1, const Problem& f2) {
  if (!(f1.d == 1 && !f1.batch_last && f1.c % 8 == 0 && f1.b % 32 == 0 && f2.a == 1 && f2.d <= 8 &&
        f1.a * f1.b == f2.c * f2.d && f2.batch * stream_cols(f2.d) <= 64 && stream_takes(f2, true)))
    return false;
  StreamShape s;
  return stream_shape(f2.a, f2.b, f2.c, f2.d, f2.batch, 132, &s, /*chain=*/true) &&
         int64_t{s.k_slice} * f1.c <= (f2.batch <= 2 ? 32768 : 8192);
}

}  // namespace ks
