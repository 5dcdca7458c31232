"""Benchmark of ``fastalign make-triplets`` end to end: cluster -> sample -> label -> write.

Default (issue 5, on CPU): N=100,000 x D=256 float32 embeddings, k=100 clusters,
1,000,000 cluster_border triplets, float16 sims + float32 probs, 1M-triplet shards.
Reports triplets/s per stage and the peak memory above the post-import baseline,
checked against the budget "embeddings + 2 x one shard + cluster state".

    python benchmarks/bench_make_triplets.py            # full size
    python benchmarks/bench_make_triplets.py --quick    # a few seconds
    python benchmarks/bench_make_triplets.py --out-md results.md

Prints a markdown table (and writes it with --out-md). Random embeddings are
generated on the fly (seeded); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Dict

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's fastalign

from fastalign.bench.memory import PeakMemory, peak_rss_bytes, pin_mmap_threshold, reset_peak_rss, rss_bytes  # noqa: E402
from fastalign.common.seeds import derive_rng  # noqa: E402
from fastalign.common.timing import StageTimer  # noqa: E402
from fastalign.io import atomic_write_text  # noqa: E402
from fastalign.triplets.generate import GenerateOptions, generate  # noqa: E402

MIB = 2 ** 20


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="items N")
    ap.add_argument("--d", type=int, default=256, help="embedding dim D")
    ap.add_argument("--k", type=int, default=100, help="k-means clusters")
    ap.add_argument("--num", type=int, default=1_000_000, help="triplets")
    ap.add_argument("--shard-size", type=int, default=1_000_000)
    ap.add_argument("--chunk-size", type=int, default=65536)
    ap.add_argument("--kmeans-iters", type=int, default=20)
    ap.add_argument("--strategy", default="cluster_border")
    ap.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    ap.add_argument("--emb-dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                    help="teacher embeddings dtype on the device (AligNet scale on GPU: bfloat16)")
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run (N=20k, D=64, k=20, 100k triplets)")
    ap.add_argument("--out-md", help="also write the markdown table to this file")
    ap.add_argument("--workdir", help="where to write the embeddings and the store (default: a temp dir, removed)")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.d, args.k, args.num = 20_000, 64, 20, 100_000
        args.shard_size, args.kmeans_iters = 50_000, 10
    return args


def write_inputs(args: argparse.Namespace, work: Path) -> float:
    """Clustered random embeddings (k blobs, so that cluster_border is meaningful) and a tiny
    warm-up set; returns the embeddings' MiB."""
    rng = derive_rng(0)  # == np.random.default_rng(0)
    centers = rng.standard_normal((args.k, args.d), dtype=np.float32) * 2
    emb = centers[rng.integers(0, args.k, args.n)] + rng.standard_normal((args.n, args.d), dtype=np.float32)
    np.save(work / "emb.npy", emb)
    np.save(work / "warm.npy", rng.standard_normal((300, args.d), dtype=np.float32))
    return emb.nbytes / MIB  # the float32 file is loaded whole before any dtype conversion


def memory_budget_mib(args: argparse.Namespace, emb_mib: float) -> Dict[str, float]:
    """The budget "embeddings + 2 x one shard + cluster state" (MiB)."""
    shard_mib = min(args.shard_size, args.num) * 3 * (4 + 2 + 4) / MIB
    # cluster state: centroids + float64 sums, labels, one chunk of points and its (chunk x k) distances
    chunk = 16384
    cluster_mib = (args.k * args.d * (4 + 8) + args.n * 8 + chunk * args.d * 4 + chunk * args.k * 4 * 2) / MIB
    return {"emb": emb_mib, "shard": shard_mib, "cluster": cluster_mib, "total": emb_mib + 2 * shard_mib + cluster_mib}


def run(args: argparse.Namespace, work: Path) -> dict:
    """Warm up on a tiny problem, then time one generate() and record its memory."""
    torch.manual_seed(0)
    emb_mib = write_inputs(args, work)
    # The first kernel call probes backends, and lazy imports, BLAS workspaces and allocator
    # pools are fixed costs that must not be billed to a stage or to memory.
    generate(GenerateOptions(embeddings=str(work / "warm.npy"), out=str(work / "warm"), num=2000, clusters=min(args.k, 30),
                             shard_size=1000, chunk_size=500, kmeans_iters=2, device=args.device, progress=False,
                             histogram=False), say=lambda s: None)
    base = rss_bytes() / MIB
    peak_reset = reset_peak_rss()
    opts = GenerateOptions(
        embeddings=str(work / "emb.npy"), out=str(work / "store"), num=args.num, strategy=args.strategy,
        clusters=args.k, shard_size=args.shard_size, chunk_size=args.chunk_size, kmeans_iters=args.kmeans_iters,
        sim_dtype="float16", with_probs=True, device=args.device, emb_dtype=args.emb_dtype, progress=False,
        histogram=False,
    )
    cuda = torch.cuda.is_available() and (args.device is None or str(args.device).startswith("cuda"))
    timer = StageTimer()
    with PeakMemory("cuda" if cuda else "cpu") as gpu_peak, timer("end to end"):
        summary = generate(opts, say=lambda s: None)
    peak = peak_rss_bytes() / MIB
    return {"summary": summary, "wall": timer.seconds["end to end"], "base": base, "peak": peak,
            "peak_reset": peak_reset, "gpu_peak_mib": gpu_peak.bytes / MIB if cuda else None,
            "budget": memory_budget_mib(args, emb_mib)}


def table(args: argparse.Namespace, res: dict, pinned: bool) -> str:
    summary, sec, wall, budget = res["summary"], res["summary"].seconds, res["wall"], res["budget"]
    base, peak = res["base"], res["peak"]
    used = peak - base if res["peak_reset"] or peak > base else float("nan")
    rows = [
        ("cluster (k-means)", sec["kmeans"], args.n * summary.kmeans["n_iter"] / sec["kmeans"] if sec["kmeans"] else 0,
         "points x iters/s"),
        ("sample", sec["sample"], args.num / sec["sample"] if sec["sample"] else 0, "triplets/s"),
        ("label", sec["label"], args.num / sec["label"] if sec["label"] else 0, "triplets/s"),
        ("write", sec["write"], args.num / sec["write"] if sec["write"] else 0, "triplets/s"),
        ("end to end", wall, args.num / wall, "triplets/s"),
    ]
    lines = [
        f"## make-triplets: N={args.n:,} x D={args.d}, k={args.k}, {args.num:,} {args.strategy} triplets "
        f"(device {args.device or ('cuda' if torch.cuda.is_available() else 'cpu')}, emb {args.emb_dtype}, "
        f"torch threads {torch.get_num_threads()})",
        "",
        "| stage | seconds | rate | unit |",
        "|---|---:|---:|---|",
    ]
    lines += [f"| {name} | {s:.3f} | {r:,.0f} | {u} |" for name, s, r, u in rows]
    lines += [
        "",
        "| memory | MiB |",
        "|---|---:|",
        f"| baseline RSS (after imports) | {base:,.1f} |",
        f"| peak RSS | {peak:,.1f} |",
        f"| peak above baseline | {used:,.1f} |",
        f"| budget: embeddings {budget['emb']:,.1f} + 2 x shard {budget['shard']:,.1f} + cluster state "
        f"{budget['cluster']:,.1f} | {budget['total']:,.1f} |",
        f"| within budget | {'yes' if used <= budget['total'] else 'NO'} |",
    ]
    if res["gpu_peak_mib"] is not None:
        lines += [f"| GPU peak allocated above baseline | {res['gpu_peak_mib']:,.1f} |"]
    lines += [
        "",
        f"(peak RSS via VmHWM{' after resetting it' if res['peak_reset'] else ''}; glibc mmap threshold "
        f"{'pinned at 1 MiB' if pinned else 'not pinned'}; fixed costs are warmed up before the baseline)",
    ]
    if summary.kmeans:
        lines += ["", f"k-means: {summary.kmeans['n_iter']} iterations, inertia {summary.kmeans['inertia'][0]:.4g} -> "
                      f"{summary.kmeans['inertia'][-1]:.4g}, re-seeded {sum(summary.kmeans['reseeded'])}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    pinned = pin_mmap_threshold()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        text = table(args, run(args, work), pinned)
    print(text)
    if args.out_md:
        atomic_write_text(args.out_md, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
