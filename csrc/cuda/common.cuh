// Device helpers shared by the CUDA kernels: accumulation types, 16-byte
// vector loads, scalar loads, math overloads for float/double.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

namespace fastalign_cuda {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kThreads = 256;  // threads per block of every kernel
constexpr int kWarpsPerBlock = kThreads / 32;
constexpr double kCosineEps = 1e-8;  // contract.COSINE_EPS

// Accumulation dtype: double for double rows, float for everything else.
template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

// Elements of T in one 16-byte vector.
template <typename T> struct Vec { static constexpr int N = 16 / sizeof(T); };

// ---------------------------------------------------------------- loads
// Rows are read-only for the whole kernel, so they go through the read-only
// (non-coherent) path with __ldg.

__device__ __forceinline__ float load1(const float* p) { return __ldg(p); }
__device__ __forceinline__ double load1(const double* p) { return __ldg(p); }
__device__ __forceinline__ float load1(const __half* p) {
  return __half2float(__ushort_as_half(__ldg(reinterpret_cast<const unsigned short*>(p))));
}
__device__ __forceinline__ float load1(const __nv_bfloat16* p) {
  return __bfloat162float(__ushort_as_bfloat16(__ldg(reinterpret_cast<const unsigned short*>(p))));
}

// p must be 16-byte aligned.
__device__ __forceinline__ void load_vec(const float* p, float* o) {
  const float4 v = __ldg(reinterpret_cast<const float4*>(p));
  o[0] = v.x; o[1] = v.y; o[2] = v.z; o[3] = v.w;
}
__device__ __forceinline__ void load_vec(const double* p, double* o) {
  const double2 v = __ldg(reinterpret_cast<const double2*>(p));
  o[0] = v.x; o[1] = v.y;
}

// 8 half / bfloat16 values arrive as one uint4; each 32-bit word holds a pair.
__device__ __forceinline__ void load_vec(const __half* p, float* o) {
  const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
  const unsigned w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    __half2 h;
    static_assert(sizeof(h) == sizeof(unsigned), "half2 is 32 bits");
    memcpy(&h, &w[i], sizeof(h));
    const float2 f = __half22float2(h);
    o[2 * i] = f.x; o[2 * i + 1] = f.y;
  }
}
__device__ __forceinline__ void load_vec(const __nv_bfloat16* p, float* o) {
  const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
  const unsigned w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    __nv_bfloat162 h;
    static_assert(sizeof(h) == sizeof(unsigned), "bfloat162 is 32 bits");
    memcpy(&h, &w[i], sizeof(h));
    const float2 f = __bfloat1622float2(h);
    o[2 * i] = f.x; o[2 * i + 1] = f.y;
  }
}

// ---------------------------------------------------------------- math

__device__ __forceinline__ float dexp(float x) { return expf(x); }
__device__ __forceinline__ double dexp(double x) { return exp(x); }
__device__ __forceinline__ float dlog(float x) { return logf(x); }
__device__ __forceinline__ double dlog(double x) { return log(x); }
__device__ __forceinline__ float dlog1p(float x) { return log1pf(x); }
__device__ __forceinline__ double dlog1p(double x) { return log1p(x); }
__device__ __forceinline__ float dsqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double dsqrt(double x) { return sqrt(x); }

// Correctly rounded division and square root. The cosine gradient needs them
// (grad_sim, and u = e / n must give u_b = +-u_a exactly for e_b = 2^k e_a):
// nvcc's default -prec-div=true -prec-sqrt=true already make fp32 `/` and
// sqrtf IEEE, but --use_fast_math would turn them into approximations, so the
// intrinsics pin the rounding whatever the flags. fp64 `/` and sqrt are always
// IEEE.
__device__ __forceinline__ float div_rn(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double div_rn(double a, double b) { return a / b; }
__device__ __forceinline__ float sqrt_rn(float x) { return __fsqrt_rn(x); }
__device__ __forceinline__ double sqrt_rn(double x) { return sqrt(x); }

// 4u, u the unit roundoff of the accumulation type (grad_sim's tolerance).
template <typename A> struct FourU;
template <> struct FourU<float> { static constexpr float value = 0x1p-22f; };
template <> struct FourU<double> { static constexpr double value = 0x1p-51; };

// The similarity the cosine row gradient uses: s, or exactly +-1 where |s| is
// within 4u of 1 (same rule as csrc/cpu/triplet_kernels.h grad_sim and the
// Triton _grad_sims).
//
// The gradient is formed as ds_ab/de_a = (u_b - s_ab u_a) / n_a (u = e / n),
// exactly 0 for parallel rows only if u_b = +-u_a and s_ab = +-1 exactly.
// For e_b = 2^k e_a, u_b = +-u_a exactly (the sums of squares scale by 4^k,
// the sqrt and the division by 2^k, all exactly; the lanes split both rows'
// columns alike), but s = d / (n_a n_b) = q_a / fl(n_a^2) with
// n_a = fl(sqrt(q_a)), and fl(n_a^2) = q_a (1 + d1)^2 (1 + d2), |d| <= u:
// the quotient lies in [1 - 3u, 1 + 3u] and, rounded (spacing u below 1, 2u
// above), in [1 - 3u, 1 + 4u]. Rounding such s to +-1 moves the gradient by
// at most 4u |c| / n_a along u_a, less than the rounding error s carries
// anyway (its dots are sums of D products). NaN stays NaN.
template <typename A> __device__ __forceinline__ A grad_sim(A s) {
  const A a = s < A(0) ? -s : s;
  const A off = a - A(1);
  return (off < A(0) ? -off : off) <= FourU<A>::value ? (s > A(0) ? A(1) : A(-1)) : s;
}

// The cosine row gradient of one slot j of a triplet (triplet.cu, header):
//   dE[r_j] += k_a (u_a - h_a u_j) + k_b (u_b - h_b u_j),  k = c_j. / n_j,
// for the two other slots a < b, with h zeroed where n_j is clamped. The
// atomic (triplet.cu) and deterministic (segment_reduce.cu) paths both use it.
template <typename A> struct CosSlot {
  A ka, kb, ha, hb;
  __device__ __forceinline__ A grad(A uj, A ua, A ub) const { return ka * (ua - ha * uj) + kb * (ub - hb * uj); }
};
// c_ja, c_jb = dL/ds of slot j's pairs, h_ja, h_jb = grad_sim of their
// similarities, n = the clamped norm of row j, own = its norm is not clamped.
template <typename A>
__device__ __forceinline__ CosSlot<A> cos_slot(A c_ja, A c_jb, A h_ja, A h_jb, A n, bool own) {
  return CosSlot<A>{div_rn(c_ja, n), div_rn(c_jb, n), own ? h_ja : A(0), own ? h_jb : A(0)};
}

// Larger of a and b, propagating NaN (fmax would drop it).
template <typename A> __device__ __forceinline__ A nanmax(A a, A b) { return (a != a || a > b) ? a : b; }

// log(exp(a) + exp(b)) for finite b; a may be -inf.
template <typename A> __device__ __forceinline__ A logaddexp(A a, A b) {
  const A hi = a > b ? a : b;
  const A lo = a > b ? b : a;
  return hi + dlog1p(dexp(lo - hi));
}


// ---------------------------------------------------------------- host

// Blocks of a persistent (grid-stride) launch of `kernel`: enough for
// `work_blocks` blocks of work, at most as many as stay resident on the
// device at once (occupancy of this kernel at kThreads threads per block).
template <typename Kernel>
int grid_blocks(Kernel kernel, std::int64_t work_blocks, int device) {
  int sms = 0, per_sm = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || sms <= 0) sms = 1;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, 0) != cudaSuccess || per_sm <= 0) {
    per_sm = 1;
  }
  (void)cudaGetLastError();  // a failed query above is not the launch's error
  const std::int64_t resident = static_cast<std::int64_t>(sms) * per_sm;
  const std::int64_t blocks = work_blocks < resident ? work_blocks : resident;
  return static_cast<int>(blocks < 1 ? 1 : blocks);
}

}  // namespace fastalign_cuda
