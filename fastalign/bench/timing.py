"""The one timer of the harness: warm-up, repeats, median, spread.

On CUDA a measurement is ``triton.testing.do_bench`` with quantiles (median,
p20, p80, min), which times with CUDA events and flushes the L2 between calls.
A call slower than ``slow_ms`` would cost ``do_bench`` at least seven calls
(five to estimate, one warm-up, one timed), so it is timed over a few
event-bracketed calls instead and marked ``timer="events"``. On CPU a
``perf_counter`` loop reports the same statistics.

Every script in ``benchmarks/`` times through :func:`benchmark` (one call) or
:func:`time_interleaved` (several contenders under the same machine load);
stage wall times use ``fastalign.common.timing.StageTimer``. Memory lives in
``memory.py``, the machine's copy and GEMM ceilings in ``ceilings.py``.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np
import torch

QUANTILES = (0.5, 0.2, 0.8)

# (p80 - p20) / median above this marks a measurement as noisy in the report:
# the middle 60% of its samples spread over more than half the median.
HIGH_VARIANCE = 0.5

Device = Union[str, torch.device]
T = TypeVar("T")


def device_kind(device: Device) -> str:
    """"cuda" or "cpu" for a device name or ``torch.device`` ("cuda:1" -> "cuda")."""
    return str(device).split(":")[0]


@dataclass(frozen=True)
class Stats:
    """Timing statistics of one measurement, in milliseconds."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: int
    timer: str
    min_ms: Optional[float] = None

    @property
    def spread(self) -> Optional[float]:
        """(p80 - p20) / median: the relative width of the middle 60% of samples."""
        return (self.p80_ms - self.p20_ms) / self.median_ms if self.median_ms > 0 else None

    @property
    def noisy(self) -> bool:
        return self.spread is not None and self.spread > HIGH_VARIANCE

    def as_dict(self) -> dict:
        return {"ms": self.median_ms, "ms_p20": self.p20_ms, "ms_p80": self.p80_ms, "ms_min": self.min_ms,
                "spread": self.spread, "high_variance": self.noisy, "reps": self.reps, "timer": self.timer}


def is_noisy(row: dict) -> bool:
    """Whether an ok result row's spread, (p80 - p20) / median, is above ``HIGH_VARIANCE``
    (rows written before the flag existed are judged from their percentiles)."""
    if row.get("status", "ok") != "ok":
        return False
    if row.get("high_variance") is not None:
        return bool(row["high_variance"])
    ms = row.get("ms") or 0.0
    return ms > 0 and (row.get("ms_p80", ms) - row.get("ms_p20", ms)) / ms > HIGH_VARIANCE


def stats_from_samples(samples_ms: Sequence[float], timer: str) -> Stats:
    """Median, 20th and 80th percentile (linear interpolation, as numpy) and minimum of samples."""
    if len(samples_ms) == 0:
        raise ValueError("need at least one timing sample")
    a = np.asarray(samples_ms, dtype=np.float64)
    med, p20, p80 = np.quantile(a, QUANTILES)
    return Stats(float(med), float(p20), float(p80), len(a), timer, float(a.min()))


def synchronize(device: Device) -> None:
    if device_kind(device) == "cuda":
        torch.cuda.synchronize()


def wall_ms_and_value(fn: Callable[[], T], device: Device) -> Tuple[float, T]:
    """One call's wall time in ms, with the device synchronised around it, and its output."""
    synchronize(device)
    t0 = time.perf_counter()
    value = fn()
    synchronize(device)
    return (time.perf_counter() - t0) * 1e3, value


def wall_ms(fn: Callable[[], object], device: Device) -> float:
    """One call's wall time in ms, with the device synchronised around it."""
    return wall_ms_and_value(fn, device)[0]


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


def _cuda_stats(fn: Callable[[], object], estimate_ms: float, warmup_ms: float, rep_ms: float,
                slow_ms: float, slow_reps: int) -> Stats:
    if estimate_ms > slow_ms:
        return stats_from_samples(_event_samples(fn, slow_reps), "events")
    try:
        import triton.testing  # optional heavy dependency (ships with CUDA torch builds)
    except ImportError:  # torch without triton: the same statistics from plain events
        for _ in range(max(1, int(warmup_ms / max(estimate_ms, 1e-3)))):
            fn()
        reps = int(min(1000, max(3, rep_ms / max(estimate_ms, 1e-3))))
        return stats_from_samples(_event_samples(fn, reps), "events")
    med, p20, p80, low = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[*QUANTILES, 0.0])
    reps = max(1, int(rep_ms / max(estimate_ms, 1e-3)))
    return Stats(float(med), float(p20), float(p80), reps, "do_bench", float(low))


def time_call(
    fn: Callable[[], object],
    device: Device,
    estimate_ms: float,
    warmup_ms: float,
    rep_ms: float,
    slow_ms: float,
    slow_reps: int,
) -> Stats:
    """Time ``fn`` (already called once; ``estimate_ms`` is one call's wall time).

    Args:
        fn: the call to time; it must be safe to repeat.
        device: "cuda" or "cpu" (or a ``torch.device``).
        estimate_ms: a measured wall time of one call, used to size the run.
        warmup_ms, rep_ms: warm-up / repetition budgets in ms.
        slow_ms: above this estimate, time ``slow_reps`` calls (events on CUDA).
        slow_reps: repetitions of a slow call.
    """
    if device_kind(device) == "cuda":
        return _cuda_stats(fn, estimate_ms, warmup_ms, rep_ms, slow_ms, slow_reps)
    est = max(estimate_ms, 1e-3)
    slow = estimate_ms > slow_ms
    # At least one more untimed call unless a single call is slow: the first call of a
    # process or a shape pays one-off costs (thread pools, page faults, caches) that
    # the warm-up budget alone would not absorb when it is shorter than one call.
    for _ in range(min(3, max(0 if slow else 1, int(warmup_ms / est)))):
        fn()
    reps = int(min(200, max(slow_reps if slow else 3, rep_ms / est)))
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return stats_from_samples(samples, "perf_counter")


def timed(fn: Callable[[], T], device: Device = "cpu", warmup_ms: float = 25.0, rep_ms: float = 100.0,
          slow_ms: float = 400.0, slow_reps: int = 3) -> Tuple[Stats, T]:
    """Warm up with one call, size the run with a second, then :func:`time_call`.

    Returns the statistics and the first call's output (for a correctness check).
    A call slower than ``slow_ms`` is not repeated more than needed: the sizing
    call counts as the first of its ``slow_reps`` samples (timer "wall").
    """
    value = fn()
    estimate = wall_ms(fn, device)
    if estimate > slow_ms:
        samples = [estimate] + [wall_ms(fn, device) for _ in range(slow_reps - 1)]
        return stats_from_samples(samples, "wall"), value
    return time_call(fn, device, estimate, warmup_ms, rep_ms, slow_ms, slow_reps), value


def benchmark(fn: Callable[[], object], device: Device = "cpu", warmup_ms: float = 25.0, rep_ms: float = 100.0,
              slow_ms: float = 400.0, slow_reps: int = 3) -> Stats:
    """:func:`timed` without the output: the statistics of ``fn`` on ``device``."""
    return timed(fn, device, warmup_ms, rep_ms, slow_ms, slow_reps)[0]


def time_interleaved(fns: Sequence[Callable[[], object]], repeats: int, device: Device = "cpu") -> List[Stats]:
    """Statistics per function over ``repeats`` rounds that call every function once.

    Interleaving makes a change in machine load hit every contender alike; each
    function is called once untimed first. ``min_ms`` is the best of the rounds.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for fn in fns:
        fn()
    samples: List[List[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            samples[i].append(wall_ms(fn, device))
    return [stats_from_samples(s, "perf_counter") for s in samples]


def nvtx_range(name: str, device: Device):
    """An NVTX range on CUDA (shown by Nsight Systems), a no-op elsewhere."""
    if device_kind(device) != "cuda":
        return contextlib.nullcontext()
    return torch.cuda.nvtx.range(name)
