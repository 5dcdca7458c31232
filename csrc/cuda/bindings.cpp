// pybind11 module fastalign._cuda: thin bindings of the CUDA launchers.
//
// Compiled by the host C++ compiler; it sees only launchers.h (no CUDA or
// torch headers). Pointers and the stream arrive as Python ints (0 = absent).
// Each call releases the GIL while it enqueues work and raises RuntimeError
// with the CUDA error text when a launch fails.

#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "launchers.h"

namespace py = pybind11;
namespace fc = fastalign_cuda;

namespace {

void check(int code, const char* what) {
  if (code != 0) {
    throw std::runtime_error(std::string("fastalign._cuda.") + what + " failed: " + fc::error_string(code) +
                             " (CUDA error " + std::to_string(code) + ")");
  }
}

void triplet(std::uintptr_t emb, int dtype, std::int64_t n, std::int64_t d, std::int64_t row_stride,
             std::uintptr_t triplets, int itype, std::int64_t b, std::uintptr_t target, std::uintptr_t choice,
             std::uintptr_t rowscale, std::uintptr_t coef_in, int task, int mode, bool cosine, double temperature,
             double grad_scale, std::uintptr_t sims, std::uintptr_t loss, std::uintptr_t dsim, std::uintptr_t grad,
             std::uintptr_t amat, int device, std::uintptr_t stream) {
  fc::TripletArgs a;
  a.emb = emb; a.dtype = dtype; a.n = n; a.d = d; a.row_stride = row_stride;
  a.triplets = triplets; a.itype = itype; a.b = b;
  a.target = target; a.choice = choice; a.rowscale = rowscale; a.coef_in = coef_in;
  a.task = task; a.mode = mode; a.cosine = cosine; a.temperature = temperature; a.grad_scale = grad_scale;
  a.sims = sims; a.loss = loss; a.dsim = dsim; a.grad = grad; a.amat = amat;
  a.device = device; a.stream = stream;
  int code;
  {
    py::gil_scoped_release nogil;
    code = fc::launch_triplet(a);
  }
  check(code, "triplet");
}

void segment_reduce(std::uintptr_t emb, int dtype, std::int64_t n, std::int64_t d, std::int64_t row_stride,
                    std::uintptr_t triplets, int itype, std::int64_t b, bool cosine, std::uintptr_t amat,
                    std::uintptr_t perm, std::uintptr_t rows, std::uintptr_t offsets, std::int64_t nseg,
                    std::uintptr_t grad, int device, std::uintptr_t stream) {
  fc::SegmentArgs a;
  a.emb = emb; a.dtype = dtype; a.n = n; a.d = d; a.row_stride = row_stride;
  a.triplets = triplets; a.itype = itype; a.b = b;
  a.cosine = cosine; a.amat = amat; a.perm = perm; a.rows = rows; a.offsets = offsets; a.nseg = nseg;
  a.grad = grad; a.device = device; a.stream = stream;
  int code;
  {
    py::gil_scoped_release nogil;
    code = fc::launch_segment_reduce(a);
  }
  check(code, "segment_reduce");
}

void synchronize(int device, std::uintptr_t stream) {
  int code;
  {
    py::gil_scoped_release nogil;
    code = fc::stream_synchronize(device, stream);
  }
  check(code, "synchronize");
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "fastalign CUDA triplet kernels (raw pointers + the caller's CUDA stream; see csrc/cuda/launchers.h)";
  m.attr("F32") = static_cast<int>(fc::kF32);
  m.attr("F64") = static_cast<int>(fc::kF64);
  m.attr("F16") = static_cast<int>(fc::kF16);
  m.attr("BF16") = static_cast<int>(fc::kBF16);
  m.attr("I32") = static_cast<int>(fc::kI32);
  m.attr("I64") = static_cast<int>(fc::kI64);
  m.attr("TASK_SIMS") = static_cast<int>(fc::kTaskSims);
  m.attr("TASK_LOSS") = static_cast<int>(fc::kTaskLoss);
  m.attr("TASK_SCATTER") = static_cast<int>(fc::kTaskScatter);
  m.attr("AMAT_COLS_DOT") = fc::kAmatColsDot;
  m.attr("AMAT_COLS_COSINE") = fc::kAmatColsCosine;
  m.def("triplet", &triplet,
        "Launch the fused triplet kernel (see TripletArgs in csrc/cuda/launchers.h for every argument).",
        py::arg("emb"), py::arg("dtype"), py::arg("n"), py::arg("d"), py::arg("row_stride"), py::arg("triplets"),
        py::arg("itype"), py::arg("b"), py::arg("target"), py::arg("choice"), py::arg("rowscale"),
        py::arg("coef_in"), py::arg("task"), py::arg("mode"), py::arg("cosine"), py::arg("temperature"),
        py::arg("grad_scale"), py::arg("sims"), py::arg("loss"), py::arg("dsim"), py::arg("grad"), py::arg("amat"),
        py::arg("device"), py::arg("stream"));
  m.def("segment_reduce", &segment_reduce,
        "Launch the deterministic segmented gradient reduction (see SegmentArgs in csrc/cuda/launchers.h).",
        py::arg("emb"), py::arg("dtype"), py::arg("n"), py::arg("d"), py::arg("row_stride"), py::arg("triplets"),
        py::arg("itype"), py::arg("b"), py::arg("cosine"), py::arg("amat"), py::arg("perm"), py::arg("rows"), py::arg("offsets"),
        py::arg("nseg"), py::arg("grad"), py::arg("device"), py::arg("stream"));
  m.def("synchronize", &synchronize, "Wait for a stream and raise on any pending CUDA error.", py::arg("device"),
        py::arg("stream"));
  m.def("device_count", &fc::device_count, "Visible CUDA devices, or -(cudaError_t) if the runtime cannot start.");
  m.def("error_string", [](int code) { return std::string(fc::error_string(code)); },
        "Text of a cudaError_t code.", py::arg("code"));
  m.def("runtime_version", &fc::runtime_version, "CUDA runtime version the extension was built with (e.g. 13000).");
}
