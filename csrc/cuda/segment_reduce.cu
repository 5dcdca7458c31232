// Deterministic gradient: a segmented reduction over triplet slots sorted by
// row, with no atomics.
//
// The triplet kernel (triplet.cu) writes one table row per triplet t
// (launchers.h). Dot: amat[t] = [k01, k02, k12, g0, g1, g2] with
//   dE[r0] += g0 e0 + k01 e1 + k02 e2
//   dE[r1] += k01 e0 + g1 e1 + k12 e2
//   dE[r2] += k02 e0 + k12 e1 + g2 e2.
// Cosine: amat[t] = [c01, c02, c12, h01, h02, h12, l0, l1, l2], from which
// each entry forms its slot's pair terms (c_ja / n_j) (u_a - h_ja u_j) from
// the unit rows u = e / n exactly as the atomic path does (CosSlot in
// common.cuh; derivation in triplet.cu), so parallel rows get exactly 0.
// The wrapper sorts the 3B slot entries e = 3 t + slot by row with a stable
// sort, so the entries of one row form a contiguous segment in a fixed order.
// One warp owns a segment: lane l sums columns l, l + 32, ... over the
// segment's entries in sorted order and stores the result once. Every output
// element is therefore the same sequence of operations on every run:
// bitwise reproducible.

#include "common.cuh"
#include "launchers.h"

namespace fastalign_cuda {
namespace {

constexpr int kCols = 4;  // columns a lane keeps in registers per pass over a segment

template <typename T, typename I>
__global__ void __launch_bounds__(kThreads) segment_kernel(const SegmentArgs p) {
  using A = typename Acc<T>::type;
  const T* __restrict__ emb = reinterpret_cast<const T*>(p.emb);
  const I* __restrict__ trip = reinterpret_cast<const I*>(p.triplets);
  const A* __restrict__ amat = reinterpret_cast<const A*>(p.amat);
  const std::int64_t* __restrict__ perm = reinterpret_cast<const std::int64_t*>(p.perm);
  const std::int64_t* __restrict__ rows = reinterpret_cast<const std::int64_t*>(p.rows);
  const std::int64_t* __restrict__ offsets = reinterpret_cast<const std::int64_t*>(p.offsets);
  A* __restrict__ grad = reinterpret_cast<A*>(p.grad);

  const int lane = threadIdx.x & 31;
  const std::int64_t warp = (static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const std::int64_t nwarps = (static_cast<std::int64_t>(gridDim.x) * blockDim.x) >> 5;
  const std::int64_t D = p.d;
  const A eps = static_cast<A>(kCosineEps);

  for (std::int64_t s = warp; s < p.nseg; s += nwarps) {
    const std::int64_t beg = offsets[s], end = offsets[s + 1];
    A* out = grad + rows[s] * D;
    for (std::int64_t c0 = 0; c0 < D; c0 += 32 * kCols) {
      A acc[kCols];
#pragma unroll
      for (int u = 0; u < kCols; ++u) acc[u] = A(0);
      // Unrolling lets the loads of the next entries issue early; the sum
      // itself stays in entry order, so the result is unchanged.
#pragma unroll 4
      for (std::int64_t pos = beg; pos < end; ++pos) {
        const std::int64_t e = perm[pos];
        const std::int64_t t = e / 3;
        const int slot = static_cast<int>(e - 3 * t);
        const T* e0 = emb + static_cast<std::int64_t>(trip[3 * t]) * p.row_stride;
        const T* e1 = emb + static_cast<std::int64_t>(trip[3 * t + 1]) * p.row_stride;
        const T* e2 = emb + static_cast<std::int64_t>(trip[3 * t + 2]) * p.row_stride;
        if (p.cosine) {
          const A* m = amat + kAmatColsCosine * t;
          // Slot j and its other slots a < b; pair columns 01 -> 0, 02 -> 1, 12 -> 2.
          const T* ej = slot == 0 ? e0 : (slot == 1 ? e1 : e2);
          const T* ea = slot == 0 ? e1 : e0;
          const T* eb = slot == 2 ? e1 : e2;
          const int pa = slot == 2 ? 1 : 0;
          const int pb = slot == 0 ? 1 : 2;
          const A lj = m[6 + slot], la = m[6 + (slot == 0 ? 1 : 0)], lb = m[6 + (slot == 2 ? 1 : 2)];
          // `l < eps` is false for NaN, so a NaN row stays NaN like torch's clamp_min.
          const A nj = lj < eps ? eps : lj, na = la < eps ? eps : la, nb = lb < eps ? eps : lb;
          const CosSlot<A> cs = cos_slot(m[pa], m[pb], m[3 + pa], m[3 + pb], nj, lj >= eps);
#pragma unroll
          for (int u = 0; u < kCols; ++u) {
            const std::int64_t c = c0 + lane + 32 * u;
            if (c < D) {
              acc[u] += cs.grad(div_rn(A(load1(ej + c)), nj), div_rn(A(load1(ea + c)), na),
                                div_rn(A(load1(eb + c)), nb));
            }
          }
          continue;
        }
        const A* m = amat + kAmatColsDot * t;
        // Coefficients of rows (e0, e1, e2) in this slot's gradient.
        A w0, w1, w2;
        if (slot == 0) {
          w0 = m[3]; w1 = m[0]; w2 = m[1];
        } else if (slot == 1) {
          w0 = m[0]; w1 = m[4]; w2 = m[2];
        } else {
          w0 = m[1]; w1 = m[2]; w2 = m[5];
        }
#pragma unroll
        for (int u = 0; u < kCols; ++u) {
          const std::int64_t c = c0 + lane + 32 * u;  // consecutive lanes read consecutive columns
          if (c < D) acc[u] += w0 * A(load1(e0 + c)) + w1 * A(load1(e1 + c)) + w2 * A(load1(e2 + c));
        }
      }
#pragma unroll
      for (int u = 0; u < kCols; ++u) {
        const std::int64_t c = c0 + lane + 32 * u;
        if (c < D) out[c] = acc[u];
      }
    }
  }
}

template <typename T>
int launch_typed(const SegmentArgs& a, cudaStream_t stream) {
  const std::int64_t work = (a.nseg + kWarpsPerBlock - 1) / kWarpsPerBlock;  // a warp per segment
  if (a.itype == kI32) {
    segment_kernel<T, std::int32_t><<<grid_blocks(segment_kernel<T, std::int32_t>, work, a.device), kThreads, 0,
                                      stream>>>(a);
  } else {
    segment_kernel<T, std::int64_t><<<grid_blocks(segment_kernel<T, std::int64_t>, work, a.device), kThreads, 0,
                                      stream>>>(a);
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int launch_segment_reduce(const SegmentArgs& a) {
  if (a.nseg <= 0 || a.d <= 0) return 0;
  if (a.itype != kI32 && a.itype != kI64) return static_cast<int>(cudaErrorInvalidValue);
  cudaError_t err = cudaSetDevice(a.device);
  if (err != cudaSuccess) return static_cast<int>(err);
  (void)cudaGetLastError();
  const auto stream = reinterpret_cast<cudaStream_t>(a.stream);
  switch (a.dtype) {
    case kF32: return launch_typed<float>(a, stream);
    case kF64: return launch_typed<double>(a, stream);
    case kF16: return launch_typed<__half>(a, stream);
    case kBF16: return launch_typed<__nv_bfloat16>(a, stream);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

}  // namespace fastalign_cuda
