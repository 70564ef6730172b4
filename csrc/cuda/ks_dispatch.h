// Internal: the tile-kernel launchers of each dtype (one translation unit each, so that a
// parallel build compiles them side by side) and the configuration classes they accept.
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

#include "ks_plane.cuh"
#include "ks_tile.cuh"

namespace ks {
namespace detail {

inline bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; }
inline bool pow2(int64_t v) { return v > 0 && (v & (v - 1)) == 0; }

// Compute capability >= 9.0 (stmatrix), cached per device.
inline bool has_sm90() {
  static int cache[64] = {0};  // 0 unknown, 1 no, 2 yes
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (dev < 64 && cache[dev]) return cache[dev] == 2;
  int major = 0;
  const bool yes = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess && major >= 9;
  if (dev < 64) cache[dev] = yes ? 2 : 1;
  return yes;
}

constexpr int kMaxSmem = 227 * 1024;

// Lets kernel KERN use `bytes` of dynamic shared memory (set once per device and kernel: the
// flags are per template instance, i.e. per kernel).
template <auto KERN>
cudaError_t allow_smem(int bytes) {
  static bool done[64] = {false};
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess || (dev < 64 && done[dev])) return e;
  e = cudaFuncSetAttribute(KERN, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (e == cudaSuccess && dev < 64) done[dev] = true;
  return e;
}

// lcls: block l-group size L (1, 2, 4 or 8); ncls: block width BN class (48, 64 or 128).
cudaError_t launch_tile_bf16(const TileParams& p, int L, int BN, cudaStream_t s);
cudaError_t launch_tile_f16(const TileParams& p, int L, int BN, cudaStream_t s);
cudaError_t launch_tile_tf32(const TileParams& p, int L, int BN, cudaStream_t s);
cudaError_t launch_tile_f32(const TileParams& p, int L, int BN, cudaStream_t s);

// Plane kernels (ks_plane.cuh, sm_90+): 16-bit batch-first x with d == 4 or d % 8 == 0,
// 16-byte aligned x (ldx % 8 == 0) and w, c * d % 8 == 0; p.tiles = plane_tiles(...) < 2^31.
// wres: the w-resident kernel, for which plane_wres_fits(b, c, d) must hold.
int64_t plane_tiles(int64_t batch, int a, int b, int d);
bool plane_wres_fits(int b, int c, int d);
cudaError_t launch_plane_bf16(PlaneParams p, bool wres, cudaStream_t s);
cudaError_t launch_plane_f16(PlaneParams p, bool wres, cudaStream_t s);

}  // namespace detail
}  // namespace ks
