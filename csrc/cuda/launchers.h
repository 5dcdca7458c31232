// Plain C++ interface between the pybind11 binding (bindings.cpp, host
// compiler) and the CUDA launchers (*.cu, nvcc). No CUDA or torch headers:
// pointers travel as integers, the stream as the cudaStream_t bit pattern that
// torch reports as ``torch.cuda.current_stream().cuda_stream``.
//
// Every launcher returns 0 on success or a cudaError_t code; error_string()
// turns a code into text. Launchers never synchronise and never allocate:
// the Python wrapper (fastalign/kernels/cuda.py) allocates every buffer.
#pragma once

#include <cstdint>

namespace fastalign_cuda {

// Embedding dtypes.
enum DType : int { kF32 = 0, kF64 = 1, kF16 = 2, kBF16 = 3 };
// Triplet index dtypes.
enum IType : int { kI32 = 0, kI64 = 1 };
// What the triplet kernel computes (see triplet.cu).
enum Task : int {
  kTaskSims = 0,     // similarities only
  kTaskLoss = 1,     // loss + dsim (+ gradient when grad or amat is given)
  kTaskScatter = 2,  // gradient from given coefficients coef_in = dL/ds
};
// Loss modes, equal to fastalign.kernels.contract.MODE_*.
enum Mode : int { kHard = 0, kKL = 1, kJSD = 2 };

// Columns of the per-triplet table `amat` that deterministic mode hands from
// the triplet kernel to segment_reduce. Dot: [k01, k02, k12, g0, g1, g2] (g =
// 0); cosine: [c01, c02, c12, h01, h02, h12, l0, l1, l2] (c = dL/ds scaled,
// h = grad_sim(s), l the unclamped norms; see triplet.cu).
constexpr int kAmatColsDot = 6;
constexpr int kAmatColsCosine = 9;

// Arguments of the triplet kernel. Pointers are device addresses; 0 = absent.
// Floating buffers other than emb are in the accumulation dtype ("acc":
// double for kF64 embeddings, else float) and contiguous.
struct TripletArgs {
  std::uintptr_t emb = 0;        // (n, d) rows, element (r, c) at emb[r * row_stride + c]
  int dtype = kF32;
  std::int64_t n = 0, d = 0, row_stride = 0;
  std::uintptr_t triplets = 0;   // (b, 3) int32/int64, contiguous
  int itype = kI64;
  std::int64_t b = 0;
  std::uintptr_t target = 0;     // (b, 3) acc: kl/jsd target probabilities
  std::uintptr_t choice = 0;     // (b,) int64 in {0, 1, 2}: chosen pair (hard); 0 = all 0
  std::uintptr_t rowscale = 0;   // (b,) acc: per-triplet gradient factor; 0 = all 1
  std::uintptr_t coef_in = 0;    // (b, 3) acc: dL/ds for kTaskScatter
  int task = kTaskSims;
  int mode = kHard;
  bool cosine = false;
  double temperature = 1.0;
  double grad_scale = 1.0;       // global gradient factor (kTaskLoss)
  std::uintptr_t sims = 0;       // out (b, 3) acc
  std::uintptr_t loss = 0;       // out (b,) acc
  std::uintptr_t dsim = 0;       // out (b, 3) acc: dL_b/ds_b, unscaled
  std::uintptr_t grad = 0;       // out (n, d) float32, contiguous, pre-zeroed: atomic scatter-add
  std::uintptr_t amat = 0;       // out (b, kAmatColsDot / kAmatColsCosine) acc for segment_reduce
  int device = 0;
  std::uintptr_t stream = 0;
};

// Arguments of the deterministic segmented reduction (segment_reduce.cu).
// The 3b slot entries e = 3 * t + slot are sorted by row (stably); segment s
// covers perm[offsets[s] .. offsets[s + 1]) and belongs to row rows[s].
struct SegmentArgs {
  std::uintptr_t emb = 0;
  int dtype = kF32;
  std::int64_t n = 0, d = 0, row_stride = 0;
  std::uintptr_t triplets = 0;
  int itype = kI64;
  std::int64_t b = 0;
  bool cosine = false;           // amat layout: kAmatColsCosine columns if set, else kAmatColsDot
  std::uintptr_t amat = 0;       // (b, cols) acc from the triplet kernel
  std::uintptr_t perm = 0;       // (3b,) int64 slot entries sorted by row
  std::uintptr_t rows = 0;       // (nseg,) int64 row of each segment
  std::uintptr_t offsets = 0;    // (nseg + 1,) int64
  std::int64_t nseg = 0;
  std::uintptr_t grad = 0;       // out (n, d) acc, contiguous, pre-zeroed (rows without entries stay 0)
  int device = 0;
  std::uintptr_t stream = 0;
};

int launch_triplet(const TripletArgs& args);
int launch_segment_reduce(const SegmentArgs& args);
// Wait for the stream and return the first pending error (0 if none).
int stream_synchronize(int device, std::uintptr_t stream);
// Number of visible devices, or -(cudaError_t) when the runtime cannot start.
int device_count();
// CUDA runtime version the extension was built against (e.g. 13000).
int runtime_version();
const char* error_string(int code);

}  // namespace fastalign_cuda
