// Host cost of the dispatch rule (csrc/ks_plan.h, choose_plan) per call, over eight problems of
// every regime: the measurement behind "no plan cache" (benchmarks/NOTES.md, issue decode, session 8).
//   g++ -O2 -std=c++17 -Icsrc benchmarks/experiments/plan_rule_cost.cpp -o /tmp/plan_rule_cost && /tmp/plan_rule_cost
#include <chrono>
#include <cstdio>
#include "ks_plan.h"
using namespace ks;
int main() {
  Problem qs[8] = {{1, 2048, 512, 2, 1, Precision::BF16, false, 90}, {16, 64, 64, 1, 4, Precision::BF16, false, 90},
                   {1, 8192, 2048, 2, 64, Precision::BF16, false, 90}, {4, 384, 384, 6, 16, Precision::F16, false, 90},
                   {1, 768, 192, 3, 8, Precision::BF16, true, 90}, {24, 512, 512, 4, 25088, Precision::BF16, false, 90},
                   {6, 256, 1024, 12, 4096, Precision::F32, false, 90}, {1, 128, 128, 32, 16, Precision::BF16, false, 90}};
  for (auto& q : qs) q.sm90a_kernels = true;
  volatile int sink = 0;
  const int N = 2000000;
  auto t0 = std::chrono::steady_clock::now();
  for (int n = 0; n < N; ++n) { Problem q = qs[n & 7]; q.batch += (n >> 3) & 1; sink += static_cast<int>(choose_plan(q)); }
  auto t1 = std::chrono::steady_clock::now();
  printf("choose_plan: %.1f ns per call\n", std::chrono::duration<double, std::nano>(t1 - t0).count() / N);
}
