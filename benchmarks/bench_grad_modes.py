"""Atomic vs deterministic (sorted, segmented) gradients of the fused GPU kernels.

The default gradient of the Triton and CUDA backends is an fp32 atomic
scatter-add into dE; ``torch.use_deterministic_algorithms(True)`` switches them
to a stable sort of the 3B triplet slots by row plus one segmented reduction per
row (no atomics). This script times forward+backward of the KL distillation loss
in both modes through the public op, so one can see which mode is faster where.

    python benchmarks/bench_grad_modes.py [--quick] [--out FILE.md]

Needs a CUDA device. Prints a markdown table (and writes it to --out).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's fastalign

import fastalign  # noqa: E402
from fastalign.bench.timing import benchmark  # noqa: E402
from fastalign.common.jsonsafe import json_safe  # noqa: E402
from fastalign.io import atomic_write_json, atomic_write_text  # noqa: E402

CASES = [
    # name, N, D, B, dtype
    ("alignet", 1_280_000, 1152, 10_000_000, torch.bfloat16),
    ("things-teacher", 1854, 1152, 4_700_000, torch.float32),
    ("distill-step", 1536, 1024, 512, torch.bfloat16),
]
QUICK = [("alignet-small", 262_144, 1152, 2_000_000, torch.bfloat16), ("things-teacher", 1854, 1152, 1_000_000,
                                                                       torch.float32)]


# The harness's timer budgets (ms): do_bench warm-up and repetitions.
WARMUP_MS, REP_MS = 100.0, 400.0


def time_case(name: str, n: int, d: int, b: int, dtype: torch.dtype, backends: List[str]) -> List[dict]:
    """fwd+bwd of the KL loss per backend and gradient mode, as raw rows (ms are NaN on out of memory)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    emb = torch.randn(n, d, device="cuda", dtype=dtype, generator=g).requires_grad_(True)
    trip = torch.randint(0, n, (b, 3), device="cuda", generator=g, dtype=torch.int32)
    sims = torch.randn(b, 3, device="cuda", generator=g)
    raw = []
    for backend in backends:
        for det in (False, True):
            def step():
                emb.grad = None
                fastalign.triplet_distill_loss(emb, trip, target_sims=sims, backend=backend).backward()

            torch.use_deterministic_algorithms(det)
            try:
                stats = benchmark(step, "cuda", WARMUP_MS, REP_MS)
                med, p20, p80 = stats.median_ms, stats.p20_ms, stats.p80_ms
                note = "noisy" if stats.noisy else ""
            except torch.cuda.OutOfMemoryError:
                med = p20 = p80 = float("nan")
                note = "out of memory"
            finally:
                torch.use_deterministic_algorithms(False)
            torch.cuda.empty_cache()
            raw.append({"case": name, "N": n, "D": d, "B": b, "dtype": str(dtype), "backend": backend,
                        "mode": "deterministic" if det else "atomic", "ms": med, "p20": p20, "p80": p80,
                        "note": note, "gathered_gb": 3 * b * d * emb.element_size() / 1e9})
            print(table_row(raw[-1]), flush=True)
    return raw


def table_row(r: dict) -> str:
    # One forward gathers 3 rows per triplet; fwd+bwd reads them at least twice.
    return (f"| {r['case']} N={r['N']} D={r['D']} B={r['B']} {r['dtype'][6:]} | {r['backend']} | {r['mode']} "
            f"| {r['ms']:.3f} ({r['p20']:.3f}-{r['p80']:.3f}) | {2 * r['gathered_gb'] / (r['ms'] / 1e3):.0f} "
            f"| {r['note']} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes")
    ap.add_argument("--out", help="also write the markdown table here")
    ap.add_argument("--json", help="also write the raw numbers here")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_grad_modes needs a CUDA device", file=sys.stderr)
        return 2
    avail = [b for b in ("triton", "cuda") if fastalign.backends()["backends"][b]["available"]]
    raw = []
    for case in (QUICK if args.quick else CASES):
        raw += time_case(*case, avail)
    head = [f"# Gradient modes, {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
            f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", "",
            "KL distillation loss, forward+backward through the public op; GB/s counts the gathered rows "
            "read twice (forward and backward), 3 rows per triplet.", "",
            "| case | backend | gradient | ms (p20-p80) | gathered GB/s | note |", "|---|---|---|---|---|---|"]
    table = "\n".join(head + [table_row(r) for r in raw]) + "\n"
    print(table)
    if args.out:
        atomic_write_text(args.out, table)
    if args.json:
        atomic_write_json(args.json, json_safe(raw), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
