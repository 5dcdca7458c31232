#!/usr/bin/env python
"""GPU benchmark of the triplet kernels: one command, a markdown table, JSON and a PNG plot.

    python benchmarks/bench_gpu.py --preset gpu-quick --out bench-out   # ~3 min on an H200
    python benchmarks/bench_gpu.py --preset gpu-full --out bench-out    # every case
    python benchmarks/bench_gpu.py --preset cpu-tiny --out bench-out    # seconds, on CPU

A thin wrapper over the harness shipped with the package (``fastalign.bench``),
identical to ``fastalign bench``; ``--help`` lists every option.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's fastalign

from fastalign.cli.bench import standalone_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(standalone_main(prog="bench_gpu.py", description=__doc__.splitlines()[0]))
