"""What a benchmark run measures: cases and options, as dataclasses.

A run is a list of cases. A ``TripletCase`` times one triplet op (a loss or the
similarities) at one size and dtype, for every implementation (the library's
backends plus the eager and ``torch.compile`` baselines) and every phase
(forward, backward, forward + backward). An ``AffineCase`` times the teacher's
affine transform against a plain GEMM of the same shape, and the teacher-fit
composition ``triplet_loss(affine_transform(x, ...))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

# The triplet ops a case can time, with the public function each one calls.
OPS = ("kl", "jsd", "hard", "sims")
PHASES = ("fwd", "bwd", "fwd+bwd")
BASELINES = ("eager", "compile")
GROUPS = ("triplet", "affine")
AFFINE_KINDS = ("transform", "teacher-fit")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}


def dtype_of(name: str) -> torch.dtype:
    """The torch dtype for a short name ("fp32", "bf16", "fp16", "fp64")."""
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {name!r}")
    return DTYPES[name]


def _check_choice(name: str, values, allowed) -> None:
    for v in values:
        if v not in allowed:
            raise ValueError(f"{name} entries must be in {list(allowed)}, got {v!r}")


@dataclass(frozen=True)
class TripletCase:
    """One triplet-op measurement: ``B`` random triplets over an ``(N, D)`` table.

    Args:
        name: the case's label in the report (e.g. "alignet", "things-teacher").
        op: "kl" / "jsd" (``triplet_distill_loss``), "hard" (``triplet_loss``)
            or "sims" (``triplet_similarities``).
        n, d, b: rows, columns, triplets.
        dtype: "fp32", "bf16", "fp16" or "fp64".
        similarity: "dot" or "cosine".
        phases: which of "fwd", "bwd", "fwd+bwd" to time.
        baselines: which of "eager", "compile" to time beside the backends.
        compile_phases: the phases the compile baseline times (each phase is
            a separate compilation, which costs tens of seconds on a GPU).
        priority: cases run in ascending priority, so a run cut short by its
            time budget has measured the most important ones.
    """

    name: str
    op: str
    n: int
    d: int
    b: int
    dtype: str = "fp32"
    similarity: str = "dot"
    phases: Tuple[str, ...] = PHASES
    baselines: Tuple[str, ...] = BASELINES
    compile_phases: Tuple[str, ...] = ("fwd+bwd",)
    priority: int = 0

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"op must be one of {list(OPS)}, got {self.op!r}")
        for attr in ("n", "d", "b"):
            if not isinstance(getattr(self, attr), int) or getattr(self, attr) < 1:
                raise ValueError(f"{attr} must be a positive int, got {getattr(self, attr)!r}")
        dtype_of(self.dtype)
        if self.similarity not in ("dot", "cosine"):
            raise ValueError(f"similarity must be 'dot' or 'cosine', got {self.similarity!r}")
        _check_choice("phases", self.phases, PHASES)
        _check_choice("baselines", self.baselines, BASELINES)
        _check_choice("compile_phases", self.compile_phases, PHASES)

    @property
    def group(self) -> str:
        return "triplet"

    @property
    def label(self) -> str:
        sim = "" if self.similarity == "dot" else f" {self.similarity}"
        return f"{self.name} {self.op}{sim} N={self.n} D={self.d} B={self.b} {self.dtype}"


@dataclass(frozen=True)
class AffineCase:
    """One affine-transform measurement.

    Args:
        name: label in the report.
        kind: "transform" times ``affine_transform(x, W, b, mean, std)`` on an
            ``(n, d)`` input with a ``(d, d_out)`` W against a plain ``x @ W``
            GEMM and the unfused ``((x - m) / s) @ W + b`` (eager and compiled);
            "teacher-fit" times forward + backward (in W, b) of
            ``triplet_loss(affine_transform(x, W, ...), triplets)`` with ``b``
            triplets, and its two halves on their own.
        n, d: the input's shape.
        d_out: output columns (``None`` = ``d``).
        b: triplets (teacher-fit only).
        dtype: the input dtype.
        compile: also time the ``torch.compile`` version of the unfused math.
        priority: as in ``TripletCase``.
    """

    name: str
    kind: str
    n: int
    d: int
    d_out: Optional[int] = None
    b: int = 0
    dtype: str = "fp32"
    compile: bool = True
    priority: int = 0

    def __post_init__(self):
        if self.kind not in AFFINE_KINDS:
            raise ValueError(f"kind must be one of {list(AFFINE_KINDS)}, got {self.kind!r}")
        for attr in ("n", "d"):
            if not isinstance(getattr(self, attr), int) or getattr(self, attr) < 1:
                raise ValueError(f"{attr} must be a positive int, got {getattr(self, attr)!r}")
        if self.kind == "teacher-fit" and self.b < 1:
            raise ValueError("a teacher-fit case needs b >= 1 triplets")
        dtype_of(self.dtype)

    @property
    def group(self) -> str:
        return "affine"

    @property
    def cols(self) -> int:
        return self.d if self.d_out is None else self.d_out

    @property
    def label(self) -> str:
        extra = f" B={self.b}" if self.kind == "teacher-fit" else ""
        return f"{self.name} {self.kind} N={self.n} D={self.d}->{self.cols}{extra} {self.dtype}"


@dataclass
class BenchOptions:
    """How to run the benchmark.

    Args:
        preset: name of the preset the cases come from (``presets.PRESETS``).
        device: "cuda" or "cpu"; ``None`` picks cuda when available.
        backends: library backends to time; ``None`` = every backend that is
            available for the device.
        baselines: baselines to time ("eager", "compile"), intersected with
            each case's own list; ``None`` = the preset's choice.
        groups: "triplet" and/or "affine".
        compile_backend: ``torch.compile`` backend for the compile baseline
            ("inductor" is the real baseline; "eager" only checks the path).
        warmup_ms, rep_ms: ``do_bench`` warm-up and repetition time (ms); on
            CPU the same budgets bound the simple timer. ``None`` = the preset's.
        slow_ms: a call slower than this is timed over ``slow_reps`` calls
            with events instead of ``do_bench``'s at least 7 calls.
        slow_reps: repetitions for such calls.
        time_budget_s: stop starting new measurements after this many seconds
            (the rest is recorded as skipped); ``None`` = the preset's budget,
            ``math.inf`` = no limit.
        memory_fraction: a measurement whose estimated memory exceeds this
            fraction of the free device memory is skipped with a note.
        eager_budget_bytes: the largest (B, 3, D) gather workspace the eager
            and compile baselines may hold at once; above it they run in chunks.
        check: compare each implementation's loss (and gradient) with the
            eager baseline's and record the relative error.
        seed: random seed of the inputs.
        progress: show progress (tqdm when installed, else plain lines).
    """

    preset: str = "cpu-tiny"
    device: Optional[str] = None
    backends: Optional[Tuple[str, ...]] = None
    baselines: Optional[Tuple[str, ...]] = None
    groups: Tuple[str, ...] = GROUPS
    compile_backend: str = "inductor"
    warmup_ms: Optional[float] = None
    rep_ms: Optional[float] = None
    slow_ms: float = 400.0
    slow_reps: int = 3
    time_budget_s: Optional[float] = None
    memory_fraction: float = 0.85
    eager_budget_bytes: Optional[int] = None
    check: bool = True
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        if self.device not in (None, "cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.baselines is not None:
            _check_choice("baselines", self.baselines, BASELINES)
        _check_choice("groups", self.groups, GROUPS)
        if not self.groups:
            raise ValueError("groups must name at least one of " + ", ".join(GROUPS))
        for attr in ("warmup_ms", "rep_ms", "slow_ms"):
            if getattr(self, attr) is not None and not getattr(self, attr) > 0:
                raise ValueError(f"{attr} must be > 0, got {getattr(self, attr)!r}")
        if not isinstance(self.slow_reps, int) or self.slow_reps < 1:
            raise ValueError(f"slow_reps must be an int >= 1, got {self.slow_reps!r}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"time_budget_s must be > 0, got {self.time_budget_s!r}")
        if not 0 < self.memory_fraction <= 1:
            raise ValueError(f"memory_fraction must be in (0, 1], got {self.memory_fraction!r}")

    def resolved_device(self) -> str:
        if self.device is not None:
            return self.device
        return "cuda" if torch.cuda.is_available() else "cpu"
