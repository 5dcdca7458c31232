"""Calibration of a representation's odd-one-out probabilities on human triplets, and its figure.

The metrics themselves (NLL, ECE with its binning rule, entropy, reliability bins) are defined
once in ``fastalign.common.calibration`` and re-exported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import torch

from ..common.calibration import (
    DEFAULT_BINS,
    Reliability,
    calibration_metrics,
    expected_calibration_error,
    mean_entropy,
    nll,
    reliability,
)
from ..common.tensors import as_emb, as_index, as_triplets
from ..io.figures import new_figure, save_figure
from ..ops import odd_one_out_probs

__all__ = [
    "DEFAULT_BINS",
    "Reliability",
    "calibration_metrics",
    "expected_calibration_error",
    "mean_entropy",
    "nll",
    "plot_reliability",
    "reliability",
    "triplet_calibration",
]
def triplet_calibration(
    emb: Any,
    triplets: Any,
    odd: Optional[Any] = None,
    temperature: float = 1.0,
    similarity: str = "dot",
    n_bins: int = DEFAULT_BINS,
    backend: Optional[str] = None,
) -> Dict[str, float]:
    """Calibration metrics of ``softmax(s / temperature)`` on human triplets.

    Args:
        emb: (N, D) embeddings.
        triplets: (B, 3) indices, column 2 the odd one out unless ``odd`` is given.
        odd: optional (B,) odd-one-out positions.
        temperature: softmax temperature, > 0.
        similarity: ``"dot"`` or ``"cosine"``.
        n_bins: ECE bins.
        backend: kernel backend.
    """
    e = as_emb(emb)
    t = as_triplets(triplets, e.shape[0], e.device)
    with torch.no_grad():
        q = odd_one_out_probs(e, t, temperature=temperature, similarity=similarity, backend=backend)
    target = None if odd is None else 2 - as_index(odd, "odd", e.device)
    return calibration_metrics(q, target, n_bins)


def plot_reliability(
    before: Reliability,
    after: Optional[Reliability],
    path: Union[str, Path],
    labels: Sequence[str] = ("before", "after"),
    title: str = "Reliability diagram",
) -> Optional[Path]:
    """Write a reliability diagram (PNG) of one or two ``Reliability`` results.

    Args:
        before: the first result (e.g. the uncalibrated teacher).
        after: an optional second result (e.g. after temperature calibration).
        path: output ``.png`` path (written to a temp file, then renamed).
        labels: legend names for ``before`` and ``after``.
        title: figure title.
    """
    fig = new_figure(4.5, 4.5, "reliability diagram")
    if fig is None:
        return None
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect calibration")
    for rel, label, marker in ((before, labels[0], "o"), (after, labels[1] if len(labels) > 1 else "after", "s")):
        if rel is None:
            continue
        pts = [(c, a) for c, a in zip(rel.confidence, rel.accuracy) if c is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker=marker, label=f"{label} (ECE {rel.ece:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (max probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    return save_figure(fig, path, dpi=120)
