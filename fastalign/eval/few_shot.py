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
- ``logreg``: multinomial logistic regression, fitted by L-BFGS (strong-Wolfe
  line search) on ``mean cross-entropy + l2 / 2 * ||W||_F^2`` (bias not
  penalised). The episodes of a batch are independent, so minimising the sum
  of their objectives solves each one.

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
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from ..common.category_levels import single_category_labels
from ..common.progress import progress
from ..common.seeds import derive_seed
from ..common.tensors import as_emb, as_index
from ..ops import acc_dtype

__all__ = ["FewShotOptions", "PROBES", "few_shot_accuracy", "fit_logreg", "single_category_labels"]

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
        max_iter: L-BFGS iterations for the logistic regression.
        episode_batch: episodes processed together (bounds memory).
        show_progress: show a progress bar (tqdm when installed).
    """

    shots: Tuple[int, ...] = (1, 5, 10)
    episodes: int = 100
    probe: str = "centroid"
    seed: int = 0
    normalize: str = "l2"
    l2: float = 1e-3
    max_iter: int = 50
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
        if not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ValueError(f"max_iter must be a positive int, got {self.max_iter!r}")
        if not isinstance(self.episode_batch, int) or self.episode_batch < 1:
            raise ValueError(f"episode_batch must be a positive int, got {self.episode_batch!r}")


def fit_logreg(
    x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float = 1e-3, max_iter: int = 100
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression for a batch of independent problems.

    Minimises, for each problem e, ``mean_i CE(x[e, i] @ W[e] + b[e], y[e, i]) + l2 / 2 * ||W[e]||^2``.

    Args:
        x: (E, n, D) inputs.
        y: (n,) labels shared by all problems, or (E, n); values in [0, n_classes).
        n_classes: number of classes C.
        l2: penalty weight, > 0 (makes each problem strictly convex).
        max_iter: L-BFGS iterations.

    Returns ``(W, b)`` of shapes (E, D, C) and (E, C).
    """
    e, n, d = x.shape
    yy = (y.expand(e, n) if y.dim() == 1 else y).reshape(-1)
    w = torch.zeros((e, d, n_classes), dtype=x.dtype, device=x.device, requires_grad=True)
    b = torch.zeros((e, n_classes), dtype=x.dtype, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
        tolerance_grad=1e-9, tolerance_change=1e-12,
    )

    def closure():
        opt.zero_grad()
        logits = torch.baddbmm(b[:, None, :], x, w)
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, n_classes), yy, reduction="sum") / n
        loss = ce + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def _prepare(features: torch.Tensor, mode: str) -> torch.Tensor:
    x = features.to(acc_dtype(features.dtype))
    if mode == "center_l2":
        x = x - x.mean(0, keepdim=True)
    if mode in ("l2", "center_l2"):
        x = torch.nn.functional.normalize(x, dim=1, eps=1e-12)
    return x


def _run_shot(x: torch.Tensor, y: torch.Tensor, n_classes: int, k: int, opts: FewShotOptions) -> Dict[str, Any]:
    """Episodes for one shot count; ``y`` in [0, n_classes) sorted-friendly ints."""
    counts = torch.bincount(y, minlength=n_classes)
    keep_cls = counts >= k + 1
    c = int(keep_cls.sum())
    base = {"shots": k, "probe": opts.probe, "n_classes": c, "episodes": opts.episodes,
            "chance": (1.0 / c) if c else None}
    if c < 2:
        return {**base, "mean": None, "ci95": None, "sd": None,
                "note": f"fewer than 2 classes have {k + 1} or more examples"}
    remap = torch.full((n_classes,), -1, dtype=torch.int64, device=y.device)
    remap[keep_cls] = torch.arange(c, device=y.device)
    sel = remap[y] >= 0
    xs, ys = x[sel], remap[y][sel]
    m = ys.shape[0]
    cnt = torch.bincount(ys, minlength=c)
    start = torch.cumsum(cnt, 0) - cnt
    y_sorted, _ = torch.sort(ys)
    rank_at_pos = torch.arange(m, device=ys.device) - start[y_sorted]
    support_pos = (rank_at_pos < k).nonzero().squeeze(1)  # C blocks of k positions, by class
    support_y = y_sorted[support_pos]
    onehot = torch.nn.functional.one_hot(ys, c).to(xs.dtype)  # (M, C)
    queries_per_class = (cnt - k).to(xs.dtype)
    gen = torch.Generator(device="cpu").manual_seed(derive_seed(opts.seed, k))
    accs = []
    batches = range(0, opts.episodes, opts.episode_batch)
    for e0 in progress(batches, len(batches), f"few-shot k={k} ({opts.probe})", opts.show_progress):
        e = min(opts.episode_batch, opts.episodes - e0)
        keys = torch.rand((e, m), generator=gen, dtype=torch.float64).to(ys.device)
        # Sort by class, then by a random key: the first k positions of each class are its support.
        order = torch.argsort(ys.to(torch.float64)[None, :] + keys, dim=1)
        support = order[:, support_pos]  # (E, C*k) item ids, class blocks of k
        xsup = xs[support]  # (E, C*k, D)
        if opts.probe == "centroid":
            cent = xsup.reshape(e, c, k, -1).mean(2)  # (E, C, D)
            # argmin |x - c|^2 = argmax 2 x.c - |c|^2
            scores = 2 * torch.matmul(xs, cent.transpose(1, 2)) - (cent * cent).sum(2)[:, None, :]
        else:
            w, b = fit_logreg(xsup, support_y, c, float(opts.l2), opts.max_iter)
            scores = torch.matmul(xs, w) + b[:, None, :]
        correct = (scores.argmax(2) == ys[None, :]).to(xs.dtype)  # (E, M)
        correct.scatter_(1, support, 0.0)  # support items are not queries
        per_class = (correct @ onehot) / queries_per_class  # (E, C)
        accs.append(per_class.mean(1).to(torch.float64).cpu())
    acc = torch.cat(accs)
    mean = float(acc.mean())
    sd = float(acc.std(unbiased=True))
    half = Z95 * sd / math.sqrt(acc.numel())
    return {**base, "mean": mean, "ci95": [mean - half, mean + half], "sd": sd}


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
    n_classes = int(y_dense.max()) + 1
    return {k: _run_shot(x, y_dense, n_classes, k, opts) for k in opts.shots}
