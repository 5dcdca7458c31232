"""Few-shot classification probes: how useful a representation is downstream.

An *episode* draws ``k`` labelled support examples per class; every other
labelled example of those classes is a query. A probe fits on the support set
and predicts the queries. The score of an episode is the *balanced* accuracy
(mean over classes of per-class query accuracy), so chance is exactly
``1 / n_classes`` however unbalanced the classes are. Only classes with at
least ``k + 1`` examples take part (each needs a query); the result says how
many did.

Probes (both in torch, batched over episodes, on the features' device):

- ``centroid``: nearest class mean (squared Euclidean distance);
- ``logreg``: multinomial logistic regression on ``mean cross-entropy +
  l2 / 2 * ||W||_F^2`` (bias not penalised), fitted to a relative gradient
  norm of ``tol`` by ``fastalign.eval.logreg``: L-BFGS per episode in kernel
  coordinates (``W = X_support^T A``), so its products are support x support,
  not support x features, from one Gram matrix of the labelled rows.

``few_shot_probes`` runs several probes on the same episodes (drawn once).

Features are L2-normalised per row first by default (``normalize="l2"``);
``"center_l2"`` subtracts the mean of all labelled rows first (label-free);
``"none"`` leaves them alone.

Episodes are seeded: the draw for ``k`` shots depends only on ``(seed, k)``,
so results for one ``k`` do not change when other ``k`` are added. The 95 %
confidence interval is ``mean +- 1.96 * sd / sqrt(episodes)`` (normal
approximation over independent episodes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..common.category_levels import single_category_labels
from ..common.progress import progress
from ..common.seeds import derive_seed
from ..common.tensors import as_emb, as_index
from ..ops import acc_dtype
from .logreg import fit_kernel_logreg
from .threads import map_units

__all__ = ["FewShotOptions", "PROBES", "few_shot_accuracy", "few_shot_probes", "fit_logreg", "single_category_labels"]

PROBES = ("centroid", "logreg")
NORMALIZATIONS = ("l2", "center_l2", "none")
Z95 = 1.959963984540054


@dataclass(frozen=True)
class FewShotOptions:
    """Options of ``few_shot_accuracy``.

    Attributes:
        shots: support examples per class, each >= 1.
        episodes: seeded episodes per shot count, >= 2.
        probe: ``"centroid"`` or ``"logreg"``.
        seed: base seed.
        normalize: ``"l2"``, ``"center_l2"`` or ``"none"`` (see the module docstring).
        l2: logistic-regression L2 penalty, > 0.
        max_iter: L-BFGS iterations per episode of the logistic regression, at most.
        tol: the logistic regression of an episode stops when its gradient norm is
            ``tol`` times its first one.
        episode_batch: episodes drawn and fitted together (bounds memory; the draws
            depend on it, so results do too).
        show_progress: show a progress bar (tqdm when installed).
    """

    shots: Tuple[int, ...] = (1, 5, 10)
    episodes: int = 100
    probe: str = "centroid"
    seed: int = 0
    normalize: str = "l2"
    l2: float = 1e-3
    max_iter: int = 100
    tol: float = 1e-4
    episode_batch: int = 50
    show_progress: bool = False

    def check(self) -> None:
        if not self.shots or any(not isinstance(k, int) or k < 1 for k in self.shots):
            raise ValueError(f"shots must be positive ints, got {self.shots!r}")
        if not isinstance(self.episodes, int) or self.episodes < 2:
            raise ValueError(f"episodes must be an int >= 2, got {self.episodes!r}")
        if self.probe not in PROBES:
            raise ValueError(f"probe must be one of {list(PROBES)}, got {self.probe!r}")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {list(NORMALIZATIONS)}, got {self.normalize!r}")
        if not (float(self.l2) > 0 and math.isfinite(float(self.l2))):
            raise ValueError(f"l2 must be a finite number > 0, got {self.l2!r}")
        if not (0 < float(self.tol) < 1):
            raise ValueError(f"tol must lie in (0, 1), got {self.tol!r}")
        if not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ValueError(f"max_iter must be a positive int, got {self.max_iter!r}")
        if not isinstance(self.episode_batch, int) or self.episode_batch < 1:
            raise ValueError(f"episode_batch must be a positive int, got {self.episode_batch!r}")


def fit_logreg(
    x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float = 1e-3, max_iter: int = 100, tol: float = 1e-6
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression for a batch of independent problems.

    Minimises, for each problem e, ``mean_i CE(x[e, i] @ W[e] + b[e], y[e, i]) + l2 / 2 * ||W[e]||^2``
    (``fastalign.eval.logreg``: L-BFGS per problem in kernel coordinates).

    Args:
        x: (E, n, D) inputs.
        y: (n,) labels shared by all problems, or (E, n); values in [0, n_classes).
        n_classes: number of classes C.
        l2: penalty weight, > 0 (makes each problem strictly convex).
        max_iter: L-BFGS iterations per problem, at most.
        tol: stop a problem at this gradient norm relative to its first one.

    Returns ``(W, b)`` of shapes (E, D, C) and (E, C).
    """
    a, b, _ = fit_kernel_logreg(torch.bmm(x, x.transpose(1, 2)), y, n_classes, float(l2), max_iter, tol)
    return torch.bmm(x.transpose(1, 2), a), b


# Labelled rows up to which the probes share one Gram matrix (256 MB in float32).
GRAM_MAX_ROWS = 8192
# Episodes fitted together (one work unit), and scored together (the scores are episodes x examples x
# classes). Results do not depend on either: each episode's fit stops on its own.
UNIT_EPISODES = 100
SCORE_BATCH = 50


def _prepare(features: torch.Tensor, mode: str) -> torch.Tensor:
    x = features.to(acc_dtype(features.dtype))
    if mode == "center_l2":
        x = x - x.mean(0, keepdim=True)
    if mode in ("l2", "center_l2"):
        x = torch.nn.functional.normalize(x, dim=1, eps=1e-12)
    return x


class _Products:
    """Inner products between the rows of one shot's examples: from the Gram matrix when there is one."""

    def __init__(self, xs: torch.Tensor, gram: Optional[torch.Tensor]):
        self.xs, self.gram = xs, gram

    def support(self, support: torch.Tensor) -> torch.Tensor:
        """(E, n, n) Gram matrices of the support sets."""
        if self.gram is None:
            xsup = self.xs[support]
            return torch.bmm(xsup, xsup.transpose(1, 2))
        return self.gram[support[:, :, None], support[:, None, :]]

    def scores(self, support: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(E, M, C) logits of every example under ``W = X_support^T A`` and bias ``b``."""
        if self.gram is None:
            w = torch.bmm(self.xs[support].transpose(1, 2), a)  # (E, D, C)
            return torch.matmul(self.xs, w) + b[:, None, :]
        return torch.baddbmm(b[:, None, :], self.gram[support].transpose(1, 2), a)


class _Episodes:
    """The seeded episodes of one shot count: which examples take part and each batch's support sets."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, n_classes: int, k: int, opts: FewShotOptions):
        counts = torch.bincount(y, minlength=n_classes)
        keep_cls = counts >= k + 1
        self.k, self.opts = k, opts
        self.c = c = int(keep_cls.sum())
        if c < 2:
            return
        remap = torch.full((n_classes,), -1, dtype=torch.int64, device=y.device)
        remap[keep_cls] = torch.arange(c, device=y.device)
        self.sel = remap[y] >= 0
        self.xs, self.ys = x[self.sel], remap[y][self.sel]
        m = self.ys.shape[0]
        cnt = torch.bincount(self.ys, minlength=c)
        start = torch.cumsum(cnt, 0) - cnt
        y_sorted, _ = torch.sort(self.ys)
        rank_at_pos = torch.arange(m, device=y.device) - start[y_sorted]
        self.support_pos = (rank_at_pos < k).nonzero().squeeze(1)  # C blocks of k positions, by class
        self.support_y = y_sorted[self.support_pos]
        self.onehot = torch.nn.functional.one_hot(self.ys, c).to(self.xs.dtype)  # (M, C)
        self.queries_per_class = (cnt - k).to(self.xs.dtype)

    def supports(self):
        """Each batch's (E, C * k) support ids (rows of ``xs``), class blocks of ``k``."""
        opts, ys = self.opts, self.ys
        gen = torch.Generator(device="cpu").manual_seed(derive_seed(opts.seed, self.k))
        for e0 in range(0, opts.episodes, opts.episode_batch):
            e = min(opts.episode_batch, opts.episodes - e0)
            keys = torch.rand((e, ys.shape[0]), generator=gen, dtype=torch.float64).to(ys.device)
            # Sort by class, then by a random key: the first k positions of each class are its support.
            order = torch.argsort(ys.to(torch.float64)[None, :] + keys, dim=1)
            yield order[:, self.support_pos]

    def accuracy(self, support: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """(E,) balanced query accuracy of (E, M) predicted classes (support items are not queries)."""
        correct = (pred == self.ys[None, :]).to(self.xs.dtype)
        correct.scatter_(1, support, 0.0)
        per_class = (correct @ self.onehot) / self.queries_per_class  # (E, C)
        return per_class.mean(1).to(torch.float64).cpu()


class _Shot:
    """One shot count's episodes, their support sets and the products the probes share."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, n_classes: int, k: int, opts: FewShotOptions,
                 gram: Optional[torch.Tensor]):
        self.k = k
        self.ep = ep = _Episodes(x, y, n_classes, k, opts)
        self.base = {"shots": k, "n_classes": ep.c, "episodes": opts.episodes,
                     "chance": (1.0 / ep.c) if ep.c else None}
        if ep.c < 2:
            return
        self.products = _Products(ep.xs, None if gram is None else
                                  (gram if bool(ep.sel.all()) else gram[ep.sel][:, ep.sel]))
        self.supports = torch.cat(list(ep.supports()))  # every episode, drawn per episode_batch as always

    def accuracies(self, probe: str, e0: int, e1: int, opts: FewShotOptions) -> torch.Tensor:
        """(e1 - e0,) balanced accuracies of episodes ``e0:e1`` under ``probe``."""
        ep, k, c = self.ep, self.k, self.ep.c
        support = self.supports[e0:e1]
        if probe == "logreg":
            a, b, _ = fit_kernel_logreg(self.products.support(support), ep.support_y, c, float(opts.l2),
                                        opts.max_iter, float(opts.tol))
        out = []
        for s0 in range(0, e1 - e0, SCORE_BATCH):
            sl = slice(s0, s0 + SCORE_BATCH)
            if probe == "centroid":
                cent = ep.xs[support[sl]].reshape(support[sl].shape[0], c, k, -1).mean(2)  # (E, C, D)
                # argmin |x - c|^2 = argmax 2 x.c - |c|^2
                scores = 2 * torch.matmul(ep.xs, cent.transpose(1, 2)) - (cent * cent).sum(2)[:, None, :]
            else:
                scores = self.products.scores(support[sl], a[sl], b[sl])
            out.append(ep.accuracy(support[sl], scores.argmax(2)))
        return torch.cat(out)


def _summary(base: Dict[str, Any], probe: str, acc: Optional[torch.Tensor]) -> Dict[str, Any]:
    out = {"shots": base["shots"], "probe": probe, **{k: v for k, v in base.items() if k != "shots"}}
    if acc is None:
        return {**out, "mean": None, "ci95": None, "sd": None,
                "note": f"fewer than 2 classes have {base['shots'] + 1} or more examples"}
    mean = float(acc.mean())
    sd = float(acc.std(unbiased=True))
    half = Z95 * sd / math.sqrt(acc.numel())
    return {**out, "mean": mean, "ci95": [mean - half, mean + half], "sd": sd}


def _labelled(features: Any, labels: Any, opts: FewShotOptions) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """Checked, prepared labelled rows, their dense class ids and the number of classes."""
    opts.check()
    x = as_emb(features, "features")
    y = as_index(labels, "labels", x.device)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"labels has {y.shape[0]} entries but features has {x.shape[0]} rows")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("features has a NaN or Inf")
    lab = y >= 0
    if int(lab.sum()) == 0:
        raise ValueError("labels marks no row as labelled (all negative)")
    x = _prepare(x[lab], opts.normalize)
    _, y_dense = torch.unique(y[lab], return_inverse=True)
    return x, y_dense, int(y_dense.max()) + 1


def few_shot_probes(features: Any, labels: Any, probes: Sequence[str] = PROBES,
                    options: Optional[FewShotOptions] = None) -> Dict[str, Dict[int, Dict[str, Any]]]:
    """``few_shot_accuracy`` of several probes on the same episodes (drawn once, one Gram matrix).

    Args:
        features, labels: as in ``few_shot_accuracy``.
        probes: probes to run, each one of ``PROBES``.
        options: episode options (its ``probe`` is ignored).

    Returns ``{probe: few_shot_accuracy(..., probe=probe)}``: the same numbers as one call per probe.
    """
    opts = options or FewShotOptions()
    for p in probes:
        if p not in PROBES:
            raise ValueError(f"probe must be one of {list(PROBES)}, got {p!r}")
    x, y, n_classes = _labelled(features, labels, opts)
    gram = x @ x.T if "logreg" in probes and x.shape[0] <= GRAM_MAX_ROWS else None
    shots = [_Shot(x, y, n_classes, k, opts, gram) for k in opts.shots]
    # Work units of UNIT_EPISODES episodes: fitted side by side, each on one thread (see .threads).
    units = [(i, p, e0, min(e0 + UNIT_EPISODES, opts.episodes)) for i, shot in enumerate(shots) if shot.ep.c >= 2
             for p in probes for e0 in range(0, opts.episodes, UNIT_EPISODES)]
    results = map_units(lambda u: shots[u[0]].accuracies(u[1], u[2], u[3], opts), units, x.device,
                        lambda it: progress(it, len(units), f"few-shot ({', '.join(probes)})", opts.show_progress))
    accs: Dict[Tuple[int, str], List[torch.Tensor]] = {}
    for (i, p, _, _), acc in zip(units, results):
        accs.setdefault((i, p), []).append(acc)
    out: Dict[str, Dict[int, Dict[str, Any]]] = {p: {} for p in probes}
    for i, shot in enumerate(shots):
        for p in probes:
            acc = torch.cat(accs[(i, p)]) if (i, p) in accs else None
            out[p][shot.k] = _summary(shot.base, p, acc)
    return out


def few_shot_accuracy(
    features: Any,
    labels: Any,
    shots: Sequence[int] = (1, 5, 10),
    episodes: int = 100,
    probe: str = "centroid",
    seed: int = 0,
    options: Optional[FewShotOptions] = None,
) -> Dict[int, Dict[str, Any]]:
    """Few-shot classification accuracy of ``labels`` from ``features`` over seeded episodes.

    Args:
        features: (N, D) representation (numpy or torch; runs on its device).
        labels: (N,) integer class per row; negative = unlabelled (never used).
        shots: support examples per class to try.
        episodes: episodes per shot count.
        probe: ``"centroid"`` or ``"logreg"``.
        seed: base seed.
        options: full options; when given, its ``shots``/``episodes``/``probe``/``seed``
            are used and the four arguments above are ignored.

    Returns ``{k: {"mean", "ci95": [lo, hi], "sd", "n_classes", "chance", "episodes",
    "shots", "probe"}}``; ``mean`` is ``None`` (with a ``note``) when fewer than two
    classes have ``k + 1`` examples.
    """
    opts = options or FewShotOptions(shots=tuple(shots), episodes=episodes, probe=probe, seed=seed)
    opts.check()
    return few_shot_probes(features, labels, (opts.probe,), opts)[opts.probe]
