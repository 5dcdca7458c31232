"""The named case lists: ``gpu-full``, ``gpu-quick`` and ``cpu-tiny``.

Sizes come from the paper's workloads (issue 3, "GPU benchmark"):

- THINGS teacher fit: N=1854 concepts, D=1152 features, B=4.7M triplets;
- AligNet labelling / distillation: N=1.28M images, D=1152, B=10M triplets;
- one distillation step: N=1536 unique items, D=1024, B=512 triplets;
- D in {512, 768, 1024, 1152}; fp32 and bf16.

``gpu-quick`` is sized for one lent H200 inside the device check: about three
minutes including ``torch.compile`` warm-up, so it compiles only the three
headline graphs and runs the D sweep at a reduced size (N=256K, B=2M). Cases
run in priority order and the preset carries a time budget, so a slow card
still reports the headline numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple, Union

from .config import AffineCase, TripletCase

Case = Union[TripletCase, AffineCase]

ALIGNET = dict(n=1_280_000, d=1152, b=10_000_000)
THINGS = dict(n=1854, d=1152, b=4_700_000)
STEP = dict(n=1536, d=1024, b=512)
D_SWEEP = (512, 768, 1024, 1152)


@dataclass(frozen=True)
class Preset:
    """A named benchmark configuration.

    Args:
        name: the ``--preset`` value.
        device: the device it is sized for ("cuda" or "cpu").
        description: one line for ``--help`` and the report.
        cases: what to measure.
        baselines: the baselines timed by default.
        time_budget_s: default time budget (``None``: unlimited).
        warmup_ms, rep_ms: default ``do_bench`` budgets.
    """

    name: str
    device: str
    description: str
    cases: Tuple[Case, ...] = field(default_factory=tuple)
    baselines: Tuple[str, ...] = ("eager", "compile")
    time_budget_s: Optional[float] = None
    warmup_ms: float = 25.0
    rep_ms: float = 100.0


def _gpu_quick() -> Tuple[Case, ...]:
    cases = [
        # The headline target: fused fwd+bwd of the distillation loss.
        TripletCase("alignet", "kl", **ALIGNET, dtype="bf16", phases=("fwd", "fwd+bwd"), priority=0),
        TripletCase("distill-step", "kl", **STEP, dtype="bf16", priority=1),
        TripletCase("things-teacher", "hard", **THINGS, dtype="fp32", priority=2),
        AffineCase("alignet", "transform", n=1_280_000, d=1152, dtype="bf16", priority=3),
        AffineCase("things", "teacher-fit", n=1854, d=1152, b=4_700_000, dtype="fp32", compile=False, priority=3),
    ]
    for dtype in ("bf16", "fp32"):
        for d in D_SWEEP:
            cases.append(TripletCase("d-sweep", "kl", n=262_144, d=d, b=2_000_000, dtype=dtype,
                                     phases=("fwd+bwd",), baselines=("eager",), priority=4))
    for op in ("jsd", "hard", "sims"):
        cases.append(TripletCase("distill-step", op, **STEP, dtype="bf16", baselines=("eager",), priority=5))
    cases.append(AffineCase("alignet", "transform", n=1_280_000, d=1152, dtype="fp32", compile=False, priority=6))
    cases.append(TripletCase("alignet", "kl", **ALIGNET, dtype="fp32", phases=("fwd+bwd",),
                             baselines=("eager",), priority=7))
    return tuple(cases)


def _gpu_full() -> Tuple[Case, ...]:
    cases = []
    for dtype in ("bf16", "fp32"):
        for op in ("kl", "jsd", "hard", "sims"):
            cases.append(TripletCase("alignet", op, **ALIGNET, dtype=dtype, priority=0))
            cases.append(TripletCase("things-teacher", op, **THINGS, dtype=dtype, priority=1))
            cases.append(TripletCase("distill-step", op, **STEP, dtype=dtype, compile_phases=("fwd", "bwd", "fwd+bwd"),
                                     priority=2))
        cases.append(TripletCase("distill-step", "kl", **STEP, dtype=dtype, similarity="cosine", priority=3))
        for d in D_SWEEP:
            cases.append(TripletCase("d-sweep", "kl", n=ALIGNET["n"], d=d, b=ALIGNET["b"], dtype=dtype,
                                     phases=("fwd+bwd",), priority=4))
        cases.append(AffineCase("alignet", "transform", n=1_280_000, d=1152, dtype=dtype, priority=5))
        cases.append(AffineCase("things", "teacher-fit", n=1854, d=1152, b=4_700_000, dtype=dtype, priority=5))
    return tuple(cases)


def _cpu_tiny() -> Tuple[Case, ...]:
    tiny = dict(n=64, d=32, b=256)
    cases = [TripletCase("tiny", op, **tiny, dtype="fp32", priority=0) for op in ("kl", "jsd", "hard", "sims")]
    cases.append(TripletCase("tiny", "kl", **tiny, dtype="bf16", phases=("fwd+bwd",), priority=1))
    for b in (64, 1024):
        cases.append(TripletCase("tiny-sweep", "kl", n=64, d=32, b=b, dtype="fp32", phases=("fwd+bwd",), priority=2))
    cases.append(AffineCase("tiny", "transform", n=256, d=32, dtype="fp32", priority=3))
    cases.append(AffineCase("tiny", "teacher-fit", n=64, d=32, b=256, dtype="fp32", priority=3))
    return tuple(cases)


PRESETS = {
    "gpu-full": Preset(
        "gpu-full", "cuda",
        "every case: AligNet, THINGS and distillation-step sizes, all ops, fp32+bf16, D sweep, affine "
        "(tens of minutes)",
        _gpu_full(), time_budget_s=None),
    "gpu-quick": Preset(
        "gpu-quick", "cuda",
        "headline cases for one device check (about 3 minutes on an H200, compile warm-up included)",
        _gpu_quick(), time_budget_s=170.0, warmup_ms=10.0, rep_ms=40.0),
    "cpu-tiny": Preset(
        "cpu-tiny", "cpu",
        "tiny sizes on CPU (seconds; CI smoke test); torch.compile is off unless asked for",
        _cpu_tiny(), baselines=("eager",), time_budget_s=None, warmup_ms=1.0, rep_ms=10.0),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ``ValueError`` listing the choices otherwise."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {list(PRESETS)}, got {name!r}")
    return PRESETS[name]
