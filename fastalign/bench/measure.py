"""One measurement: warm up, record peak memory, time, and turn failures into rows.

Every group (triplet ops, affine transform) builds callables and hands them to
``measure``, so all rows carry the same fields and a failing implementation
(out of memory, an unavailable kernel, a bug) becomes a row with a status and
a note instead of ending the run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Tuple

import torch

from .config import BenchOptions
from .memory import PeakMemory, free_memory, release
from .timing import nvtx_range, time_call, wall_ms, wall_ms_and_value

# A measurement callable returns (value, grad); either may be None. ``value``
# is the loss / similarities / output, ``grad`` the gradient, both used only
# for the correctness check against the reference implementation.
Call = Callable[[], Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]]


class Skip(Exception):
    """Raised while building a measurement that cannot or should not run; the message is the note."""


@dataclass
class Context:
    """State shared by the measurements of one run."""

    options: BenchOptions
    device: str
    copy_gbps: Optional[float] = None
    free_at_start: Optional[int] = None
    started: float = field(default_factory=time.perf_counter)
    log: Callable[[str], None] = print

    def budget_left(self) -> Optional[float]:
        if self.options.time_budget_s is None:
            return None
        return self.options.time_budget_s - (time.perf_counter() - self.started)

    def check_budget(self) -> None:
        left = self.budget_left()
        if left is not None and left <= 0:
            raise Skip(f"time budget of {self.options.time_budget_s:.0f} s used up")

    def eager_budget(self) -> int:
        """Bytes the eager / compile baselines may use for their gather workspace:
        the option, else a quarter of the free device memory (at most 24 GiB), or
        256 MiB on CPU."""
        if self.options.eager_budget_bytes is not None:
            return self.options.eager_budget_bytes
        if self.free_at_start:
            return min(self.free_at_start // 4, 24 << 30)
        return 256 << 20

    def check_memory(self, need_bytes: int, what: str) -> None:
        """Skip when ``need_bytes`` exceeds the allowed fraction of free device memory."""
        free = free_memory(self.device)
        if free is None:
            return
        allowed = free * self.options.memory_fraction
        if need_bytes > allowed:
            raise Skip(f"{what} needs ~{need_bytes / 1e9:.1f} GB, {free / 1e9:.1f} GB free")


def skip_note(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    return (str(exc) or type(exc).__name__).splitlines()[0]


# Elements per block of the float64 error computation (bounds its extra memory).
_ERR_BLOCK = 1 << 24


def rel_err(value: Optional[torch.Tensor], ref: Optional[torch.Tensor]) -> Optional[float]:
    """``||value - ref|| / ||ref||`` accumulated in float64, block by block
    (an (N, D) gradient at N=1.28M would need 12 GB as one float64 copy).

    ``None`` when either is missing, ``inf`` when the shapes differ.
    """
    if value is None or ref is None:
        return None
    if value.shape != ref.shape:
        return float("inf")
    a, r = value.detach().reshape(-1), ref.detach().reshape(-1)
    num = torch.zeros((), dtype=torch.float64, device=a.device)
    den = torch.zeros((), dtype=torch.float64, device=a.device)
    for s in range(0, a.numel(), _ERR_BLOCK):
        da, dr = a[s:s + _ERR_BLOCK].double(), r[s:s + _ERR_BLOCK].double()
        num += (da - dr).square().sum()
        den += dr.square().sum()
    num_f, den_f = float(num.sqrt()), float(den.sqrt())
    return num_f if den_f == 0.0 else num_f / den_f


def measure(ctx: Context, tag: str, build: Callable[[], Call]) -> dict:
    """Build and time one implementation/phase.

    Args:
        ctx: the run's context (options, device, budget).
        tag: NVTX / log name of the measurement.
        build: returns the callable to time; may raise ``Skip``.

    Returns a dict with ``status`` ("ok", "skipped", "oom", "error"), ``note``
    and, when ok, the timing stats, ``peak_mem_bytes``, ``first_call_ms``
    (compilation and autotuning included) and the warm-up's ``value`` and
    ``grad`` (for the correctness check; the caller drops them).
    """
    opts, device = ctx.options, ctx.device
    row: dict = {"status": "ok", "note": ""}
    fn = None
    try:
        ctx.check_budget()
        with nvtx_range(f"{tag}/build", device):
            fn = build()
        with nvtx_range(f"{tag}/warmup", device):
            # The first call includes compilation / autotuning; its output is checked.
            row["first_call_ms"], (value, grad) = wall_ms_and_value(fn, device)
        with nvtx_range(f"{tag}/peak", device), PeakMemory(device) as peak:
            estimate = wall_ms(fn, device)
        row["peak_mem_bytes"] = peak.bytes
        with nvtx_range(f"{tag}/timed", device):
            stats = time_call(fn, device, estimate, opts.warmup_ms, opts.rep_ms, opts.slow_ms, opts.slow_reps)
        row.update(stats.as_dict())
        row["value"], row["grad"] = value, grad
    except Skip as exc:
        row = {"status": "skipped", "note": str(exc)}
    except torch.cuda.OutOfMemoryError as exc:  # a subclass of RuntimeError: catch it first
        row = {"status": "oom", "note": "out of memory: " + str(exc).splitlines()[0][:200]}
    except Exception as exc:  # noqa: BLE001 - one broken implementation must not end the run
        row = {"status": "error", "note": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
    finally:
        fn = None  # noqa: F841 - drop graphs and buffers held by the closure
        release(device)
    return row
