"""k-means in torch (CPU or GPU) with bounded memory, for AligNet's cluster labels.

- Init (``kmeans_init``): k-means|| (default: a few D^2-oversampling passes, reduced by
  weighted greedy k-means++), greedy k-means++ (best of ``2 + ln k`` D^2-sampled candidates
  per centre, as scikit-learn) or random rows; optionally on a seeded sample of
  ``init_sample`` rows. k-means|| is the default because it measured better and faster
  (``benchmarks/results/kmeans.md``): on separated mixtures it recovered the true
  partition with one init for every seed tried (greedy k-means++ for 70%), at the
  same inertia on the THINGS features, in ``rounds + 1`` passes over the data instead of k.
- ``n_init`` restarts; the one with the lowest final inertia is kept, all are reported.
- Lloyd iterations: points in chunks of ``chunk_size`` rows, squared distances from one
  GEMM per chunk, so memory is O(chunk_size * k + k * D + N) besides the data. Sums and
  counts are accumulated in float64.
- Stops when the squared centre shift is at most ``tol * mean(var(x))`` (scikit-learn's
  rule) or the labels no longer change.
- Empty clusters are re-seeded with the points farthest from their centroid (one distinct
  point each); every re-seed is counted and reported.
- Deterministic for a seed on CPU (random draws come from seeded numpy generators). On
  CUDA the float64 sums use atomics, so centroids can differ in the last bits run to run.
- ``use_faiss=True`` runs Lloyd in faiss (``kmeans_faiss``, optional); options it cannot
  honour raise, it never falls back silently.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Union

import numpy as np
import torch

from .kmeans_data import Points, check_finite, sqdist_to
from .kmeans_faiss import check_faiss, faiss_lloyd
from .kmeans_init import default_trials, greedy_kmeanspp, kmeans_parallel, random_init

ArrayLike = Union[np.ndarray, torch.Tensor]
INITS = ("kmeans++", "kmeans||", "random")
__all__ = ["KMeansOptions", "KMeansResult", "kmeans", "check_finite"]


@dataclass
class KMeansOptions:
    """Options of ``kmeans``.

    Attributes:
        k: number of clusters, 1 <= k <= N.
        iters: maximum Lloyd iterations per restart.
        tol: stop when the summed squared centre shift of an iteration is at most
            ``tol * mean(var(x, axis=0))`` (scikit-learn's ``tol``); 0 runs all ``iters``
            unless the labels stop changing.
        seed: seed of all random draws.
        init: "kmeans||" (k-means|| reduced by weighted greedy k-means++), "kmeans++"
            (greedy k-means++ on all rows) or "random" (k distinct random rows).
        init_sample: run the init on a seeded random sample of at most this many rows;
            None or 0 uses all rows.
        chunk_size: rows per distance GEMM (bounds memory to ~chunk_size * k floats).
        normalize: L2-normalise the points first (spherical-style clustering on directions).
        device: torch device for the computation (None: the input's device).
        use_faiss: run Lloyd in faiss (must be installed; raises for options it cannot honour).
        verbose: print one line per iteration.
        n_init: restarts (each with its own init); the lowest final inertia wins.
        local_trials: greedy k-means++ candidates per centre (None: ``2 + floor(ln k)``;
            1 is plain k-means++).
        parallel_rounds: k-means|| sampling rounds.
        parallel_oversample: k-means|| expected candidates per round, in units of k.
    """

    k: int
    iters: int = 100
    tol: float = 1e-4
    seed: int = 0
    init: str = "kmeans||"
    init_sample: Optional[int] = None
    chunk_size: int = 16384
    normalize: bool = False
    device: Optional[Union[str, torch.device]] = None
    use_faiss: bool = False
    verbose: bool = False
    n_init: int = 3
    local_trials: Optional[int] = None
    parallel_rounds: int = 5
    parallel_oversample: float = 2.0


@dataclass
class KMeansResult:
    """Result of ``kmeans`` (the best restart, plus a summary of every restart).

    Attributes:
        centroids: (k, D) float32 centroids.
        labels: (N,) int64 cluster of each point (nearest final centroid).
        inertia: per-iteration sum of squared distances to the assigned centroid
            (entry t is measured with the centroids before update t; the last
            entry is the final inertia of ``labels``).
        reseeded: per-iteration number of empty clusters that were re-seeded.
        n_iter: Lloyd iterations run.
        converged: whether ``tol`` or unchanged labels stopped the loop.
        seconds: wall time of the whole call (all restarts).
        backend: "torch" or "faiss".
        restarts: per restart: final inertia, iterations, re-seeds, converged, seconds.
        best_restart: index of the kept restart in ``restarts``.
        tol_abs: the absolute shift tolerance used (``tol * mean variance``).
    """

    centroids: torch.Tensor
    labels: torch.Tensor
    inertia: List[float] = field(default_factory=list)
    reseeded: List[int] = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False
    seconds: float = 0.0
    backend: str = "torch"
    restarts: List[Dict[str, object]] = field(default_factory=list)
    best_restart: int = 0
    tol_abs: float = 0.0

    @property
    def sizes(self) -> np.ndarray:
        """(k,) number of points per cluster."""
        return np.bincount(self.labels.cpu().numpy(), minlength=self.centroids.shape[0])

    @property
    def final_inertia(self) -> float:
        """Sum of squared distances of the points to their final centroid."""
        return self.inertia[-1]

    def to_dict(self) -> Dict[str, object]:
        """JSON-ready report: inertia per restart, iterations, re-seeds, cluster sizes, time."""
        sizes = self.sizes
        return {
            "backend": self.backend, "k": int(self.centroids.shape[0]), "n": int(self.labels.shape[0]),
            "final_inertia": self.final_inertia, "inertia": list(self.inertia), "reseeded": list(self.reseeded),
            "n_iter": self.n_iter, "converged": self.converged, "seconds": self.seconds,
            "sizes_min": int(sizes.min()), "sizes_median": float(np.median(sizes)), "sizes_max": int(sizes.max()),
            "best_restart": self.best_restart, "inertia_per_restart": [r["inertia"] for r in self.restarts],
            "restarts": list(self.restarts), "tol_abs": self.tol_abs,
        }

    def to_json(self, **kw) -> str:
        """``to_dict()`` as a JSON string.

        Args:
            kw: passed to ``json.dumps`` (e.g. ``indent=1``).
        """
        return json.dumps(self.to_dict(), **kw)


def _check_options(opts: KMeansOptions, n: int) -> None:
    """Raise ValueError for options that cannot work on ``n`` points.

    Args:
        opts: the options.
        n: number of points.
    """
    k = opts.k
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if k > n:
        raise ValueError(f"k={k} clusters need at least k points, got N={n}")
    if opts.init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {opts.init!r}")
    if isinstance(opts.n_init, bool) or not isinstance(opts.n_init, (int, np.integer)) or opts.n_init < 1:
        raise ValueError(f"n_init must be an int >= 1, got {opts.n_init!r}")
    if opts.local_trials is not None and opts.local_trials < 1:
        raise ValueError(f"local_trials must be >= 1 or None, got {opts.local_trials!r}")
    if opts.iters < 0 or opts.chunk_size < 1:
        raise ValueError(f"iters must be >= 0 and chunk_size >= 1, got {opts.iters}, {opts.chunk_size}")
    if not (opts.tol >= 0 and math.isfinite(opts.tol)):
        raise ValueError(f"tol must be finite and >= 0, got {opts.tol!r}")
    if opts.init_sample is not None and opts.init_sample < 0:
        raise ValueError(f"init_sample must be >= 0 or None, got {opts.init_sample!r}")
    if opts.init_sample and opts.init_sample < k:
        raise ValueError(f"init_sample={opts.init_sample} rows cannot seed k={k} centres")
    if opts.parallel_rounds < 1 or not opts.parallel_oversample > 0:
        raise ValueError("parallel_rounds must be >= 1 and parallel_oversample > 0")


def _check(x: ArrayLike, opts: KMeansOptions) -> torch.Tensor:
    """The input as an (N, D) float tensor, after validating it and ``opts``.

    Args:
        x: (N, D) numpy array or tensor.
        opts: the options.
    """
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a numpy array or torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"x must be a non-empty (N, D) matrix, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be floating point, got {x.dtype}")
    _check_options(opts, x.shape[0])
    return x


def _init(p: Points, opts: KMeansOptions, rng: np.random.Generator) -> torch.Tensor:
    """(k, D) initial centres for one restart.

    Args:
        p: the points.
        opts: the options (init, init_sample, local_trials, k-means|| settings).
        rng: the restart's generator.
    """
    if opts.init_sample and p.n > opts.init_sample:
        p = p.subset(np.sort(rng.choice(p.n, size=opts.init_sample, replace=False)))
    trials = opts.local_trials or default_trials(opts.k)
    if opts.init == "random":
        return random_init(p, opts.k, rng)
    if opts.init == "kmeans||":
        return kmeans_parallel(p, opts.k, trials, rng, opts.parallel_rounds, opts.parallel_oversample)
    return greedy_kmeanspp(p, opts.k, trials, rng)


class _Pass:
    """Buffers of one assignment pass (reused across iterations).

    Attributes:
        labels: (N,) nearest centre.
        md: (N,) squared distance to it.
        buf: (chunk, k) distance buffer.
    """

    def __init__(self, p: Points, k: int):
        self.labels = torch.empty(p.n, dtype=torch.int64, device=p.device)
        self.md = torch.empty(p.n, dtype=torch.float32, device=p.device)
        self.buf = torch.empty(min(p.chunk, p.n), k, dtype=torch.float32, device=p.device)


def _assign(p: Points, cent: torch.Tensor, st: _Pass, stats: bool):
    """One chunked E-step into ``st``: labels, distances, inertia and (if ``stats``) float64 sums/counts.

    Args:
        p: the points.
        cent: (k, D) float32 centres.
        st: buffers to fill.
        stats: also accumulate per-cluster sums and counts for the M-step.
    """
    k = cent.shape[0]
    c_sq = (cent * cent).sum(1)
    sums = torch.zeros(k, p.d, dtype=torch.float64, device=p.device) if stats else None
    counts = torch.zeros(k, dtype=torch.float64, device=p.device) if stats else None
    for a, b, xc in p.chunks():
        torch.min(sqdist_to(p, a, b, xc, cent, c_sq, st.buf[: b - a]), 1, out=(st.md[a:b], st.labels[a:b]))
        if stats:
            sums.index_add_(0, st.labels[a:b], xc.double())
            counts += torch.bincount(st.labels[a:b], minlength=k)
    return float(st.md.sum(dtype=torch.float64)), sums, counts


def _update(p: Points, st: _Pass, sums: torch.Tensor, counts: torch.Tensor):
    """M-step: float64 means; each empty cluster re-seeded with a distinct far point.

    Returns (new centres float64, number re-seeded).

    Args:
        p: the points.
        st: the pass that produced ``sums``/``counts`` (its distances pick far points).
        sums: (k, D) float64 per-cluster sums.
        counts: (k,) float64 per-cluster counts.
    """
    new = sums / counts.clamp_min(1)[:, None]
    empty = torch.nonzero(counts == 0).flatten()
    if empty.numel():
        # farthest first; ties broken by row index so the choice does not depend on the sort
        far = torch.argsort(-st.md, stable=True)[: empty.numel()]
        new[empty] = p.rows(far).double()
    return new, int(empty.numel())


def _lloyd(p: Points, cent: torch.Tensor, opts: KMeansOptions, tol_abs: float, say, tag: str) -> Dict[str, object]:
    """Lloyd iterations from ``cent`` until convergence or ``opts.iters``.

    Returns a dict with centroids, labels, inertia, reseeded, n_iter, converged.

    Args:
        p: the points.
        cent: (k, D) float32 initial centres.
        opts: the options (iters).
        tol_abs: absolute squared-shift tolerance.
        say: progress callable or None.
        tag: prefix of progress lines.
    """
    st, prev = _Pass(p, opts.k), None
    run = {"inertia": [], "reseeded": [], "n_iter": 0, "converged": False}
    for it in range(opts.iters):
        inertia, sums, counts = _assign(p, cent, st, True)
        if prev is not None and torch.equal(prev, st.labels):
            # same labels as the last update: ``cent`` already are their means, so this
            # iteration's update is a no-op and its inertia is the final one
            run.update(converged=True, inertia=run["inertia"] + [inertia, inertia], n_iter=it + 1,
                       reseeded=run["reseeded"] + [0])
            return dict(run, centroids=cent, labels=st.labels)
        new, n_empty = _update(p, st, sums, counts)
        shift = float((new - cent.double()).square().sum())
        cent, prev = new.float(), st.labels.clone()
        run["inertia"].append(inertia)
        run["reseeded"].append(n_empty)
        run["n_iter"] = it + 1
        if say:
            say(f"kmeans {tag}iter {it + 1}/{opts.iters}: inertia {inertia:.6g}, shift {shift:.3g}, re-seeded {n_empty}")
        if n_empty == 0 and shift <= tol_abs:
            run["converged"] = True
            break
    inertia, _, _ = _assign(p, cent, st, False)
    run["inertia"].append(inertia)
    return dict(run, centroids=cent, labels=st.labels)


def restart_rng(seed: int, restart: int) -> np.random.Generator:
    """The generator of one restart (independent streams for one seed).

    Args:
        seed: ``KMeansOptions.seed``.
        restart: restart index.
    """
    return np.random.default_rng(np.random.SeedSequence([int(seed), 0x6B6D, int(restart)]))


def kmeans(x: ArrayLike, opts: KMeansOptions, progress: Optional[Callable[[str], None]] = None) -> KMeansResult:
    """Cluster the rows of ``x`` (N, D) into ``opts.k`` clusters.

    Args:
        x: (N, D) float numpy array or tensor (any float dtype; computed in float32).
            It stays where it is; chunks are moved to ``opts.device``.
        opts: ``KMeansOptions``.
        progress: optional callable receiving one line per iteration (``print`` works).

    Raises ValueError for k > N, k < 1, n_init < 1, non-finite values, a bad shape, or
    faiss options it cannot honour.
    """
    t0 = time.perf_counter()
    x = _check(x, opts)
    check_finite(x)
    device = torch.device(opts.device) if opts.device is not None else x.device
    say = progress or (print if opts.verbose else None)
    if opts.use_faiss:
        check_faiss(opts, x, device)
    with torch.no_grad():
        p = Points.build(x, device, opts.normalize, opts.chunk_size)
        tol_abs = opts.tol * p.mean_variance()
        best, restarts = None, []
        for r in range(opts.n_init):
            t1 = time.perf_counter()
            cent = _init(p, opts, restart_rng(opts.seed, r))
            t_init = time.perf_counter() - t1
            tag = f"restart {r + 1}/{opts.n_init} " if opts.n_init > 1 else ""
            run = _run_lloyd(p, cent, opts, tol_abs, say, tag)
            restarts.append({"inertia": run["inertia"][-1], "n_iter": run["n_iter"], "reseeded": sum(run["reseeded"]),
                             "converged": run["converged"], "init_seconds": t_init,
                             "seconds": time.perf_counter() - t1})
            if best is None or run["inertia"][-1] < best[1]["inertia"][-1]:
                best = (r, run)
    r, run = best
    return KMeansResult(run["centroids"], run["labels"], run["inertia"], run["reseeded"], run["n_iter"],
                        run["converged"], time.perf_counter() - t0, "faiss" if opts.use_faiss else "torch",
                        restarts, r, tol_abs)


def _run_lloyd(p: Points, cent: torch.Tensor, opts: KMeansOptions, tol_abs: float, say, tag: str) -> Dict[str, object]:
    """Lloyd from ``cent`` in torch or faiss (see ``_lloyd`` for the arguments and result)."""
    if opts.use_faiss:
        return faiss_lloyd(p, cent, opts, tol_abs, say, tag)
    return _lloyd(p, cent, opts, tol_abs, say, tag)
