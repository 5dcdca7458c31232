"""Optional faiss Lloyd iterations for ``kmeans(..., KMeansOptions(use_faiss=True))``.

The init (and so ``init``, ``init_sample``, ``local_trials``, ``seed``, ``n_init``) stays in
torch and is handed to faiss as its initial centroids. faiss then runs one iteration per
``Kmeans.train`` call, so the stopping rule (``tol`` on the squared centre shift) and the
iteration cap are the same as the torch path's; faiss's own subsampling of the training
set is switched off. Re-seeds are faiss's cluster splits (``nsplit``). Anything faiss
cannot do raises; there is no silent fallback to torch.
"""

from __future__ import annotations

from typing import Dict

import numpy as np
import torch

from .kmeans_data import Points


def check_faiss(opts, x: torch.Tensor, device: torch.device) -> None:
    """Raise if faiss is missing or cannot honour ``opts`` for ``x``.

    Args:
        opts: ``KMeansOptions`` with ``use_faiss=True``.
        x: the (N, D) input.
        device: the compute device.
    """
    try:
        import faiss  # noqa: F401  # type: ignore
    except ImportError as e:
        raise ImportError("use_faiss=True needs faiss (pip install faiss-cpu); it is not installed") from e
    if device.type != "cpu" or x.device.type != "cpu":
        raise ValueError(f"use_faiss=True runs on CPU arrays only; got input on {x.device}, device {device} "
                         "(use the torch path, use_faiss=False, on a GPU)")
    if opts.iters < 1:
        raise ValueError("use_faiss=True needs iters >= 1 (faiss always runs at least one iteration)")


def _prepared(p: Points) -> np.ndarray:
    """All prepared rows as one contiguous float32 numpy array (faiss needs the whole matrix).

    Args:
        p: the points.
    """
    if not p.normalize and p.x.dtype == torch.float32:
        return np.ascontiguousarray(p.x.numpy())
    out = np.empty((p.n, p.d), dtype=np.float32)
    for a, b, xc in p.chunks():
        out[a:b] = xc.numpy()
    return out


def faiss_lloyd(p: Points, cent: torch.Tensor, opts, tol_abs: float, say, tag: str) -> Dict[str, object]:
    """Lloyd iterations in faiss from ``cent``; same result dict as ``kmeans._lloyd``.

    Args:
        p: the points (on CPU).
        cent: (k, D) float32 initial centres.
        opts: ``KMeansOptions`` (k, iters, verbose).
        tol_abs: absolute squared-shift tolerance.
        say: progress callable or None.
        tag: prefix of progress lines.
    """
    import faiss  # type: ignore

    xs, k = _prepared(p), opts.k
    # one iteration per call; no subsampling (max_points_per_centroid), no small-N warning
    km = faiss.Kmeans(p.d, k, niter=1, nredo=1, seed=int(opts.seed), verbose=False,
                      max_points_per_centroid=p.n // k + 1, min_points_per_centroid=1)
    c = cent.numpy().astype(np.float32)
    run = {"inertia": [], "reseeded": [], "n_iter": 0, "converged": False}
    for it in range(opts.iters):
        km.train(xs, init_centroids=c)
        new, stats = km.centroids.copy(), km.iteration_stats[0]
        shift = float(np.square(new.astype(np.float64) - c).sum())
        c = new
        run["inertia"].append(float(stats["obj"]))
        run["reseeded"].append(int(stats["nsplit"]))
        run["n_iter"] = it + 1
        if say:
            say(f"kmeans(faiss) {tag}iter {it + 1}/{opts.iters}: inertia {stats['obj']:.6g}, shift {shift:.3g}")
        if stats["nsplit"] == 0 and shift <= tol_abs:
            run["converged"] = True
            break
    index = faiss.IndexFlatL2(p.d)
    index.add(c)
    dist, lab = index.search(xs, 1)
    run["inertia"].append(float(dist.astype(np.float64).sum()))
    return dict(run, centroids=torch.from_numpy(c), labels=torch.from_numpy(lab[:, 0].astype(np.int64)))
