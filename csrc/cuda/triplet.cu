// The fused triplet kernel: similarities, loss, dL/ds and the row gradients of
// fastalign.kernels.contract in one pass over the triplets.
//
// Work layout: a group of G lanes (G in {4, 8, 16, 32}) owns one triplet, so a
// warp handles 32 / G triplets at once (several per warp when D is small). A
// lane reads its share of the three rows as 16-byte vectors when every row
// start is 16-byte aligned (else element by element), accumulates the 3 dots
// and 3 squared norms in the accumulation type, and the group sums them with
// xor-shuffles. Every lane of the group then holds the full sums and computes
// the softmax, loss and dL/ds itself (a few flops; cheaper than a broadcast).
// Dot similarities: the row gradients are linear in the rows,
//   dE[r0] += k01 e1 + k02 e2,  dE[r1] += k01 e0 + k12 e2,  dE[r2] += k02 e0 + k12 e1
// (k = c = dL/ds). Cosine: with u = e / n, s_ab = u_a . u_b and dn_a/de_a = u_a,
//   ds_ab/de_a = u_b / n_a - (u_a . u_b) u_a / n_a = (u_b - s_ab u_a) / n_a,
// so dE[r_a] += (c_ab / n_a) (u_b - h_ab u_a) for each other slot b, with
// h = grad_sim(s) (common.cuh) and no h term where n_a is clamped at eps (n_a
// is then a constant). The same gradient written as A e_b - B e_a
// (A = c / (n_a n_b), B = sum_b c_ab s_ab / n_a^2) cancels two terms of size
// |c| / n_a to rounding noise for (near-)parallel rows, huge for tiny norms,
// where the true gradient is 0; here each pair's bracket is exactly 0 for
// parallel rows (u by a correctly rounded division, h = +-1). The kernel
// either scatters the gradients with float32 atomics or writes a per-triplet
// table for the deterministic segmented reduction (segment_reduce.cu;
// layouts in launchers.h).
// The loop over triplets is grid-stride with a grid sized to stay resident.

#include "common.cuh"
#include "launchers.h"

// 16-byte float4 atomicAdd exists on sm_90+ (CUDA >= 12.4 assumed here to be safe).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && \
    (__CUDACC_VER_MAJOR__ > 12 || (__CUDACC_VER_MAJOR__ == 12 && __CUDACC_VER_MINOR__ >= 4))
#define FASTALIGN_VECTOR_ATOMICS 1
#else
#define FASTALIGN_VECTOR_ATOMICS 0
#endif

namespace fastalign_cuda {
namespace {

constexpr double kLog2 = 0.69314718055994530942;

// Per-triplet loss and dL/ds from the similarities s0..s2 (pair order
// [s01, s02, s12]), exactly as contract.py / torch_ref.loss_and_dsim.
template <typename A>
__device__ __forceinline__ void loss_and_dsim(A s0, A s1, A s2, int mode, A temp, const A* tgt, int choice,
                                              A& loss, A& ds0, A& ds1, A& ds2) {
  const A z0 = s0 / temp, z1 = s1 / temp, z2 = s2 / temp;
  const A m = nanmax(z0, nanmax(z1, z2));
  // log q = (z - m) - log sum: shifting first keeps the digits of z - m when |m| is large;
  // z - (m + log sum) rounds m + log sum at the magnitude of z and loses log sum (~1) at |z| ~ 1e7.
  const A d0 = z0 - m, d1 = z1 - m, d2 = z2 - m;
  const A lsum = dlog(dexp(d0) + dexp(d1) + dexp(d2));
  const A lq0 = d0 - lsum, lq1 = d1 - lsum, lq2 = d2 - lsum;  // log q
  const A q0 = dexp(lq0), q1 = dexp(lq1), q2 = dexp(lq2);
  A dz0, dz1, dz2;
  if (mode == kHard) {
    loss = -(choice == 0 ? lq0 : (choice == 1 ? lq1 : lq2));
    dz0 = q0 - (choice == 0 ? A(1) : A(0));
    dz1 = q1 - (choice == 1 ? A(1) : A(0));
    dz2 = q2 - (choice == 2 ? A(1) : A(0));
  } else {
    const A p0 = tgt[0], p1 = tgt[1], p2 = tgt[2];
    // log p, used only where p > 0 (a term with p = 0 contributes 0).
    const A lp0 = p0 > A(0) ? dlog(p0) : A(0);
    const A lp1 = p1 > A(0) ? dlog(p1) : A(0);
    const A lp2 = p2 > A(0) ? dlog(p2) : A(0);
    if (mode == kKL) {
      loss = (p0 > A(0) ? p0 * (lp0 - lq0) : A(0)) + (p1 > A(0) ? p1 * (lp1 - lq1) : A(0)) +
             (p2 > A(0) ? p2 * (lp2 - lq2) : A(0));
      dz0 = q0 - p0;
      dz1 = q1 - p1;
      dz2 = q2 - p2;
    } else {  // kJSD; log m = logaddexp(log p, log q) - log 2, = log q - log 2 where p = 0
      const A lm0 = (p0 > A(0) ? logaddexp(lp0, lq0) : lq0) - A(kLog2);
      const A lm1 = (p1 > A(0) ? logaddexp(lp1, lq1) : lq1) - A(kLog2);
      const A lm2 = (p2 > A(0) ? logaddexp(lp2, lq2) : lq2) - A(kLog2);
      const A kl_pm = (p0 > A(0) ? p0 * (lp0 - lm0) : A(0)) + (p1 > A(0) ? p1 * (lp1 - lm1) : A(0)) +
                      (p2 > A(0) ? p2 * (lp2 - lm2) : A(0));
      const A kl_qm = q0 * (lq0 - lm0) + q1 * (lq1 - lm1) + q2 * (lq2 - lm2);
      loss = A(0.5) * kl_pm + A(0.5) * kl_qm;
      // dL/dq_k = log(q_k / m_k) / 2, then through the softmax.
      const A g0 = A(0.5) * (lq0 - lm0), g1 = A(0.5) * (lq1 - lm1), g2 = A(0.5) * (lq2 - lm2);
      const A gbar = q0 * g0 + q1 * g1 + q2 * g2;
      dz0 = q0 * (g0 - gbar);
      dz1 = q1 * (g1 - gbar);
      dz2 = q2 * (g2 - gbar);
    }
  }
  ds0 = dz0 / temp;
  ds1 = dz1 / temp;
  ds2 = dz2 / temp;
}

template <typename T, typename I, int G>
__global__ void __launch_bounds__(kThreads) triplet_kernel(const TripletArgs p, const bool vec, const bool grad4) {
  using A = typename Acc<T>::type;
  constexpr int V = Vec<T>::N;
  constexpr int kPerWarp = 32 / G;  // triplets a warp handles per step
  static_assert(G == 4 || G == 8 || G == 16 || G == 32, "group size");

  const T* __restrict__ emb = reinterpret_cast<const T*>(p.emb);
  const I* __restrict__ trip = reinterpret_cast<const I*>(p.triplets);
  const int lane = threadIdx.x & 31;
  const int grp = lane / G;  // which triplet of the warp's step
  const int gl = lane % G;   // lane within the group
  const std::int64_t warp = (static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const std::int64_t nwarps = (static_cast<std::int64_t>(gridDim.x) * blockDim.x) >> 5;
  const std::int64_t D = p.d;
  const std::int64_t nvec = vec ? D / V : 0;  // whole vectors per row
  const std::int64_t tail = nvec * V;         // first element of the scalar remainder
  const A temp = static_cast<A>(p.temperature);
  const A eps = static_cast<A>(kCosineEps);

  // `base` is the same for every lane of the warp, so the loop (and the
  // shuffles inside it) is warp-uniform; only the last step can have groups
  // without a triplet, and those still take part in the shuffles.
  for (std::int64_t base = warp * kPerWarp; base < p.b; base += nwarps * kPerWarp) {
    const std::int64_t t = base + grp;
    const bool active = t < p.b;
    std::int64_t r0 = 0, r1 = 0, r2 = 0;
    if (active) {
      r0 = static_cast<std::int64_t>(trip[3 * t]);
      r1 = static_cast<std::int64_t>(trip[3 * t + 1]);
      r2 = static_cast<std::int64_t>(trip[3 * t + 2]);
    }
    const T* e0 = emb + r0 * p.row_stride;
    const T* e1 = emb + r1 * p.row_stride;
    const T* e2 = emb + r2 * p.row_stride;

    // Dots and squared norms (the norms cost 3 FMAs per element of a
    // bandwidth-bound loop, so they are always accumulated).
    A d01 = 0, d02 = 0, d12 = 0, q0 = 0, q1 = 0, q2 = 0;
    if (active) {
      for (std::int64_t v = gl; v < nvec; v += G) {
        A x[V], y[V], w[V];
        load_vec(e0 + v * V, x);
        load_vec(e1 + v * V, y);
        load_vec(e2 + v * V, w);
#pragma unroll
        for (int k = 0; k < V; ++k) {
          d01 += x[k] * y[k];
          d02 += x[k] * w[k];
          d12 += y[k] * w[k];
          q0 += x[k] * x[k];
          q1 += y[k] * y[k];
          q2 += w[k] * w[k];
        }
      }
      for (std::int64_t c = tail + gl; c < D; c += G) {
        const A x = load1(e0 + c), y = load1(e1 + c), w = load1(e2 + c);
        d01 += x * y;
        d02 += x * w;
        d12 += y * w;
        q0 += x * x;
        q1 += y * y;
        q2 += w * w;
      }
    }
#pragma unroll
    for (int off = G / 2; off > 0; off >>= 1) {  // xor partners stay inside the group
      d01 += __shfl_xor_sync(kFullMask, d01, off);
      d02 += __shfl_xor_sync(kFullMask, d02, off);
      d12 += __shfl_xor_sync(kFullMask, d12, off);
      q0 += __shfl_xor_sync(kFullMask, q0, off);
      q1 += __shfl_xor_sync(kFullMask, q1, off);
      q2 += __shfl_xor_sync(kFullMask, q2, off);
    }
    // No warp-collective operation follows, so groups may now diverge.
    if (!active) continue;

    A s01 = d01, s02 = d02, s12 = d12;
    A l0 = 1, l1 = 1, l2 = 1;  // unclamped norms (cosine)
    A n0 = 1, n1 = 1, n2 = 1;  // norms clamped at eps
    if (p.cosine) {
      // Correctly rounded sqrt and division: for D = 1 the norm is then
      // exactly |x| and s exactly +-1, and grad_sim's bound holds.
      l0 = sqrt_rn(q0);
      l1 = sqrt_rn(q1);
      l2 = sqrt_rn(q2);
      // `l < eps` is false for NaN, so a NaN row stays NaN like torch's clamp_min.
      n0 = l0 < eps ? eps : l0;
      n1 = l1 < eps ? eps : l1;
      n2 = l2 < eps ? eps : l2;
      s01 = div_rn(d01, n0 * n1);
      s02 = div_rn(d02, n0 * n2);
      s12 = div_rn(d12, n1 * n2);
    }
    const bool leader = gl == 0;
    if (p.sims && leader) {
      A* o = reinterpret_cast<A*>(p.sims) + 3 * t;
      o[0] = s01;
      o[1] = s02;
      o[2] = s12;
    }

    A c01, c02, c12;  // dL/ds scaled for the gradient
    if (p.task == kTaskLoss) {
      const A* tgt = p.target ? reinterpret_cast<const A*>(p.target) + 3 * t : nullptr;
      const int ch = p.choice ? static_cast<int>(reinterpret_cast<const std::int64_t*>(p.choice)[t]) : 0;
      A loss, ds0, ds1, ds2;
      loss_and_dsim<A>(s01, s02, s12, p.mode, temp, tgt, ch, loss, ds0, ds1, ds2);
      if (leader) {
        if (p.loss) reinterpret_cast<A*>(p.loss)[t] = loss;
        if (p.dsim) {
          A* o = reinterpret_cast<A*>(p.dsim) + 3 * t;
          o[0] = ds0;
          o[1] = ds1;
          o[2] = ds2;
        }
      }
      const A scale = static_cast<A>(p.grad_scale) * (p.rowscale ? reinterpret_cast<const A*>(p.rowscale)[t] : A(1));
      c01 = ds0 * scale;
      c02 = ds1 * scale;
      c12 = ds2 * scale;
    } else if (p.task == kTaskScatter) {
      const A* ci = reinterpret_cast<const A*>(p.coef_in) + 3 * t;
      c01 = ci[0];
      c02 = ci[1];
      c12 = ci[2];
    } else {
      continue;  // similarities only
    }
    if (!p.grad && !p.amat) continue;

    if (p.cosine) {
      const A h01 = grad_sim(s01), h02 = grad_sim(s02), h12 = grad_sim(s12);
      if (p.amat) {  // deterministic mode: segment_reduce forms the terms from this row
        if (leader) {
          A* o = reinterpret_cast<A*>(p.amat) + kAmatColsCosine * t;
          o[0] = c01; o[1] = c02; o[2] = c12;
          o[3] = h01; o[4] = h02; o[5] = h12;
          o[6] = l0; o[7] = l1; o[8] = l2;
        }
        continue;
      }
      // torch's clamp_min passes the gradient where |e| >= eps (NaN compares false).
      const CosSlot<A> q0s = cos_slot(c01, c02, h01, h02, n0, l0 >= eps);
      const CosSlot<A> q1s = cos_slot(c01, c12, h01, h12, n1, l1 >= eps);
      const CosSlot<A> q2s = cos_slot(c02, c12, h02, h12, n2, l2 >= eps);
      float* o0 = reinterpret_cast<float*>(p.grad) + r0 * D;
      float* o1 = reinterpret_cast<float*>(p.grad) + r1 * D;
      float* o2 = reinterpret_cast<float*>(p.grad) + r2 * D;
      // Same column mapping as the dot path below (see the comment there).
#if FASTALIGN_VECTOR_ATOMICS
      if (grad4) {
        for (std::int64_t c = 4 * static_cast<std::int64_t>(gl); c < D; c += 4 * G) {
          float v0[4], v1[4], v2[4];
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            const A u0 = div_rn(A(load1(e0 + c + k)), n0);
            const A u1 = div_rn(A(load1(e1 + c + k)), n1);
            const A u2 = div_rn(A(load1(e2 + c + k)), n2);
            v0[k] = static_cast<float>(q0s.grad(u0, u1, u2));
            v1[k] = static_cast<float>(q1s.grad(u1, u0, u2));
            v2[k] = static_cast<float>(q2s.grad(u2, u0, u1));
          }
          atomicAdd(reinterpret_cast<float4*>(o0 + c), make_float4(v0[0], v0[1], v0[2], v0[3]));
          atomicAdd(reinterpret_cast<float4*>(o1 + c), make_float4(v1[0], v1[1], v1[2], v1[3]));
          atomicAdd(reinterpret_cast<float4*>(o2 + c), make_float4(v2[0], v2[1], v2[2], v2[3]));
        }
        continue;
      }
#endif
      for (std::int64_t c = gl; c < D; c += G) {
        const A u0 = div_rn(A(load1(e0 + c)), n0);
        const A u1 = div_rn(A(load1(e1 + c)), n1);
        const A u2 = div_rn(A(load1(e2 + c)), n2);
        atomicAdd(o0 + c, static_cast<float>(q0s.grad(u0, u1, u2)));
        atomicAdd(o1 + c, static_cast<float>(q1s.grad(u1, u0, u2)));
        atomicAdd(o2 + c, static_cast<float>(q2s.grad(u2, u0, u1)));
      }
      continue;
    }

    // Dot similarities from here on.
    const A k01 = c01, k02 = c02, k12 = c12, g0 = 0, g1 = 0, g2 = 0;
    if (p.amat) {  // deterministic mode: hand the coefficients to segment_reduce
      if (leader) {
        A* o = reinterpret_cast<A*>(p.amat) + kAmatColsDot * t;
        o[0] = k01;
        o[1] = k02;
        o[2] = k12;
        o[3] = g0;
        o[4] = g1;
        o[5] = g2;
      }
      continue;
    }

    // Atomic mode: float32 scatter-add into the (n, d) contiguous buffer.
    // Consecutive lanes own consecutive columns, so a warp-wide atomic
    // instruction covers whole 32-byte sectors (the vector-load mapping above
    // would spread one instruction over V times more sectors). The rows were
    // just read by this group, so these reads mostly hit L1/L2.
    float* o0 = reinterpret_cast<float*>(p.grad) + r0 * D;
    float* o1 = reinterpret_cast<float*>(p.grad) + r1 * D;
    float* o2 = reinterpret_cast<float*>(p.grad) + r2 * D;
#if FASTALIGN_VECTOR_ATOMICS
    if (grad4) {  // sm_90: 16-byte vector atomics; d % 4 == 0 keeps every gradient row 16-byte aligned
      for (std::int64_t c = 4 * static_cast<std::int64_t>(gl); c < D; c += 4 * G) {
        A x[4], y[4], w[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          x[k] = load1(e0 + c + k);
          y[k] = load1(e1 + c + k);
          w[k] = load1(e2 + c + k);
        }
        float u0[4], u1[4], u2[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          u0[k] = static_cast<float>(g0 * x[k] + k01 * y[k] + k02 * w[k]);
          u1[k] = static_cast<float>(k01 * x[k] + g1 * y[k] + k12 * w[k]);
          u2[k] = static_cast<float>(k02 * x[k] + k12 * y[k] + g2 * w[k]);
        }
        const float4 a0 = make_float4(u0[0], u0[1], u0[2], u0[3]);
        const float4 a1 = make_float4(u1[0], u1[1], u1[2], u1[3]);
        const float4 a2 = make_float4(u2[0], u2[1], u2[2], u2[3]);
        atomicAdd(reinterpret_cast<float4*>(o0 + c), a0);
        atomicAdd(reinterpret_cast<float4*>(o1 + c), a1);
        atomicAdd(reinterpret_cast<float4*>(o2 + c), a2);
      }
      continue;
    }
#endif
    for (std::int64_t c = gl; c < D; c += G) {
      const A x = load1(e0 + c), y = load1(e1 + c), w = load1(e2 + c);
      atomicAdd(o0 + c, static_cast<float>(g0 * x + k01 * y + k02 * w));
      atomicAdd(o1 + c, static_cast<float>(k01 * x + g1 * y + k12 * w));
      atomicAdd(o2 + c, static_cast<float>(k02 * x + k12 * y + g2 * w));
    }
  }
}

template <typename T, typename I, int G>
void launch_group(const TripletArgs& a, bool vec, std::int64_t work_blocks, cudaStream_t stream) {
  const int grid = grid_blocks(triplet_kernel<T, I, G>, work_blocks, a.device);
  // float4 atomics (sm_90 builds) need every gradient row 16-byte aligned.
  const bool grad4 = a.grad % 16 == 0 && a.d % 4 == 0;
  triplet_kernel<T, I, G><<<grid, kThreads, 0, stream>>>(a, vec, grad4);
}

template <typename T, typename I>
int launch_typed(const TripletArgs& a, cudaStream_t stream) {
  constexpr int V = Vec<T>::N;
  // 16-byte loads need every row start aligned: the base pointer and the row
  // stride in bytes. Otherwise (odd D with a packed stride, an offset view)
  // the scalar path reads element by element.
  const bool vec = (a.emb % 16 == 0) && ((a.row_stride * static_cast<std::int64_t>(sizeof(T))) % 16 == 0);
  const std::int64_t units = vec ? (a.d + V - 1) / V : a.d;  // loads per row
  const int g = units > 16 ? 32 : (units > 8 ? 16 : (units > 4 ? 8 : 4));
  const std::int64_t per_block = static_cast<std::int64_t>(kWarpsPerBlock) * (32 / g);
  const std::int64_t work = (a.b + per_block - 1) / per_block;
  switch (g) {
    case 32: launch_group<T, I, 32>(a, vec, work, stream); break;
    case 16: launch_group<T, I, 16>(a, vec, work, stream); break;
    case 8: launch_group<T, I, 8>(a, vec, work, stream); break;
    default: launch_group<T, I, 4>(a, vec, work, stream); break;
  }
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int launch_index(const TripletArgs& a, cudaStream_t stream) {
  return a.itype == kI32 ? launch_typed<T, std::int32_t>(a, stream) : launch_typed<T, std::int64_t>(a, stream);
}

}  // namespace

int launch_triplet(const TripletArgs& a) {
  if (a.b <= 0 || a.d <= 0) return 0;  // nothing to compute (a grid of 0 blocks is an error)
  if (a.itype != kI32 && a.itype != kI64) return static_cast<int>(cudaErrorInvalidValue);
  if (a.mode != kHard && a.mode != kKL && a.mode != kJSD) return static_cast<int>(cudaErrorInvalidValue);
  if (a.task == kTaskScatter && !a.coef_in) return static_cast<int>(cudaErrorInvalidValue);
  if (a.task == kTaskLoss && a.mode != kHard && !a.target) return static_cast<int>(cudaErrorInvalidValue);
  if (a.grad && a.dtype == kF64) return static_cast<int>(cudaErrorInvalidValue);  // float32 atomics only
  cudaError_t err = cudaSetDevice(a.device);
  if (err != cudaSuccess) return static_cast<int>(err);
  (void)cudaGetLastError();  // clear a stale non-sticky error so the result below is this launch's
  const auto stream = reinterpret_cast<cudaStream_t>(a.stream);
  switch (a.dtype) {
    case kF32: return launch_index<float>(a, stream);
    case kF64: return launch_index<double>(a, stream);
    case kF16: return launch_index<__half>(a, stream);
    case kBF16: return launch_index<__nv_bfloat16>(a, stream);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

int stream_synchronize(int device, std::uintptr_t stream) {
  cudaError_t err = cudaSetDevice(device);
  if (err != cudaSuccess) return static_cast<int>(err);
  err = cudaStreamSynchronize(reinterpret_cast<cudaStream_t>(stream));
  if (err != cudaSuccess) return static_cast<int>(err);
  return static_cast<int>(cudaGetLastError());
}

int device_count() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  return err == cudaSuccess ? n : -static_cast<int>(err);
}

int runtime_version() {
  int v = 0;
  return cudaRuntimeGetVersion(&v) == cudaSuccess ? v : 0;
}

const char* error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // namespace fastalign_cuda
