// PTX wrappers of the sm_90 kernels: mbarriers, TMA loads and stores, bulk groups, wgmma, setmaxnreg.
// One instruction per function, named after it, so that a kernel reads as its algorithm.
// Everything here that needs sm_90a (wgmma) compiles to a trap on other targets: the
// host side asks `hopper_kernels_built()` (interleaved_gemm.cu) before it launches such a kernel.
#pragma once
#include <cstdint>

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define KS_SM90A 1
#else
#define KS_SM90A 0
#endif

// A build for several architectures (TORCH_CUDA_ARCH_LIST="8.0;9.0a") compiles these kernels for
// the older ones too, where the plans that launch them are never taken (ks_plan.h: sm == 90): there
// every wrapper below traps instead of emitting an instruction the target lacks (ptxas refused
// the whole file before).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define KS_SM90_ASM(...) __trap()
#else
#define KS_SM90_ASM(...) asm volatile(__VA_ARGS__)
#endif

namespace ks {
namespace hopper {

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ---- mbarriers (shared::cta) ----------------------------------------------------------------

__device__ __forceinline__ void mbarrier_init(uint64_t* bar, uint32_t count) {
  KS_SM90_ASM("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(bar)), "r"(count));
}

// Makes the initialised barriers visible to the other threads of the cluster and to the async
// proxy (TMA completes transactions on them).
__device__ __forceinline__ void fence_barrier_init() {
  KS_SM90_ASM("fence.mbarrier_init.release.cluster;" ::: "memory");
}

__device__ __forceinline__ void mbarrier_arrive(uint64_t* bar) {
  KS_SM90_ASM("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_u32(bar)) : "memory");
}

__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  KS_SM90_ASM("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(bar)), "r"(bytes)
               : "memory");
}

// Blocks until the phase of parity `parity` has completed. A fresh barrier is in phase 0, so
// waiting for parity 1 returns at once: producers start with parity 1 on their "empty" barriers.
__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, uint32_t parity) {
  KS_SM90_ASM(
      "{\n"
      ".reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n"
      "}\n" ::"r"(smem_u32(bar)),
      "r"(parity)
      : "memory");
}

// ---- TMA (bulk tensor copies) -----------------------------------------------------------------

__device__ __forceinline__ void tma_prefetch_descriptor(const void* tmap) {
  KS_SM90_ASM("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(tmap)) : "memory");
}

// A 3-d box at coordinates (c0, c1, c2) (c0 the contiguous dimension) into shared memory; its
// bytes complete a transaction on `bar`. Out-of-bounds elements arrive as zeros.
__device__ __forceinline__ void tma_load_3d(void* dst, const void* tmap, uint64_t* bar, int c0, int c1,
                                            int c2) {
  KS_SM90_ASM(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%3, %4, %5}], [%2];" ::"r"(smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(tmap)), "r"(smem_u32(bar)), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}

// The same box into the same shared-memory offset of every block of the cluster in `cta_mask`,
// completing a transaction on the barrier at `bar`'s offset in each of them.
__device__ __forceinline__ void tma_load_3d_multicast(void* dst, const void* tmap, uint64_t* bar, int c0, int c1,
                                                      int c2, uint16_t cta_mask) {
#if KS_SM90A  // (ptxas advises against .multicast::cluster on a plain sm_90 target)
  KS_SM90_ASM(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.multicast::cluster"
      " [%0], [%1, {%3, %4, %5}], [%2], %6;" ::"r"(smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(tmap)), "r"(smem_u32(bar)), "r"(c0), "r"(c1), "r"(c2), "h"(cta_mask)
      : "memory");
#else
  (void)dst, (void)tmap, (void)bar, (void)c0, (void)c1, (void)c2, (void)cta_mask;
  __trap();
#endif
}

// ---- thread-block clusters ----------------------------------------------------------------------

// Every thread of every block of the cluster, not necessarily warp-converged: writes and barrier
// initialisations before it are visible after it.
__device__ __forceinline__ void cluster_sync() {
  KS_SM90_ASM("barrier.cluster.arrive.release;\n"
               "barrier.cluster.wait.acquire;" ::: "memory");
}

// Arrives on the barrier at `bar`'s offset in block `rank` of the cluster (this block included).
// Release at CTA scope, as CUTLASS's ClusterBarrier does: what it orders are this block's finished
// wgmma reads of a stage, not writes a peer reads; .release.cluster made every stage release a
// cluster-wide fence on the consumers' path (the multicast kernel ran 2x slower, H100).
__device__ __forceinline__ void mbarrier_arrive_cluster(uint64_t* bar, uint32_t rank) {
  KS_SM90_ASM(
      "{\n"
      ".reg .b32 remote;\n"
      "mapa.shared::cluster.u32 remote, %0, %1;\n"
      "mbarrier.arrive.shared::cluster.b64 _, [remote];\n"
      "}\n" ::"r"(smem_u32(bar)),
      "r"(rank)
      : "memory");
}

// Waits for phase `parity` of a barrier that other blocks of the cluster complete (st.async's
// transactions): acquire at cluster scope, so that their stores are visible after it.
__device__ __forceinline__ void mbarrier_wait_cluster(uint64_t* bar, uint32_t parity) {
  KS_SM90_ASM(
      "{\n"
      ".reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n"
      "}\n" ::"r"(smem_u32(bar)),
      "r"(parity)
      : "memory");
}

// The split halves of cluster_sync: arrive without ordering anything (after fence_barrier_init
// where barriers were initialised), wait with acquire.
__device__ __forceinline__ void cluster_arrive_relaxed() { KS_SM90_ASM("barrier.cluster.arrive.relaxed;" ::: "memory"); }
__device__ __forceinline__ void cluster_wait() { KS_SM90_ASM("barrier.cluster.wait;" ::: "memory"); }

// The shared::cluster address of this block's shared-memory address `addr` in block `rank`.
__device__ __forceinline__ uint32_t mapa(uint32_t addr, uint32_t rank) {
  uint32_t remote = 0;
  KS_SM90_ASM("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(addr), "r"(rank));
  return remote;
}

// Two floats into a (possibly remote) block's shared memory at shared::cluster address `addr`
// (8-byte aligned), completing 8 bytes of a transaction on the barrier at `bar` in that block.
__device__ __forceinline__ void st_async_f32x2(uint32_t addr, float a, float b, uint32_t bar) {
  KS_SM90_ASM("st.async.shared::cluster.mbarrier::complete_tx::bytes.v2.f32 [%0], {%1, %2}, [%3];" ::"r"(addr),
               "f"(a), "f"(b), "r"(bar)
               : "memory");
}

// ---- wgmma ------------------------------------------------------------------------------------

// Shared-memory matrix descriptor of a K-major tile in a SW-byte swizzle (SW = 128, 64 or 32: what
// TMA writes with CU_TENSOR_MAP_SWIZZLE_<SW>B and an inner box of SW bytes): rows of SW bytes, groups
// of 8 rows 8*SW bytes apart (the stride byte offset), the leading byte offset unused (a k16 step,
// 32 bytes, never crosses a row). The tile must start on an 8*SW-byte boundary; a k16 step inside
// the row is +32 bytes on the start address (+2 in the descriptor).
template <int SW>
__device__ __forceinline__ uint64_t wgmma_desc_k(uint32_t smem_addr) {
  static_assert(SW == 128 || SW == 64 || SW == 32, "swizzle width");
  constexpr uint64_t layout = SW == 128 ? 1 : SW == 64 ? 2 : 3;
  uint64_t desc = 0;
  desc |= static_cast<uint64_t>((smem_addr & 0x3FFFF) >> 4);
  desc |= static_cast<uint64_t>(1) << 16;               // leading byte offset (unused here)
  desc |= static_cast<uint64_t>((8 * SW) >> 4) << 32;   // stride byte offset: 8 rows
  desc |= layout << 62;
  return desc;
}

__device__ __forceinline__ void wgmma_fence() {
#if KS_SM90A
  KS_SM90_ASM("wgmma.fence.sync.aligned;" ::: "memory");
#endif
}

__device__ __forceinline__ void wgmma_commit() {
#if KS_SM90A
  KS_SM90_ASM("wgmma.commit_group.sync.aligned;" ::: "memory");
#endif
}

template <int N>
__device__ __forceinline__ void wgmma_wait() {
#if KS_SM90A
  KS_SM90_ASM("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
#endif
}

// Keeps the compiler from moving accumulator reads or writes across an asynchronous wgmma.
template <int R>
__device__ __forceinline__ void fence_registers(float (&d)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) KS_SM90_ASM("" : "+f"(d[i])::"memory");
}

// The output operands of a wgmma, 8 accumulator registers of `d` at a time.
#define KS_WGMMA_8(i) \
  "+f"(d[i + 0]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
      "+f"(d[i + 6]), "+f"(d[i + 7])
#define KS_WGMMA_REGS_64 \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define KS_WGMMA_REGS_32_SS                                                                              \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                               \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define KS_WGMMA_REGS_128 \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, " \
  "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, " \
  "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, " \
  "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, " \
  "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
// One wgmma.mma_async: D += A * B^T, A and B K-major in shared memory (descriptors), scale-d on.
#define KS_WGMMA(SHAPE, TYPE, REGS, DESC_A, DESC_B, ...)                                               \
  KS_SM90_ASM("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"                                             \
               "wgmma.mma_async.sync.aligned." SHAPE ".f32." TYPE "." TYPE " {" REGS "}, " DESC_A ", " \
               DESC_B ", p, 1, 1, 0, 0;\n}\n"                                                           \
               : __VA_ARGS__                                                                           \
               : "l"(desc_a), "l"(desc_b))

// D (64 x 64, fp32, 32 registers per thread) += A (64 x 16) * B (64 x 16)^T, both K-major in shared
// memory (descriptors); bf16 or fp16.
template <bool IsBf16>
__device__ __forceinline__ void wgmma_m64n64k16_ss(float (&d)[32], uint64_t desc_a, uint64_t desc_b) {
#if KS_SM90A
  if constexpr (IsBf16)
    KS_WGMMA("m64n64k16", "bf16", KS_WGMMA_REGS_32_SS, "%32", "%33", KS_WGMMA_8(0), KS_WGMMA_8(8), KS_WGMMA_8(16), KS_WGMMA_8(24));
  else
    KS_WGMMA("m64n64k16", "f16", KS_WGMMA_REGS_32_SS, "%32", "%33", KS_WGMMA_8(0), KS_WGMMA_8(8), KS_WGMMA_8(16), KS_WGMMA_8(24));
#else
  (void)d, (void)desc_a, (void)desc_b;
  __trap();
#endif
}

// D (64 x 256, fp32, 128 registers per thread) += A (64 x 16) * B (256 x 16)^T, both K-major in shared
// memory (descriptors); bf16 or fp16. (Only benchmarks/experiments/plane_gemm_128x256.cu uses it.)
template <bool IsBf16>
__device__ __forceinline__ void wgmma_m64n256k16(float (&d)[128], uint64_t desc_a, uint64_t desc_b) {
#if KS_SM90A
  if constexpr (IsBf16)
    KS_WGMMA("m64n256k16", "bf16", KS_WGMMA_REGS_128, "%128", "%129", KS_WGMMA_8(0), KS_WGMMA_8(8), KS_WGMMA_8(16), KS_WGMMA_8(24), KS_WGMMA_8(32), KS_WGMMA_8(40), KS_WGMMA_8(48), KS_WGMMA_8(56), KS_WGMMA_8(64), KS_WGMMA_8(72), KS_WGMMA_8(80), KS_WGMMA_8(88), KS_WGMMA_8(96), KS_WGMMA_8(104), KS_WGMMA_8(112), KS_WGMMA_8(120));
  else
    KS_WGMMA("m64n256k16", "f16", KS_WGMMA_REGS_128, "%128", "%129", KS_WGMMA_8(0), KS_WGMMA_8(8), KS_WGMMA_8(16), KS_WGMMA_8(24), KS_WGMMA_8(32), KS_WGMMA_8(40), KS_WGMMA_8(48), KS_WGMMA_8(56), KS_WGMMA_8(64), KS_WGMMA_8(72), KS_WGMMA_8(80), KS_WGMMA_8(88), KS_WGMMA_8(96), KS_WGMMA_8(104), KS_WGMMA_8(112), KS_WGMMA_8(120));
#else
  (void)d, (void)desc_a, (void)desc_b;
  __trap();
#endif
}

// D (64 x N, fp32) += A (64 x 16, four 32-bit registers per thread in mma.m16n8k16's A layout:
// warp w of the warpgroup holds rows 16w..16w+15) * B (N x 16)^T, B K-major in shared memory.
// The A registers are read asynchronously: they must not change before the matching wgmma_wait.
#define KS_WGMMA_RS(SHAPE, TYPE, REGS, A0, DESC_B, ...)                                                  \
  KS_SM90_ASM("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"                                              \
               "wgmma.mma_async.sync.aligned." SHAPE ".f32." TYPE "." TYPE " {" REGS "}, {" A0 "}, " DESC_B \
               ", p, 1, 1, 0;\n}\n"                                                                     \
               : __VA_ARGS__                                                                            \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b))
#define KS_WGMMA_REGS_8 "%0, %1, %2, %3, %4, %5, %6, %7"
#define KS_WGMMA_REGS_16 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
#define KS_WGMMA_REGS_32                                                                                 \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                               \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"

template <bool IsBf16, int N>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc_b) {
  static_assert(N == 16 || N == 32 || N == 64 || N == 128, "wgmma_rs: N");
#if KS_SM90A
  if constexpr (N == 16) {
    if constexpr (IsBf16)
      KS_WGMMA_RS("m64n16k16", "bf16", KS_WGMMA_REGS_8, "%8, %9, %10, %11", "%12", KS_WGMMA_8(0));
    else
      KS_WGMMA_RS("m64n16k16", "f16", KS_WGMMA_REGS_8, "%8, %9, %10, %11", "%12", KS_WGMMA_8(0));
  } else if constexpr (N == 32) {
    if constexpr (IsBf16)
      KS_WGMMA_RS("m64n32k16", "bf16", KS_WGMMA_REGS_16, "%16, %17, %18, %19", "%20", KS_WGMMA_8(0), KS_WGMMA_8(8));
    else
      KS_WGMMA_RS("m64n32k16", "f16", KS_WGMMA_REGS_16, "%16, %17, %18, %19", "%20", KS_WGMMA_8(0), KS_WGMMA_8(8));
  } else if constexpr (N == 64) {
    if constexpr (IsBf16)
      KS_WGMMA_RS("m64n64k16", "bf16", KS_WGMMA_REGS_32, "%32, %33, %34, %35", "%36", KS_WGMMA_8(0), KS_WGMMA_8(8), KS_WGMMA_8(16), KS_WGMMA_8(24));
    else
      KS_WGMMA_RS("m64n64k16", "f16", KS_WGMMA_REGS_32, "%32, %33, %34, %35", "%36", KS_WGMMA_8(0), KS_WGMMA_8(8), KS_WGMMA_8(16), KS_WGMMA_8(24));
  } else {
    if constexpr (IsBf16)
      KS_WGMMA_RS("m64n128k16", "bf16", KS_WGMMA_REGS_64, "%64, %65, %66, %67", "%68", KS_WGMMA_8(0), KS_WGMMA_8(8), KS_WGMMA_8(16), KS_WGMMA_8(24), KS_WGMMA_8(32), KS_WGMMA_8(40), KS_WGMMA_8(48), KS_WGMMA_8(56));
    else
      KS_WGMMA_RS("m64n128k16", "f16", KS_WGMMA_REGS_64, "%64, %65, %66, %67", "%68", KS_WGMMA_8(0), KS_WGMMA_8(8), KS_WGMMA_8(16), KS_WGMMA_8(24), KS_WGMMA_8(32), KS_WGMMA_8(40), KS_WGMMA_8(48), KS_WGMMA_8(56));
  }
#else
  (void)d, (void)a, (void)desc_b;
  __trap();
#endif
}
#undef KS_WGMMA_RS
#undef KS_WGMMA_REGS_32
#undef KS_WGMMA_REGS_16
#undef KS_WGMMA_REGS_8
#undef KS_WGMMA
#undef KS_WGMMA_REGS_128
#undef KS_WGMMA_REGS_32_SS
#undef KS_WGMMA_REGS_64
#undef KS_WGMMA_8

// Named barrier over `threads` threads (a multiple of 32), id 1..15 (0 is __syncthreads).
__device__ __forceinline__ void named_barrier(int id, int threads) {
  KS_SM90_ASM("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

// Keeps the compiler from moving reads or writes of 32-bit registers across an asynchronous wgmma
// (the A operand of wgmma_rs).
template <int R>
__device__ __forceinline__ void fence_registers(uint32_t (&r)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) KS_SM90_ASM("" : "+r"(r[i])::"memory");
}

// Hands registers between warpgroups: every warp of a warpgroup runs the same one.
template <int N>
__device__ __forceinline__ void setmaxnreg_inc() {
#if KS_SM90A
  KS_SM90_ASM("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(N));
#endif
}
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() {
#if KS_SM90A
  KS_SM90_ASM("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(N));
#endif
}

// Makes this thread's shared-memory writes visible to the async proxy (a TMA store reading them).
__device__ __forceinline__ void fence_proxy_async_shared() {
  KS_SM90_ASM("fence.proxy.async.shared::cta;" ::: "memory");
}

// A 3-d box of shared memory to global memory at coordinates (c0, c1, c2); out-of-bounds
// elements are not written. Completes with the bulk group of the next bulk_commit.
__device__ __forceinline__ void tma_store_3d(const void* tmap, const void* src, int c0, int c1, int c2) {
  KS_SM90_ASM("cp.async.bulk.tensor.3d.global.shared::cta.bulk_group [%0, {%2, %3, %4}], [%1];" ::"l"(
                   reinterpret_cast<uint64_t>(tmap)),
               "r"(smem_u32(src)), "r"(c0), "r"(c1), "r"(c2)
               : "memory");
}

__device__ __forceinline__ void bulk_commit() { KS_SM90_ASM("cp.async.bulk.commit_group;" ::: "memory"); }

// Waits until at most N bulk groups are pending: their shared-memory reads only (.read), or whole.
template <int N>
__device__ __forceinline__ void bulk_wait_read() {
  KS_SM90_ASM("cp.async.bulk.wait_group.read %0;" ::"n"(N) : "memory");
}
template <int N>
__device__ __forceinline__ void bulk_wait() {
  KS_SM90_ASM("cp.async.bulk.wait_group %0;" ::"n"(N) : "memory");
}

}  // namespace hopper
}  // namespace ks
