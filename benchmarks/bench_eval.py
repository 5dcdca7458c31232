#!/usr/bin/env python
"""Evaluation benchmark: RDMs, Spearman / Kendall tau-a against scipy, few-shot probes and
``evaluate_representation`` on the bundled THINGS features; prints a markdown table.

    python benchmarks/bench_eval.py                                   # 1,854 and 10,000 items + THINGS
    python benchmarks/bench_eval.py --items 500 --episodes 10         # quick
    python benchmarks/bench_eval.py --items 40 --dim 4 --no-things    # smoke

A thin driver over ``fastalign.bench.eval_bench`` (formerly ``python -m fastalign.eval.bench``).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's fastalign

from fastalign.bench.eval_bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="bench_eval.py"))
