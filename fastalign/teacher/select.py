"""Model selection of the teacher fit: score every (lambda, alpha, tau) on the search problems,
pick the lowest mean held-out loss, and refit it on the final split when folds were used."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..common.progress import Progress
from .inputs import FitStart
from .objective import ObjectiveConfig
from .options import FitConfig
from .problems import Problem
from .results import CandidateResult
from .train import train_one
from .transform import AffineTransform

__all__ = ["Selection", "refit", "search_grid", "select"]


def search_grid(cfg: FitConfig, local: bool) -> List[ObjectiveConfig]:
    """Every (lambda, alpha, tau) to score; alpha and tau only matter with local features."""
    alphas = [float(a) for a in cfg.alphas] if local else [0.0]
    taus = [float(t) for t in cfg.taus] if local else [1.0]
    grid = itertools.product(cfg.lambdas, alphas, taus)
    return [ObjectiveConfig(float(lam), cfg.reg, a, tau) for lam, a, tau in grid]


@dataclass
class Selection:
    """The search's outcome.

    Attributes:
        candidates: one entry per grid point, in grid order.
        chosen: the grid point with the lowest mean held-out loss (the first of equals).
        model, info: the chosen point's model and numbers when the search had a single
            problem (then it already is the final fit); None with folds.
    """

    candidates: List[CandidateResult]
    chosen: ObjectiveConfig
    model: Optional[AffineTransform]
    info: Optional[Dict[str, Any]]


def _label(obj: ObjectiveConfig, local: bool, fold: int, folds: int) -> str:
    label = f"lambda={obj.lam:g}" + (f" alpha={obj.alpha:g} tau={obj.tau:g}" if local else "")
    return label + (f" fold {fold + 1}/{folds}" if folds > 1 else "")


def _score(obj: ObjectiveConfig, problems: Sequence[Problem], cfg: FitConfig, start: FitStart, bar: Progress,
           local: bool) -> Tuple[CandidateResult, AffineTransform, Dict[str, Any]]:
    """Fit ``obj`` on every problem; returns its mean numbers and the last fit (the only one without folds)."""
    losses, accs, iters = [], [], []
    t0 = time.perf_counter()
    for fi, data in enumerate(problems):
        label = _label(obj, local, fi, len(problems))
        model, info = train_one(data, obj, cfg, start,
                                on_iter=lambda it, v, label=label: bar.note(f"{label} it {it} val {v:.4f}"))
        losses.append(info["val_loss"])
        accs.append(info["val_accuracy"])
        iters.append(info["iterations"])
        bar.note(f"{label}: val loss {info['val_loss']:.4f} acc {100 * info['val_accuracy']:.2f}% "
                 f"({info['iterations']} it, {info['seconds']:.1f} s)")
        bar.update(1)
    cand = CandidateResult(obj.lam, obj.alpha, obj.tau, float(np.mean(losses)), float(np.mean(accs)),
                           losses, accs, iters, time.perf_counter() - t0)
    return cand, model, info


def select(grid: Sequence[ObjectiveConfig], problems: Sequence[Problem], cfg: FitConfig, start: FitStart,
           bar: Progress, local: bool) -> Selection:
    """Score every grid point on ``problems`` and choose the lowest mean validation loss."""
    candidates: List[CandidateResult] = []
    best = -1
    model = info = None
    for ci, obj in enumerate(grid):
        cand, m, i = _score(obj, problems, cfg, start, bar, local)
        candidates.append(cand)
        if best < 0 or cand.val_loss < candidates[best].val_loss:
            best = ci
            if len(problems) == 1:
                model, info = m, i
    return Selection(candidates, grid[best], model, info)


def refit(data: Problem, chosen: ObjectiveConfig, cfg: FitConfig, start: FitStart,
          bar: Progress) -> Tuple[AffineTransform, Dict[str, Any]]:
    """Fit the chosen hyper-parameters on the final split (early-stopped on its validation set)."""
    model, info = train_one(data, chosen, cfg, start)
    bar.note(f"refit lambda={chosen.lam:g}: val loss {info['val_loss']:.4f} acc {100 * info['val_accuracy']:.2f}%")
    bar.update(1)
    return model, info
