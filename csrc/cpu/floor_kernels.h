// The gathered-bytes floor of the fused CPU loss, for benchmarks only.
//
// The fused kernel reads the 3 rows of every triplet and adds a row gradient
// into each of its 3 gradient rows. This loop moves exactly those bytes (the
// 3B row reads, the 3B gradient-row read-modify-writes, first-touch zeroing of
// a fresh gradient) with no arithmetic beyond one add per element and no
// ordering: its time is what any kernel with that access pattern pays on the
// machine. Threads split the triplets in contiguous parts and add into one
// shared gradient without synchronisation, so two threads may race on a row:
// the sums are not a result, only the time is. Rows are prefetched `ahead`
// triplets ahead (gradient rows for writing), as the fused kernel does: the
// rows are random, and without it the loop waits on each miss in turn.
#pragma once

#include <omp.h>

#include <cstdint>
#include <cstring>

#include "cpu/triplet_kernels.h"  // advise_huge, the same page treatment as the kernel

namespace fastalign {
namespace cpu {

inline void gather_scatter_floor(const float* emb, int64_t N, int64_t D, const int64_t* trip, int64_t B, float* grad,
                                 uint8_t* touched, int threads, int64_t ahead) {
  advise_huge(grad, size_t(N) * size_t(D) * sizeof(float));
  auto prefetch = [&](const void* ptr, bool write) {
    const char* c = static_cast<const char*>(ptr);
    for (int64_t o = 0; o < D * int64_t(sizeof(float)); o += 64) {
      if (write) {
        __builtin_prefetch(c + o, 1, 3);
      } else {
        __builtin_prefetch(c + o, 0, 3);
      }
    }
  };
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t b = 0; b < B; ++b) {
    if (ahead > 0 && b + ahead < B) {
      for (int j = 0; j < 3; ++j) prefetch(emb + trip[3 * (b + ahead) + j] * D, false);
      for (int j = 0; j < 3; ++j) prefetch(grad + trip[3 * (b + 1) + j] * D, true);
    }
    const float* x[3];
    float* g[3];
    for (int j = 0; j < 3; ++j) {
      const int64_t r = trip[3 * b + j];
      x[j] = emb + r * D;
      g[j] = grad + r * D;
      if (!touched[r]) {
        std::memset(g[j], 0, sizeof(float) * size_t(D));
        touched[r] = 1;
      }
    }
    for (int j = 0; j < 3; ++j) {
      const float* __restrict a = x[(j + 1) % 3];
      float* __restrict o = g[j];
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) o[d] += a[d];
    }
  }
}

}  // namespace cpu
}  // namespace fastalign
