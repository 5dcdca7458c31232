"""k-means in torch (CPU or GPU) with bounded memory, for AligNet's cluster labels.

- Init: k-means++ (D^2 sampling) on all points, or on a seeded random sample of
  ``init_sample`` points when N is large (the sample bounds init cost at
  O(k * init_sample * D) instead of O(k * N * D)).
- Lloyd iterations: points are processed in chunks of ``chunk_size`` rows;
  squared distances come from one GEMM per chunk,
  ``||x||^2 - 2 x c^T + ||c||^2``, so memory is O(chunk_size * k + k * D)
  besides the data, whatever N is. Sums and counts are accumulated in float64,
  so the centroid update does not depend on the chunk size beyond rounding.
- Empty clusters are re-seeded with the points farthest from their centroid
  (one distinct point each); every re-seed is counted and reported.
- Deterministic for a seed on a given device (random draws come from a seeded
  numpy generator; GEMMs are deterministic on CPU and, for a fixed chunk
  size, on CUDA).
- ``use_faiss=True`` uses ``faiss.Kmeans`` when installed (optional, never required).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]


@dataclass
class KMeansOptions:
    """Options of ``kmeans``.

    Attributes:
        k: number of clusters, 1 <= k <= N.
        iters: maximum Lloyd iterations.
        tol: stop when the relative inertia decrease of an iteration is below this.
        seed: seed for the init sampling.
        init: "kmeans++" (D^2 sampling) or "random" (k distinct random points).
        init_sample: run the init on a random sample of at most this many points
            (None: ``max(50 * k, 20_000)``); 0 uses all points.
        chunk_size: rows per distance GEMM (bounds memory to ~chunk_size * k floats).
        normalize: L2-normalise the points first (spherical-style clustering on directions).
        device: torch device for the computation (None: the input's device).
        use_faiss: use faiss when installed (CPU arrays only); falls back to torch otherwise.
        verbose: print one line per iteration.
    """

    k: int
    iters: int = 25
    tol: float = 1e-4
    seed: int = 0
    init: str = "kmeans++"
    init_sample: Optional[int] = None
    chunk_size: int = 16384
    normalize: bool = False
    device: Optional[Union[str, torch.device]] = None
    use_faiss: bool = False
    verbose: bool = False


@dataclass
class KMeansResult:
    """Result of ``kmeans``.

    Attributes:
        centroids: (k, D) float32 centroids.
        labels: (N,) int64 cluster of each point (nearest final centroid).
        inertia: per-iteration sum of squared distances to the assigned centroid
            (entry t is measured with the centroids before update t; the last
            entry is the final inertia of ``labels``).
        reseeded: per-iteration number of empty clusters that were re-seeded.
        n_iter: Lloyd iterations run.
        converged: whether ``tol`` stopped the loop.
        seconds: wall time.
        backend: "torch" or "faiss".
    """

    centroids: torch.Tensor
    labels: torch.Tensor
    inertia: List[float] = field(default_factory=list)
    reseeded: List[int] = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False
    seconds: float = 0.0
    backend: str = "torch"

    @property
    def sizes(self) -> np.ndarray:
        """(k,) number of points per cluster."""
        return np.bincount(self.labels.cpu().numpy(), minlength=self.centroids.shape[0])


def _check(x: ArrayLike, opts: KMeansOptions) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a numpy array or torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"x must be a non-empty (N, D) matrix, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be floating point, got {x.dtype}")
    k = opts.k
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if k > x.shape[0]:
        raise ValueError(f"k={k} clusters need at least k points, got N={x.shape[0]}")
    if opts.init not in ("kmeans++", "random"):
        raise ValueError(f"init must be 'kmeans++' or 'random', got {opts.init!r}")
    if opts.iters < 0 or opts.chunk_size < 1:
        raise ValueError("iters must be >= 0 and chunk_size >= 1")
    return x


def _chunks(n: int, size: int):
    for a in range(0, n, size):
        yield a, min(n, a + size)


def _prep_chunk(x: torch.Tensor, a: int, b: int, device, normalize: bool) -> torch.Tensor:
    xc = x[a:b].to(device=device, dtype=torch.float32)
    if normalize:
        xc = torch.nn.functional.normalize(xc, dim=1)
    return xc


def check_finite(x: torch.Tensor, chunk_size: Optional[int] = None) -> None:
    """Raise ValueError naming the first row with NaN/Inf.

    Chunked (default: about 1M elements per chunk) because ``torch.isfinite``
    makes several full-size temporaries of its input.
    """
    chunk_size = chunk_size or max(1, (1 << 20) // max(1, x.shape[1]))
    for a, b in _chunks(x.shape[0], chunk_size):
        bad = ~torch.isfinite(x[a:b]).all(dim=1)
        if bool(bad.any()):
            row = a + int(torch.nonzero(bad)[0, 0])
            raise ValueError(f"embeddings contain NaN or Inf (first at row {row})")


def _sqdist(xc: torch.Tensor, c: torch.Tensor, c_sq: torch.Tensor) -> torch.Tensor:
    # ||x||^2 - 2 x c^T + ||c||^2 via one addmm; clamp tiny negatives from cancellation.
    d = torch.addmm(c_sq[None, :], xc, c.t(), beta=1.0, alpha=-2.0)
    # squared norms without a (chunk, D) temporary
    d += torch.linalg.vector_norm(xc, dim=1, keepdim=True).square_()
    return d.clamp_min_(0)


def _init_centroids(x: torch.Tensor, opts: KMeansOptions, device, rng: np.random.Generator) -> torch.Tensor:
    n = x.shape[0]
    cap = opts.init_sample if opts.init_sample is not None else max(50 * opts.k, 20_000)
    if cap and n > cap:
        rows = np.sort(rng.choice(n, size=cap, replace=False))
        pts = _gather_rows(x, rows, device, opts.normalize, opts.chunk_size)
    else:
        pts = torch.empty(n, x.shape[1], dtype=torch.float32, device=device)
        for a, b in _chunks(n, opts.chunk_size):
            pts[a:b] = _prep_chunk(x, a, b, device, opts.normalize)
    m = pts.shape[0]
    if opts.init == "random":
        return pts[torch.from_numpy(rng.choice(m, size=opts.k, replace=False)).to(device)].clone()
    # k-means++: next centre drawn with probability proportional to D^2 to the nearest chosen centre.
    cent = torch.empty(opts.k, pts.shape[1], dtype=torch.float32, device=device)
    first = int(rng.integers(m))
    cent[0] = pts[first]
    p_sq = (pts * pts).sum(1)
    mind = (p_sq - 2 * pts @ cent[0] + cent[0].dot(cent[0])).clamp_min_(0)
    for j in range(1, opts.k):
        cum = torch.cumsum(mind.double(), 0)
        total = float(cum[-1])
        if total <= 0:  # all remaining points coincide with centres: take any unused point
            pick = int(rng.integers(m))
        else:
            u = torch.tensor([rng.random() * total], dtype=torch.float64, device=device)
            pick = min(int(torch.searchsorted(cum, u, right=True)[0]), m - 1)
        cent[j] = pts[pick]
        mind = torch.minimum(mind, (p_sq - 2 * pts @ cent[j] + cent[j].dot(cent[j])).clamp_min_(0))
    return cent


def _gather_rows(x: torch.Tensor, rows: np.ndarray, device, normalize: bool, chunk: int) -> torch.Tensor:
    out = torch.empty(len(rows), x.shape[1], dtype=torch.float32, device=device)
    idx = torch.from_numpy(rows.astype(np.int64))
    for a, b in _chunks(len(rows), chunk):
        xc = x[idx[a:b].to(x.device)].to(device=device, dtype=torch.float32)
        out[a:b] = torch.nn.functional.normalize(xc, dim=1) if normalize else xc
    return out


def _assign_pass(x, cent, opts, device, want_stats: bool, far: int):
    """One chunked pass: labels, inertia, per-cluster sums/counts, and the ``far`` farthest points."""
    k, d = cent.shape
    c_sq = (cent * cent).sum(1)
    labels = torch.empty(x.shape[0], dtype=torch.int64, device=device)
    sums = torch.zeros(k, d, dtype=torch.float64, device=device) if want_stats else None
    counts = torch.zeros(k, dtype=torch.float64, device=device) if want_stats else None
    inertia = 0.0
    top_d = torch.empty(0, dtype=torch.float32, device=device)
    top_i = torch.empty(0, dtype=torch.int64, device=device)
    for a, b in _chunks(x.shape[0], opts.chunk_size):
        xc = _prep_chunk(x, a, b, device, opts.normalize)
        dist = _sqdist(xc, cent, c_sq)
        md, lab = dist.min(1)
        labels[a:b] = lab
        inertia += float(md.double().sum())
        if want_stats:
            # per-chunk sums in float32 (at most chunk_size terms), accumulated across chunks in float64
            part = torch.zeros(k, d, dtype=torch.float32, device=device).index_add_(0, lab, xc)
            sums += part.double()
            counts += torch.bincount(lab, minlength=k).double()
        if far:
            cand_d = torch.cat([top_d, md])
            cand_i = torch.cat([top_i, torch.arange(a, b, device=device)])
            kk = min(far, cand_d.numel())
            # stable tie-break by index: sort by (-d, i) through a lexicographic sort
            order = torch.argsort(cand_i)
            cand_d, cand_i = cand_d[order], cand_i[order]
            sel = torch.argsort(-cand_d, stable=True)[:kk]
            top_d, top_i = cand_d[sel], cand_i[sel]
    return labels, inertia, sums, counts, top_i


def kmeans(x: ArrayLike, opts: KMeansOptions, progress: Optional[Callable[[str], None]] = None) -> KMeansResult:
    """Cluster the rows of ``x`` (N, D) into ``opts.k`` clusters.

    Args:
        x: (N, D) float numpy array or tensor (any float dtype; computed in float32).
            It stays where it is; chunks are moved to ``opts.device``.
        opts: ``KMeansOptions``.
        progress: optional callable receiving one line per iteration (``print`` works).

    Raises ValueError for k > N, k < 1, non-finite values or a bad shape.
    """
    t0 = time.perf_counter()
    x = _check(x, opts)
    check_finite(x)
    device = torch.device(opts.device) if opts.device is not None else x.device
    say = progress or (print if opts.verbose else None)
    if opts.use_faiss:
        res = _faiss_kmeans(x, opts)
        if res is not None:
            res.seconds = time.perf_counter() - t0
            return res
    rng = np.random.default_rng(np.random.SeedSequence([int(opts.seed), 0x6B6D]))
    with torch.no_grad():
        cent = _init_centroids(x, opts, device, rng)
        result = KMeansResult(cent, torch.empty(0, dtype=torch.int64))
        prev = math.inf
        for it in range(opts.iters):
            labels, inertia, sums, counts, far_idx = _assign_pass(x, cent, opts, device, True, opts.k)
            result.inertia.append(inertia)
            empty = torch.nonzero(counts == 0).flatten()
            new = (sums / counts.clamp_min(1)[:, None]).float()
            if empty.numel():
                # Re-seed each empty cluster with a distinct far point (farthest first).
                pts = _gather_rows(x, far_idx[: empty.numel()].cpu().numpy(), device, opts.normalize, opts.chunk_size)
                new[empty] = pts
            cent = new
            result.reseeded.append(int(empty.numel()))
            result.n_iter = it + 1
            if say:
                say(f"kmeans iter {it + 1}/{opts.iters}: inertia {inertia:.6g}, re-seeded {int(empty.numel())}")
            if empty.numel() == 0 and prev < math.inf and (prev - inertia) <= opts.tol * max(abs(prev), 1e-30):
                result.converged = True
                break
            prev = inertia
        labels, inertia, _, _, _ = _assign_pass(x, cent, opts, device, False, 0)
        result.inertia.append(inertia)
        result.centroids = cent
        result.labels = labels
    result.seconds = time.perf_counter() - t0
    return result


def _faiss_kmeans(x: torch.Tensor, opts: KMeansOptions) -> Optional[KMeansResult]:
    try:
        import faiss  # type: ignore
    except ImportError:
        return None
    if x.device.type != "cpu":
        return None
    xs = x.detach().to(torch.float32).numpy()
    if opts.normalize:
        xs = xs / np.maximum(np.linalg.norm(xs, axis=1, keepdims=True), 1e-12)
    km = faiss.Kmeans(xs.shape[1], opts.k, niter=max(1, opts.iters), seed=int(opts.seed), verbose=opts.verbose)
    km.train(np.ascontiguousarray(xs))
    dist, lab = km.index.search(np.ascontiguousarray(xs), 1)
    obj = list(getattr(km, "obj", []))
    return KMeansResult(torch.from_numpy(km.centroids.copy()), torch.from_numpy(lab[:, 0].astype(np.int64)),
                        inertia=[float(v) for v in obj] + [float(dist.sum())], reseeded=[],
                        n_iter=len(obj), converged=False, backend="faiss")
