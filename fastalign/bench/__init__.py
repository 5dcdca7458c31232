"""The benchmark harness behind ``fastalign bench`` and ``benchmarks/bench_gpu.py``.

It times the triplet ops (forward, backward, forward + backward) for every
available backend beside an eager PyTorch baseline and ``torch.compile`` of
it, and the teacher's affine transform against a plain GEMM, then writes
``results.json``, ``table.md`` and ``plot.png``::

    from fastalign.bench import BenchOptions, run_bench
    results = run_bench(BenchOptions(preset="cpu-tiny"), out_dir="bench-out")

Presets: ``gpu-full``, ``gpu-quick`` (one device check, about 3 minutes on an
H200), ``cpu-tiny`` (seconds on CPU).
"""

from .config import AffineCase, BenchOptions, TripletCase
from .presets import PRESETS, Preset, get_preset
from .runner import run_bench

__all__ = ["AffineCase", "BenchOptions", "PRESETS", "Preset", "TripletCase", "get_preset", "run_bench"]
