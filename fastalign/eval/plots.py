"""Figures for evaluation results: matplotlib ``Figure`` objects (no pyplot, no global backend),
written atomically as PNG. Without matplotlib a figure is skipped with one notice and the
functions return None. Here: accuracy by level; the RDM panel is in ``rdm_plot``."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..common.intervals import wilson_interval
from ..io.figures import new_figure, save_figure
from .rdm_plot import category_order, plot_rdm_panel

__all__ = ["category_order", "level_intervals", "plot_accuracy_by_level", "plot_rdm_panel", "save_figure"]

PathLike = Union[str, os.PathLike]


def _level_entry(entry: Any, where: str) -> Optional[Tuple[float, int]]:
    """``(accuracy, n)`` of one level's result, or None when the level was not scored."""
    if entry is None:
        return None
    if isinstance(entry, Mapping):
        acc, n = entry.get("accuracy"), entry.get("n")
    else:
        acc, n = (tuple(entry) + (None, None))[:2]
    if acc is None or (isinstance(acc, float) and math.isnan(acc)):
        return None
    if n is None:
        raise ValueError(f"{where} has no n: the 95 % interval needs the number of triplets of the level")
    return float(acc), int(n)


def level_intervals(results: Mapping[str, Mapping[str, Any]], levels: Sequence[str],
                    confidence: float = 0.95) -> Dict[str, Dict[str, Optional[Dict[str, float]]]]:
    """What the accuracy-by-level figure draws: per representation and level the accuracy, its
    number of triplets ``n`` and the Wilson score interval (``lower``, ``upper``); None for a level
    that was not scored.

    Args:
        results: ``{representation: {level: (accuracy, n) or {"accuracy": ..., "n": ...}}}``.
        levels: the levels, in order.
        confidence: level of the interval.
    """
    out: Dict[str, Dict[str, Optional[Dict[str, float]]]] = {}
    for name, by_level in results.items():
        out[name] = {}
        for lv in levels:
            entry = _level_entry(by_level.get(lv), f"results[{name!r}][{lv!r}]")
            if entry is None:
                out[name][lv] = None
                continue
            acc, n = entry
            lo, hi = wilson_interval(acc * n, n, confidence)
            out[name][lv] = {"accuracy": acc, "n": n, "lower": lo, "upper": hi}
    return out


def _level_tick(level: str, bars: Dict[str, Dict[str, Optional[Dict[str, float]]]]) -> Tuple[str, bool]:
    """The x tick label of a level (with n when every representation has the same n) and whether
    n must instead be written on each bar."""
    ns = {b[level]["n"] for b in bars.values() if b[level] is not None}
    name = level.replace("_", " ")
    if len(ns) == 1:
        return f"{name}\nn = {ns.pop():,}", False
    return name, bool(ns)


def plot_accuracy_by_level(
    results: Mapping[str, Mapping[str, Any]],
    path: PathLike,
    levels: Sequence[str] = ("fine", "class_boundary", "coarse"),
    chance: float = 1.0 / 3.0,
    ceiling: Optional[float] = None,
    title: str = "Odd-one-out accuracy by level",
) -> Optional[Path]:
    """Grouped bars: accuracy per level for each representation, with each level's number of
    triplets and a 95 % Wilson score interval per bar, chance and the noise ceiling as lines.

    Args:
        results: ``{representation: {level: (accuracy, n) or {"accuracy": ..., "n": ...}}}``
            (``accuracy_by_level`` output or the ``levels`` entry of a report).
        path: output ``.png``.
        levels: which levels to show, in order.
        chance: where to draw the chance line.
        ceiling: the human noise ceiling of the whole triplet set (not per level), or None.
        title: figure title.
    """
    names = list(results)
    if not names:
        raise ValueError("results is empty: nothing to plot")
    bars = level_intervals(results, levels)
    fig = new_figure(1.8 + 1.9 * len(levels), 4.4, "accuracy-by-level figure")
    if fig is None:
        return None
    ax = fig.subplots()
    x = np.arange(len(levels))
    width = 0.8 / len(names)
    ticks = [_level_tick(lv, bars) for lv in levels]
    for i, name in enumerate(names):
        xs = x + (i - (len(names) - 1) / 2) * width
        cells = [bars[name][lv] for lv in levels]
        ys = np.array([np.nan if c is None else 100 * c["accuracy"] for c in cells])
        lo = np.array([0.0 if c is None else 100 * c["lower"] for c in cells])
        hi = np.array([0.0 if c is None else 100 * c["upper"] for c in cells])
        err = np.vstack([np.where(np.isnan(ys), 0, ys - lo), np.where(np.isnan(ys), 0, hi - ys)])
        ax.bar(xs, ys, width * 0.92, yerr=err, capsize=3, error_kw={"elinewidth": 1.2, "ecolor": "k"},
               label=name)
        for xi, c, (_, per_bar) in zip(xs, cells, ticks):
            if c is not None and per_bar:
                ax.annotate(f"n={c['n']}", (xi, 100 * c["upper"]), xytext=(0, 2), textcoords="offset points",
                            ha="center", va="bottom", fontsize=6)
    handles, _ = ax.get_legend_handles_labels()
    handles.append(ax.axhline(100 * chance, color="0.45", ls="--", lw=1, label=f"chance ({100 * chance:.1f} %)"))
    if ceiling is not None:
        handles.append(ax.axhline(100 * ceiling, color="k", ls=":", lw=1.4,
                                  label=f"human noise ceiling, all triplets ({100 * ceiling:.0f} %)"))
    # An empty error bar: its legend glyph explains the bars' whiskers.
    handles.append(ax.errorbar([np.nan], [np.nan], yerr=[1.0], fmt="none", ecolor="k", elinewidth=1.2, capsize=3,
                               label="95 % Wilson interval (n = triplets of the level)"))
    ax.set_xticks(x)
    ax.set_xticklabels([t for t, _ in ticks])
    ax.set_ylabel("odd-one-out accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    fig.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False, fontsize=8)
    return save_figure(fig, path, dpi=120)
