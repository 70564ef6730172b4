// Not part of the build: benchmarks/experiments/run_plane_gemm_128x256.py JIT-compiles it (NOTES, session 3).
// Diagnostic: a persistent, warp-specialised sm_90a GEMM on contiguous planes (the plain
// plane-major store, no interleave): Y_p (B x b) = X_p (B x c) W_p^T, X_p = xt[:, p, :], W_p = wp[p],
// yt (B, P, b). 128 x 256 tiles (two consumer warpgroups of 64 x 256, m64n256k16), BK 64, 4 stages,
// one producer warp; consumers store straight from registers.
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cstdint>
#include "hopper/ptx.cuh"

namespace ks { namespace hopper { namespace {
constexpr int kBM = 128, kBN = 256, kBK = 64, kStages = 4, kThreads = 384;
constexpr int kStageBytes = (kBM + kBN) * kBK * 2;
constexpr int kSmemBytes = kStages * kStageBytes + 2 * kStages * 8 + 1024;

struct Prob { int64_t B, P, b, c; int m_tiles, n_tiles, k_tiles; };

__global__ void __launch_bounds__(kThreads, 1)
    v4_kernel(const __grid_constant__ CUtensorMap tm_x, const __grid_constant__ CUtensorMap tm_w,
              __nv_bfloat16* __restrict__ y, const Prob pr) {
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  __nv_bfloat16* a_stage = reinterpret_cast<__nv_bfloat16*>(smem);
  __nv_bfloat16* b_stage = a_stage + kStages * kBM * kBK;
  uint64_t* full = reinterpret_cast<uint64_t*>(b_stage + kStages * kBN * kBK);
  uint64_t* empty = full + kStages;
  if (threadIdx.x == 0) {
    for (int i = 0; i < kStages; ++i) { mbarrier_init(&full[i], 1); mbarrier_init(&empty[i], 8); }
    fence_barrier_init();
  }
  __syncthreads();
  const int64_t tiles = int64_t(pr.m_tiles) * pr.n_tiles * pr.P;
  const int wg = threadIdx.x / 128, lane = threadIdx.x % 32, warp = (threadIdx.x / 32) % 4;
  if (wg == 0) {
    if (threadIdx.x == 0) {
      int64_t it = 0;
      for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
        const int n = static_cast<int>(t % pr.n_tiles);
        const int m = static_cast<int>((t / pr.n_tiles) % pr.m_tiles);
        const int p = static_cast<int>(t / (int64_t(pr.n_tiles) * pr.m_tiles));
        for (int kt = 0; kt < pr.k_tiles; ++kt, ++it) {
          const int st = static_cast<int>(it % kStages);
          mbarrier_wait(&empty[st], ((it / kStages) & 1) ^ 1);
          mbarrier_arrive_expect_tx(&full[st], kStageBytes);
          tma_load_3d(a_stage + st * kBM * kBK, &tm_x, &full[st], kt * kBK, m * kBM, p);
          tma_load_3d(b_stage + st * kBN * kBK, &tm_w, &full[st], kt * kBK, n * kBN, p);
        }
      }
    }
    return;
  }
  const int cw = wg - 1;
  int64_t it = 0;
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const int n = static_cast<int>(t % pr.n_tiles);
    const int m = static_cast<int>((t / pr.n_tiles) % pr.m_tiles);
    const int p = static_cast<int>(t / (int64_t(pr.n_tiles) * pr.m_tiles));
    float acc[128];
#pragma unroll
    for (int i = 0; i < 128; ++i) acc[i] = 0.f;
    for (int kt = 0; kt < pr.k_tiles; ++kt, ++it) {
      const int st = static_cast<int>(it % kStages);
      mbarrier_wait(&full[st], (it / kStages) & 1);
      const uint64_t da = wgmma_desc_k<128>(smem_u32(a_stage + st * kBM * kBK + cw * 64 * kBK));
      const uint64_t db = wgmma_desc_k<128>(smem_u32(b_stage + st * kBN * kBK));
      wgmma_fence();
      fence_registers(acc);
#pragma unroll
      for (int kk = 0; kk < kBK / 16; ++kk) wgmma_m64n256k16<true>(acc, da + 2 * kk, db + 2 * kk);
      wgmma_commit();
      wgmma_wait<1>();
      fence_registers(acc);
      __syncwarp();
      if (kt > 0 && lane == 0) mbarrier_arrive(&empty[(it - 1) % kStages]);
    }
    wgmma_wait<0>();
    fence_registers(acc);
    __syncwarp();
    if (lane == 0) mbarrier_arrive(&empty[(it - 1) % kStages]);
    // Plain store from registers: rows r and r + 8, column pairs 8i + 2q.
    const int64_t r0 = int64_t(m) * kBM + cw * 64 + warp * 16 + lane / 4;
    const int64_t j0 = int64_t(n) * kBN + 2 * (lane % 4);
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      const int64_t j = j0 + 8 * i;
      if (j >= pr.b) continue;
      if (r0 < pr.B)
        *reinterpret_cast<__nv_bfloat162*>(y + r0 * pr.P * pr.b + p * pr.b + j) = __floats2bfloat162_rn(acc[4 * i], acc[4 * i + 1]);
      if (r0 + 8 < pr.B)
        *reinterpret_cast<__nv_bfloat162*>(y + (r0 + 8) * pr.P * pr.b + p * pr.b + j) = __floats2bfloat162_rn(acc[4 * i + 2], acc[4 * i + 3]);
    }
  }
}

using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                 const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                 CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
bool encode(CUtensorMap* map, const void* base, int64_t cols, int64_t rows, int64_t planes, int64_t row_stride,
            int64_t plane_stride, int box_rows) {
  static EncodeTiled fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q{};
    cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q);
    return reinterpret_cast<EncodeTiled>(p);
  }();
  const cuuint64_t dims[3] = {cuuint64_t(cols), cuuint64_t(rows), cuuint64_t(planes)};
  const cuuint64_t strides[2] = {cuuint64_t(row_stride * 2), cuuint64_t(plane_stride * 2)};
  const cuuint32_t box[3] = {kBK, cuuint32_t(box_rows), 1};
  const cuuint32_t elem[3] = {1, 1, 1};
  return fn(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<void*>(base), dims, strides, box, elem,
            CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}
}  // namespace
}  // namespace hopper
}  // namespace ks

#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
void run(torch::Tensor xt, torch::Tensor wp, torch::Tensor yt) {
  using namespace ks::hopper;
  const int64_t B = xt.size(0), P = xt.size(1), c = xt.size(2), b = wp.size(1);
  CUtensorMap tx, tw;
  TORCH_CHECK(encode(&tx, xt.data_ptr(), c, B, P, P * c, c, kBM) && encode(&tw, wp.data_ptr(), c, b, P, c, b * c, kBN));
  Prob pr{B, P, b, c, int((B + kBM - 1) / kBM), int((b + kBN - 1) / kBN), int((c + kBK - 1) / kBK)};
  static bool attr = false;
  if (!attr) { cudaFuncSetAttribute(v4_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes); attr = true; }
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, xt.device().index());
  const int64_t tiles = int64_t(pr.m_tiles) * pr.n_tiles * P;
  const int grid = int(std::min<int64_t>(sms, tiles));
  v4_kernel<<<grid, kThreads, kSmemBytes, at::cuda::getCurrentCUDAStream()>>>(tx, tw, reinterpret_cast<__nv_bfloat16*>(yt.data_ptr()), pr);
  TORCH_CHECK(cudaGetLastError() == cudaSuccess);
}
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("run", &run); }
