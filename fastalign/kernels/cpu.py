"""The compiled C++/OpenMP backend (``backend="cpu"``).

The kernels live in ``csrc/cpu`` and are built into ``fastalign._cpu`` by
``setup.py`` (pybind11, no torch headers). This wrapper allocates the outputs
with torch and hands the kernels raw pointers, sizes, the row stride of
``emb`` and dtype codes; the kernels run with the GIL released.

Threads: ``CpuKernels(num_threads=k)`` fixes the count; by default each call
uses ``torch.get_num_threads()`` (so ``OMP_NUM_THREADS`` and
``torch.set_num_threads`` apply). Every path's gradient is bitwise
reproducible for the same inputs and thread count (each sum has an order
fixed by the inputs and the count).

Strategies for ``fused`` (``CpuKernels(strategy=...)``, default
``$FASTALIGN_CPU_STRATEGY`` or "auto"):

- ``"rows"`` (the cached path): per triplet, read the three rows, compute the
  dots, the loss and the row gradients in one pass (memory traffic O(B * D)).
  Triplets are split into one contiguous part per thread, each part
  accumulates into its own fp32 (fp64 for fp64 input) N x D buffer, and the
  buffers are summed in a fixed order. Extra memory ``(threads - 1) * N * D``
  accumulation values (kept between calls, ``keep_workspace``) plus
  ``threads * N`` bytes. Fast while those buffers stay in cache.
- ``"owned"`` (the large-N path, ``csrc/cpu/triplet_kernels.h``): each thread
  owns a range of gradient rows and alone writes them, straight into the
  output; a triplet goes to the owner of most of its rows (a counting sort over
  B), and the row gradient of a slot owned by another thread travels as a
  message through a small ring (~10 % of N * D). No per-thread N x D buffers,
  no reduction pass. With one thread it is "rows" (one part, no buffers).
- ``"gram"``: for small N, ``G = E E^T`` and ``grad = C E`` are two GEMMs
  (torch.mm, torch's intra-op threads) and each triplet touches only O(1)
  entries of G and of the (N, N) coefficient matrix C that the kernel builds.
  Work O(N^2 D) at GEMM speed instead of O(B D) at memory speed; extra memory
  ``(threads + 2) * N^2`` values (G, the per-thread parts of C, C itself).
  If a row of ``emb`` is not finite the kernel falls back to "rows", which
  keeps NaN/Inf to the rows it touches.
- ``"auto"`` (default) is the cost model (``path``): "gram" when
  ``N <= GRAM_MAX_N`` and ``gram_cost < rows_cost`` (``uses_gram``: the two
  GEMMs, 4 N^2 D flops, plus O(1) scalar work per triplet against streaming 3
  rows in and 3 gradient rows in and out per triplet); otherwise "owned" when
  ``uses_owned`` says the row path's buffers cost more than the owned path's
  messages, else "rows". The choice depends only on (N, D, B, threads),
  never on ``want_grad``, so a forward-only call returns bitwise the loss of a
  forward+backward one.

The scatter (the backward of ``reduction="none"``) takes "owned" where
``fused`` would, else "rows". ``scale_`` applies a reduced loss's scalar
upstream gradient to the fused gradient in place (``fastalign.ops.library``).
"""

from __future__ import annotations

import importlib
import os
import threading
from contextlib import contextmanager
from typing import Iterator, Optional, Tuple

import torch

from .contract import acc_dtype

STRATEGIES = ("auto", "rows", "owned", "gram")
STRATEGY_ENV = "FASTALIGN_CPU_STRATEGY"  # default strategy of CpuKernels() (tests force a path with it)
# Cost model of "auto", in core-seconds, least-squares fitted on the 2-core
# dev machine (Xeon, AVX-512; benchmarks/bench_cpu_paths.py --paths gram,rows,
# 2026-12-01, quiet: B = 200,000, D in {128, 512}, N in 250..2,000, 1 and 2
# threads; it picks the faster path in 12 of 13 measured cases, the miss a
# 0.91 near-tie):
# - rows: ROW_S_PER_TRIPLET_D * D per triplet (3 rows read, 3 gradient rows
#   read and written; rows in cache at these N);
# - gram: 4 N^2 D flops at GEMM_FLOPS, GRAM_S_PER_ENTRY per entry of the
#   (N, N) Gram and coefficient matrices (zeroed, scattered into, reduced,
#   symmetrised: they leave the caches as N grows), and GRAM_S_PER_TRIPLET per
#   triplet (three scattered reads of G, three scattered adds to C, the softmax).
# Only the ratio matters, and both sides run on all threads.
ROW_S_PER_TRIPLET_D = 8.7e-10
GEMM_FLOPS = 2.4e11
GRAM_S_PER_ENTRY = 1.65e-8
GRAM_S_PER_TRIPLET = 6.7e-8
GRAM_MAX_N = 4096  # bounds the (threads + 2) N^2 Gram and coefficient buffers
# Owned vs rows (both memory bound, D cancels): the row path's extra work is
# the (threads - 1) N x D buffers (zeroed on first touch, reduced), the owned
# path's is one message (a D-row written and read in the ring) per deferred
# slot, owned_deferred_slots(P) per triplet. Measured on the 2-core machine,
# quiet (benchmarks/bench_cpu_paths.py --paths rows,owned, D = 512,
# B = 200,000, 2 threads, 2026-12-01): owned / rows = 1.23 at N = 5,000, 1.14
# at 10,000, 0.99 at 20,000 and 30,000, 0.94 at 60,000 and 200,000. The
# constants put the crossover at N = 0.1 B for 2 threads.
OWNED_BUFFER_S = 1.0e-9
OWNED_MESSAGE_S = 1.3e-10


def owned_deferred_slots(parts: int) -> float:
    """Expected deferred slots per random triplet of the owned path with ``parts`` threads.

    Owners o0, o1, o2 i.i.d. uniform over P ranges; the triplet goes to o1 when
    o1 == o2 (1 deferred slot if o0 differs), else to o0 (o1 and o2 each
    deferred unless equal to o0): (P - 1)(2P - 1) / P^2, 3/4 for P = 2.
    """
    p = float(parts)
    return (p - 1.0) * (2.0 * p - 1.0) / (p * p)

_DTYPE_CODES = {torch.float64: 0, torch.float32: 1, torch.float16: 2, torch.bfloat16: 3}
_INDEX_CODES = {torch.int32: 0, torch.int64: 1}


def load_extension():
    """Import ``fastalign._cpu`` or raise ImportError saying how to build it."""
    try:
        # By name: the compiled extension is optional, and kernels must not import the package root
        # (which imports the layers above them).
        _cpu = importlib.import_module("fastalign._cpu")
    except ImportError as exc:
        raise ImportError(
            "the compiled extension fastalign._cpu is not built or failed to load "
            f"({exc}); reinstall with a C++ compiler and OpenMP: "
            "pip install -e . --no-build-isolation"
        ) from exc
    return _cpu


def count_inversions(y: torch.Tensor, num_threads: int = 1) -> int:
    """Pairs ``i < j`` with ``y[i] > y[j]`` of a 1-D int64 CPU tensor, exact (``csrc/cpu/inversions.h``).

    Raises ImportError when the extension is missing or was built before this
    kernel existed (``fastalign.ops.count_inversions`` then takes the NumPy path).
    """
    ext = load_extension()
    if not hasattr(ext, "count_inversions"):
        raise ImportError("fastalign._cpu was built before count_inversions existed; rebuild it: "
                          "pip install -e . --no-build-isolation")
    if y.device.type != "cpu" or y.dtype != torch.int64 or y.dim() != 1:
        raise ValueError(f"count_inversions needs a 1-D int64 CPU tensor, got {y.dtype} of shape "
                         f"{tuple(y.shape)} on {y.device}")
    y = y.contiguous()
    return int(ext.count_inversions(y=y.data_ptr(), n=y.numel(), num_threads=int(num_threads)))


def _ptr(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


@contextmanager
def _no_buffers() -> Iterator[int]:
    yield 0


class CpuKernels:
    """``TripletKernels`` on the compiled C++/OpenMP extension.

    Args:
        num_threads: OpenMP threads per call; ``None`` uses
            ``torch.get_num_threads()`` at call time.
        strategy: "auto", "rows", "owned" or "gram" for ``fused`` (module
            docstring); ``None`` reads ``$FASTALIGN_CPU_STRATEGY`` (default "auto").
        keep_workspace: keep the call's workspace between calls: the per-thread
            gradient buffers of the row path ((threads - 1) * N * D
            accumulation values) or the owned path's message ring (~10 % of
            N * D). A fresh buffer costs a page fault per 4 KiB on every call
            (~0.15 s per 400 MB here); a training loop reuses the same one. Its
            contents never leak into results (rows are zeroed on first touch,
            messages written before they are read). Free it with
            ``release_workspace()``.
    """

    name = "cpu"

    def __init__(self, num_threads: Optional[int] = None, strategy: Optional[str] = None, keep_workspace: bool = True):
        if strategy is None:
            strategy = os.environ.get(STRATEGY_ENV, "") or "auto"
        if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
            raise ValueError(f"num_threads must be a positive int or None, got {num_threads!r}")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        self._ext = load_extension()
        self.num_threads = num_threads
        self.strategy = strategy
        self.keep_workspace = keep_workspace
        self._workspace: Optional[torch.Tensor] = None
        self._workspace_lock = threading.Lock()

    def release_workspace(self) -> None:
        """Drop the cached gradient buffers (the next gradient call allocates again)."""
        with self._workspace_lock:
            self._workspace = None

    @contextmanager
    def _buffers(self, n: int, d: int, b: int, acc: torch.dtype, owned: bool = False) -> Iterator[int]:
        """Pointer to the call's workspace of ``acc`` values, or 0 (the kernel allocates).

        Row path: (parts - 1) * N * D values; owned path: its message ring
        (``owned_workspace``, ~10 % of N * D). The cache is used by one call
        at a time; a concurrent call (another Python thread, the GIL is
        released) gets 0 and allocates its own.
        """
        if owned:
            count = self._ext.owned_workspace(n, d, b, self.threads())
        else:
            count = (self._ext.grad_parts(self.threads(), b, True) - 1) * n * d
        if not self.keep_workspace or count == 0 or not self._workspace_lock.acquire(blocking=False):
            yield 0
            return
        try:
            ws = self._workspace
            if ws is None or ws.dtype != acc or ws.numel() < count:
                self._workspace = None  # free the old one before allocating the new one
                ws = self._workspace = torch.empty(count, dtype=acc)
            yield ws.data_ptr()
        finally:
            self._workspace_lock.release()

    def threads(self) -> int:
        """Threads the next call will use."""
        return self.num_threads if self.num_threads is not None else max(1, torch.get_num_threads())

    def path(self, n: int, d: int, b: int) -> str:
        """The path ``fused`` takes: "gram", "rows" (per-thread buffers) or "owned" (large N)."""
        if self.uses_gram(n, d, b):
            return "gram"
        if self.strategy in ("rows", "owned"):
            return self.strategy
        return "owned" if self.uses_owned(n, d, b) else "rows"

    def uses_owned(self, n: int, d: int, b: int) -> bool:
        """Whether "auto" prefers the owned-rows path to the row path (module docstring)."""
        if self.strategy != "auto":
            return self.strategy == "owned"
        t = self._ext.grad_parts(self.threads(), b, True)
        return t > 1 and (t - 1) * n * OWNED_BUFFER_S > b * owned_deferred_slots(t) * OWNED_MESSAGE_S

    def uses_gram(self, n: int, d: int, b: int) -> bool:
        """Whether ``fused`` takes the Gram path for N rows of width D and B triplets."""
        if self.strategy != "auto":
            return self.strategy == "gram" and n > 0
        if not 0 < n <= GRAM_MAX_N:
            return False
        gram = 4.0 * n * n * d / GEMM_FLOPS + n * n * GRAM_S_PER_ENTRY + b * GRAM_S_PER_TRIPLET
        rows = b * d * ROW_S_PER_TRIPLET_D
        return gram < rows

    # The ops layer guarantees the contract's preconditions; these checks are
    # the cheap metadata ones that keep a direct caller from passing a pointer
    # the kernels would misread.
    def _rows(self, emb: torch.Tensor, triplets: torch.Tensor):
        if emb.device.type != "cpu" or triplets.device.type != "cpu":
            raise ValueError("the cpu backend needs CPU tensors")
        if emb.dtype not in _DTYPE_CODES:
            raise TypeError(f"emb must be float64/float32/float16/bfloat16, got {emb.dtype}")
        if triplets.dtype not in _INDEX_CODES:
            raise TypeError(f"triplets must be int32 or int64, got {triplets.dtype}")
        if emb.dim() != 2 or emb.shape[1] < 1:
            raise ValueError(f"emb must be (N, D) with D >= 1, got {tuple(emb.shape)}")
        if emb.shape[1] > 1 and emb.stride(1) != 1:
            emb = emb.contiguous()
        triplets = triplets.contiguous()
        n, d = emb.shape
        # With N <= 1 the row stride is never used; torch may report anything.
        ld = emb.stride(0) if n > 1 else d
        return dict(
            emb=emb.data_ptr(), dtype=_DTYPE_CODES[emb.dtype], n=n, d=d, ld=ld,
            triplets=triplets.data_ptr(), itype=_INDEX_CODES[triplets.dtype], b=triplets.shape[0],
        ), (emb, triplets)

    def similarities(self, emb: torch.Tensor, triplets: torch.Tensor, cosine: bool) -> torch.Tensor:
        rows, keep = self._rows(emb, triplets)
        out = torch.empty(triplets.shape[0], 3, dtype=acc_dtype(emb.dtype))
        self._ext.similarities(**rows, cosine=bool(cosine), out=out.data_ptr(), num_threads=self.threads())
        del keep
        return out

    def fused(
        self,
        emb: torch.Tensor,
        triplets: torch.Tensor,
        target: Optional[torch.Tensor],
        choice: Optional[torch.Tensor],
        rowscale: Optional[torch.Tensor],
        mode: int,
        cosine: bool,
        temperature: float,
        grad_scale: float,
        want_grad: bool,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows, keep = self._rows(emb, triplets)
        acc = acc_dtype(emb.dtype)
        b = triplets.shape[0]
        n, d = emb.shape
        if mode != 0 and target is None:
            raise ValueError("KL/JSD need a target (B, 3)")
        target = None if target is None else target.to(acc).contiguous()
        choice = None if choice is None else choice.to(torch.int64).contiguous()
        rowscale = None if rowscale is None else rowscale.to(acc).contiguous()
        loss = torch.empty(b, dtype=acc)
        dsim = torch.empty(b, 3, dtype=acc)
        path = self.path(n, d, b)
        if path == "gram":
            grad = self._fused_gram(emb, triplets, target, choice, rowscale, mode, cosine, temperature, grad_scale,
                                    want_grad, loss, dsim)
            if grad is not None:
                del keep
                return loss, dsim, grad
        # Rows no triplet touches are zeroed by the kernel, so empty() suffices.
        grad = torch.empty(n, d, dtype=acc) if want_grad else torch.empty(0, dtype=acc)
        owned = path == "owned"
        with self._buffers(n, d, b, acc, owned) if want_grad else _no_buffers() as workspace:
            self._ext.fused(
                **rows, target=_ptr(target), choice=_ptr(choice), rowscale=_ptr(rowscale), mode=int(mode),
                cosine=bool(cosine), temperature=float(temperature), grad_scale=float(grad_scale),
                loss=loss.data_ptr(), dsim=dsim.data_ptr(), grad=grad.data_ptr() if want_grad else 0,
                num_threads=self.threads(), workspace=workspace, owned=owned,
            )
        del keep
        return loss, dsim, grad

    def _fused_gram(self, emb, triplets, target, choice, rowscale, mode, cosine, temperature, grad_scale,
                    want_grad, loss, dsim) -> Optional[torch.Tensor]:
        """The Gram path; None when emb has a non-finite row (then the row path runs)."""
        acc = acc_dtype(emb.dtype)
        n = emb.shape[0]
        e = emb.to(acc)
        gram = torch.mm(e, e.t())
        coef = torch.empty(n, n, dtype=acc) if want_grad else None
        triplets = triplets.contiguous()
        ok = self._ext.gram_fused(
            gram=gram.data_ptr(), f64=acc == torch.float64, n=n, triplets=triplets.data_ptr(),
            itype=_INDEX_CODES[triplets.dtype], b=triplets.shape[0], target=_ptr(target), choice=_ptr(choice),
            rowscale=_ptr(rowscale), mode=int(mode), cosine=bool(cosine), temperature=float(temperature),
            grad_scale=float(grad_scale), loss=loss.data_ptr(), dsim=dsim.data_ptr(), coef_out=_ptr(coef),
            num_threads=self.threads(),
        )
        if not ok:
            return None
        if not want_grad:
            return torch.empty(0, dtype=acc)
        # The kernel accumulates the upper triangle U; the coefficients are U + U^T.
        coef = coef + coef.t()
        return torch.mm(coef, e)

    def scatter(self, emb: torch.Tensor, triplets: torch.Tensor, coef: torch.Tensor, cosine: bool) -> torch.Tensor:
        rows, keep = self._rows(emb, triplets)
        acc = acc_dtype(emb.dtype)
        coef = coef.to(acc).contiguous()
        n, d = emb.shape
        b = triplets.shape[0]
        grad = torch.empty(n, d, dtype=acc)
        # The scatter has no Gram form; it takes the owned path where fused would.
        owned = self.strategy == "owned" or (self.strategy == "auto" and self.uses_owned(n, d, b))
        with self._buffers(n, d, b, acc, owned) as workspace:
            self._ext.scatter(**rows, coef=coef.data_ptr(), cosine=bool(cosine), grad=grad.data_ptr(),
                              num_threads=self.threads(), workspace=workspace, owned=owned)
        del keep
        return grad

    def scale_(self, grad: torch.Tensor, scale: torch.Tensor) -> bool:
        """``grad *= scale`` in place, ``scale`` a 0-d tensor whose value the kernel reads.

        Returns whether the values changed: a scale of exactly 1 (a plain
        ``loss.backward()``) costs no pass over ``grad``.
        """
        if grad.dtype not in (torch.float32, torch.float64) or not grad.is_contiguous():
            grad.mul_(scale.to(grad.dtype))
            return True
        s = scale.detach().to(device="cpu", dtype=grad.dtype).contiguous()
        return bool(self._ext.scale_(x=grad.data_ptr(), f64=grad.dtype == torch.float64, n=grad.numel(),
                                     scale=s.data_ptr(), num_threads=self.threads()))
