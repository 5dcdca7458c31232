"""fastalign bench: measure the triplet kernels and the teacher transform on this machine.

Writes ``results.json``, ``table.md`` and ``plot.png`` to ``--out`` and prints
the table. The same harness (``fastalign.bench``) runs ``benchmarks/bench_gpu.py``,
``benchmarks/bench_affine_transform.py`` and the device check.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import List, Optional

import torch

from ..bench import run_bench
from ..bench.config import BenchOptions
from ..bench.presets import PRESETS
from ..bench.report import RESULTS, TABLE


def _csv(value: str):
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    return items


def add_arguments(p) -> None:
    """The bench options (shared with ``benchmarks/bench_gpu.py``)."""
    p.add_argument("--preset", default=None, choices=list(PRESETS),
                   help="case list: " + "; ".join(f"{k}: {v.description}" for k, v in PRESETS.items())
                   + " (default: gpu-quick with a GPU, else cpu-tiny)")
    p.add_argument("--out", default="bench-out", help="output directory (default: bench-out)")
    p.add_argument("--backends", type=_csv, default=None,
                   help="comma-separated library backends to time (default: every available one)")
    p.add_argument("--baselines", type=_csv, default=None,
                   help="comma-separated baselines: eager,compile, or 'none' (default: the preset's)")
    p.add_argument("--groups", type=_csv, default=("triplet", "affine"),
                   help="comma-separated groups: triplet,affine (default: both)")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda when available")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds after which remaining measurements are skipped (0 = no limit; default: the preset's)")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend of the compile baseline (default: inductor)")
    p.add_argument("--warmup-ms", type=float, default=None, help="do_bench warm-up budget (default: the preset's)")
    p.add_argument("--rep-ms", type=float, default=None, help="do_bench repetition budget (default: the preset's)")
    p.add_argument("--no-check", action="store_true", help="skip the correctness check against the eager baseline")
    p.add_argument("--quiet", action="store_true", help="no progress and no table: print only the results' path")
    p.add_argument("--seed", type=int, default=0, help="random seed of the inputs")


def options_from_args(args):
    """``BenchOptions`` from parsed arguments (ValueError on a bad value)."""
    preset = args.preset or ("gpu-quick" if torch.cuda.is_available() and args.device != "cpu" else "cpu-tiny")
    baselines = args.baselines
    if baselines is not None and tuple(baselines) == ("none",):
        baselines = ()
    budget = args.time_budget
    if budget is not None:
        if budget < 0:
            raise ValueError(f"--time-budget must be >= 0 seconds, got {budget}")
        budget = math.inf if budget == 0 else budget
    return BenchOptions(
        preset=preset, device=args.device, backends=args.backends, baselines=baselines,
        groups=tuple(args.groups), compile_backend=args.compile_backend, warmup_ms=args.warmup_ms,
        rep_ms=args.rep_ms, time_budget_s=budget, check=not args.no_check, seed=args.seed,
        progress=not args.quiet,
    )


def register(sub):
    p = sub.add_parser("bench", help="benchmark the triplet kernels and the teacher transform on this machine",
                       description=__doc__.splitlines()[0])
    add_arguments(p)
    p.set_defaults(func=_run)


def _run(args):
    options = options_from_args(args)
    run_bench(options, out_dir=args.out)
    if args.quiet:
        print(Path(args.out) / RESULTS)
    else:
        print((Path(args.out) / TABLE).read_text(encoding="utf-8"))
    return 0


def standalone_main(argv: Optional[List[str]] = None, prog: str = "bench", description: str = "",
                    **defaults) -> int:
    """Entry point for scripts (``benchmarks/*.py``): the bench options with other defaults.

    Args:
        argv: arguments (default ``sys.argv[1:]``).
        prog: program name for ``--help``.
        description: ``--help`` text.
        defaults: argument defaults to override (e.g. ``groups=("affine",)``).

    Returns the exit status: 0, or 2 with a one-line message for a bad value.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description or __doc__.splitlines()[0])
    add_arguments(parser)
    parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
