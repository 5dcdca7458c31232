"""Figures for evaluation results: matplotlib ``Figure`` objects (no pyplot, no global backend),
written atomically as PNG. Without matplotlib a figure is skipped with one notice and the
functions return None."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..common.tensors import as_emb
from ..io.figures import new_figure, save_figure
from .correlation import rankdata
from .rsa import rdm

__all__ = ["category_order", "plot_accuracy_by_level", "plot_rdm_panel", "save_figure"]

PathLike = Union[str, os.PathLike]


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


def _rank_matrix(m: torch.Tensor) -> np.ndarray:
    """Percentile ranks of a square RDM's entries (diagonal blank), so any two metrics share a colour scale."""
    n = m.shape[0]
    r = (rankdata(m.reshape(-1).to(torch.float64)) / (n * n)).reshape(n, n).cpu().numpy()
    np.fill_diagonal(r, np.nan)
    return r


def plot_rdm_panel(
    human_emb: Any,
    model_emb: Any,
    categories: Any,
    path: PathLike,
    human_metric: str = "dot",
    model_metric: str = "cosine",
    titles: Sequence[str] = ("human", "model"),
    category_names: Optional[Sequence[str]] = None,
) -> Optional[Path]:
    """Human and model RDMs side by side, objects sorted by category, as a PNG.

    Colours are percentile ranks of each RDM's dissimilarities, so RDMs of
    different metrics are comparable at a glance (RSA is rank-based too).

    Args:
        human_emb: (N, D_h) human similarity embedding (e.g. SPoSE-49).
        model_emb: (N, D_m) model representation, same objects as ``human_emb``.
        categories: (N, K) 0/1 membership used to sort objects and mark blocks.
        path: output ``.png``.
        human_metric, model_metric: RDM metrics (see ``fastalign.eval.rsa``).
        titles: panel titles.
        category_names: optional K names for the axis ticks.
    """
    h = as_emb(human_emb, "human_emb")
    m = as_emb(model_emb, "model_emb")
    if h.shape[0] != m.shape[0] or h.shape[0] != np.asarray(categories).shape[0]:
        raise ValueError(
            f"human_emb, model_emb and categories must list the same objects, got "
            f"{h.shape[0]}, {m.shape[0]} and {np.asarray(categories).shape[0]} rows"
        )
    order, primary = category_order(categories)
    idx = torch.from_numpy(order)
    panels = [_rank_matrix(rdm(h[idx.to(h.device)], human_metric)), _rank_matrix(rdm(m[idx.to(m.device)], model_metric))]
    fig = new_figure(11, 5.2, "RDM panel")
    if fig is None:
        return None
    axes = fig.subplots(1, 2)
    bounds = np.flatnonzero(np.diff(primary)) + 0.5
    starts = np.concatenate([[0], np.flatnonzero(np.diff(primary)) + 1])
    ends = np.concatenate([starts[1:], [len(primary)]])
    for ax, panel, title, metric in zip(axes, panels, titles, (human_metric, model_metric)):
        im = ax.imshow(panel, cmap="viridis", interpolation="nearest", vmin=0, vmax=1)
        for b in bounds:
            ax.axhline(b, color="white", lw=0.3)
            ax.axvline(b, color="white", lw=0.3)
        ax.set_title(f"{title} ({metric} RDM)")
        if category_names is not None:
            names = list(category_names) + ["none"]
            centres = (starts + ends - 1) / 2
            labels = [names[primary[s]] for s in starts]
            ax.set_yticks(centres)
            ax.set_yticklabels(labels, fontsize=5)
            ax.set_xticks([])
        else:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(im, ax=axes, fraction=0.025, label="dissimilarity (percentile rank)")
    return save_figure(fig, path, dpi=120)


def _acc(entry: Any) -> Optional[float]:
    if entry is None:
        return None
    if isinstance(entry, Mapping):
        return entry.get("accuracy")
    return entry[0]


def plot_accuracy_by_level(
    results: Mapping[str, Mapping[str, Any]],
    path: PathLike,
    levels: Sequence[str] = ("fine", "class_boundary", "coarse"),
    chance: float = 1.0 / 3.0,
    title: str = "Odd-one-out accuracy by level",
) -> Optional[Path]:
    """Grouped bars: accuracy per level for each representation.

    Args:
        results: ``{representation: {level: (accuracy, n) or {"accuracy": ..., "n": ...}}}``
            (``accuracy_by_level`` output or the ``levels`` entry of a report).
        path: output ``.png``.
        levels: which levels to show, in order.
        chance: where to draw the chance line.
        title: figure title.
    """
    names = list(results)
    if not names:
        raise ValueError("results is empty: nothing to plot")
    width = 0.8 / len(names)
    fig = new_figure(1.6 + 1.8 * len(levels), 3.6, "accuracy-by-level figure")
    if fig is None:
        return None
    ax = fig.subplots()
    x = np.arange(len(levels))
    for i, name in enumerate(names):
        vals = [_acc(results[name].get(lv)) for lv in levels]
        ys = [np.nan if v is None else v for v in vals]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, ys, width, label=name)
    ax.axhline(chance, color="0.5", ls="--", lw=1, label="chance")
    ax.set_xticks(x)
    ax.set_xticklabels([lv.replace("_", " ") for lv in levels])
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=2)
    return save_figure(fig, path, dpi=120)
