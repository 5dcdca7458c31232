"""Figures for the Levels dataset and measured-RDM results (no pyplot; see ``fastalign.io.figures``).

Both take the JSON entries of a report (``levels_report`` / ``human_rdm_report``), so a
figure can be redrawn from ``report.json`` alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from ..datasets.levels import LEVEL_NAMES
from ..io.figures import new_figure, save_figure

__all__ = ["plot_human_rdms", "plot_levels_dataset"]

PathLike = Union[str, os.PathLike]
_MEASURE_LABELS = {"spearman": "Spearman", "pearson": "Pearson", "kendall_tau_a": "Kendall τ-a"}


def _mean(spread: Optional[Mapping[str, Any]]) -> float:
    v = None if spread is None else spread.get("mean")
    return np.nan if v is None else float(v)


def _std(spread: Optional[Mapping[str, Any]]) -> float:
    v = None if spread is None else spread.get("std")
    return 0.0 if v is None else float(v)


def plot_levels_dataset(results: Mapping[str, Mapping[str, Any]], path: PathLike,
                        levels: Sequence[str] = LEVEL_NAMES, chance: float = 1.0 / 3.0) -> Optional[Path]:
    """Bars of majority-vote accuracy per level (SD over draws), per-trial accuracy as dots,
    the leave-one-out noise ceiling as a black line and human agreement as a dashed one.

    Args:
        results: ``{representation: levels_report(...)}``.
        path: output ``.png``.
        levels: levels to show, in order.
        chance: where to draw the chance line.
    """
    names = list(results)
    if not names:
        raise ValueError("results is empty: nothing to plot")
    fig = new_figure(1.8 + 1.9 * len(levels), 3.8, "Levels dataset figure")
    if fig is None:
        return None
    ax = fig.subplots()
    x = np.arange(len(levels))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        maj, trial = results[name]["majority"], results[name]["per_trial"]
        xs = x + (i - (len(names) - 1) / 2) * width
        ys = [_mean(maj[lv]["accuracy"]) for lv in levels]
        ax.bar(xs, ys, width, yerr=[_std(maj[lv]["accuracy"]) for lv in levels], capsize=3,
               label=f"{name}: majority vote")
        pt = [np.nan if trial[lv]["accuracy"] is None else trial[lv]["accuracy"] for lv in levels]
        ax.plot(xs, pt, "o", color="k", ms=4, label="per trial" if i == 0 else None)
    first = results[names[0]]["majority"]
    for j, lv in enumerate(levels):
        lo, hi = j - 0.45, j + 0.45
        ax.hlines(_mean(first[lv]["noise_ceiling"]), lo, hi, color="k", lw=2,
                  label="noise ceiling (leave-one-out)" if j == 0 else None)
        ax.hlines(_mean(first[lv]["human_agreement"]), lo, hi, color="0.3", lw=1, ls=":",
                  label="human agreement with majority" if j == 0 else None)
    ax.axhline(chance, color="0.5", ls="--", lw=1, label="chance")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{lv.replace('_', ' ')}\n({first[lv]['n_triplets']} triplets)" for lv in levels])
    ax.set_ylabel("odd-one-out accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("Levels dataset: accuracy by level")
    ax.legend(fontsize=7, loc="upper right")
    return save_figure(fig, path, dpi=120)


def _rdm_label(entry: Mapping[str, Any]) -> str:
    return f"{Path(str(entry['source']).split(':')[0]).name}\n(N={entry['n_stimuli']}, S={entry['n_subjects']})"


def plot_human_rdms(entries: Sequence[Mapping[str, Any]], path: PathLike,
                    measures: Sequence[str] = ("spearman", "pearson", "kendall_tau_a"),
                    model_name: str = "model") -> Optional[Path]:
    """One panel per measure: the model's mean correlation with the subjects (95 % bootstrap
    interval), the pooled-RDM correlation as a dot, and the noise ceiling as a grey band.

    Args:
        entries: ``human_rdm_report`` results, one per measured RDM file.
        path: output ``.png``.
        measures: which measures to show (those present in the entries).
        model_name: legend label of the bars.
    """
    if not entries:
        raise ValueError("entries is empty: nothing to plot")
    measures = [m for m in measures if m in entries[0]]
    fig = new_figure(1.0 + 2.6 * len(measures), 3.6, "human RDM figure")
    if fig is None:
        return None
    axes = np.atleast_1d(fig.subplots(1, len(measures), sharey=True))
    x = np.arange(len(entries))
    for ax, m in zip(axes, measures):
        for j, e in enumerate(entries):
            nc = e[m].get("noise_ceiling")
            if nc and nc["lower"] is not None and nc["upper"] is not None:
                ax.fill_between([j - 0.4, j + 0.4], nc["lower"], nc["upper"], color="0.8",
                                label="noise ceiling" if j == 0 else None)
            mean = e[m]["subject_mean"]
            ci = (e[m].get("ci95") or {}).get("subject_mean")
            err = None if ci is None or mean is None else [[mean - ci[0]], [ci[1] - mean]]
            ax.bar(j, np.nan if mean is None else mean, 0.5, yerr=err, capsize=3, color="C0",
                   label=f"{model_name} (mean over subjects)" if j == 0 else None)
            pooled = e[m]["pooled"]
            ax.plot(j, np.nan if pooled is None else pooled, "D", color="C3", ms=5,
                    label="vs pooled RDM" if j == 0 else None)
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_xticks(x)
        ax.set_xticklabels([_rdm_label(e) for e in entries], fontsize=7)
        ax.set_title(_MEASURE_LABELS.get(m, m))
    axes[0].set_ylabel("RDM correlation")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle("RSA against measured human RDMs")
    return save_figure(fig, path, dpi=120)
