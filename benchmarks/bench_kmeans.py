"""Benchmark of ``fastalign.triplets.kmeans`` against scikit-learn's KMeans (and faiss where installed).

Side by side in one process, seed by seed (each method runs on the same data right after
the others, so machine load hits all alike), with the same thread count for every library
(torch, BLAS/OpenMP through threadpoolctl, faiss). Cases:

- ``gmm50``: 20,000 x 64, 50 separated Gaussian blobs (sklearn ``make_blobs``).
- ``gmm500``: 100,000 x 128, 500 blobs (N >= 100k: the speed target).
- ``things-k{27,50,100}``: the bundled THINGS CLIP ViT-B/32 features (1854 x 512).

For each case and ``n_init`` it reports, over seeds: the ratio of our median final inertia
to sklearn's median (same ``n_init``), the worst adjusted Rand index against the true
blobs, median wall time and iterations.

    python benchmarks/bench_kmeans.py                  # all cases, 5 seeds (gmm500: 3)
    python benchmarks/bench_kmeans.py --quick          # small sizes, 2 seeds
    python benchmarks/bench_kmeans.py --out-md benchmarks/results/kmeans.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from fastalign.triplets.kmeans import KMeansOptions, kmeans  # noqa: E402

THINGS = ROOT / "fastalign/datasets/things/model-features/clip-vit-base-p32-embeddings.npy"
Case = Tuple[str, np.ndarray, Optional[np.ndarray], int]  # name, x, true labels, k


def cases(quick: bool, names: List[str]) -> List[Case]:
    """The benchmark problems.

    Args:
        quick: smaller mixtures.
        names: case names to keep (empty: all).
    """
    from sklearn.datasets import make_blobs

    out: List[Case] = []
    for name, n, d, k in (("gmm50", 20_000, 64, 50), ("gmm500", 100_000, 128, 500)):
        if quick:
            n, d = n // 10, d // 2
        x, y = make_blobs(n_samples=n, n_features=d, centers=k, random_state=0)
        out.append((name, x.astype(np.float32), y, k))
    things = np.load(THINGS).astype(np.float32)
    out += [(f"things-k{k}", things, None, k) for k in (27, 50, 100)]
    return [c for c in out if not names or c[0] in names]


def timed(fn: Callable[[], Tuple[float, np.ndarray, int]]) -> Dict[str, float]:
    """Run ``fn`` (returning inertia, labels, iterations) and time it.

    Args:
        fn: the clustering call.
    """
    t = time.perf_counter()
    inertia, labels, iters = fn()
    return {"inertia": float(inertia), "seconds": time.perf_counter() - t, "iters": iters, "labels": labels}


def methods(x: np.ndarray, k: int, seed: int, n_init: int, iters: int, faiss_iters: int) -> Dict[str, Callable]:
    """The clusterings compared, each returning (final inertia, labels, iterations of the kept run).

    Args:
        x: (N, D) float32 points.
        k: clusters.
        seed: seed of every method.
        n_init: restarts of every method.
        iters: max iterations of ours and sklearn's.
        faiss_iters: iterations of faiss (it has no stopping rule).
    """
    from sklearn.cluster import KMeans

    def ours(init: str, use_faiss: bool = False) -> Callable:
        def run():
            r = kmeans(x, KMeansOptions(k=k, seed=seed, n_init=n_init, iters=iters, init=init, use_faiss=use_faiss))
            return r.final_inertia, r.labels.numpy(), r.n_iter
        return run

    def sk():
        m = KMeans(k, n_init=n_init, max_iter=iters, random_state=seed).fit(x)
        return m.inertia_, m.labels_, m.n_iter_

    out = {"ours, kmeans++": ours("kmeans++"), "ours, kmeans||": ours("kmeans||"), "sklearn": sk}
    try:
        import faiss  # type: ignore
    except ImportError:
        return out

    def fa():  # faiss's own k-means: its k-means++ init where it has one, fixed iterations, no subsampling
        km = faiss.Kmeans(x.shape[1], k, niter=faiss_iters, nredo=n_init, seed=seed + 1,
                          max_points_per_centroid=len(x) // k + 1, min_points_per_centroid=1)
        if hasattr(faiss, "ClusteringInitMethod_KMEANS_PLUS_PLUS"):
            km.cp.init_method = faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS
        km.train(x)
        dist, lab = km.index.search(x, 1)
        return float(dist.astype(np.float64).sum()), lab[:, 0], km.cp.niter

    out["faiss"] = fa
    out["ours kmeans|| + faiss Lloyd"] = ours("kmeans||", use_faiss=True)
    return out


def run_case(case: Case, seeds: List[int], n_init: int, iters: int, faiss_iters: int) -> List[Dict[str, object]]:
    """All methods on one case, seed by seed; one summary row per method.

    Args:
        case: (name, x, truth, k).
        seeds: seeds to run.
        n_init: restarts.
        iters: max iterations.
        faiss_iters: iterations of faiss.
    """
    from sklearn.metrics import adjusted_rand_score

    name, x, truth, k = case
    res: Dict[str, List[Dict[str, float]]] = {}
    for seed in seeds:
        for m, fn in methods(x, k, seed, n_init, iters, faiss_iters).items():
            r = timed(fn)
            r["ari"] = adjusted_rand_score(truth, r.pop("labels")) if truth is not None else float("nan")
            res.setdefault(m, []).append(r)
            print(f"  {name} n_init={n_init} seed={seed} {m}: inertia {r['inertia']:.6g} "
                  f"{r['seconds']:.2f}s {r['iters']} it ARI {r['ari']:.4f}", flush=True)
    ref = statistics.median(r["inertia"] for r in res["sklearn"])
    return [{"case": name, "n": len(x), "d": x.shape[1], "k": k, "n_init": n_init, "method": m,
             "ratio": statistics.median(r["inertia"] for r in rs) / ref,
             "ari_min": min(r["ari"] for r in rs), "seconds": statistics.median(r["seconds"] for r in rs),
             "iters": statistics.median(r["iters"] for r in rs), "seeds": len(rs)} for m, rs in res.items()]


def table(rows: List[Dict[str, object]], header: str) -> str:
    """Markdown table of the summary rows.

    Args:
        rows: ``run_case`` rows.
        header: text above the table.
    """
    lines = [header, "", "| case | N x D, k | n_init | method | median inertia / sklearn's | min ARI | median time (s) | median iters | seeds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ari = "-" if r["ari_min"] != r["ari_min"] else f"{r['ari_min']:.4f}"
        method = r["method"].replace("|", "\\|")  # "kmeans||" would split the cell
        lines.append(f"| {r['case']} | {r['n']} x {r['d']}, {r['k']} | {r['n_init']} | {method} | {r['ratio']:.4f} "
                     f"| {ari} | {r['seconds']:.2f} | {r['iters']:g} | {r['seeds']} |")
    return "\n".join(lines) + "\n"


def set_threads(n: int):
    """Use ``n`` threads in torch, BLAS/OpenMP (sklearn) and faiss; returns the threadpoolctl guard.

    Args:
        n: threads.
    """
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    try:
        import faiss  # type: ignore
        faiss.omp_set_num_threads(n)
    except ImportError:
        pass
    return threadpool_limits(n)


def main(argv: Optional[List[str]] = None) -> int:
    """Command line entry point (see the module docstring).

    Args:
        argv: arguments (None: ``sys.argv``).
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="threads for every library (default 1)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--big-seeds", type=int, default=3, help="seeds of gmm500")
    ap.add_argument("--n-init", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--iters", type=int, default=300, help="max Lloyd iterations (sklearn's default)")
    ap.add_argument("--faiss-iters", type=int, default=25, help="faiss iterations (faiss's default; it has no tolerance)")
    ap.add_argument("--cases", nargs="*", default=[])
    ap.add_argument("--out-md", type=Path)
    args = ap.parse_args(argv)
    guard = set_threads(args.threads)
    rows = []
    with guard:
        for case in cases(args.quick, args.cases):
            seeds = list(range(args.big_seeds if case[0] == "gmm500" and not args.quick else args.seeds))
            if args.quick:
                seeds = seeds[:2]
            for n_init in args.n_init:
                rows += run_case(case, seeds, n_init, args.iters, args.faiss_iters)
    import sklearn

    head = (f"k-means, {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, {args.threads} thread(s) "
            f"for every library; torch {torch.__version__}, scikit-learn {sklearn.__version__}; "
            f"`python benchmarks/bench_kmeans.py {' '.join(argv if argv is not None else sys.argv[1:])}`")
    md = table(rows, head)
    print(md)
    if args.out_md:
        from fastalign.io import atomic_write_text

        args.out_md.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out_md, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
