"""The cpu backend's fused paths side by side: where the cost model's crossovers lie.

``python benchmarks/bench_cpu_paths.py --threads 2 --n 10000,30000,100000,200000 --paths rows,owned``
times ``CpuKernels.fused`` (KL, fp32, with gradient; the gradient allocation
included) for each path in one process, alternating the order every
repetition so neither path always runs after the other, and prints the median
(min-max) per path, the ratio to "rows" and what "auto" would pick.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", default="10000,30000,100000,200000", help="comma-separated N")
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--b", type=int, default=200_000)
    ap.add_argument("--paths", default="rows,owned", help="comma-separated subset of rows, owned, gram")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    from fastalign.kernels.cpu import CpuKernels

    torch.set_num_threads(args.threads)
    paths = args.paths.split(",")
    for n in (int(x) for x in args.n.split(",")):
        g = torch.Generator().manual_seed(0)
        emb = torch.randn(n, args.d, generator=g) / args.d ** 0.25
        trip = torch.randint(0, n, (args.b, 3), generator=g)
        p = torch.softmax(torch.randn(args.b, 3, generator=g), 1)
        kernels = {s: CpuKernels(num_threads=args.threads, strategy=s) for s in paths}
        times = {s: [] for s in paths}
        for rep in range(args.repeats + 1):  # the first round warms up (workspaces, page cache)
            for s in paths if rep % 2 == 0 else paths[::-1]:
                t = time.perf_counter()
                out = kernels[s].fused(emb, trip, p, None, None, 1, False, 1.0, 1.0 / args.b, True)
                dt = 1e3 * (time.perf_counter() - t)
                del out
                if rep:
                    times[s].append(dt)
        med = {s: statistics.median(v) for s, v in times.items()}
        auto = CpuKernels(num_threads=args.threads).path(n, args.d, args.b)
        cells = " ".join(f"{s}={med[s]:.1f} ({min(times[s]):.0f}-{max(times[s]):.0f})" for s in paths)
        ratios = " ".join(f"{s}/rows={med[s] / med['rows']:.2f}" for s in paths if "rows" in med and s != "rows")
        print(f"N={n} D={args.d} B={args.b} threads={args.threads} auto={auto}: {cells} {ratios}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
