// pybind11 bindings of the CPU triplet kernels: the module fastalign._cpu.
//
// Every entry point takes raw data pointers (Python ints from
// tensor.data_ptr()), sizes, the row stride of emb and dtype codes, and runs
// with the GIL released. The Python wrapper (fastalign/kernels/cpu.py)
// allocates the outputs; fastalign.ops validated the inputs.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cpu/floor_kernels.h"
#include "cpu/inversions.h"
#include "cpu/triplet_kernels.h"

namespace py = pybind11;
using namespace fastalign::cpu;

namespace {

template <class T>
struct Tag {
  using type = T;
};

// Calls f(Tag<T>, integral_constant<bool, COS>) for the runtime codes.
template <class F>
void dispatch(int dtype, bool cosine, F&& f) {
  auto with_cos = [&](auto tt) {
    if (cosine) {
      f(tt, std::true_type{});
    } else {
      f(tt, std::false_type{});
    }
  };
  switch (dtype) {
    case kF64:
      with_cos(Tag<double>{});
      break;
    case kF32:
      with_cos(Tag<float>{});
      break;
    case kF16:
      with_cos(Tag<f16_t>{});
      break;
    case kBF16:
      with_cos(Tag<bf16_t>{});
      break;
    default:
      throw std::invalid_argument("fastalign._cpu: emb dtype code must be 0..3 (f64, f32, f16, bf16), got " +
                                  std::to_string(dtype));
  }
}

template <class T>
Rows<T> make_rows(std::uintptr_t emb, int64_t n, int64_t d, int64_t ld, std::uintptr_t trip, int itype, int64_t b) {
  if (itype != kI32 && itype != kI64) {
    throw std::invalid_argument("fastalign._cpu: index dtype code must be 0 (int32) or 1 (int64), got " +
                                std::to_string(itype));
  }
  return Rows<T>{reinterpret_cast<const T*>(emb), n, d, ld, reinterpret_cast<const void*>(trip), itype == kI64, b};
}

void check_sizes(int64_t n, int64_t d, int64_t b, int threads) {
  // Cheap guards against a wrapper bug; fastalign.ops validates the data.
  if (n < 0 || d < 1 || b < 0) throw std::invalid_argument("fastalign._cpu: need N >= 0, D >= 1, B >= 0");
  if (threads < 1) throw std::invalid_argument("fastalign._cpu: num_threads must be >= 1");
}

void similarities_entry(std::uintptr_t emb, int dtype, int64_t n, int64_t d, int64_t ld, std::uintptr_t trip,
                        int itype, int64_t b, bool cosine, std::uintptr_t out, int threads) {
  check_sizes(n, d, b, threads);
  dispatch(dtype, cosine, [&](auto tt, auto cos) {
    using T = typename decltype(tt)::type;
    using A = typename Traits<T>::acc;
    similarities<T, decltype(cos)::value>(make_rows<T>(emb, n, d, ld, trip, itype, b), reinterpret_cast<A*>(out),
                                             threads);
  });
}

void fused_entry(std::uintptr_t emb, int dtype, int64_t n, int64_t d, int64_t ld, std::uintptr_t trip, int itype,
                 int64_t b, std::uintptr_t target, std::uintptr_t choice, std::uintptr_t rowscale, int mode,
                 bool cosine, double temperature, double grad_scale, std::uintptr_t loss, std::uintptr_t dsim,
                 std::uintptr_t grad, int threads, std::uintptr_t workspace, bool owned) {
  check_sizes(n, d, b, threads);
  if (mode < kHard || mode > kJSD) throw std::invalid_argument("fastalign._cpu: mode must be 0, 1 or 2");
  if (mode != kHard && !target && b > 0) throw std::invalid_argument("fastalign._cpu: KL/JSD need a target");
  dispatch(dtype, cosine, [&](auto tt, auto cos) {
    using T = typename decltype(tt)::type;
    using A = typename Traits<T>::acc;
    Objective<A> obj{reinterpret_cast<const A*>(target),
                     reinterpret_cast<const int64_t*>(choice),
                     reinterpret_cast<const A*>(rowscale),
                     mode,
                     A(temperature),
                     A(grad_scale),
                     reinterpret_cast<A*>(loss),
                     reinterpret_cast<A*>(dsim)};
    const Rows<T> rows = make_rows<T>(emb, n, d, ld, trip, itype, b);
    if (owned && grad) {
      run_owned<T, decltype(cos)::value>(rows, &obj, nullptr, reinterpret_cast<A*>(grad), threads,
                                            reinterpret_cast<A*>(workspace));
    } else {
      run_parts<T, decltype(cos)::value>(rows, &obj, nullptr, reinterpret_cast<A*>(grad), threads,
                                            reinterpret_cast<A*>(workspace));
    }
  });
}

void scatter_entry(std::uintptr_t emb, int dtype, int64_t n, int64_t d, int64_t ld, std::uintptr_t trip, int itype,
                   int64_t b, std::uintptr_t coef, bool cosine, std::uintptr_t grad, int threads,
                   std::uintptr_t workspace, bool owned) {
  check_sizes(n, d, b, threads);
  if (n == 0) return;  // then B == 0 too, and the (0, D) gradient has no data
  if (!grad) throw std::invalid_argument("fastalign._cpu: scatter needs a gradient output");
  dispatch(dtype, cosine, [&](auto tt, auto cos) {
    using T = typename decltype(tt)::type;
    using A = typename Traits<T>::acc;
    const Rows<T> rows = make_rows<T>(emb, n, d, ld, trip, itype, b);
    if (owned) {
      run_owned<T, decltype(cos)::value>(rows, nullptr, reinterpret_cast<const A*>(coef),
                                            reinterpret_cast<A*>(grad), threads, reinterpret_cast<A*>(workspace));
    } else {
      run_parts<T, decltype(cos)::value>(rows, nullptr, reinterpret_cast<const A*>(coef),
                                            reinterpret_cast<A*>(grad), threads, reinterpret_cast<A*>(workspace));
    }
  });
}

bool gram_fused_entry(std::uintptr_t gram, bool f64, int64_t n, std::uintptr_t trip, int itype, int64_t b,
                      std::uintptr_t target, std::uintptr_t choice, std::uintptr_t rowscale, int mode, bool cosine,
                      double temperature, double grad_scale, std::uintptr_t loss, std::uintptr_t dsim,
                      std::uintptr_t coef_out, int threads) {
  check_sizes(n, 1, b, threads);
  if (mode < kHard || mode > kJSD) throw std::invalid_argument("fastalign._cpu: mode must be 0, 1 or 2");
  if (mode != kHard && !target && b > 0) throw std::invalid_argument("fastalign._cpu: KL/JSD need a target");
  if (itype != kI32 && itype != kI64) throw std::invalid_argument("fastalign._cpu: index dtype code must be 0 or 1");
  auto run = [&](auto tag) -> bool {
    using A = decltype(tag);
    Objective<A> obj{reinterpret_cast<const A*>(target), reinterpret_cast<const int64_t*>(choice),
                     reinterpret_cast<const A*>(rowscale), mode, A(temperature), A(grad_scale),
                     reinterpret_cast<A*>(loss), reinterpret_cast<A*>(dsim)};
    const A* g = reinterpret_cast<const A*>(gram);
    A* c = reinterpret_cast<A*>(coef_out);
    const void* t = reinterpret_cast<const void*>(trip);
    return cosine ? gram_fused<A, true>(g, n, t, itype == kI64, b, obj, c, threads)
                  : gram_fused<A, false>(g, n, t, itype == kI64, b, obj, c, threads);
  };
  return f64 ? run(double{}) : run(float{});
}

bool scale_entry(std::uintptr_t x, bool f64, int64_t n, std::uintptr_t scale, int threads) {
  if (n < 0 || threads < 1) throw std::invalid_argument("fastalign._cpu: need n >= 0 and num_threads >= 1");
  if (f64) return scale_inplace<double>(reinterpret_cast<double*>(x), n, reinterpret_cast<const double*>(scale), threads);
  return scale_inplace<float>(reinterpret_cast<float*>(x), n, reinterpret_cast<const float*>(scale), threads);
}

// Benchmark hook: the gathered-bytes floor (floor_kernels.h), fp32 rows and int64 indices.
void floor_entry(std::uintptr_t emb, int64_t n, int64_t d, std::uintptr_t trip, int64_t b, std::uintptr_t grad,
                 std::uintptr_t touched, int threads, int64_t ahead) {
  check_sizes(n, d, b, threads);
  gather_scatter_floor(reinterpret_cast<const float*>(emb), n, d, reinterpret_cast<const int64_t*>(trip), b,
                       reinterpret_cast<float*>(grad), reinterpret_cast<uint8_t*>(touched), threads, ahead);
}

int64_t inversions_entry(std::uintptr_t y, int64_t n, int threads) {
  if (n < 0 || threads < 1) throw std::invalid_argument("fastalign._cpu: need n >= 0 and num_threads >= 1");
  return count_inversions(reinterpret_cast<const int64_t*>(y), n, threads);
}

// Test hook: the portable fp16 conversion used when the compiler has no _Float16.
void f16_manual_entry(std::uintptr_t src, std::uintptr_t dst, int64_t n) {
  const uint16_t* s = reinterpret_cast<const uint16_t*>(src);
  float* o = reinterpret_cast<float*>(dst);
  for (int64_t i = 0; i < n; ++i) o[i] = half_bits_to_float(s[i]);
}

}  // namespace

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "fastalign fused triplet kernels (C++/OpenMP). Raw pointers; use fastalign.kernels.cpu.";
  m.attr("DTYPE_CODES") = py::make_tuple("float64", "float32", "float16", "bfloat16");
  m.attr("INDEX_CODES") = py::make_tuple("int32", "int64");
#if defined(__FLT16_MAX__)
  m.attr("NATIVE_F16") = true;
#else
  m.attr("NATIVE_F16") = false;
#endif
  auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("similarities", &similarities_entry, nogil, py::arg("emb"), py::arg("dtype"), py::arg("n"), py::arg("d"),
        py::arg("ld"), py::arg("triplets"), py::arg("itype"), py::arg("b"), py::arg("cosine"), py::arg("out"),
        py::arg("num_threads"), "Write the (B, 3) pair similarities to out.");
  m.def("fused", &fused_entry, nogil, py::arg("emb"), py::arg("dtype"), py::arg("n"), py::arg("d"), py::arg("ld"),
        py::arg("triplets"), py::arg("itype"), py::arg("b"), py::arg("target"), py::arg("choice"),
        py::arg("rowscale"), py::arg("mode"), py::arg("cosine"), py::arg("temperature"), py::arg("grad_scale"),
        py::arg("loss"), py::arg("dsim"), py::arg("grad"), py::arg("num_threads"), py::arg("workspace") = 0, py::arg("owned") = false,
        "Fused loss, dL/ds and (grad != 0) the (N, D) gradient. Null pointers (0) mean 'absent'. workspace: "
        "0, or (grad_parts(num_threads, b) - 1) * n * d accumulation values the call may overwrite (row path). "
        "owned: the large-N path (threads own row ranges; no per-thread buffers); its workspace is 0 or "
        "owned_workspace(n, d, b, num_threads) values.");
  m.def("scatter", &scatter_entry, nogil, py::arg("emb"), py::arg("dtype"), py::arg("n"), py::arg("d"),
        py::arg("ld"), py::arg("triplets"), py::arg("itype"), py::arg("b"), py::arg("coef"), py::arg("cosine"),
        py::arg("grad"), py::arg("num_threads"), py::arg("workspace") = 0, py::arg("owned") = false,
        "Write the (N, D) gradient sum_b sum_p coef[b,p] ds_bp/demb (workspace, owned: as for fused).");
  m.def("scale_", &scale_entry, nogil, py::arg("x"), py::arg("f64"), py::arg("n"), py::arg("scale"),
        py::arg("num_threads"),
        "x[:n] *= *scale in place (float64 if f64 else float32); returns False at once when *scale == 1, else True.");
  m.def("grad_parts", &grad_parts, py::arg("num_threads"), py::arg("b"), py::arg("grad") = true,
        "Number of accumulation parts a call with a gradient uses (workspace = parts - 1 buffers).");
  m.def("owned_workspace", &owned_workspace, py::arg("n"), py::arg("d"), py::arg("b"), py::arg("num_threads"),
        "Accumulation values of the owned path's message ring (its workspace; 0 with one part).");
  m.def("gram_fused", &gram_fused_entry, nogil, py::arg("gram"), py::arg("f64"), py::arg("n"), py::arg("triplets"),
        py::arg("itype"), py::arg("b"), py::arg("target"), py::arg("choice"), py::arg("rowscale"), py::arg("mode"),
        py::arg("cosine"), py::arg("temperature"), py::arg("grad_scale"), py::arg("loss"), py::arg("dsim"),
        py::arg("coef_out"), py::arg("num_threads"),
        "Fused loss and dL/ds from the (N, N) Gram matrix, and (coef_out != 0) the (N, N) coefficient matrix C "
        "with grad = C @ emb. Returns False, writing nothing, if a diagonal entry of the Gram matrix is not finite.");
  m.def("_gather_scatter_floor", &floor_entry, nogil, py::arg("emb"), py::arg("n"), py::arg("d"),
        py::arg("triplets"), py::arg("b"), py::arg("grad"), py::arg("touched"), py::arg("num_threads"),
        py::arg("ahead") = kPrefetchAhead,
        "Benchmark hook: move the fused loss's gathered bytes (3B row reads, 3B gradient-row adds into an "
        "uninitialised fp32 grad with zeroed byte flags `touched` (N,)) with no arithmetic, rows prefetched `ahead` triplets ahead; racy, time only.");
  m.def("count_inversions", &inversions_entry, nogil, py::arg("y"), py::arg("n"), py::arg("num_threads"),
        "Exact number of pairs i < j with y[i] > y[j] of n contiguous int64 values (merge sort).");
  m.def("_f16_manual", &f16_manual_entry, nogil, py::arg("src"), py::arg("dst"), py::arg("n"),
        "Test hook: convert n fp16 bit patterns with the portable (non-_Float16) path.");
}
