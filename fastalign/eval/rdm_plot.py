"""The RDM panel: a human RDM beside model RDMs, objects sorted by category, each model's RSA with
the human RDM in its title (no pyplot; see ``fastalign.io.figures``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..common.tensors import as_emb
from ..io.figures import new_figure, save_figure
from .correlation import pearson, rankdata
from .rsa import rdm, upper_triangle

__all__ = ["category_order", "plot_rdm_panel", "rdm_panel_data", "spread_labels"]

PathLike = Union[str, os.PathLike]
_METRIC_WORDS = {"dot": "dot-product", "cosine": "cosine", "correlation": "correlation", "euclidean": "Euclidean"}
_LABEL_PT = 7.0           # category label size: readable when the figure is shown 8-9 inches wide
_LABEL_GAP = 1.2          # label pitch, in label heights
_LEADER_PT = 16.0         # length of the leader lines from a block to its label
_MAX_PIXELS = 480         # side of a drawn RDM: about its size on the page at 120 dpi


def category_order(categories: Any) -> Tuple[np.ndarray, np.ndarray]:
    """Object order for plots: by first category, uncategorised objects last.

    Args:
        categories: (N, K) 0/1 membership.

    Returns ``(order, primary)``: the permutation and each ordered object's
    first category (K for none).
    """
    c = np.asarray(categories) != 0
    if c.ndim != 2:
        raise ValueError(f"categories must be 2-D (N, K), got shape {c.shape}")
    k = c.shape[1]
    primary = np.where(c.any(1), c.argmax(1), k)
    order = np.argsort(primary, kind="stable")
    return order, primary[order]


def _percentile_ranks(upper: torch.Tensor) -> torch.Tensor:
    """Ranks of an RDM's upper triangle (ties averaged), scaled to (0, 1]: the colours of a panel,
    and the ranks whose Pearson correlation is the RSA Spearman."""
    return rankdata(upper) / upper.numel()


def _square(upper: torch.Tensor, n: int) -> np.ndarray:
    """The symmetric (n, n) float32 matrix of an upper triangle (row-major, as ``upper_triangle``
    lists it), its diagonal blank (NaN). float32: these are colours."""
    out = torch.zeros((n, n), dtype=torch.float32)
    out[torch.ones((n, n), dtype=torch.bool).triu_(1)] = upper.to(torch.float32).cpu()
    out = out + out.T
    return out.fill_diagonal_(float("nan")).numpy()


def _block_sums(t: torch.Tensor, f: int) -> torch.Tensor:
    """Sums over f x f blocks of a 2-D tensor; the last blocks of a side f does not divide are partial."""
    return torch.nn.functional.avg_pool2d(t[None, None], f, ceil_mode=True, divisor_override=1)[0, 0]


def _block_mean(m: np.ndarray, target: int) -> Tuple[np.ndarray, int]:
    """``m`` averaged over f x f blocks (NaN ignored) so its side is at most ``target``, and f: what
    the page shows anyway, drawn faithfully rather than by sampling every f-th object, and quickly."""
    f = -(-m.shape[0] // target)
    if f <= 1:
        return m, 1
    t = torch.from_numpy(m)
    sums = _block_sums(torch.nan_to_num(t, nan=0.0), f)
    counts = _block_sums(torch.isfinite(t).to(t.dtype), f)
    return torch.where(counts > 0, sums / counts.clamp_min(1), float("nan")).numpy(), f


def spread_labels(centres: Sequence[float], gap: float, lo: float, hi: float) -> np.ndarray:
    """Positions for labels wanted at ``centres`` (ascending) that are at least ``gap`` apart and
    inside ``[lo, hi]``, each run of crowded labels centred on its members' mean (so labels move
    as little as they can). When they cannot all fit, they are spaced evenly over ``[lo, hi]``."""
    c = np.asarray(centres, dtype=np.float64)
    if c.size == 0:
        return c
    if np.any(np.diff(c) < 0):
        raise ValueError("centres must be ascending")
    if gap * (c.size - 1) > hi - lo:
        return np.linspace(lo, hi, c.size)
    groups: List[List[int]] = []  # runs of label indices that sit gap apart
    for i in range(c.size):
        groups.append([i])
        while len(groups) > 1 and _start(c, groups[-2], gap, lo, hi) + len(groups[-2]) * gap \
                > _start(c, groups[-1], gap, lo, hi):
            groups[-2:] = [groups[-2] + groups[-1]]
    out = np.empty_like(c)
    for g in groups:
        out[g] = _start(c, g, gap, lo, hi) + gap * np.arange(len(g))
    return out


def _start(c: np.ndarray, group: List[int], gap: float, lo: float, hi: float) -> float:
    """Where a run of labels starts when centred on its members, kept inside ``[lo, hi]``."""
    span = gap * (len(group) - 1)
    return float(np.clip(c[group].mean() - span / 2, lo, hi - span))


def rdm_panel_data(human_emb: Any, model_embs: Sequence[Any], categories: Any, human_metric: str,
                   model_metrics: Sequence[str]) -> Dict[str, Any]:
    """What the RDM panel draws: the category order (``order``, ``primary``), the percentile-rank
    RDMs in that order (``panels``, the human one first) and each model's RSA with the human RDM
    (``rsa``: Spearman over all object pairs, as ``fastalign.eval.rsa.rsa`` computes it)."""
    h = as_emb(human_emb, "human_emb")
    models = [as_emb(m, f"model_emb[{i}]") for i, m in enumerate(model_embs)]
    n_cat = np.asarray(categories).shape[0]
    if any(m.shape[0] != h.shape[0] for m in models) or n_cat != h.shape[0]:
        raise ValueError(
            f"human_emb, model_emb and categories must list the same objects, got "
            f"{h.shape[0]}, {[m.shape[0] for m in models]} and {n_cat} rows"
        )
    order, primary = category_order(categories)
    idx = torch.from_numpy(order)
    ranks = [_percentile_ranks(upper_triangle(rdm(e[idx.to(e.device)], metric)).cpu())
             for e, metric in zip([h, *models], [human_metric, *model_metrics])]
    panels = [_square(r, h.shape[0]) for r in ranks]
    rsa = [pearson(ranks[0], r) for r in ranks[1:]]  # Spearman: Pearson of the ranks
    return {"order": order, "primary": primary, "panels": panels, "rsa": rsa}


def _label_blocks(fig: Any, axes: Sequence[Any], primary: np.ndarray, names: Sequence[str]) -> None:
    """One label per category block on the left of each of ``axes``, spread so that none overlap,
    with a leader line to its block. Needs the laid-out axes, so the figure is drawn once first."""
    starts = np.concatenate([[0], np.flatnonzero(np.diff(primary)) + 1])
    ends = np.concatenate([starts[1:], [len(primary)]])
    centres = (starts + ends - 1) / 2
    labels = [names[primary[s]] for s in starts]
    for ax in axes:
        ax.set_yticks(centres, labels, fontsize=_LABEL_PT)
        ax.tick_params(axis="y", length=0, pad=_LEADER_PT + 2)
    fig.draw_without_rendering()  # fixes the layout, so the axes' size in points is known
    for ax in axes:
        box = ax.get_window_extent()
        per_pt = len(primary) / (box.height * 72 / fig.dpi)  # objects per point along the axis
        half = 0.5 * _LABEL_PT * per_pt
        pos = spread_labels(centres, _LABEL_GAP * _LABEL_PT * per_pt, -0.5 + half, len(primary) - 0.5 - half)
        ax.set_yticks(pos, labels, fontsize=_LABEL_PT)
        leader = _LEADER_PT / (box.width * 72 / fig.dpi)  # in axes widths
        for c, p in zip(centres, pos):
            ax.plot([0, -0.25 * leader, -leader], [c, c, p], color="0.4", lw=0.5,
                    transform=ax.get_yaxis_transform(), clip_on=False)


def plot_rdm_panel(
    human_emb: Any,
    model_emb: Any,
    categories: Any,
    path: PathLike,
    human_metric: str = "dot",
    model_metric: Union[str, Sequence[str]] = "cosine",
    titles: Sequence[str] = ("human", "model"),
    category_names: Optional[Sequence[str]] = None,
) -> Optional[Path]:
    """The human RDM and one or more model RDMs, objects sorted by category, as a PNG; each model's
    title gives its RSA with the human RDM (Spearman over all object pairs).

    Colours are percentile ranks of each RDM's dissimilarities, so RDMs of
    different metrics are comparable at a glance (RSA is rank-based too).
    Two panels sit side by side, three in a row, four in a 2 x 2 grid.

    Args:
        human_emb: (N, D_h) human similarity embedding (e.g. SPoSE-49).
        model_emb: (N, D_m) model representation, or a list of them, same objects as ``human_emb``.
        categories: (N, K) 0/1 membership used to sort objects and mark blocks.
        path: output ``.png``.
        human_metric: RDM metric of ``human_emb`` (see ``fastalign.eval.rsa``).
        model_metric: the models' RDM metric, or one per model.
        titles: panel titles, the human one first.
        category_names: optional K names, one label per category block.
    """
    models = list(model_emb) if isinstance(model_emb, (list, tuple)) else [model_emb]
    metrics = [model_metric] * len(models) if isinstance(model_metric, str) else list(model_metric)
    if len(metrics) != len(models) or len(titles) != len(models) + 1:
        raise ValueError(f"{len(models)} model(s) need as many model metrics and {len(models) + 1} titles, "
                         f"got {len(metrics)} and {len(titles)}")
    k = np.asarray(categories).shape[-1]
    if category_names is not None and len(category_names) != k:
        raise ValueError(f"category_names has {len(category_names)} names for {k} category columns")
    count = len(models) + 1
    ncols = 2 if count in (2, 4) else min(count, 3)
    nrows = -(-count // ncols)
    fig = new_figure(1.3 + 3.6 * ncols, 0.7 + 3.5 * nrows, "RDM panel")
    if fig is None:
        return None
    data = rdm_panel_data(human_emb, models, categories, human_metric, metrics)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    primary = data["primary"]
    bounds = np.flatnonzero(np.diff(primary)) + 0.5
    subtitles = [f"{_METRIC_WORDS.get(human_metric, human_metric)} RDM"] + [
        f"{_METRIC_WORDS.get(m, m)} RDM, RSA ρ = {r:.2f}" for m, r in zip(metrics, data["rsa"])]
    for ax, panel, title, sub in zip(axes.ravel(), data["panels"], titles, subtitles):
        shown, f = _block_mean(panel, _MAX_PIXELS)
        side = shown.shape[0] * f  # objects the image spans, padding included
        im = ax.imshow(shown, cmap="viridis", interpolation="nearest", vmin=0, vmax=1,
                       extent=(-0.5, side - 0.5, side - 0.5, -0.5))
        ax.set_xlim(-0.5, panel.shape[0] - 0.5)
        ax.set_ylim(panel.shape[0] - 0.5, -0.5)
        for b in bounds:
            ax.axhline(b, color="white", lw=0.3)
            ax.axvline(b, color="white", lw=0.3)
        ax.set_title(f"{title}\n{sub}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.ravel()[count:]:
        ax.set_visible(False)
    fig.colorbar(im, ax=axes, shrink=0.5, label="dissimilarity (percentile rank within the RDM)")
    n = len(primary)
    sort = "by first category" if category_names is not None else "by first category column"
    fig.supxlabel(f"{n} objects sorted {sort} (uncategorised last), white lines between categories. "
                  "ρ: Spearman correlation\nof a model's RDM with the human RDM over all "
                  f"{n * (n - 1) // 2:,} object pairs (RSA).", fontsize=8)
    if category_names is not None:
        _label_blocks(fig, [ax for ax in axes[:, 0] if ax.get_visible()], primary, [*category_names, "none"])
    return save_figure(fig, path, dpi=120)
