// Exact inversion count of an int64 vector: pairs i < j with y[i] > y[j].
//
// The discordant pairs of Kendall's tau (fastalign.eval.correlation) are the
// inversions of y sorted by x. A bottom-up merge sort counts them in
// O(n log n): when a merge takes an element from the right run, every element
// still waiting in the left run is greater than it. Ties are no inversion: on
// equal values the left element goes first.
//
// - Values are shifted by the minimum; when the range fits 32 bits (dense
//   ranks always do) the sort runs on uint32, half the bytes per level.
// - Leaves of kMergeLeaf elements are ranked by comparing every pair (no branch:
//   the comparisons vectorise), which gives their inversions and their sorted
//   order at once and saves the lowest merge levels.
// - A merge step is branchless (the comparison picks the element and the
//   count by selects: on random data a branch would mispredict every other
//   element), but each step waits for the previous one's load. So kMergeLanes
//   independent merges advance in lockstep, which hides that latency. At the
//   low levels the lanes are different run pairs; where a level has fewer
//   pairs than lanes times threads, each merge is cut at the diagonals of its
//   output (merge path) into slices that merge independently.
// - Threads split a level's slices into contiguous ranges. Every count is an
//   exact integer, so the result does not depend on the thread count.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <memory>

namespace fastalign {
namespace cpu {

constexpr int64_t kMergeLeaf = 16;
constexpr int kMergeLanes = 3;  // 2..5 measured within 10 % of each other; 3 fits the registers

// Sorts the kMergeLeaf values shift(y[0:kMergeLeaf)) into out, returning their inversions.
// An element's stable rank is the number of smaller elements plus the equal ones
// before it. The inner loops run over the whole leaf (one vector of uint32).
template <class T, class F>
inline int64_t sort_leaf(const int64_t* y, T* out, F shift) {
  T v[kMergeLeaf];
  uint32_t rank[kMergeLeaf] = {};
  uint32_t later_smaller[kMergeLeaf] = {};
  for (int k = 0; k < kMergeLeaf; ++k) v[k] = shift(y[k]);
  for (int m = 0; m < kMergeLeaf; ++m) {
    const T vm = v[m];
#pragma omp simd
    for (int k = 0; k < kMergeLeaf; ++k) {
      const uint32_t smaller = vm < v[k];
      rank[k] += smaller | uint32_t((m < k) & (vm == v[k]));
      later_smaller[k] += smaller & uint32_t(m > k);
    }
  }
  int64_t inv = 0;
  for (int64_t k = 0; k < kMergeLeaf; ++k) {
    out[rank[k]] = v[k];
    inv += later_smaller[k];
  }
  return inv;
}

// The short last leaf: insertion sort (its shifts are its inversions).
template <class T, class F>
inline int64_t sort_short_leaf(const int64_t* y, int64_t len, T* out, F shift) {
  int64_t inv = 0;
  for (int64_t i = 0; i < len; ++i) {
    const T v = shift(y[i]);
    int64_t j = i;
    while (j > 0 && out[j - 1] > v) {
      out[j] = out[j - 1];
      --j;
    }
    inv += i - j;
    out[j] = v;
  }
  return inv;
}

// A slice of the merge of the runs src[s : lend) and src[lend : s + 2w) (indices
// into src): left src[i : il), right src[j : jr); `out` is the dst index of its
// first element.
struct Slice {
  int64_t i, il, j, jr, lend, out;
};

// Left elements among the first d of the merge of l[0:nl) and r[0:nr) (ties: left first).
template <class T>
inline int64_t merge_split(const T* l, int64_t nl, const T* r, int64_t nr, int64_t d) {
  int64_t lo = std::max<int64_t>(0, d - nr);
  int64_t hi = std::min(d, nl);
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (l[mid] <= r[d - mid - 1]) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// Finishes a slice one step at a time and returns its inversions.
// Every right element taken precedes the left elements still waiting up to lend, all greater.
template <class T>
inline int64_t merge_slice(const T* src, T* dst, Slice q) {
  int64_t inv = 0;
  int64_t o = q.out;
  while (q.i < q.il && q.j < q.jr) {
    const T a = src[q.i];
    const T b = src[q.j];
    const bool right = b < a;
    dst[o++] = right ? b : a;
    inv += right ? q.lend - q.i : 0;
    q.j += right;
    q.i += !right;
  }
  // Right elements after the left slice precede src[il:lend), which all exceed them.
  inv += (q.jr - q.j) * (q.lend - q.i);
  while (q.i < q.il) dst[o++] = src[q.i++];
  while (q.j < q.jr) dst[o++] = src[q.j++];
  return inv;
}

// The slices of one merge level: pair p of runs of width w, cut into `split` parts.
template <class T>
struct Level {
  const T* src;
  int64_t n, w, split;

  int64_t count() const { return (n + 2 * w - 1) / (2 * w) * split; }

  Slice slice(int64_t t) const {
    // Whole pairs need no division (tens of cycles each, per slice of 2w elements at the low levels).
    if (split == 1) {
      const int64_t s = t * 2 * w;
      const int64_t nl = std::min(w, n - s);
      const int64_t nr = std::min(w, n - s - nl);
      return Slice{s, s + nl, s + nl, s + nl + nr, s + nl, s};
    }
    const int64_t s = t / split * 2 * w;
    const int64_t nl = std::min(w, n - s);
    const int64_t nr = std::min(w, n - s - nl);
    const int64_t part = t % split;
    const int64_t m = nl + nr;
    const int64_t d0 = m * part / split;
    const int64_t d1 = m * (part + 1) / split;
    const T* l = src + s;
    const T* r = src + s + nl;
    const int64_t i0 = merge_split(l, nl, r, nr, d0);
    const int64_t i1 = merge_split(l, nl, r, nr, d1);
    return Slice{s + i0, s + i1, s + nl + d0 - i0, s + nl + d1 - i1, s + nl, s + d0};
  }
};

// Merges the slices [t0, t1) of a level, kMergeLanes at a time in lockstep; returns their inversions.
template <class T>
inline int64_t merge_range(const Level<T>& level, T* dst, int64_t t0, int64_t t1) {
  const T* src = level.src;
  int64_t inv = 0;
  int64_t next = t0;
  // Per lane: positions i, j; the left end; dst index minus i + j; inversions as
  // (right elements taken) * lend - (sum of i at those steps), kept as sum_i.
  int64_t i[kMergeLanes], il[kMergeLanes], j[kMergeLanes], jr[kMergeLanes], lend[kMergeLanes], shift[kMergeLanes], j0[kMergeLanes], sum_i[kMergeLanes];
  int live = 0;
  auto load = [&](int k) {
    const Slice q = level.slice(next++);
    i[k] = q.i, il[k] = q.il, j[k] = q.j, jr[k] = q.jr, lend[k] = q.lend;
    shift[k] = q.out - q.i - q.j;
    j0[k] = q.j, sum_i[k] = 0;
  };
  auto retire = [&](int k) {
    inv += (j[k] - j0[k]) * lend[k] - sum_i[k];
    inv += merge_slice(src, dst, Slice{i[k], il[k], j[k], jr[k], lend[k], shift[k] + i[k] + j[k]});
  };
  if (t1 - t0 >= kMergeLanes) {
    for (int k = 0; k < kMergeLanes; ++k) load(k);
    live = kMergeLanes;
  }
  while (live == kMergeLanes) {
    int64_t steps = INT64_MAX;
    for (int k = 0; k < kMergeLanes; ++k) steps = std::min(steps, std::min(il[k] - i[k], jr[k] - j[k]));
    {
      // Register copies: the arrays above are indexed at run time (refills), so they live in memory,
      // and a store-to-load round trip per step would lengthen every lane's chain.
      int64_t ri[kMergeLanes], rj[kMergeLanes], rs[kMergeLanes];
      T* ro[kMergeLanes];
#pragma GCC unroll 8
      for (int k = 0; k < kMergeLanes; ++k) {
        ri[k] = i[k], rj[k] = j[k], rs[k] = sum_i[k], ro[k] = dst + shift[k] + i[k] + j[k];
      }
      for (int64_t s = 0; s < steps; ++s) {
#pragma GCC unroll 8
        for (int k = 0; k < kMergeLanes; ++k) {
          const T a = src[ri[k]];
          const T b = src[rj[k]];
          const bool right = b < a;
          ro[k][s] = right ? b : a;
          rs[k] += right ? ri[k] : 0;
          rj[k] += right;
          ri[k] += !right;
        }
      }
#pragma GCC unroll 8
      for (int k = 0; k < kMergeLanes; ++k) i[k] = ri[k], j[k] = rj[k], sum_i[k] = rs[k];
    }
    // Refill every lane with an exhausted side; stop when the slices run out.
    for (int k = 0; k < kMergeLanes; ++k) {
      if (i[k] == il[k] || j[k] == jr[k]) {
        retire(k);
        if (next < t1) {
          load(k);
        } else {
          // Park the other lanes: finish them below, one step at a time.
          for (int m = 0; m < kMergeLanes; ++m) {
            if (m != k) retire(m);
          }
          live = 0;
          break;
        }
      }
    }
  }
  for (; next < t1; ++next) inv += merge_slice(src, dst, level.slice(next));
  return inv;
}

// Sorts shift(y[0:n)) in a (b is scratch of n values) and returns its inversions.
template <class T, class F>
inline int64_t sort_count(const int64_t* y, int64_t n, T* a, T* b, int threads, F shift) {
  int64_t total = 0;
  const int64_t full = n / kMergeLeaf;
#pragma omp parallel for schedule(static) reduction(+ : total) num_threads(threads) if (threads > 1)
  for (int64_t k = 0; k < full; ++k) total += sort_leaf(y + k * kMergeLeaf, a + k * kMergeLeaf, shift);
  total += sort_short_leaf(y + full * kMergeLeaf, n - full * kMergeLeaf, a + full * kMergeLeaf, shift);
  T* src = a;
  T* dst = b;
  for (int64_t w = kMergeLeaf; w < n; w *= 2) {
    const int64_t pairs = (n + 2 * w - 1) / (2 * w);
    const int64_t want = int64_t(kMergeLanes) * threads;
    const Level<T> level{src, n, w, pairs >= want ? 1 : (want + pairs - 1) / pairs};
    const int64_t slices = level.count();
#pragma omp parallel for schedule(static) reduction(+ : total) num_threads(threads) if (threads > 1)
    for (int t = 0; t < threads; ++t) {
      total += merge_range(level, dst, slices * t / threads, slices * (t + 1) / threads);
    }
    std::swap(src, dst);
  }
  return total;
}

template <class T, class F>
inline int64_t count_shifted(const int64_t* y, int64_t n, int threads, F shift) {
  // new T[n], not a vector: no pass to zero what the leaves overwrite.
  std::unique_ptr<T[]> a(new T[n]);
  std::unique_ptr<T[]> b(new T[n]);
  return sort_count(y, n, a.get(), b.get(), threads, shift);
}

// Inversions of y[0:n) (read only).
inline int64_t count_inversions(const int64_t* y, int64_t n, int threads) {
  if (n < 2) return 0;
  int64_t lo = y[0];
  int64_t hi = y[0];
  for (int64_t i = 1; i < n; ++i) {
    lo = std::min(lo, y[i]);
    hi = std::max(hi, y[i]);
  }
  // Unsigned differences: exact for any int64 range, and order preserving.
  const uint64_t base = static_cast<uint64_t>(lo);
  if (static_cast<uint64_t>(hi) - base <= UINT32_MAX) {
    return count_shifted<uint32_t>(y, n, threads,
                                   [base](int64_t v) { return static_cast<uint32_t>(static_cast<uint64_t>(v) - base); });
  }
  return count_shifted<uint64_t>(y, n, threads, [base](int64_t v) { return static_cast<uint64_t>(v) - base; });
}

}  // namespace cpu
}  // namespace fastalign
