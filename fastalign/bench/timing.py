"""Timers, peak memory, NVTX ranges and the copy-bandwidth ceiling.

On CUDA every measurement is ``triton.testing.do_bench`` with quantiles
(median, p20, p80), which times with CUDA events and flushes the L2 between
calls. A call slower than ``slow_ms`` would cost ``do_bench`` at least seven
calls (five to estimate, one warm-up, one timed), so it is timed over a few
event-bracketed calls instead and marked ``timer="events"``. On CPU a
``perf_counter`` loop reports the same statistics.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

QUANTILES = (0.5, 0.2, 0.8)


@dataclass(frozen=True)
class Stats:
    """Timing statistics of one measurement, in milliseconds."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: int
    timer: str

    def as_dict(self) -> dict:
        return {"ms": self.median_ms, "ms_p20": self.p20_ms, "ms_p80": self.p80_ms,
                "reps": self.reps, "timer": self.timer}


def stats_from_samples(samples_ms: Sequence[float], timer: str) -> Stats:
    """Median, 20th and 80th percentile (linear interpolation, as numpy) of samples."""
    if len(samples_ms) == 0:
        raise ValueError("need at least one timing sample")
    a = np.asarray(samples_ms, dtype=np.float64)
    med, p20, p80 = np.quantile(a, QUANTILES)
    return Stats(float(med), float(p20), float(p80), len(a), timer)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def wall_ms(fn: Callable[[], object], device: str) -> float:
    """One call's wall time in ms, with the device synchronised around it."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return (time.perf_counter() - t0) * 1e3


def _event_samples(fn: Callable[[], object], reps: int) -> List[float]:
    samples = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end))
    return samples


def time_call(
    fn: Callable[[], object],
    device: str,
    estimate_ms: float,
    warmup_ms: float,
    rep_ms: float,
    slow_ms: float,
    slow_reps: int,
) -> Stats:
    """Time ``fn`` (already warmed up; ``estimate_ms`` is one call's wall time).

    Args:
        fn: the call to time; it must be safe to repeat.
        device: "cuda" or "cpu".
        estimate_ms: a measured wall time of one call, used to size the run.
        warmup_ms, rep_ms: ``do_bench`` warm-up / repetition budgets in ms.
        slow_ms: above this estimate, time ``slow_reps`` event-bracketed calls.
        slow_reps: repetitions of a slow call.
    """
    if device == "cuda":
        if estimate_ms > slow_ms:
            return stats_from_samples(_event_samples(fn, slow_reps), "events")
        try:
            import triton.testing
        except ImportError:  # torch without triton: the same statistics from plain events
            for _ in range(max(1, int(warmup_ms / max(estimate_ms, 1e-3)))):
                fn()
            reps = int(min(1000, max(3, rep_ms / max(estimate_ms, 1e-3))))
            return stats_from_samples(_event_samples(fn, reps), "events")
        med, p20, p80 = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=list(QUANTILES))
        reps = max(1, int(rep_ms / max(estimate_ms, 1e-3)))
        return Stats(float(med), float(p20), float(p80), reps, "do_bench")
    # CPU: a few untimed warm-up calls within the warm-up budget, then timed calls
    # within the repetition budget (at least 3 unless a single call is slow).
    for _ in range(min(3, max(0, int(warmup_ms / max(estimate_ms, 1e-3))))):
        fn()
    reps = int(min(200, max(1 if estimate_ms > slow_ms else 3, rep_ms / max(estimate_ms, 1e-3))))
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return stats_from_samples(samples, "perf_counter")


def nvtx_range(name: str, device: str):
    """An NVTX range on CUDA (shown by Nsight Systems), a no-op elsewhere."""
    if device != "cuda":
        return contextlib.nullcontext()
    return torch.cuda.nvtx.range(name)


class PeakMemory:
    """Peak device memory of the calls inside the block, above what was allocated at entry.

    ``bytes`` is ``None`` on CPU, where PyTorch keeps no allocator statistics
    (process RSS would mix in the interpreter and earlier cases).
    """

    def __init__(self, device: str):
        self.device = device
        self.bytes: Optional[int] = None
        self._base = 0

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc):
        if self.device == "cuda" and exc[0] is None:
            torch.cuda.synchronize()
            self.bytes = int(torch.cuda.max_memory_allocated() - self._base)
        return False


def free_memory(device: str) -> Optional[int]:
    """Free device memory in bytes (``None`` on CPU: not bounded here)."""
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return int(free)
    return None


def copy_bandwidth(device: str, nbytes: int, warmup_ms: float, rep_ms: float) -> dict:
    """Measured device-to-device copy bandwidth, counting bytes read plus written.

    Args:
        device: "cuda" or "cpu".
        nbytes: size of the copied buffer (read once, written once).
        warmup_ms, rep_ms: timer budgets.

    Returns ``{"bytes", "ms", "GBps"}`` with GB = 1e9 bytes.
    """
    n = max(1, nbytes // 4)
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    fn = lambda: dst.copy_(src)  # noqa: E731
    fn()
    est = wall_ms(fn, device)
    stats = time_call(fn, device, est, warmup_ms, rep_ms, slow_ms=1e9, slow_reps=1)
    moved = 2 * n * 4
    return {"bytes": moved, "ms": stats.median_ms, "GBps": moved / (stats.median_ms * 1e-3) / 1e9}


def matmul_tflops(device: str, dtype: torch.dtype, size: int, warmup_ms: float, rep_ms: float) -> dict:
    """Measured rate of a square ``size``-cubed GEMM on random data (the matrix ceiling)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    fn = lambda: a @ b  # noqa: E731
    fn()
    est = wall_ms(fn, device)
    stats = time_call(fn, device, est, warmup_ms, rep_ms, slow_ms=1e9, slow_reps=1)
    flops = 2.0 * size ** 3
    return {"size": size, "dtype": str(dtype).replace("torch.", ""), "ms": stats.median_ms,
            "TFLOPs": flops / (stats.median_ms * 1e-3) / 1e12}
