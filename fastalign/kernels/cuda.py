"""The CUDA C++ backend (``backend="cuda"``): ``fastalign._cuda`` behind the kernel contract.

The extension (``csrc/cuda``) takes raw device pointers, sizes, the row stride
and the caller's CUDA stream; this wrapper allocates every output with torch,
passes ``torch.cuda.current_stream().cuda_stream`` so the kernels order with
the surrounding torch work, and turns launch errors into ``RuntimeError``.

Gradient modes
--------------
- *atomic* (default): the fused kernel scatter-adds float32 row gradients into
  the (N, D) float32 output with ``atomicAdd``; the summation order of a row
  that appears in several triplets varies from run to run.
- *deterministic* (``CudaKernels(deterministic=True)``, or whenever
  ``torch.are_deterministic_algorithms_enabled()``, and always for float64
  embeddings, which never use atomics): the kernel writes a small table per
  triplet (dot: six coefficients; cosine: dL/ds, the similarities the
  gradient uses and the norms, from which the reduction forms the unit-row
  terms); the 3B slot entries are stably sorted by row and a segmented
  reduction (one warp per row) sums each row's contributions in that
  fixed order. Bitwise reproducible; O(B) extra memory (sort keys,
  permutation, coefficients).

Availability: constructing ``CudaKernels`` raises ``ImportError`` when the
extension is not built (or does not load) and ``RuntimeError`` when there is no
CUDA device; the registry records the message for ``fastalign.backends()``.
"""

from __future__ import annotations

import ctypes
import glob
import importlib
import os
import re
import shutil
from types import ModuleType
from typing import Dict, Optional, Tuple

import torch

from .contract import MODE_HARD, acc_dtype

NOT_BUILT = (
    "extension fastalign._cuda not built (set FASTALIGN_BUILD_CUDA=1 and reinstall with nvcc on PATH, "
    "e.g. FASTALIGN_BUILD_CUDA=1 pip install -e . --no-build-isolation)"
)
NO_DEVICE = "no CUDA device (torch.cuda.is_available() is False)"
SYNC_ENV = "FASTALIGN_CUDA_SYNC"  # "1": synchronise after every launch and raise asynchronous errors there

_DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
_INDEX_CODES = {torch.int32: 0, torch.int64: 1}

_MODULE = "fastalign._cuda"
_EXT: Optional[ModuleType] = None


def _cudart_dirs():
    """Directories that may hold the CUDA runtime the extension was linked against."""
    dirs = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            dirs += [os.path.join(os.environ[var], "lib64"), os.path.join(os.environ[var], "lib")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        dirs += [os.path.join(home, "lib64"), os.path.join(home, "lib")]
    dirs += sorted(glob.glob("/usr/local/cuda*/lib64"), reverse=True)
    try:  # the CUDA runtime wheel that pip-installed torch depends on
        import nvidia.cuda_runtime as rt  # type: ignore

        dirs += [os.path.join(p, "lib") for p in rt.__path__]
    except ImportError:
        pass
    return dirs


def _preload(soname: str) -> bool:
    """Load ``soname`` globally from a known CUDA directory so the extension's dependency resolves."""
    for d in _cudart_dirs():
        path = os.path.join(d, soname)
        if os.path.exists(path):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                return True
            except OSError:
                continue
    return False


def load_extension() -> ModuleType:
    """Import ``fastalign._cuda``.

    Raises:
        ImportError: with ``NOT_BUILT`` when the module does not exist, or with
            the loader's message when it exists but cannot load (for example
            the CUDA runtime library it links is not on the library path and
            not found in the usual CUDA directories either).
    """
    global _EXT
    if _EXT is not None:
        return _EXT
    try:
        _cuda = importlib.import_module(_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name in (_MODULE, None):
            raise ImportError(NOT_BUILT) from None
        raise ImportError(f"extension fastalign._cuda does not load: {exc}") from None
    except ImportError as exc:
        # Built, but a shared library is missing: typically libcudart.so.N when
        # the toolkit's lib directory is not on the loader path.
        match = re.search(r"(libcudart\.so(?:\.\d+)*)", str(exc))
        if not (match and _preload(match.group(1))):
            raise ImportError(f"extension fastalign._cuda is built but does not load: {exc}") from None
        try:
            _cuda = importlib.import_module(_MODULE)
        except ImportError as exc2:
            raise ImportError(f"extension fastalign._cuda is built but does not load: {exc2}") from None
    _EXT = _cuda
    return _cuda


def _ptr(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def segments(flat_rows: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group slot entries by row for the deterministic reduction.

    Args:
        flat_rows: (3B,) int64 row of every slot entry ``e = 3 t + slot``.

    Returns:
        ``(perm, rows, offsets)``: ``perm`` (3B,) int64 entries stably sorted by
        row; ``rows`` (S,) the distinct rows in increasing order; ``offsets``
        (S + 1,) int64 so that the entries of ``rows[s]`` are
        ``perm[offsets[s]:offsets[s + 1]]``. Only deterministic torch ops are
        used (a stable sort fixes the order within a row).
    """
    sorted_rows, perm = torch.sort(flat_rows, stable=True)
    change = torch.ones_like(sorted_rows, dtype=torch.bool)
    change[1:] = sorted_rows[1:] != sorted_rows[:-1]
    starts = change.nonzero().squeeze(1)
    rows = sorted_rows[starts]
    offsets = torch.cat([starts, starts.new_full((1,), flat_rows.numel())])
    return perm, rows, offsets


class CudaKernels:
    """``TripletKernels`` on CUDA tensors via the ``fastalign._cuda`` extension.

    Args:
        deterministic: always use the sorted segmented reduction for gradients
            (bitwise reproducible). It is also used whenever
            ``torch.are_deterministic_algorithms_enabled()`` and for float64.
        sync: synchronise the stream after every launch so an asynchronous
            kernel fault is raised at its call (debugging; slower). ``None``
            reads ``$FASTALIGN_CUDA_SYNC == "1"``.

    Raises:
        ImportError: the extension is not built or does not load.
        RuntimeError: no CUDA device is available.
    """

    name = "cuda"

    def __init__(self, deterministic: bool = False, sync: Optional[bool] = None):
        self._ext = load_extension()
        if not torch.cuda.is_available():
            raise RuntimeError(NO_DEVICE)
        count = self._ext.device_count()
        if count <= 0:
            why = self._ext.error_string(-count) if count < 0 else "cudaGetDeviceCount found none"
            raise RuntimeError(
                f"no CUDA device visible to fastalign._cuda: {why} "
                f"(built for CUDA runtime {self._ext.runtime_version()})"
            )
        self.deterministic = bool(deterministic)
        self.sync = os.environ.get(SYNC_ENV) == "1" if sync is None else bool(sync)

    # ----------------------------------------------------------------- helpers

    def _use_deterministic(self, emb: torch.Tensor) -> bool:
        return self.deterministic or torch.are_deterministic_algorithms_enabled() or emb.dtype == torch.float64

    @staticmethod
    def _common(emb: torch.Tensor, triplets: torch.Tensor) -> Dict[str, int]:
        return dict(
            emb=emb.data_ptr(),
            dtype=_DTYPE_CODES[emb.dtype],
            n=emb.shape[0],
            d=emb.shape[1],
            row_stride=emb.stride(0),
            triplets=triplets.data_ptr(),
            itype=_INDEX_CODES[triplets.dtype],
            b=triplets.shape[0],
            device=emb.device.index if emb.device.index is not None else torch.cuda.current_device(),
            stream=torch.cuda.current_stream(emb.device).cuda_stream,
        )

    def _launch(self, emb, triplets, *, task, cosine, target=None, choice=None, rowscale=None, coef_in=None,
                mode=MODE_HARD, temperature=1.0, grad_scale=1.0, sims=None, loss=None, dsim=None, grad=None,
                amat=None) -> None:
        args = self._common(emb, triplets)
        with torch.cuda.device(emb.device):
            self._ext.triplet(
                **args, target=_ptr(target), choice=_ptr(choice), rowscale=_ptr(rowscale), coef_in=_ptr(coef_in),
                task=task, mode=int(mode), cosine=bool(cosine), temperature=float(temperature),
                grad_scale=float(grad_scale), sims=_ptr(sims), loss=_ptr(loss), dsim=_ptr(dsim), grad=_ptr(grad),
                amat=_ptr(amat),
            )
            if self.sync:
                self._ext.synchronize(args["device"], args["stream"])

    def _amat(self, b: int, cosine: bool, acc: torch.dtype, device: torch.device) -> torch.Tensor:
        """The per-triplet table of deterministic mode (layouts in csrc/cuda/launchers.h)."""
        cols = self._ext.AMAT_COLS_COSINE if cosine else self._ext.AMAT_COLS_DOT
        return torch.empty(b, cols, dtype=acc, device=device)

    def _reduce_segments(self, emb: torch.Tensor, triplets: torch.Tensor, amat: torch.Tensor,
                         cosine: bool) -> torch.Tensor:
        """Deterministic (N, D) gradient from the per-triplet table ``amat``."""
        grad = torch.zeros(emb.shape, dtype=acc_dtype(emb.dtype), device=emb.device)
        if triplets.shape[0] == 0:
            return grad
        perm, rows, offsets = segments(triplets.reshape(-1).long())
        args = self._common(emb, triplets)
        with torch.cuda.device(emb.device):
            self._ext.segment_reduce(
                **args, cosine=bool(cosine), amat=amat.data_ptr(), perm=perm.data_ptr(), rows=rows.data_ptr(),
                offsets=offsets.data_ptr(), nseg=rows.numel(), grad=grad.data_ptr(),
            )
            if self.sync:
                self._ext.synchronize(args["device"], args["stream"])
        return grad

    @staticmethod
    def _aux(t: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
        # Kernels index these as contiguous arrays of `dtype`; both are no-ops
        # for what fastalign.ops already passes.
        return None if t is None else t.to(dtype).contiguous()

    # ---------------------------------------------------------------- contract

    def similarities(self, emb: torch.Tensor, triplets: torch.Tensor, cosine: bool) -> torch.Tensor:
        sims = torch.empty(triplets.shape[0], 3, dtype=acc_dtype(emb.dtype), device=emb.device)
        if triplets.shape[0]:
            self._launch(emb, triplets, task=self._ext.TASK_SIMS, cosine=cosine, sims=sims)
        return sims

    def fused(self, emb, triplets, target, choice, rowscale, mode, cosine, temperature, grad_scale, want_grad):
        acc = acc_dtype(emb.dtype)
        b = triplets.shape[0]
        loss = torch.empty(b, dtype=acc, device=emb.device)
        dsim = torch.empty(b, 3, dtype=acc, device=emb.device)
        deterministic = want_grad and self._use_deterministic(emb)
        grad = None
        amat = None
        if want_grad and not deterministic:
            grad = torch.zeros(emb.shape, dtype=torch.float32, device=emb.device)
        if deterministic:
            amat = self._amat(b, cosine, acc, emb.device)
        if b:
            self._launch(
                emb, triplets, task=self._ext.TASK_LOSS, cosine=cosine, target=self._aux(target, acc),
                choice=self._aux(choice, torch.int64), rowscale=self._aux(rowscale, acc), mode=mode,
                temperature=temperature, grad_scale=grad_scale, loss=loss, dsim=dsim, grad=grad, amat=amat,
            )
        if deterministic:
            grad = self._reduce_segments(emb, triplets, amat, cosine)
        elif not want_grad:
            grad = emb.new_empty(0, dtype=acc)
        return loss, dsim, grad

    def scatter(self, emb, triplets, coef, cosine):
        acc = acc_dtype(emb.dtype)
        b = triplets.shape[0]
        coef = self._aux(coef, acc)
        if self._use_deterministic(emb):
            amat = self._amat(b, cosine, acc, emb.device)
            if b:
                self._launch(emb, triplets, task=self._ext.TASK_SCATTER, cosine=cosine, coef_in=coef, amat=amat)
            return self._reduce_segments(emb, triplets, amat, cosine)
        grad = torch.zeros(emb.shape, dtype=torch.float32, device=emb.device)
        if b:
            self._launch(emb, triplets, task=self._ext.TASK_SCATTER, cosine=cosine, coef_in=coef, grad=grad)
        return grad
