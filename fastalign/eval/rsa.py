"""Representational similarity analysis: RDMs from embeddings and their comparison.

RDM sign convention: every RDM is a *dissimilarity* (larger = more different),
so that any two RDMs can be rank-correlated directly:

- ``cosine``: ``1 - cos(e_i, e_j)`` (norms clamped at 1e-8, so a zero row has
  dissimilarity 1 to everything, where scipy would give NaN);
- ``correlation``: ``1 - pearson(e_i, e_j)`` over the feature dimension;
- ``euclidean``: ``||e_i - e_j||``, via ``|a|^2 + |b|^2 - 2 a.b`` clamped at 0
  (float32 inputs carry about 1e-3 relative error for near-identical rows; pass
  float64 for exact agreement with ``scipy.spatial.distance.pdist``);
- ``dot``: ``-<e_i, e_j>``. The dot product is a similarity, so the RDM holds
  its negative; the diagonal is then ``-|e_i|^2``, not 0, which does not
  matter because only the upper triangle (``i < j``) is ever compared.

``rdm_upper`` returns the upper triangle in ``pdist`` order (row-major,
``i < j``), computed in row blocks of ``chunk_size`` rows against the rows
at or after the block: peak extra memory is ``chunk_size * N`` values, there
is no Python loop over pairs, and it runs on the embeddings' device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Union

import torch

from ..common.tensors import as_emb, as_vector
from ..ops import acc_dtype
from .correlation import Ranked, kendall_tau_a, pearson, rank_vector, spearman

__all__ = ["COMPARISONS", "METRICS", "RDMReference", "compare_rdms", "rdm", "rdm_reference", "rdm_upper", "rsa",
           "upper_triangle"]

METRICS = ("cosine", "correlation", "euclidean", "dot")
COMPARISONS = {"spearman": spearman, "pearson": pearson, "kendall_tau_a": kendall_tau_a}
_NORM_EPS = 1e-8


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")


def _prepare(emb: torch.Tensor, metric: str):
    """Per-row precomputation, O(N D): the operands of the block products."""
    e = emb.to(acc_dtype(emb.dtype))
    if metric == "correlation":
        e = e - e.mean(dim=1, keepdim=True)
    if metric in ("cosine", "correlation"):
        e = e / e.norm(dim=1, keepdim=True).clamp_min(_NORM_EPS)
    sq = (e * e).sum(1) if metric == "euclidean" else None
    return e, sq


def _block(e: torch.Tensor, sq: Optional[torch.Tensor], rows: slice, cols: slice, metric: str) -> torch.Tensor:
    g = e[rows] @ e[cols].T
    if metric in ("cosine", "correlation"):
        return 1.0 - g
    if metric == "dot":
        return -g
    d2 = sq[rows, None] + sq[None, cols] - 2.0 * g
    return d2.clamp_min_(0.0).sqrt_()


def _chunk(chunk_size: int) -> int:
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    return chunk_size


def rdm(emb: Any, metric: str = "cosine", chunk_size: int = 2048) -> torch.Tensor:
    """The full (N, N) RDM of the rows of ``emb`` (see the module docstring for conventions).

    Args:
        emb: (N, D) numpy array or tensor; the result is on its device.
        metric: one of ``METRICS``.
        chunk_size: rows per block product.

    Returns float32 (float64 for float64 input). Symmetric; the diagonal is 0
    except for ``dot``.
    """
    _check_metric(metric)
    e, sq = _prepare(as_emb(emb), metric)
    n = e.shape[0]
    out = torch.empty((n, n), dtype=e.dtype, device=e.device)
    step = _chunk(chunk_size)
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        out[r0:r1] = _block(e, sq, slice(r0, r1), slice(0, n), metric)
    if metric != "dot":
        out.fill_diagonal_(0.0)
    return out


def rdm_upper(emb: Any, metric: str = "cosine", chunk_size: int = 2048) -> torch.Tensor:
    """The upper triangle (``i < j``, row-major: ``pdist`` order) of the RDM, shape (N (N - 1) / 2,).

    Args:
        emb, metric, chunk_size: as in ``rdm``.
    """
    _check_metric(metric)
    e, sq = _prepare(as_emb(emb), metric)
    n = e.shape[0]
    out = torch.empty((n * (n - 1) // 2,), dtype=e.dtype, device=e.device)
    step = _chunk(chunk_size)
    offset = 0
    for r0 in range(0, n - 1, step):
        r1 = min(n - 1, r0 + step)
        block = _block(e, sq, slice(r0, r1), slice(r0, n), metric)
        # Row i of the block holds columns r0..n-1; keep columns j > i.
        rows = torch.arange(r0, r1, device=e.device)[:, None]
        cols = torch.arange(r0, n, device=e.device)[None, :]
        vals = block[cols > rows]
        out[offset:offset + vals.numel()] = vals
        offset += vals.numel()
    return out


def upper_triangle(matrix: Any) -> torch.Tensor:
    """Upper triangle (``i < j``, row-major) of a square matrix, as float64."""
    m = as_emb(matrix, "rdm").to(torch.float64)
    if m.shape[0] != m.shape[1]:
        raise ValueError(f"an RDM must be square, got shape {tuple(m.shape)}")
    iu = torch.triu_indices(m.shape[0], m.shape[0], offset=1, device=m.device)
    return m[iu[0], iu[1]]


def _as_upper(x: Any, name: str) -> torch.Tensor:
    if getattr(x, "ndim", None) == 2:
        return upper_triangle(x)
    return as_vector(x, name)


def compare_rdms(a: Any, b: Any, method: str = "spearman") -> float:
    """Correlate two RDMs.

    Args:
        a, b: square (N, N) RDMs or their upper triangles (``pdist`` order).
        method: ``"spearman"``, ``"pearson"`` or ``"kendall_tau_a"``.
    """
    if method not in COMPARISONS:
        raise ValueError(f"method must be one of {list(COMPARISONS)}, got {method!r}")
    ua, ub = _as_upper(a, "a"), _as_upper(b, "b")
    if ua.numel() != ub.numel():
        raise ValueError(f"the RDMs differ in size: {ua.numel()} vs {ub.numel()} pairs")
    return COMPARISONS[method](ua, ub.to(ua.device))


@dataclass(frozen=True)
class RDMReference:
    """The ranked RDM upper triangle of one representation, built once to compare many with it.

    Attributes:
        metric: its RDM metric.
        n_objects: rows of the representation.
        upper: the upper triangle with its ranks (``fastalign.eval.correlation.Ranked``).
    """

    metric: str
    n_objects: int
    upper: Ranked


def rdm_reference(emb: Any, metric: str = "cosine", chunk_size: int = 2048) -> RDMReference:
    """``RDMReference`` of ``emb`` (e.g. the human similarity embedding of an RSA against several models).

    Args:
        emb, metric, chunk_size: as in ``rdm_upper``.
    """
    e = as_emb(emb, "emb")
    return RDMReference(metric, int(e.shape[0]), rank_vector(rdm_upper(e, metric, chunk_size), "rdm"))


def rsa(
    emb_a: Any,
    emb_b: Union[Any, RDMReference],
    metric_a: str = "cosine",
    metric_b: Optional[str] = None,
    methods: Sequence[str] = ("spearman", "pearson", "kendall_tau_a"),
    chunk_size: int = 2048,
) -> Dict[str, float]:
    """RDMs of two representations of the same N objects, compared by each method.

    Args:
        emb_a, emb_b: (N, D_a) and (N, D_b); rows are the same objects. ``emb_b`` may be an
            ``RDMReference`` (its own metric then; ``metric_b`` must match or be None).
        metric_a: RDM metric of ``emb_a``; ``metric_b`` that of ``emb_b`` (default ``metric_a``).
        methods: comparisons to run (keys of ``COMPARISONS``).
        chunk_size: rows per block when building the RDMs.

    Returns ``{method: correlation}``.
    """
    a = as_emb(emb_a, "emb_a")
    if isinstance(emb_b, RDMReference):
        if metric_b not in (None, emb_b.metric):
            raise ValueError(f"metric_b {metric_b!r} differs from the reference's metric {emb_b.metric!r}")
        b, n_b = None, emb_b.n_objects
    else:
        b = as_emb(emb_b, "emb_b", device=a.device)
        n_b = int(b.shape[0])
    if a.shape[0] != n_b:
        raise ValueError(f"emb_a has {a.shape[0]} rows but emb_b has {n_b}; both must list the same objects")
    for m in methods:
        if m not in COMPARISONS:
            raise ValueError(f"method must be one of {list(COMPARISONS)}, got {m!r}")
    ref = emb_b if b is None else rdm_reference(b, metric_b or metric_a, chunk_size)
    ub = ref.upper if ref.upper.values.device == a.device else rank_vector(ref.upper.values.to(a.device), "rdm")
    # Rank the triangle once for all methods (Spearman and tau-a sort the same values).
    ua = rank_vector(rdm_upper(a, metric_a, chunk_size), "rdm")
    return {m: COMPARISONS[m](ua, ub) for m in methods}
