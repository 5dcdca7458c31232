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
import json
import sys
from datetime import datetime, timezone

import torch

CASES = [
    # name, N, D, B, dtype
    ("alignet", 1_280_000, 1152, 10_000_000, torch.bfloat16),
    ("things-teacher", 1854, 1152, 4_700_000, torch.float32),
    ("distill-step", 1536, 1024, 512, torch.bfloat16),
]
QUICK = [("alignet-small", 262_144, 1152, 2_000_000, torch.bfloat16), ("things-teacher", 1854, 1152, 1_000_000,
                                                                       torch.float32)]


def _time(fn, reps_ms=400):
    from triton.testing import do_bench

    return do_bench(fn, warmup=100, rep=reps_ms, quantiles=[0.5, 0.2, 0.8])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes")
    ap.add_argument("--out", help="also write the markdown table here")
    ap.add_argument("--json", help="also write the raw numbers here")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_grad_modes needs a CUDA device", file=sys.stderr)
        return 2
    import fastalign

    avail = [b for b in ("triton", "cuda") if fastalign.backends()["backends"][b]["available"]]
    rows, raw = [], []
    for name, n, d, b, dtype in (QUICK if args.quick else CASES):
        g = torch.Generator(device="cuda").manual_seed(0)
        emb = torch.randn(n, d, device="cuda", dtype=dtype, generator=g).requires_grad_(True)
        trip = torch.randint(0, n, (b, 3), device="cuda", generator=g, dtype=torch.int32)
        sims = torch.randn(b, 3, device="cuda", generator=g)
        gathered_gb = 3 * b * d * emb.element_size() / 1e9
        for backend in avail:
            for det in (False, True):
                torch.use_deterministic_algorithms(det)

                def step():
                    emb.grad = None
                    fastalign.triplet_distill_loss(emb, trip, target_sims=sims, backend=backend).backward()

                try:
                    med, p20, p80 = _time(step)
                    note = ""
                except torch.cuda.OutOfMemoryError:
                    med = p20 = p80 = float("nan")
                    note = "out of memory"
                finally:
                    torch.use_deterministic_algorithms(False)
                torch.cuda.empty_cache()
                mode = "deterministic" if det else "atomic"
                raw.append({"case": name, "N": n, "D": d, "B": b, "dtype": str(dtype), "backend": backend,
                            "mode": mode, "ms": med, "p20": p20, "p80": p80, "note": note})
                # One forward gathers 3 rows per triplet; fwd+bwd reads them at least twice.
                rows.append(f"| {name} N={n} D={d} B={b} {str(dtype)[6:]} | {backend} | {mode} | {med:.3f} "
                            f"({p20:.3f}-{p80:.3f}) | {2 * gathered_gb / (med / 1e3):.0f} | {note} |")
                print(rows[-1], flush=True)
        del emb, trip, sims
        torch.cuda.empty_cache()
    head = [f"# Gradient modes, {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
            f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", "",
            "KL distillation loss, forward+backward through the public op; GB/s counts the gathered rows "
            "read twice (forward and backward), 3 rows per triplet.", "",
            "| case | backend | gradient | ms (p20-p80) | gathered GB/s | note |", "|---|---|---|---|---|---|"]
    table = "\n".join(head + rows) + "\n"
    print(table)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(table)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(raw, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
