"""The reliability diagram: accuracy against confidence per bin, with each bin's count beneath
(no pyplot; see ``fastalign.io.figures``)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import numpy as np

from ..common.calibration import Reliability
from ..io.figures import new_figure, save_figure

__all__ = ["plot_reliability", "reliability_points"]


def reliability_points(rel: Reliability) -> Dict[str, np.ndarray]:
    """What the diagram draws of one result, one entry per bin: ``confidence`` and ``accuracy``
    (NaN for an empty bin, so no point is drawn and the line breaks there), ``count`` and the bin
    ``left`` edges and ``width``."""
    edges = np.asarray(rel.edges, dtype=np.float64)
    return {
        "confidence": np.array([np.nan if v is None else v for v in rel.confidence], dtype=np.float64),
        "accuracy": np.array([np.nan if v is None else v for v in rel.accuracy], dtype=np.float64),
        "count": np.asarray(rel.count, dtype=np.int64),
        "left": edges[:-1],
        "width": np.diff(edges),
    }


def plot_reliability(
    before: Reliability,
    after: Optional[Reliability],
    path: Union[str, Path],
    labels: Sequence[str] = ("before", "after"),
    title: str = "Reliability diagram",
) -> Optional[Path]:
    """Write a reliability diagram (PNG) of one or two ``Reliability`` results, with a histogram
    of the predictions per confidence bin under it.

    Args:
        before: the first result (e.g. the uncalibrated teacher).
        after: an optional second result (e.g. after temperature calibration).
        path: output ``.png`` path (written to a temp file, then renamed).
        labels: legend names for ``before`` and ``after``.
        title: figure title.
    """
    fig = new_figure(4.8, 5.8, "reliability diagram")
    if fig is None:
        return None
    ax, hist = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1.2])
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect calibration")
    # With three choices the top probability is at least 1/3: those bins are empty by construction.
    for a in (ax, hist):
        a.axvspan(0, 1 / 3, color="0.93", lw=0, label="below 1/3: impossible with 3 choices" if a is ax else None)
    results = [(before, labels[0], "o")]
    if after is not None:
        results.append((after, labels[1] if len(labels) > 1 else "after", "s"))
    share = 0.8 / len(results)
    for i, (rel, label, marker) in enumerate(results):
        pts = reliability_points(rel)
        line = ax.plot(pts["confidence"], pts["accuracy"], marker=marker, ms=5,
                       label=f"{label} (ECE {rel.ece:.3f})")[0]
        # Side-by-side bars inside each bin, so two results' counts can be read apart.
        hist.bar(pts["left"] + pts["width"] * (0.1 + share * i), pts["count"], pts["width"] * share,
                 align="edge", color=line.get_color(), alpha=0.85)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy in the bin")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    hist.set_xlabel("confidence (max probability)")
    hist.set_ylabel("predictions")
    n_bins = len(before.count)
    hist.set_title(f"predictions per confidence bin ({n_bins} bins; an empty bin has no point above)", fontsize=8)
    hist.grid(axis="y", alpha=0.3)
    return save_figure(fig, path, dpi=120)
