// The one dispatch rule of ks::matmul: a pure function of the problem (pattern, batch, dtype,
// layout, device generation) that names the plan which runs it. No torch types, no device query,
// no environment: the CPU build compiles it too, so CI tests its decisions, and experiments pick a
// plan explicitly through the private op ks::_matmul_plan instead of switches.
#pragma once
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
  BlockDense = 4,  // batch-first: per block i, K's (bd x cd) diagonal block densified in l;
                   // one strided-batched GEMM over i on x and y in place, d times the flops
  Transposed = 5,  // batch-first: x's rows transposed to (a, d, c), one strided-batched GEMM over
                   // the a*d planes, y's rows transposed back (ks_transpose.cu)
};
constexpr int kNumPlans = 6;
constexpr const char* kPlanNames[kNumPlans] = {"fused", "bmm", "dense", "strided", "blockdense", "transposed"};

inline const char* plan_name(Plan p) { return kPlanNames[static_cast<int>(p)]; }

// -1 when `name` names no plan.
inline int plan_index(const char* name) {
  for (int i = 0; i < kNumPlans; ++i)
    if (std::strcmp(name, kPlanNames[i]) == 0) return i;
  return -1;
}

enum class Precision : int { F64 = 0, F32 = 1, TF32 = 2, F16 = 3, BF16 = 4 };

struct Problem {
  int64_t a, b, c, d;
  int64_t batch;
  Precision precision;
  bool batch_last;
  int sm;  // compute capability major * 10 + minor; 0 on the CPU
};

// Whether plan p can run problem q at all (whatever its speed).
inline bool plan_serves(Plan p, const Problem& q) {
  switch (p) {
    case Plan::Fused: return q.sm > 0 && q.precision != Precision::F64;
    case Plan::Bmm:
    case Plan::Dense: return true;
    // cuBLAS plans: fp32 (strict or TF32), fp16, bf16.
    case Plan::Strided: return q.sm > 0 && q.precision != Precision::F64 && (q.batch_last || q.d == 1);
    case Plan::BlockDense:
    case Plan::Transposed: return q.sm > 0 && q.precision != Precision::F64 && !q.batch_last;
  }
  return false;
}

// The rule. On the CPU and for float64 the ATen permute + bmm method (the CPU kernel).
// Otherwise, until the plan sweep of benchmarks/NOTES.md (issue hopper-kernels) replaces it: the
// round-10 rule -- fused kernels, with ATen bmm for the large 16-bit batch-first planes where it
// measured faster on the H200.
inline Plan choose_plan(const Problem& q) {
  if (q.sm == 0 || q.precision == Precision::F64) return Plan::Bmm;
  const bool half = q.precision == Precision::F16 || q.precision == Precision::BF16;
  if (!half || q.batch_last || q.batch <= 16) return Plan::Fused;
  const int64_t bc = q.b * q.c;
  if (q.d == 4) return bc >= 768 * 768 ? Plan::Bmm : Plan::Fused;
  if (q.d % 8 != 0 || q.batch < 2048) return Plan::Fused;
  if (q.d < 64) return (q.b >= 384 && bc >= 384 * 384) ? Plan::Bmm : Plan::Fused;
  return bc >= 1024 * 1024 ? Plan::Bmm : Plan::Fused;
}

}  // namespace ks
