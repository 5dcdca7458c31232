"""RSA against measured human RDMs, with the noise ceiling and a bootstrap over stimuli.

Every comparison is on the upper triangle (pairs ``i < j``) of the model RDM (built
from the features with ``fastalign.eval.rsa.rdm``) and of the human RDMs
(``fastalign.io.rdm.HumanRDMs``), by Spearman, Pearson or Kendall's tau-a, and is
reported two ways:

- ``pooled``: the model against the pooled human RDM, pooled as rsatoolbox's
  ``pool_rdm`` does for that measure: the mean of each subject's ranks for
  Spearman and tau-a, the mean of each subject's z-scores (population SD) for
  Pearson;
- ``subject_mean``: the mean over subjects of the model's correlation with each
  subject, the quantity the noise ceiling bounds.

Noise ceiling (S >= 2 subjects; Nili et al. 2014, the point estimates of
rsatoolbox's ``boot_noise_ceiling``): lower bound = the mean over subjects of each
subject's correlation with the pool of the *other* subjects; upper bound = the mean
of each subject's correlation with the pool of *all* subjects. With one subject
there is none (``None``).

Bootstrap (``n_bootstrap`` > 0): stimuli are drawn with replacement (seeded by
``seed``); the pairs of a stimulus with a copy of itself are dropped, as
rsatoolbox's ``subsample_pattern`` does (they are trivially 0), and the other pairs
of repeated stimuli are kept. ``ci95`` holds the 2.5 and 97.5 percentiles of the
``pooled`` and ``subject_mean`` values over the draws where they are defined. The
resampled vectors are never built: a resample is a weight per measured pair, and
its correlations are weighted ones (``fastalign.eval.weighted``), all resamples of a
batch at once.

NaN pairs (only when the RDMs were read with ``allow_nan``): a pair that is NaN
in any subject is left out of every comparison, model included; ``n_pairs``
counts the pairs used and ``n_pairs_masked`` those left out.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..common.jsonsafe import finite_or_none
from ..common.seeds import derive_rng
from ..common.tensors import as_emb
from ..io.rdm import HumanRDMs
from .correlation import rankdata
from .rsa import COMPARISONS, rdm
from .weighted import SortedVector, sorted_vector, weighted_pearson, weighted_ranks, weighted_tau_a, weighted_zscores

__all__ = ["HUMAN_RDM_MEASURES", "POOLING", "compare_to_subjects", "human_rdm_report", "noise_ceiling",
           "pool_rdms", "resampled_pairs"]

HUMAN_RDM_MEASURES = ("spearman", "pearson", "kendall_tau_a")
POOLING = {"spearman": "mean of ranks", "pearson": "mean of z-scores", "kendall_tau_a": "mean of ranks"}
_BOOT_STREAM = 0x5244_4D42  # names the bootstrap's random stream ("RDMB")


def _check_method(method: str) -> None:
    if method not in HUMAN_RDM_MEASURES:
        raise ValueError(f"method must be one of {list(HUMAN_RDM_MEASURES)}, got {method!r}")


def pool_rdms(vectors: torch.Tensor, method: str) -> torch.Tensor:
    """The pooled human RDM vector for ``method`` (as rsatoolbox's ``pool_rdm``).

    Args:
        vectors: (S, M) float64 upper triangles of S subjects, no NaN.
        method: one of ``HUMAN_RDM_MEASURES``.
    """
    _check_method(method)
    if method == "pearson":
        centred = vectors - vectors.mean(dim=1, keepdim=True)
        return (centred / centred.std(dim=1, correction=0, keepdim=True)).mean(0)
    return torch.stack([rankdata(v) for v in vectors]).mean(0)


def _corr(a: torch.Tensor, b: torch.Tensor, method: str) -> float:
    return COMPARISONS[method](a, b)


def compare_to_subjects(model: torch.Tensor, vectors: torch.Tensor, method: str) -> Dict[str, Any]:
    """The model's correlation with the pooled RDM and with each subject.

    Args:
        model: (M,) model upper triangle.
        vectors: (S, M) human upper triangles.
        method: one of ``HUMAN_RDM_MEASURES``.

    Returns ``{"pooled", "subject_mean", "per_subject"}`` (floats; NaN where a vector is constant).
    """
    per = [_corr(model, v, method) for v in vectors]
    return {"pooled": _corr(model, pool_rdms(vectors, method), method),
            "subject_mean": float(np.mean(per)), "per_subject": per}


def noise_ceiling(vectors: torch.Tensor, method: str) -> Optional[Dict[str, float]]:
    """Lower and upper noise-ceiling bounds (see the module docstring); None for one subject.

    Args:
        vectors: (S, M) human upper triangles.
        method: one of ``HUMAN_RDM_MEASURES``.
    """
    s = vectors.shape[0]
    if s < 2:
        return None
    pool_all = pool_rdms(vectors, method)
    lower, upper = [], []
    for i in range(s):
        others = torch.cat([vectors[:i], vectors[i + 1:]])
        lower.append(_corr(pool_rdms(others, method), vectors[i], method))
        upper.append(_corr(pool_all, vectors[i], method))
    return {"lower": float(np.mean(lower)), "upper": float(np.mean(upper))}


def resampled_pairs(idx: torch.Tensor, valid: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Row and column of every pair compared in one stimulus resample (rsatoolbox's convention).

    Args:
        idx: (N,) sampled stimulus indices (with repeats), in any order; they are sorted, as
            rsatoolbox's ``subsample_pattern`` sorts them.
        valid: (N, N) bool, the pairs measured in every subject.

    Returns ``(a, b)``: the pairs ``i < j`` of the sorted sample whose stimuli differ
    (a stimulus paired with its own copy is trivially 0, so dropped) and are valid.
    """
    idx = torch.sort(idx).values
    iu = torch.triu_indices(idx.numel(), idx.numel(), offset=1)
    a, b = idx[iu[0]], idx[iu[1]]
    keep = (a != b) & valid[a, b]
    return a[keep], b[keep]


# Resamples per batch of the bootstrap (bounds memory: a few (batch, pairs) float64 arrays).
_BOOT_BATCH = 128


def _bootstrap(model: torch.Tensor, human: torch.Tensor, valid: torch.Tensor, methods: Sequence[str],
               n_boot: int, seed: int) -> Dict[str, Dict[str, Any]]:
    """Percentile intervals of ``pooled`` and ``subject_mean`` over stimulus resamples.

    ``model`` (N, N), ``human`` (S, N, N) and ``valid`` (N, N) bool are full matrices. A
    resample drawing stimulus ``s`` ``c_s`` times repeats the pair ``s < t`` ``c_s c_t``
    times (``resampled_pairs``), so each resample's correlations are weighted correlations
    over the measured pairs (``fastalign.eval.weighted``), many resamples at once.
    """
    n = model.shape[0]
    rng = derive_rng(seed, _BOOT_STREAM)
    counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(n_boot)]).astype(np.float64)
    iu = torch.triu_indices(n, n, offset=1)
    keep = valid[iu[0], iu[1]]
    a, b = iu[0][keep].numpy(), iu[1][keep].numpy()
    mv = model.numpy()[a, b]
    hv = human.numpy()[:, a, b]
    model_sorted = sorted_vector(mv)
    subjects = [sorted_vector(h) for h in hv]
    draws: Dict[str, Dict[str, List[float]]] = {m: {"pooled": [], "subject_mean": []} for m in methods}
    for lo in range(0, n_boot, _BOOT_BATCH):
        c = counts[lo:lo + _BOOT_BATCH]
        w = c[:, a] * c[:, b]
        w = w[w.sum(1) >= 3]  # fewer than 3 pairs: no correlation (the resample is skipped)
        if not w.shape[0]:
            continue
        for m, res in _weighted_comparisons(model_sorted, subjects, w, methods).items():
            draws[m]["pooled"] += res[0].tolist()
            draws[m]["subject_mean"] += res[1].tolist()
    return {m: {k: _interval(v) for k, v in d.items()} for m, d in draws.items()}


def _weighted_comparisons(model: SortedVector, subjects: Sequence[SortedVector], w: np.ndarray,
                          methods: Sequence[str]) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """Per method, ``(pooled, subject_mean)`` of each resample (rows of the weights ``w``)."""
    out = {}
    ranks = [weighted_ranks(s, w) for s in subjects] if {"spearman", "kendall_tau_a"} & set(methods) else []
    pooled_ranks = np.mean(ranks, axis=0) if ranks else None  # rsatoolbox pools ranks for both
    for m in methods:
        if m == "pearson":
            per = [weighted_pearson(model, s, w) for s in subjects]
            pooled = weighted_pearson(model, np.mean([weighted_zscores(s, w) for s in subjects], axis=0), w)
        elif m == "spearman":
            model_ranks = weighted_ranks(model, w)
            per = [weighted_pearson(model_ranks, r, w) for r in ranks]
            pooled = weighted_pearson(model_ranks, weighted_ranks(pooled_ranks, w), w)
        else:
            per = [weighted_tau_a(model, s, w) for s in subjects]
            pooled = weighted_tau_a(model, pooled_ranks, w)
        out[m] = (pooled, np.mean(per, axis=0))
    return out


def _interval(values: List[float]) -> Optional[List[float]]:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return None
    return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]


def _model_rdm(emb: Any, items: Optional[Any], metric: str, chunk_size: int) -> torch.Tensor:
    e = as_emb(emb).cpu()
    if items is not None:
        e = e[torch.as_tensor(np.asarray(items), dtype=torch.long)]
    return rdm(e, metric, chunk_size).to(torch.float64)


def _entry(res: Dict[str, Any], ceiling: Optional[Dict[str, float]], ci: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    out = {k: (finite_or_none(v) if k != "per_subject" else [finite_or_none(x) for x in v]) for k, v in res.items()}
    out["noise_ceiling"] = None if ceiling is None else {k: finite_or_none(v) for k, v in ceiling.items()}
    out["ci95"] = ci
    return out


def human_rdm_report(
    emb: Any,
    human: HumanRDMs,
    items: Optional[Any] = None,
    metric: str = "cosine",
    methods: Sequence[str] = HUMAN_RDM_MEASURES,
    n_bootstrap: int = 1000,
    seed: int = 0,
    chunk_size: int = 2048,
) -> Dict[str, Any]:
    """Compare a representation with measured human RDMs: a JSON-serialisable dict.

    Args:
        emb: (N_features, D) features (numpy or torch).
        human: the measured RDMs (``fastalign.io.read_human_rdm``).
        items: (N,) feature row of each RDM stimulus (``fastalign.io.read_rdm_items``);
            None when the RDM's rows are the feature rows.
        metric: the model RDM's metric (``fastalign.eval.rsa.METRICS``).
        methods: comparisons, a subset of ``HUMAN_RDM_MEASURES``.
        n_bootstrap: stimulus resamples for ``ci95`` (0: no interval).
        seed: seed of the bootstrap.
        chunk_size: rows per block when building the model RDM.

    Returns ``{"source", "n_stimuli", "n_subjects", "subjects", "n_pairs", "n_pairs_masked",
    "metric", "pooling", "bootstrap", <method>: {"pooled", "subject_mean", "per_subject",
    "noise_ceiling", "ci95"}}`` (see the module docstring for each number).
    """
    for m in methods:
        _check_method(m)
    n_rows = as_emb(emb).shape[0]
    if items is None and human.n_stimuli != n_rows:
        raise ValueError(f"{human.source}: the RDM has {human.n_stimuli} stimuli but the features have {n_rows} "
                         "rows; map them with --rdm-items")
    if items is not None and len(items) != human.n_stimuli:
        raise ValueError(f"{human.source}: {len(items)} items for an RDM over {human.n_stimuli} stimuli")
    model = _model_rdm(emb, items, metric, chunk_size)
    full = torch.from_numpy(human.rdms)
    valid = torch.isfinite(full).all(0)
    iu = torch.triu_indices(human.n_stimuli, human.n_stimuli, offset=1)
    keep = valid[iu[0], iu[1]]
    a, b = iu[0][keep], iu[1][keep]
    if a.numel() < 3:
        raise ValueError(f"{human.source}: fewer than 3 pairs are measured in every subject")
    mv, hv = model[a, b], full[:, a, b]
    boot = _bootstrap(model, full, valid, methods, n_bootstrap, seed) if n_bootstrap > 0 else {}
    report: Dict[str, Any] = {
        "source": human.source, "n_stimuli": human.n_stimuli, "n_subjects": human.n_subjects,
        "subjects": list(human.subjects), "n_pairs": int(a.numel()), "n_pairs_masked": int((~keep).sum()),
        "metric": metric, "pooling": {m: POOLING[m] for m in methods},
        "bootstrap": {"n": int(n_bootstrap), "seed": int(seed), "unit": "stimuli", "level": 0.95},
    }
    for m in methods:
        report[m] = _entry(compare_to_subjects(mv, hv, m), noise_ceiling(hv, m), boot.get(m))
    return report
