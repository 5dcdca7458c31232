"""The benchmark harness behind ``fastalign bench`` and every script in ``benchmarks/``.

It times the triplet ops (forward, backward, forward + backward) for every
available backend beside an eager PyTorch baseline and ``torch.compile`` of
it, and the teacher's affine transform against a plain GEMM, then writes
``results.json``, ``table.md`` and ``plot.png``::

    from fastalign.bench import BenchOptions, run_bench
    results = run_bench(BenchOptions(preset="cpu-tiny"), out_dir="bench-out")

Presets: ``gpu-full``, ``gpu-quick`` (one device check, about 3 minutes on an
H200), ``cpu-tiny`` (seconds on CPU).

Modules:

- ``timing``: the one timer (warm-up, repeats, median / p20 / p80 / min, spread;
  CUDA events or ``do_bench`` on a GPU, ``perf_counter`` on CPU): ``benchmark``,
  ``timed``, ``time_call``, ``time_interleaved``; stage wall times use
  ``fastalign.common.timing.StageTimer``;
- ``memory``: CUDA peak memory and free memory, process RSS peaks on CPU;
- ``ceilings``: the machine's copy bandwidth and GEMM rate;
- ``config``, ``presets``: case definitions and the named case lists;
- ``baselines``: the eager math (``torch.compile`` compiles the same function);
- ``measure``: one measurement with its failure handling; ``metrics``: bytes and FLOPs;
- ``triplet_bench``, ``affine_bench``: the two groups of cases;
- ``runner``: ``run_bench`` (ceilings, warm-up, cases, incremental writes);
- ``report`` (table, JSON), ``plot`` (the figure);
- ``eval_bench``: the evaluation module against scipy (``benchmarks/bench_eval.py``).
"""

from .config import AffineCase, BenchOptions, TripletCase
from .presets import PRESETS, Preset, get_preset
from .runner import run_bench
from .timing import Stats, benchmark, time_interleaved, timed

__all__ = ["AffineCase", "BenchOptions", "PRESETS", "Preset", "Stats", "TripletCase", "benchmark", "get_preset",
           "run_bench", "time_interleaved", "timed"]
