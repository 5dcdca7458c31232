// Fused triplet kernels for the CPU backend (see fastalign/kernels/contract.py).
//
// Raw pointers, sizes and strides only: no torch headers, so the extension
// builds in seconds and one build serves every torch version.
//
// Layout
// ------
// emb      (N, D) of T (double, float, fp16, bf16), unit stride along D, row
//          stride `ld` (>= D, or anything for N <= 1). Row offsets are int64.
// triplets (B, 3) of int32 or int64, contiguous, entries in [0, N).
// Outputs and per-row inputs (target, rowscale, coef, loss, dsim, grad) are in
// the accumulation type A: double for double input, float otherwise.
//
// Gradient accumulation
// ---------------------
// Triplets are split into P equal contiguous parts (P = requested threads).
// Part 0 accumulates straight into `grad`; part p > 0 into its own (N, D)
// buffer of A. A row of a buffer is zeroed the first time its part touches it
// (a byte flag per row and part), so untouched rows cost neither bandwidth nor
// committed pages. The buffers are then reduced row by row in the fixed order
// part 0, 1, ..., P-1. Every sum therefore has an order fixed by (inputs, P):
// the result is bitwise reproducible for a given thread count. Memory:
// O(N * D * (P - 1) + N * P) on top of the outputs. For large N the
// owned-rows path (run_owned, below) needs no per-part buffers: each thread
// writes only its own range of gradient rows.
#pragma once

#include <omp.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <thread>
#include <vector>

namespace fastalign {
namespace cpu {

enum DType : int { kF64 = 0, kF32 = 1, kF16 = 2, kBF16 = 3 };
enum IType : int { kI32 = 0, kI64 = 1 };
enum Mode : int { kHard = 0, kKL = 1, kJSD = 2 };

constexpr double kCosineEps = 1e-8;  // contract.COSINE_EPS

// Storage tags for the 16-bit types (never dereferenced as structs; the rows
// are read as raw uint16 bit patterns).
struct f16_t {
  uint16_t bits;
};
struct bf16_t {
  uint16_t bits;
};

// ------------------------------------------------------------ conversions

// Portable fp16 -> fp32 for compilers without _Float16 (exact for every
// pattern: zeros, subnormals, normals, inf, NaN).
inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: mant * 2^-24, exactly representable in fp32
      float f = std::ldexp(float(mant), -24);
      std::memcpy(&bits, &f, 4);
      bits |= sign;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  }
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

template <class T>
struct Traits;

template <>
struct Traits<double> {
  using acc = double;
  static constexpr bool kNative = true;  // rows are used in place, no conversion
};

template <>
struct Traits<float> {
  using acc = float;
  static constexpr bool kNative = true;
};

template <>
struct Traits<f16_t> {
  using acc = float;
  static constexpr bool kNative = false;
  static inline void to_acc(const f16_t* src, float* __restrict dst, int64_t n) {
#if defined(__FLT16_MAX__)
    // With F16C (-march=native on x86) this loop becomes vcvtph2ps.
    const _Float16* s = reinterpret_cast<const _Float16*>(src);
#pragma omp simd
    for (int64_t d = 0; d < n; ++d) dst[d] = float(s[d]);
#else
    const uint16_t* s = reinterpret_cast<const uint16_t*>(src);
    for (int64_t d = 0; d < n; ++d) dst[d] = half_bits_to_float(s[d]);
#endif
  }
};

template <>
struct Traits<bf16_t> {
  using acc = float;
  static constexpr bool kNative = false;
  static inline void to_acc(const bf16_t* src, float* __restrict dst, int64_t n) {
    // bf16 is the top half of an fp32: shift the bits up.
    const uint16_t* s = reinterpret_cast<const uint16_t*>(src);
    uint32_t* o = reinterpret_cast<uint32_t*>(dst);
#pragma omp simd
    for (int64_t d = 0; d < n; ++d) o[d] = uint32_t(s[d]) << 16;
  }
};

// ---------------------------------------------------------- row kernels

// Width of the partial-sum arrays of the dot loops. Several independent
// vector accumulators per sum hide the FMA latency; the fixed final reduction
// order keeps the result deterministic.
constexpr int kLanes = 16;

// Three pair dots and (COS) three squared norms of rows x0, x1, x2.
// out = {s01, s02, s12, |x0|^2, |x1|^2, |x2|^2}.
template <class A, bool COS>
inline void row_stats(const A* __restrict x0, const A* __restrict x1, const A* __restrict x2, int64_t D,
                      A out[6]) {
  A p01[kLanes] = {}, p02[kLanes] = {}, p12[kLanes] = {};
  A q0[kLanes] = {}, q1[kLanes] = {}, q2[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= D; d += kLanes) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      const A a = x0[d + l], b = x1[d + l], c = x2[d + l];
      p01[l] += a * b;
      p02[l] += a * c;
      p12[l] += b * c;
      if (COS) {
        q0[l] += a * a;
        q1[l] += b * b;
        q2[l] += c * c;
      }
    }
  }
  for (int l = 0; d < D; ++d, ++l) {  // tail: D not a multiple of kLanes
    const A a = x0[d], b = x1[d], c = x2[d];
    p01[l] += a * b;
    p02[l] += a * c;
    p12[l] += b * c;
    if (COS) {
      q0[l] += a * a;
      q1[l] += b * b;
      q2[l] += c * c;
    }
  }
  A s[6] = {0, 0, 0, 0, 0, 0};
  // Pairwise tree over the lanes: fixed order, and better rounding than a chain.
  for (int w = kLanes / 2; w >= 1; w /= 2) {
    for (int l = 0; l < w; ++l) {
      p01[l] += p01[l + w];
      p02[l] += p02[l + w];
      p12[l] += p12[l + w];
      if (COS) {
        q0[l] += q0[l + w];
        q1[l] += q1[l + w];
        q2[l] += q2[l + w];
      }
    }
  }
  s[0] = p01[0];
  s[1] = p02[0];
  s[2] = p12[0];
  if (COS) {
    s[3] = q0[0];
    s[4] = q1[0];
    s[5] = q2[0];
  }
  for (int i = 0; i < 6; ++i) out[i] = s[i];
}

// Pair similarities from row stats; for COS also the clamped norms and
// whether each norm was clamped (then it is a constant for the gradient).
template <class A, bool COS>
inline void pair_sims(const A st[6], A s[3], A n[3], bool unclamped[3]) {
  if (!COS) {
    s[0] = st[0];
    s[1] = st[1];
    s[2] = st[2];
    return;
  }
  const A eps = A(kCosineEps);
  for (int k = 0; k < 3; ++k) {
    const A r = std::sqrt(st[3 + k]);
    // torch's clamp_min passes the gradient where x >= min (NaN compares false).
    unclamped[k] = r >= eps;
    n[k] = r > eps ? r : (r != r ? r : eps);  // keep NaN, clamp small norms
  }
  s[0] = st[0] / (n[0] * n[1]);
  s[1] = st[1] / (n[0] * n[2]);
  s[2] = st[2] / (n[1] * n[2]);
}

template <class A>
inline A logaddexp(A a, A b) {
  const A m = a > b ? a : b;
  if (m == -INFINITY) return m;
  return m + std::log1p(std::exp(-std::fabs(a - b)));
}

// Per-triplet loss and dL/ds (already divided by T). p: target row (KL/JSD);
// c: chosen pair (hard).
template <class A>
inline A objective(const A s[3], const A* p, int64_t c, int mode, A temperature, A dsim[3]) {
  A z[3], logq[3], q[3];
  for (int k = 0; k < 3; ++k) z[k] = s[k] / temperature;
  // A NaN anywhere makes every exp NaN below, so it reaches the loss.
  A m = z[0];
  if (z[1] > m) m = z[1];
  if (z[2] > m) m = z[2];
  const A sum = std::exp(z[0] - m) + std::exp(z[1] - m) + std::exp(z[2] - m);
  const A log_sum = std::log(sum);
  for (int k = 0; k < 3; ++k) {
    // (z - m) - log(sum), not z - (m + log(sum)): the shifted form keeps the
    // digits of z - m when |m| is large (as log_softmax does).
    logq[k] = (z[k] - m) - log_sum;
    q[k] = std::exp(logq[k]);
  }
  A loss = 0, dz[3];
  if (mode == kHard) {
    loss = -logq[c];
    for (int k = 0; k < 3; ++k) dz[k] = q[k] - (k == c ? A(1) : A(0));
  } else if (mode == kKL) {
    for (int k = 0; k < 3; ++k) {
      // Terms with p_k = 0 contribute 0 (the limit of p log p).
      if (p[k] > 0) loss += p[k] * (std::log(p[k]) - logq[k]);
      dz[k] = q[k] - p[k];
    }
  } else {  // kJSD
    const A log2 = A(0.6931471805599453094);
    A g[3], lp = 0, lq = 0, qg = 0;
    for (int k = 0; k < 3; ++k) {
      const A logp = p[k] > 0 ? std::log(p[k]) : A(-INFINITY);
      const A logm = logaddexp(logp, logq[k]) - log2;
      if (p[k] > 0) lp += p[k] * (logp - logm);
      lq += q[k] * (logq[k] - logm);
      g[k] = A(0.5) * (logq[k] - logm);
      qg += q[k] * g[k];
    }
    loss = A(0.5) * lp + A(0.5) * lq;
    for (int k = 0; k < 3; ++k) dz[k] = q[k] * (g[k] - qg);
  }
  for (int k = 0; k < 3; ++k) dsim[k] = dz[k] / temperature;
  return loss;
}

// Row-gradient coefficients: g_a = sum_b W[a][b] x_b for the three slots,
// from c = dL/ds (pair order 01, 02, 12). Used by the dot row path and by the
// Gram path (grad = C E, one GEMM, needs coefficients of the rows
// themselves); the cosine row path uses cos_terms, which stays exact for
// parallel rows where this form cancels to rounding noise.
template <class A, bool COS>
inline void row_weights(const A c[3], const A s[3], const A n[3], const bool unclamped[3], A W[3][3]) {
  if (!COS) {
    W[0][0] = 0, W[0][1] = c[0], W[0][2] = c[1];
    W[1][0] = c[0], W[1][1] = 0, W[1][2] = c[2];
    W[2][0] = c[1], W[2][1] = c[2], W[2][2] = 0;
    return;
  }
  // ds_ab/de_a = e_b / (n_a n_b) - s_ab e_a / n_a^2 (second term only when n_a
  // is not clamped).
  const A w01 = c[0] / (n[0] * n[1]), w02 = c[1] / (n[0] * n[2]), w12 = c[2] / (n[1] * n[2]);
  W[0][1] = w01, W[0][2] = w02;
  W[1][0] = w01, W[1][2] = w12;
  W[2][0] = w02, W[2][1] = w12;
  W[0][0] = unclamped[0] ? -(c[0] * s[0] + c[1] * s[1]) / (n[0] * n[0]) : A(0);
  W[1][1] = unclamped[1] ? -(c[0] * s[0] + c[2] * s[2]) / (n[1] * n[1]) : A(0);
  W[2][2] = unclamped[2] ? -(c[1] * s[1] + c[2] * s[2]) / (n[2] * n[2]) : A(0);
}

// The similarity the cosine row gradient uses: s, or exactly +-1 where |s| is
// within 4u of 1 (u = eps / 2, the unit roundoff of A).
//
// The row path forms ds_ab/de_a = (u_b - s_ab u_a) / n_a (u = e / n), which
// is exactly 0 for parallel rows only if u_b = +-u_a and s_ab = +-1 exactly.
// For e_b = 2^k e_a (any D) the division gives u_b = +-u_a exactly (the sums
// of squares scale by 4^k, the sqrt by 2^k, exactly), but
// s = d / (n_a n_b) = q_a / fl(n_a^2), with n_a = fl(sqrt(q_a)) and
// fl(n_a^2) = q_a (1 + d1)^2 (1 + d2), |d| <= u: the quotient lies in
// [1 - 3u, 1 + 3u] and, rounded (spacing u below 1, 2u above), in
// [1 - 3u, 1 + 4u]. Rounding such s to +-1 moves the gradient by at most
// 4u |c| / n_a along u_a, less than the rounding error s carries anyway (its
// dots are sums of D products). For D = 1, s is +-1 already (sqrt(fl(x^2))
// = |x|). The Triton kernels do the same (triplet.py, _grad_sims).
template <class A>
inline A grad_sim(A s) {
  constexpr A tol = A(2) * std::numeric_limits<A>::epsilon();  // 4u
  return std::fabs(std::fabs(s) - A(1)) <= tol ? (s > 0 ? A(1) : A(-1)) : s;
}

// Coefficients of the cosine row path:
//   dE[r_j] += sum_{b != j} k[j][b] (u_b - h[j][b] u_j),  u = x / n,
// k[j][b] = c_jb / n_j and h[j][b] = grad_sim(s_jb), or 0 where n_j is
// clamped (n_j is then a constant). With s = u_a . u_b and dn_a/de_a = u_a,
//   ds_ab/de_a = u_b / n_a - (u_a . u_b) u_a / n_a = (u_b - s_ab u_a) / n_a.
// This equals the A e_b - B e_a of row_weights, but that form cancels two
// terms of size |c| / n_a to rounding noise for (near-)parallel rows, huge for
// tiny norms, where the true gradient is 0; here every pair's bracket is
// exactly 0 for parallel rows (u by a correctly rounded division, h = +-1).
template <class A>
struct CosTerms {
  A n[3];
  A k[3][3];
  A h[3][3];
};

template <class A>
inline void cos_terms(const A c[3], const A s[3], const A n[3], const bool unclamped[3], CosTerms<A>& t) {
  static constexpr int kPairOf[3][3] = {{-1, 0, 1}, {0, -1, 2}, {1, 2, -1}};  // slots -> pair index
  for (int j = 0; j < 3; ++j) {
    t.n[j] = n[j];
    for (int b = 0; b < 3; ++b) {
      if (b == j) {
        t.k[j][b] = t.h[j][b] = A(0);
        continue;
      }
      const int p = kPairOf[j][b];
      t.k[j][b] = c[p] / n[j];
      t.h[j][b] = unclamped[j] ? grad_sim(s[p]) : A(0);
    }
  }
}

// One part's gradient buffer: rows of A with stride D, plus first-touch flags.
template <class A>
struct GradPart {
  A* rows;
  uint8_t* touched;
  int64_t D;

  inline A* row(int64_t r) {
    A* g = rows + r * D;
    if (!touched[r]) {
      std::memset(g, 0, sizeof(A) * size_t(D));
      touched[r] = 1;
    }
    return g;
  }
};

// g_rows[j] += sum_b W[j][b] x_b, for the three destination rows r[j] (the
// row path calls it for dot similarities; cosine has accumulate_cos).
template <class A, bool COS>
inline void accumulate(GradPart<A>& part, const int64_t r[3], const A* __restrict x0, const A* __restrict x1,
                       const A* __restrict x2, const A W[3][3]) {
  const int64_t D = part.D;
  if (r[0] != r[1] && r[0] != r[2] && r[1] != r[2]) {
    A* __restrict g0 = part.row(r[0]);
    A* __restrict g1 = part.row(r[1]);
    A* __restrict g2 = part.row(r[2]);
    const A w00 = W[0][0], w01 = W[0][1], w02 = W[0][2];
    const A w10 = W[1][0], w11 = W[1][1], w12 = W[1][2];
    const A w20 = W[2][0], w21 = W[2][1], w22 = W[2][2];
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) {
      const A a = x0[d], b = x1[d], c = x2[d];
      if (COS) {
        g0[d] += w00 * a + w01 * b + w02 * c;
        g1[d] += w10 * a + w11 * b + w12 * c;
        g2[d] += w20 * a + w21 * b + w22 * c;
      } else {  // the diagonal is 0 for dot similarities
        g0[d] += w01 * b + w02 * c;
        g1[d] += w10 * a + w12 * c;
        g2[d] += w20 * a + w21 * b;
      }
    }
    return;
  }
  // A repeated index: merge the coefficients of equal rows so every
  // destination row is written by exactly one loop (no aliasing stores).
  int64_t dest[3];
  A M[3][3];
  int nd = 0;
  for (int j = 0; j < 3; ++j) {
    int k = 0;
    while (k < nd && dest[k] != r[j]) ++k;
    if (k == nd) {
      dest[nd] = r[j];
      M[nd][0] = W[j][0], M[nd][1] = W[j][1], M[nd][2] = W[j][2];
      ++nd;
    } else {
      M[k][0] += W[j][0], M[k][1] += W[j][1], M[k][2] += W[j][2];
    }
  }
  for (int k = 0; k < nd; ++k) {
    A* __restrict g = part.row(dest[k]);
    const A m0 = M[k][0], m1 = M[k][1], m2 = M[k][2];
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) g[d] += m0 * x0[d] + m1 * x1[d] + m2 * x2[d];
  }
}

// g_rows[j] += sum_{b != j} k[j][b] (u_b - h[j][b] u_j) for the cosine row path
// (CosTerms); one division per element read.
template <class A>
inline void accumulate_cos(GradPart<A>& part, const int64_t r[3], const A* __restrict x0, const A* __restrict x1,
                           const A* __restrict x2, const CosTerms<A>& t) {
  const int64_t D = part.D;
  const A n0 = t.n[0], n1 = t.n[1], n2 = t.n[2];
  const A k01 = t.k[0][1], k02 = t.k[0][2], k10 = t.k[1][0], k12 = t.k[1][2], k20 = t.k[2][0], k21 = t.k[2][1];
  const A h01 = t.h[0][1], h02 = t.h[0][2], h10 = t.h[1][0], h12 = t.h[1][2], h20 = t.h[2][0], h21 = t.h[2][1];
  if (r[0] != r[1] && r[0] != r[2] && r[1] != r[2]) {
    A* __restrict g0 = part.row(r[0]);
    A* __restrict g1 = part.row(r[1]);
    A* __restrict g2 = part.row(r[2]);
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) {
      const A u0 = x0[d] / n0, u1 = x1[d] / n1, u2 = x2[d] / n2;
      g0[d] += k01 * (u1 - h01 * u0) + k02 * (u2 - h02 * u0);
      g1[d] += k10 * (u0 - h10 * u1) + k12 * (u2 - h12 * u1);
      g2[d] += k20 * (u0 - h20 * u2) + k21 * (u1 - h21 * u2);
    }
    return;
  }
  // A repeated index: equal slots share a destination row, so add slot by
  // slot through plain (possibly equal) pointers, in slot order.
  A* g[3];
  for (int j = 0; j < 3; ++j) g[j] = part.row(r[j]);
  for (int64_t d = 0; d < D; ++d) {
    const A u0 = x0[d] / n0, u1 = x1[d] / n1, u2 = x2[d] / n2;
    const A v0 = k01 * (u1 - h01 * u0) + k02 * (u2 - h02 * u0);
    const A v1 = k10 * (u0 - h10 * u1) + k12 * (u2 - h12 * u1);
    const A v2 = k20 * (u0 - h20 * u2) + k21 * (u1 - h21 * u2);
    g[0][d] += v0;
    g[1][d] += v1;
    g[2][d] += v2;
  }
}

// ------------------------------------------------------------ problems

template <class T>
struct Rows {
  const T* emb;
  int64_t N, D, ld;
  const void* trip;  // (B, 3) int32 or int64: a runtime branch per index
  bool trip64;       // costs nothing next to a row and halves the instantiations
  int64_t B;

  inline int64_t index(int64_t i) const {
    return trip64 ? static_cast<const int64_t*>(trip)[i] : int64_t(static_cast<const int32_t*>(trip)[i]);
  }
};

// Points x[0..2] at the triplet's three rows in the accumulation type,
// converting 16-bit rows into `scratch` (3 * D values of A).
template <class T>
inline void load_rows(const Rows<T>& p, int64_t b, typename Traits<T>::acc* scratch, int64_t r[3],
                      const typename Traits<T>::acc* x[3]) {
  using A = typename Traits<T>::acc;
  for (int j = 0; j < 3; ++j) {
    r[j] = p.index(3 * b + j);
    const T* src = p.emb + r[j] * p.ld;  // 64-bit offset
    if constexpr (Traits<T>::kNative) {
      x[j] = reinterpret_cast<const A*>(src);
    } else {
      Traits<T>::to_acc(src, scratch + j * p.D, p.D);
      x[j] = scratch + j * p.D;
    }
  }
}

// ----------------------------------------------------------- memory hints

// Triplets ahead whose rows are prefetched (the next triplet's gradient rows
// are prefetched for writing): the rows are random, so the hardware
// prefetcher cannot guess them. On the loaded 2-core dev machine this measured
// neutral (memory bandwidth, not latency, was the limit there); it costs a
// few instructions per cache line and helps where latency dominates.
// Build with -DFASTALIGN_PREFETCH_AHEAD=0 to switch it off.
#ifndef FASTALIGN_PREFETCH_AHEAD
#define FASTALIGN_PREFETCH_AHEAD 2
#endif
constexpr int64_t kPrefetchAhead = FASTALIGN_PREFETCH_AHEAD;

template <int RW>
inline void prefetch_bytes(const void* ptr, int64_t bytes) {
  const char* c = static_cast<const char*>(ptr);
  for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(c + o, RW, 3);
}

template <class T>
inline void prefetch_triplet_rows(const Rows<T>& p, int64_t b) {
  for (int j = 0; j < 3; ++j) prefetch_bytes<0>(p.emb + p.index(3 * b + j) * p.ld, p.D * int64_t(sizeof(T)));
}

// Ask for transparent huge pages on a large, not yet touched accumulator (the
// gradient output and the parts' buffers; Linux, THP "madvise" mode): random
// rows over hundreds of MB otherwise cost a TLB miss and a 4 KiB page fault
// each. Only a hint about the pages' size; harmless when unsupported (the
// 2-core dev VM grants no huge pages at all: AnonHugePages stays 0 there).
inline void advise_huge(void* ptr, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (bytes < 4 * kHuge) return;
  const uintptr_t lo = (reinterpret_cast<uintptr_t>(ptr) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t hi = (reinterpret_cast<uintptr_t>(ptr) + bytes) & ~(kHuge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
  (void)ptr;
  (void)bytes;
#endif
}

// Parts of a call: enough to use the threads, never more than triplets when a
// gradient is accumulated (each part beyond the first costs a buffer).
inline int grad_parts(int threads, int64_t B, bool grad) {
  const int t = std::max(1, threads);
  return grad ? int(std::max<int64_t>(1, std::min<int64_t>(t, B))) : t;
}

// Contiguous [begin, end) of part `k` of `P` over `n` items.
inline void part_range(int64_t n, int k, int P, int64_t& begin, int64_t& end) {
  begin = n * k / P;
  end = n * (k + 1) / P;
}

template <class T, bool COS>
void similarities(const Rows<T>& p, typename Traits<T>::acc* out, int threads) {
  using A = typename Traits<T>::acc;
  const int P = std::max(1, threads);
#pragma omp parallel num_threads(P)
  {
    std::vector<A> scratch(Traits<T>::kNative ? 0 : size_t(3 * p.D));
#pragma omp for schedule(static)
    for (int64_t b = 0; b < p.B; ++b) {
      if (kPrefetchAhead > 0 && b + kPrefetchAhead < p.B) prefetch_triplet_rows(p, b + kPrefetchAhead);
      int64_t r[3];
      const A* x[3];
      load_rows(p, b, scratch.data(), r, x);
      A st[6], s[3], n[3];
      bool unc[3];
      row_stats<A, COS>(x[0], x[1], x[2], p.D, st);
      pair_sims<A, COS>(st, s, n, unc);
      out[3 * b] = s[0], out[3 * b + 1] = s[1], out[3 * b + 2] = s[2];
    }
  }
}

// What a part does per triplet: FUSED computes loss/dsim and gradient
// coefficients; otherwise (scatter) the coefficients come from `coef`.
template <class A>
struct Objective {
  const A* target;        // (B, 3) or null
  const int64_t* choice;  // (B,) or null
  const A* rowscale;      // (B,) or null
  int mode;
  A temperature;
  A grad_scale;
  A* loss;  // (B,)
  A* dsim;  // (B, 3)
};

// Reduce the parts' buffers into part 0's (= `grad`) in the fixed order
// 0, 1, ..., P-1 and zero the rows nobody touched.
template <class A>
void reduce_parts(A* grad, int64_t N, int64_t D, const std::vector<A*>& bufs, const std::vector<uint8_t*>& touched,
                  int threads) {
  const int P = int(bufs.size());
#pragma omp parallel for schedule(static) num_threads(std::max(1, threads))
  for (int64_t r = 0; r < N; ++r) {
    A* __restrict o = grad + r * D;
    if (!touched[0][r]) std::memset(o, 0, sizeof(A) * size_t(D));
    for (int k = 1; k < P; ++k) {
      if (!touched[k][r]) continue;
      const A* __restrict src = bufs[k] + r * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) o[d] += src[d];
    }
  }
}

// The P parts' (rows, cols) accumulators: part 0 is `out` itself, parts
// 1..P-1 get their own buffers. Allocated outside any parallel region; new A[]
// leaves the memory untouched, so pages are committed only for rows a part
// writes (GradPart zeroes a row on first touch).
template <class A>
struct PartBuffers {
  int64_t rows, cols;
  std::vector<std::unique_ptr<A[]>> owned;
  std::vector<std::unique_ptr<uint8_t[]>> flags;
  std::vector<A*> bufs;
  std::vector<uint8_t*> touched;

  // `workspace`, when given, holds (P - 1) * rows * cols values for parts
  // 1..P-1 (a buffer the caller keeps across calls: its pages are already
  // committed, and first-touch zeroing makes its old contents irrelevant).
  PartBuffers(A* out, int64_t rows_, int64_t cols_, int P, A* workspace = nullptr) : rows(rows_), cols(cols_) {
    for (int k = 0; k < P; ++k) {
      if (k == 0) {
        bufs.push_back(out);
      } else if (workspace) {
        bufs.push_back(workspace + size_t(k - 1) * size_t(rows) * size_t(cols));
      } else {
        owned.emplace_back(new A[size_t(rows) * size_t(cols)]);
        bufs.push_back(owned.back().get());
      }
      advise_huge(bufs.back(), size_t(rows) * size_t(cols) * sizeof(A));
      flags.emplace_back(new uint8_t[size_t(std::max<int64_t>(rows, 1))]());
      touched.push_back(flags.back().get());
    }
  }

  GradPart<A> part(int k) {
    if (bufs.empty()) return GradPart<A>{nullptr, nullptr, cols};
    return GradPart<A>{bufs[k], touched[k], cols};
  }

  void reduce(int threads) { reduce_parts<A>(bufs[0], rows, cols, bufs, touched, threads); }
};

// Fused forward (+ backward when grad != null), or scatter when obj == null.
template <class T, bool COS>
void run_parts(const Rows<T>& p, const Objective<typename Traits<T>::acc>* obj,
               const typename Traits<T>::acc* coef, typename Traits<T>::acc* grad, int threads,
               typename Traits<T>::acc* workspace = nullptr) {
  using A = typename Traits<T>::acc;
  const int P = grad_parts(threads, p.B, grad != nullptr);
  PartBuffers<A> parts(grad, p.N, p.D, grad ? P : 0, workspace);
#pragma omp parallel num_threads(P)
  {
    std::vector<A> scratch(Traits<T>::kNative ? 0 : size_t(3 * p.D));
    // One part per iteration; with fewer threads than parts a thread runs
    // several parts, each with its own buffer, so the result does not change.
#pragma omp for schedule(static, 1)
    for (int k = 0; k < P; ++k) {
      int64_t begin, end;
      part_range(p.B, k, P, begin, end);
      GradPart<A> part = parts.part(k);
      for (int64_t b = begin; b < end; ++b) {
        if (kPrefetchAhead > 0 && b + kPrefetchAhead < end) {
          prefetch_triplet_rows(p, b + kPrefetchAhead);
          if (grad) {  // the next triplet's gradient rows, for writing
            for (int j = 0; j < 3; ++j)
              prefetch_bytes<1>(part.rows + p.index(3 * (b + 1) + j) * p.D, p.D * int64_t(sizeof(A)));
          }
        }
        int64_t r[3];
        const A* x[3];
        load_rows(p, b, scratch.data(), r, x);
        A st[6], s[3] = {0, 0, 0}, n[3] = {1, 1, 1};
        bool unc[3] = {true, true, true};
        A c[3];
        if (obj) {
          row_stats<A, COS>(x[0], x[1], x[2], p.D, st);
          pair_sims<A, COS>(st, s, n, unc);
          A ds[3];
          const A l = objective<A>(s, obj->target ? obj->target + 3 * b : nullptr, obj->choice ? obj->choice[b] : 0,
                                   obj->mode, obj->temperature, ds);
          obj->loss[b] = l;
          obj->dsim[3 * b] = ds[0], obj->dsim[3 * b + 1] = ds[1], obj->dsim[3 * b + 2] = ds[2];
          if (!grad) continue;
          const A scale = obj->grad_scale * (obj->rowscale ? obj->rowscale[b] : A(1));
          for (int j = 0; j < 3; ++j) c[j] = ds[j] * scale;
        } else {
          if (COS) {  // dot similarities need no forward for the scatter
            row_stats<A, COS>(x[0], x[1], x[2], p.D, st);
            pair_sims<A, COS>(st, s, n, unc);
          }
          for (int j = 0; j < 3; ++j) c[j] = coef[3 * b + j];
        }
        if (COS) {
          CosTerms<A> t;
          cos_terms<A>(c, s, n, unc, t);
          accumulate_cos<A>(part, r, x[0], x[1], x[2], t);
        } else {
          A W[3][3];
          row_weights<A, COS>(c, s, n, unc, W);
          accumulate<A, COS>(part, r, x[0], x[1], x[2], W);
        }
      }
    }
  }
  if (grad) parts.reduce(threads);
}


// ------------------------------------------------ owned-rows (large-N) path
//
// When the (N, D) gradient is much larger than the caches, the row path's
// per-part buffers cost as much memory as the gradient per extra thread, and
// traffic for first-touch zeroing and the reduction. Here every thread owns a
// contiguous range of gradient rows and is the only one that writes them,
// straight into `grad`:
//
// 1. Ownership: the row ranges are cut so that each holds about 3B/P of the
//    3B (triplet, slot) destinations (a histogram over the indices), so the
//    writes stay balanced even for skewed index distributions.
// 2. Each triplet is assigned to the owner of the majority of its three rows
//    (the owner of slot 0 when all three differ), and a counting sort over B
//    lists every thread's triplets in increasing b. For random triplets and
//    P = 2, a quarter of the 3B slots then have a foreign destination (3/4 of
//    the triplets split 2 + 1), against half with contiguous parts; at most
//    two slots of a triplet are foreign.
// 3. Rounds of kRoundTriplets triplets. In its own round k a thread runs the
//    forward of each triplet (3 rows read once, as in the row path), adds the
//    row gradients of the slots it owns, and writes the row gradient of each
//    foreign slot as a message (D values) into ring slot k % (2 lag + 1),
//    listed for the owner. After its own round k + lag, a thread adds the
//    round-k messages for its rows, producers in the order 0, ..., P-1. A
//    foreign slot thus costs one write and one read of D values in a small
//    ring instead of a second gather of the triplet's rows, and the threads
//    wait on each other only when one runs `lag` rounds ahead (counters with
//    acquire/release, spin then yield).
//
// Each gradient row is written by its owner alone, in a sequence fixed by
// (inputs, P): the result is bitwise reproducible for a given thread count,
// also when OpenMP grants fewer threads than P (one thread then runs every
// part's steps in the same order). Untouched rows are zeroed at the end.
// Extra memory: the ring (owned_workspace, ~10 % of N * D; the Python wrapper
// keeps it between calls), 2 bytes per row (owners), 8 per row (histogram,
// freed before the rounds), 1 per row (touched flags), 8 per triplet
// (permutation) and 16 per message of a round in flight.

// g = sum_{a != j} W[j][a] x_a (ADD: g +=): slot j's row gradient alone (dot
// similarity, W from row_weights; the diagonal is 0), in accumulate's order.
template <class A, bool ADD>
inline void slot_grad(A* __restrict g, int j, const A* const x[3], const A W[3][3], int64_t D) {
  const int a = j == 0 ? 1 : 0, c = j == 2 ? 1 : 2;
  const A* __restrict xa = x[a];
  const A* __restrict xc = x[c];
  const A wa = W[j][a], wc = W[j][c];
#pragma omp simd
  for (int64_t d = 0; d < D; ++d) {
    const A v = wa * xa[d] + wc * xc[d];
    g[d] = ADD ? g[d] + v : v;
  }
}

// g = sum_{a != j} k[j][a] (u_a - h[j][a] u_j), u = x / n (ADD: g +=): slot
// j's cosine row gradient alone (CosTerms), in accumulate_cos's order.
template <class A, bool ADD>
inline void slot_grad_cos(A* __restrict g, int j, const A* const x[3], const CosTerms<A>& t, int64_t D) {
  const int a = j == 0 ? 1 : 0, c = j == 2 ? 1 : 2;
  const A* __restrict xj = x[j];
  const A* __restrict xa = x[a];
  const A* __restrict xc = x[c];
  const A nj = t.n[j], na = t.n[a], nc = t.n[c];
  const A ka = t.k[j][a], kc = t.k[j][c], ha = t.h[j][a], hc = t.h[j][c];
#pragma omp simd
  for (int64_t d = 0; d < D; ++d) {
    const A uj = xj[d] / nj, ua = xa[d] / na, uc = xc[d] / nc;
    const A v = ka * (ua - ha * uj) + kc * (uc - hc * uj);
    g[d] = ADD ? g[d] + v : v;
  }
}

// The owner thread of every row: P contiguous ranges with about 3B/P slot
// destinations each (a range may be empty when one row alone holds more).
template <class T>
std::vector<uint16_t> row_owners(const Rows<T>& p, int P) {
  std::vector<uint16_t> owner(size_t(p.N));
  {
    std::vector<int64_t> count(size_t(p.N), 0);
    for (int64_t i = 0; i < 3 * p.B; ++i) ++count[p.index(i)];
    int64_t seen = 0;
    int t = 0;
    for (int64_t r = 0; r < p.N; ++r) {
      // Row r goes to the first range whose share of the slots is not yet full.
      while (t < P - 1 && seen >= 3 * p.B * (t + 1) / P) ++t;
      owner[r] = uint16_t(t);
      seen += count[r];
    }
  }
  return owner;
}

// Rounds of the owned path: a round is kRoundTriplets triplets of one thread.
// A consumer applies the messages of round k after its own round k + lag, and
// each producer keeps 2 lag + 1 rounds of messages, so either thread may run
// up to `lag` rounds ahead of the other before it waits: slack that absorbs a
// thread being descheduled on a shared machine. `lag` is as large as fits the
// ring into ~10 % of the gradient.
constexpr int64_t kRoundTriplets = 256;

inline int owned_parts(int threads, int64_t B) { return std::min(grad_parts(threads, B, true), 65535); }

// Rounds a consumer trails its own: the largest that keeps the ring of
// P * (2 lag + 1) * 2 * kRoundTriplets message rows within ~10 % of the
// (N, D) gradient. Fixed by (N, P), so the schedule is too.
inline int64_t owned_lag(int64_t N, int P) {
  return std::max<int64_t>(1, std::min<int64_t>(64, (N / (20 * int64_t(P) * kRoundTriplets) - 1) / 2));
}

// Accumulation values of the owned path's message ring (0 for one part):
// a caller may keep them between calls (their contents never matter).
inline int64_t owned_workspace(int64_t N, int64_t D, int64_t B, int threads) {
  const int P = owned_parts(threads, B);
  if (P == 1 || N == 0) return 0;
  return int64_t(P) * (2 * owned_lag(N, P) + 1) * 2 * kRoundTriplets * D;
}

// Spin briefly, then yield: the machine may run more threads than cores.
inline void wait_at_least(const std::atomic<int64_t>& v, int64_t target) {
  int spins = 0;
  while (v.load(std::memory_order_acquire) < target) {
    if (++spins < 512) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    } else {
      std::this_thread::yield();
    }
  }
}

// A message of the owned path: add row `msg` of a producer's ring slot to
// gradient row `row`.
struct SlotMessage {
  int64_t row;
  int64_t msg;
};

// Fused forward + backward (obj != null) or scatter (obj == null, coef given)
// into `grad` without per-thread gradient buffers. P = 1 is the row path.
template <class T, bool COS>
void run_owned(const Rows<T>& p, const Objective<typename Traits<T>::acc>* obj,
               const typename Traits<T>::acc* coef, typename Traits<T>::acc* grad, int threads,
               typename Traits<T>::acc* workspace = nullptr) {
  using A = typename Traits<T>::acc;
  const int P = owned_parts(threads, p.B);
  if (P == 1 || p.N == 0) {
    run_parts<T, COS>(p, obj, coef, grad, 1);
    return;
  }
  const int64_t N = p.N, D = p.D, B = p.B;
  const std::vector<uint16_t> owner = row_owners(p, P);
  // Majority owner of a triplet: o1 == o2 means two of three; otherwise slot 0's
  // owner holds a majority or all three owners differ.
  auto triplet_owner = [&](int64_t b) {
    const uint16_t o0 = owner[p.index(3 * b)], o1 = owner[p.index(3 * b + 1)], o2 = owner[p.index(3 * b + 2)];
    return o1 == o2 ? o1 : o0;
  };
  // Stable counting sort of the triplets by owner: chunk c of B counts, then places.
  std::vector<int64_t> pos(size_t(P) * P, 0);  // [chunk c][owner t]
#pragma omp parallel for schedule(static, 1) num_threads(P)
  for (int c = 0; c < P; ++c) {
    int64_t lo, hi;
    part_range(B, c, P, lo, hi);
    for (int64_t b = lo; b < hi; ++b) ++pos[size_t(c) * P + triplet_owner(b)];
  }
  std::vector<int64_t> seg(size_t(P) + 1, 0);
  int64_t longest = 0;
  {
    int64_t at = 0;
    for (int t = 0; t < P; ++t) {
      seg[t] = at;
      for (int c = 0; c < P; ++c) {
        const int64_t n = pos[size_t(c) * P + t];
        pos[size_t(c) * P + t] = at;
        at += n;
      }
      longest = std::max(longest, at - seg[t]);
    }
    seg[P] = at;
  }
  std::unique_ptr<int64_t[]> perm(new int64_t[size_t(std::max<int64_t>(B, 1))]);
#pragma omp parallel for schedule(static, 1) num_threads(P)
  for (int c = 0; c < P; ++c) {
    int64_t lo, hi;
    part_range(B, c, P, lo, hi);
    int64_t* at = &pos[size_t(c) * P];
    for (int64_t b = lo; b < hi; ++b) perm[at[triplet_owner(b)]++] = b;
  }

  const int64_t round = kRoundTriplets, lag = owned_lag(N, P), kRing = 2 * lag + 1;
  const int64_t rounds = (longest + round - 1) / round;
  const int64_t cap = 2 * round;  // at most two foreign slots per triplet
  advise_huge(grad, size_t(N) * size_t(D) * sizeof(A));
  std::unique_ptr<uint8_t[]> touched(new uint8_t[size_t(N)]());
  std::unique_ptr<A[]> owned_ring;
  A* ring = workspace;
  if (!ring) {
    owned_ring.reset(new A[size_t(owned_workspace(N, D, B, threads))]);
    ring = owned_ring.get();
  }
  std::vector<std::vector<SlotMessage>> lists(size_t(P) * kRing * P);  // [producer][slot][consumer]
  std::unique_ptr<std::atomic<int64_t>[]> produced(new std::atomic<int64_t>[size_t(P)]);
  std::unique_ptr<std::atomic<int64_t>[]> applied(new std::atomic<int64_t>[size_t(P)]);
  for (int t = 0; t < P; ++t) produced[t].store(0), applied[t].store(0);

  // Thread t's own round k: the forward of its triplets, the slots of its
  // rows, and messages for the other slots into ring slot k % kRing.
  auto own_round = [&](int t, int64_t k, A* scratch) {
    GradPart<A> part{grad, touched.get(), D};
    const int64_t slot = k % kRing;
    A* msg = ring + (size_t(t) * kRing + size_t(slot)) * size_t(cap) * size_t(D);
    std::vector<SlotMessage>* out = &lists[(size_t(t) * kRing + size_t(slot)) * P];
    int64_t used = 0;
    const int64_t lo = std::min(seg[t] + k * round, seg[t + 1]);
    const int64_t hi = std::min(lo + round, seg[t + 1]);
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t b = perm[i];
      if (kPrefetchAhead > 0 && i + kPrefetchAhead < seg[t + 1]) {
        prefetch_triplet_rows(p, perm[i + kPrefetchAhead]);
        for (int j = 0; j < 3; ++j) {  // the next triplet's own gradient rows, for writing
          const int64_t r = p.index(3 * perm[i + 1] + j);
          if (owner[r] == t) prefetch_bytes<1>(grad + r * D, D * int64_t(sizeof(A)));
        }
      }
      int64_t r[3];
      const A* x[3];
      load_rows(p, b, scratch, r, x);
      A st[6], s[3] = {0, 0, 0}, n[3] = {1, 1, 1}, c[3];
      bool unc[3] = {true, true, true};
      if (obj || COS) {
        row_stats<A, COS>(x[0], x[1], x[2], D, st);
        pair_sims<A, COS>(st, s, n, unc);
      }
      if (obj) {
        A ds[3];
        obj->loss[b] = objective<A>(s, obj->target ? obj->target + 3 * b : nullptr, obj->choice ? obj->choice[b] : 0,
                                    obj->mode, obj->temperature, ds);
        obj->dsim[3 * b] = ds[0], obj->dsim[3 * b + 1] = ds[1], obj->dsim[3 * b + 2] = ds[2];
        const A scale = obj->grad_scale * (obj->rowscale ? obj->rowscale[b] : A(1));
        for (int j = 0; j < 3; ++j) c[j] = ds[j] * scale;
      } else {
        for (int j = 0; j < 3; ++j) c[j] = coef[3 * b + j];
      }
      const bool mine[3] = {owner[r[0]] == t, owner[r[1]] == t, owner[r[2]] == t};
      const bool all_mine = mine[0] && mine[1] && mine[2];
      if (COS) {
        CosTerms<A> ct;
        cos_terms<A>(c, s, n, unc, ct);
        if (all_mine) {
          accumulate_cos<A>(part, r, x[0], x[1], x[2], ct);
          continue;
        }
        for (int j = 0; j < 3; ++j) {
          if (mine[j]) {
            slot_grad_cos<A, true>(part.row(r[j]), j, x, ct, D);
          } else {
            slot_grad_cos<A, false>(msg + used * D, j, x, ct, D);
            out[owner[r[j]]].push_back(SlotMessage{r[j], used++});
          }
        }
      } else {
        A W[3][3];
        row_weights<A, COS>(c, s, n, unc, W);
        if (all_mine) {
          accumulate<A, COS>(part, r, x[0], x[1], x[2], W);
          continue;
        }
        for (int j = 0; j < 3; ++j) {
          if (mine[j]) {
            slot_grad<A, true>(part.row(r[j]), j, x, W, D);
          } else {
            slot_grad<A, false>(msg + used * D, j, x, W, D);
            out[owner[r[j]]].push_back(SlotMessage{r[j], used++});
          }
        }
      }
    }
  };
  // Thread u adds round k's messages for its rows, producers in the order 0, ..., P-1.
  auto apply_round = [&](int u, int64_t k) {
    GradPart<A> part{grad, touched.get(), D};
    const int64_t slot = k % kRing;
    for (int t = 0; t < P; ++t) {
      std::vector<SlotMessage>& list = lists[(size_t(t) * kRing + size_t(slot)) * P + u];
      const A* msg = ring + (size_t(t) * kRing + size_t(slot)) * size_t(cap) * size_t(D);
      const size_t m = list.size();
      for (size_t e = 0; e < m; ++e) {
        if (kPrefetchAhead > 0 && e + kPrefetchAhead < m)
          prefetch_bytes<1>(grad + list[e + kPrefetchAhead].row * D, D * int64_t(sizeof(A)));
        A* __restrict g = part.row(list[e].row);
        const A* __restrict v = msg + list[e].msg * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) g[d] += v[d];
      }
      list.clear();
    }
  };
  // Step k of thread u: own round k, then the messages of round k - lag.
  // Every gradient row is written by its owner alone, in this fixed sequence.
  const int64_t steps = rounds + lag;
#pragma omp parallel num_threads(P)
  {
    std::vector<A> scratch(Traits<T>::kNative ? 0 : size_t(3 * D));
    if (omp_get_num_threads() != P) {
      // Fewer threads than parts (thread limits, nesting): thread 0 runs every
      // part's steps in order; each row still sees the same sequence of adds.
#pragma omp single
      {
        for (int64_t k = 0; k < steps; ++k) {
          for (int u = 0; u < P; ++u) {
            if (k < rounds) own_round(u, k, scratch.data());
            if (k >= lag) apply_round(u, k - lag);
          }
        }
      }
    } else {
      const int u = omp_get_thread_num();
      for (int64_t k = 0; k < steps; ++k) {
        if (k < rounds) {
          // Ring slot k % kRing held round k - kRing: every consumer must be done with it.
          if (k >= kRing) {
            for (int v = 0; v < P; ++v) {
              if (v != u) wait_at_least(applied[v], k - kRing + 1);
            }
          }
          own_round(u, k, scratch.data());
          produced[u].store(k + 1, std::memory_order_release);
        }
        if (k >= lag) {
          const int64_t j = k - lag;
          for (int t = 0; t < P; ++t) {
            if (t != u) wait_at_least(produced[t], j + 1);
          }
          apply_round(u, j);
          applied[u].store(j + 1, std::memory_order_release);
        }
      }
    }
#pragma omp barrier
#pragma omp for schedule(static, 1)
    for (int v = 0; v < P; ++v) {
      for (int64_t r = 0; r < N; ++r) {
        if (owner[r] == v && !touched[r]) std::memset(grad + r * D, 0, sizeof(A) * size_t(D));
      }
    }
  }
}

// x[i] *= s for i < n, s = *scale: the upstream gradient of a reduced
// (scalar) loss applied to the fused gradient, which the forward computed for
// a unit upstream gradient. The value is read here, not branched on by the
// caller, so torch.compile traces no data-dependent branch; s == 1 (every
// plain loss.backward()) returns at once, with no pass over the gradient.
// Returns whether x changed (s != 1).
template <class A>
bool scale_inplace(A* x, int64_t n, const A* scale, int threads) {
  const A s = *scale;
  if (s == A(1)) return false;
#pragma omp parallel for simd schedule(static) num_threads(std::max(1, threads))
  for (int64_t i = 0; i < n; ++i) x[i] *= s;
  return true;
}

// ------------------------------------------------------ dense (Gram) path
//
// For small N (N^2 of the order of B or less) the caller computes the Gram
// matrix G = E E^T with a GEMM; each triplet then needs three entries of G
// (and the diagonal for cosine) instead of three rows, and its gradient is the
// symmetric 3x3 block W scattered into an (N, N) coefficient matrix, so that
// grad = C E is a second GEMM. Per-triplet memory traffic drops from O(D) to
// O(1) and the O(N^2 D) work runs at GEMM speed.
//
// Only the upper triangle U is accumulated (C = U + U^T, formed by the
// caller): W is symmetric, so each off-diagonal pair is one add, and a
// diagonal entry of C is 2 U[r][r]. U is accumulated per part and reduced in a
// fixed order, like the row gradients.
//
// Returns false (and writes nothing) when a diagonal entry of G is not finite,
// i.e. a row of emb has a NaN/Inf: then the caller uses the row path, which
// confines the NaN to the rows it touches (C E would spread 0 * NaN to every row).
template <class A, bool COS>
bool gram_fused(const A* G, int64_t N, const void* trip, bool trip64, int64_t B, const Objective<A>& obj, A* U,
                int threads) {
  std::vector<A> diag(size_t(std::max<int64_t>(N, 1)));  // |e_a|^2, small and cache resident
  for (int64_t a = 0; a < N; ++a) {
    diag[a] = G[a * N + a];
    if (!std::isfinite(diag[a])) return false;
  }
  Rows<float> idx{nullptr, N, 1, 1, trip, trip64, B};  // only its index() is used
  const int P = grad_parts(threads, B, U != nullptr);
  PartBuffers<A> parts(U, N, N, U ? P : 0);
  constexpr int64_t kAhead = 8;  // scalar lookups are cheap to prefetch far ahead
#pragma omp parallel for schedule(static, 1) num_threads(P)
  for (int k = 0; k < P; ++k) {
    int64_t begin, end;
    part_range(B, k, P, begin, end);
    GradPart<A> part = parts.part(k);
    for (int64_t b = begin; b < end; ++b) {
      if (b + kAhead < end) {
        const int64_t q0 = idx.index(3 * (b + kAhead)), q1 = idx.index(3 * (b + kAhead) + 1),
                      q2 = idx.index(3 * (b + kAhead) + 2);
        __builtin_prefetch(G + q0 * N + q1, 0, 3);
        __builtin_prefetch(G + q0 * N + q2, 0, 3);
        __builtin_prefetch(G + q1 * N + q2, 0, 3);
      }
      const int64_t r[3] = {idx.index(3 * b), idx.index(3 * b + 1), idx.index(3 * b + 2)};
      const A st[6] = {G[r[0] * N + r[1]], G[r[0] * N + r[2]], G[r[1] * N + r[2]], diag[r[0]], diag[r[1]],
                       diag[r[2]]};
      A s[3], n[3] = {1, 1, 1}, ds[3];
      bool unc[3] = {true, true, true};
      pair_sims<A, COS>(st, s, n, unc);
      obj.loss[b] = objective<A>(s, obj.target ? obj.target + 3 * b : nullptr, obj.choice ? obj.choice[b] : 0,
                                 obj.mode, obj.temperature, ds);
      obj.dsim[3 * b] = ds[0], obj.dsim[3 * b + 1] = ds[1], obj.dsim[3 * b + 2] = ds[2];
      if (!U) continue;
      const A scale = obj.grad_scale * (obj.rowscale ? obj.rowscale[b] : A(1));
      A c[3], W[3][3];
      for (int j = 0; j < 3; ++j) c[j] = ds[j] * scale;
      row_weights<A, COS>(c, s, n, unc, W);
      // Pairs (0,1), (0,2), (1,2): one add each into the upper triangle.
      static constexpr int kPair[3][2] = {{0, 1}, {0, 2}, {1, 2}};
      for (const auto& jm : kPair) {
        const int64_t a = std::min(r[jm[0]], r[jm[1]]), bb = std::max(r[jm[0]], r[jm[1]]);
        part.row(a)[bb] += W[jm[0]][jm[1]];
      }
      if (COS) {
        for (int j = 0; j < 3; ++j) part.row(r[j])[r[j]] += A(0.5) * W[j][j];
      }
    }
  }
  if (U) parts.reduce(threads);
  return true;
}

}  // namespace cpu
}  // namespace fastalign
