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
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def rss_mib() -> float:
    """Current resident set size (MiB), from /proc when available."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_mib() -> float:
    """Peak resident set size of this process so far (MiB)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0: write 5 to clear_refs); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def pin_mmap_threshold(nbytes: int = 1 << 20) -> bool:
    """Fix glibc's mmap threshold so freed large buffers go back to the OS.

    glibc raises the threshold dynamically after big frees, after which freed
    buffers stay in the heap and inflate RSS; the peak would then measure the
    allocator's retention rather than live memory. Returns False off glibc.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, nbytes))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def main(argv=None) -> int:
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
    pinned = pin_mmap_threshold()
    if args.quick:
        args.n, args.d, args.k, args.num = 20_000, 64, 20, 100_000
        args.shard_size, args.kmeans_iters = 50_000, 10

    import torch

    from fastalign.triplets.generate import GenerateOptions, generate

    torch.manual_seed(0)
    tmp = tempfile.TemporaryDirectory() if not args.workdir else None
    work = Path(args.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    # clustered data (k blobs) so that cluster_border is meaningful
    centers = rng.standard_normal((args.k, args.d), dtype=np.float32) * 2
    emb = centers[rng.integers(0, args.k, args.n)] + rng.standard_normal((args.n, args.d), dtype=np.float32)
    np.save(work / "emb.npy", emb)
    emb_mib = emb.nbytes / 2**20  # the float32 file is loaded whole before any dtype conversion
    del emb, centers
    # Warm up on a tiny problem: the first kernel call probes backends, and lazy imports, BLAS
    # workspaces and allocator pools are fixed costs that must not be billed to a stage or to memory.
    np.save(work / "warm.npy", rng.standard_normal((300, args.d), dtype=np.float32))
    generate(GenerateOptions(embeddings=str(work / "warm.npy"), out=str(work / "warm"), num=2000, clusters=min(args.k, 30),
                             shard_size=1000, chunk_size=500, kmeans_iters=2, device=args.device, progress=False,
                             histogram=False), say=lambda s: None)
    base = rss_mib()
    peak_reset = reset_peak()

    opts = GenerateOptions(
        embeddings=str(work / "emb.npy"), out=str(work / "store"), num=args.num, strategy=args.strategy,
        clusters=args.k, shard_size=args.shard_size, chunk_size=args.chunk_size, kmeans_iters=args.kmeans_iters,
        sim_dtype="float16", with_probs=True, device=args.device, emb_dtype=args.emb_dtype, progress=False,
        histogram=False,
    )
    cuda = torch.cuda.is_available() and (args.device is None or str(args.device).startswith("cuda"))
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        gpu_base = torch.cuda.memory_allocated() / 2**20
    t0 = time.perf_counter()
    summary = generate(opts, say=lambda s: None)
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    peak = peak_mib()

    sec = summary.seconds
    shard_mib = min(args.shard_size, args.num) * 3 * (4 + 2 + 4) / 2**20
    # cluster state: centroids + float64 sums, labels, one chunk of points and its (chunk x k) distances
    chunk = 16384
    cluster_mib = (args.k * args.d * (4 + 8) + args.n * 8 + chunk * args.d * 4 + chunk * args.k * 4 * 2) / 2**20
    budget = emb_mib + 2 * shard_mib + cluster_mib
    used = peak - base if peak_reset or peak > base else float("nan")
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
        f"| budget: embeddings {emb_mib:,.1f} + 2 x shard {shard_mib:,.1f} + cluster state {cluster_mib:,.1f} | {budget:,.1f} |",
        f"| within budget | {'yes' if used <= budget else 'NO'} |",
    ]
    if cuda:
        lines += [f"| GPU peak allocated above baseline | {torch.cuda.max_memory_allocated() / 2**20 - gpu_base:,.1f} |"]
    lines += [
        "",
        f"(peak RSS via VmHWM{' after resetting it' if peak_reset else ''}; glibc mmap threshold "
        f"{'pinned at 1 MiB' if pinned else 'not pinned'}; fixed costs are warmed up before the baseline)",
    ]
    if summary.kmeans:
        lines += ["", f"k-means: {summary.kmeans['n_iter']} iterations, inertia {summary.kmeans['inertia'][0]:.4g} -> "
                      f"{summary.kmeans['inertia'][-1]:.4g}, re-seeded {sum(summary.kmeans['reseeded'])}"]
    text = "\n".join(lines)
    print(text)
    if args.out_md:
        Path(args.out_md).write_text(text + "\n")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
