// CPU emulation shim of the CUDA runtime (csrc/cuda/emu): lets the kernels in
// csrc/cuda run on a host without a GPU, one std::thread per lane and a barrier
// around every warp shuffle, so index math, bounds, shuffle participation and
// the math can be checked against the float64 reference. Not a performance model.
#pragma once
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(x)
struct dim3 { unsigned x = 1, y = 1, z = 1; };
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
struct float4 { float x, y, z, w; };
struct float2 { float x, y; };
struct double2 { double x, y; };
struct uint4 { unsigned x, y, z, w; };
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
template <typename T> inline T __ldg(const T* p) { return *p; }
// IEEE float division / sqrt on the host (x86-64 SSE, no -ffast-math): round to nearest like the intrinsics.
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
typedef int cudaError_t;
enum { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
typedef void* cudaStream_t;
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };
inline cudaError_t cudaSetDevice(int) { return 0; }
inline cudaError_t cudaGetLastError() { return 0; }
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr, int) { *v = 2; return 0; }
template <typename K> inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* v, K, int, int) { *v = 1; return 0; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return 0; }
inline cudaError_t cudaGetDeviceCount(int* n) { *n = 1; return 0; }
inline cudaError_t cudaRuntimeGetVersion(int* v) { *v = 1; return 0; }
inline const char* cudaGetErrorString(cudaError_t e) { return e ? "emulated error" : "no error"; }

// ---- warp emulation: 32 std::threads per warp, barrier around each shuffle
struct EmuWarp { std::barrier<> bar{32}; double vals[32]; long counts[32] = {0}; };
inline thread_local EmuWarp* emu_warp = nullptr;
inline std::atomic<long> emu_shuffles{0};
template <typename T> inline T __shfl_xor_sync(unsigned mask, T v, int off) {
  if (mask != 0xffffffffu) { fprintf(stderr, "partial mask\n"); abort(); }
  const int lane = threadIdx.x & 31;
  emu_warp->counts[lane]++;
  emu_warp->vals[lane] = static_cast<double>(v);
  emu_warp->bar.arrive_and_wait();
  const T r = static_cast<T>(emu_warp->vals[lane ^ off]);
  emu_warp->bar.arrive_and_wait();
  return r;
}
inline std::mutex emu_atomic_mutex;
inline float atomicAdd(float* p, float v) { std::lock_guard<std::mutex> g(emu_atomic_mutex); float o = *p; *p = o + v; return o; }
// sm_90 16-byte vector atomic (run.sh defines __CUDA_ARCH__=900 so the kernels take that path).
inline float4 atomicAdd(float4* p, float4 v) {
  if (reinterpret_cast<std::uintptr_t>(p) % 16) { fprintf(stderr, "misaligned float4 atomic\n"); abort(); }
  std::lock_guard<std::mutex> g(emu_atomic_mutex);
  const float4 o = *p;
  *p = float4{o.x + v.x, o.y + v.y, o.z + v.z, o.w + v.w};
  return o;
}

template <typename K, typename... Args>
void emu_launch(int grid, int block, K kernel, Args... args) {
  if (grid <= 0 || block % 32) { fprintf(stderr, "bad launch\n"); abort(); }
  gridDim.x = grid; blockDim.x = block;
  for (int b = 0; b < grid; ++b) {
    for (int w = 0; w < block / 32; ++w) {
      EmuWarp warp;
      std::vector<std::thread> ts;
      for (int l = 0; l < 32; ++l) {
        ts.emplace_back([&, l]() { threadIdx.x = w * 32 + l; blockIdx.x = b; emu_warp = &warp; kernel(args...); 
          // a lane that exits early must not leave others waiting at a shuffle: drop out of the barrier
          warp.bar.arrive_and_drop(); });
      }
      for (auto& t : ts) t.join();
      for (int l = 1; l < 32; ++l) if (warp.counts[l] != warp.counts[0]) { fprintf(stderr, "divergent shuffles\n"); abort(); }
    }
  }
}
