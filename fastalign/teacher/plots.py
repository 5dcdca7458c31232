"""The lambda-search figure of a teacher fit (``fit-teacher`` and the pipeline's teacher stage).

Built on ``fastalign.io.figures`` (no pyplot, no global backend); matplotlib is optional.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..io.figures import new_figure, save_figure

__all__ = ["plot_lambda_search"]

_LOSS_COLOUR, _ACC_COLOUR, _CHOSEN_COLOUR = "tab:blue", "tab:orange", "0.35"
# Smallest y-spans drawn: a 0.005-nat or 1-point difference must not fill the whole axis.
_MIN_LOSS_SPAN_REL = 0.05   # of the mean loss
_MIN_ACC_SPAN = 5.0         # percentage points
_MAX_LABELLED_TICKS = 8
_MIN_TICK_GAP = 0.1         # of the axis width: room for a label such as "0.0003" at this figure size


def _best_per_lambda(candidates: Sequence[Mapping[str, Any]]) -> List[Mapping[str, Any]]:
    """One point per lambda: its candidate (alpha, tau) with the lowest validation loss."""
    by_lam: Dict[float, Mapping[str, Any]] = {}
    for c in candidates:
        if c.get("val_loss") is None:
            continue
        lam = float(c["lam"])
        if lam not in by_lam or c["val_loss"] < by_lam[lam]["val_loss"]:
            by_lam[lam] = c
    return [by_lam[k] for k in sorted(by_lam)]


def _span(values: Sequence[float], min_span: float, lo_bound: float = -math.inf,
          hi_bound: float = math.inf) -> Tuple[float, float]:
    """A y-range around ``values`` at least ``min_span`` tall (centred), inside the bounds."""
    lo, hi = min(values), max(values)
    pad = max((hi - lo) * 0.15, (min_span - (hi - lo)) / 2, 0.0)
    lo, hi = lo - pad, hi + pad
    if lo < lo_bound:
        lo, hi = lo_bound, min(hi_bound, hi + (lo_bound - lo))
    if hi > hi_bound:
        lo, hi = max(lo_bound, lo - (hi - hi_bound)), hi_bound
    return lo, hi


def _log_position(v: float, smallest_positive: float) -> float:
    """Where ``v`` sits on the (sym)log axis in decades; 0 sits one decade below the smallest
    positive value (the linear part of a symlog axis is one decade wide)."""
    return math.log10(v) if v > 0 else math.log10(smallest_positive) - 1.0


def labelled_lambdas(lams: Sequence[float], chosen: float) -> List[float]:
    """The searched values that get a tick label: the chosen one, then outwards from it each value
    at least ``_MIN_TICK_GAP`` of the axis width from its labelled neighbour, so no two labels
    overlap; empty when that still leaves more than ``_MAX_LABELLED_TICKS`` (the axis then labels
    decades)."""
    values = sorted(set(float(v) for v in lams) | {float(chosen)})
    positive = [v for v in values if v > 0]
    if not positive:
        return values
    pos = {v: _log_position(v, positive[0]) for v in values}
    span = max(pos.values()) - min(pos.values()) or 1.0
    start = values.index(float(chosen))
    kept = [values[start]]
    for side in (values[start + 1:], values[:start][::-1]):
        last = values[start]
        for v in side:
            if abs(pos[v] - pos[last]) / span >= _MIN_TICK_GAP:
                kept.append(v)
                last = v
    kept.sort()
    return kept if len(kept) <= _MAX_LABELLED_TICKS else []


def _x_axis(ax: Any, lams: Sequence[float], chosen: float) -> str:
    """Log axis (symlog when lambda = 0 was searched): labelled ticks at the searched values that
    do not crowd each other (see ``labelled_lambdas``), unlabelled ticks at the others; returns how
    the scale is described in the axis label."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter  # optional extra

    positive = [v for v in lams if v > 0]
    if len(lams) == 1:  # before the scale: a single point's autoscaled limits coincide on a log axis
        ax.set_xlim(lams[0] / 3 if lams[0] > 0 else -1, lams[0] * 3 if lams[0] > 0 else 1)
    if len(positive) == len(lams):
        ax.set_xscale("log")
        scale = "log scale"
    else:
        ax.set_xscale("symlog", linthresh=min(positive) if positive else 1e-4)
        scale = "log scale, linear near 0"
    labelled = labelled_lambdas(lams, chosen)
    if labelled:
        ax.xaxis.set_major_locator(FixedLocator(labelled))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_locator(FixedLocator([v for v in lams if v not in labelled]))
    # Matplotlib labels minor log ticks on a short axis (2x10^-1, 3x10^-1, ...), which overlap.
    ax.xaxis.set_minor_formatter(NullFormatter())
    if len(lams) > 1:
        ax.margins(x=0.06)  # keep the end points (often the chosen one) off the frame
    return scale


def plot_lambda_search(report: Mapping[str, Any], path: Union[str, os.PathLike]) -> Optional[Path]:
    """Validation loss and accuracy against lambda, the chosen lambda marked.

    Args:
        report: a fit report as a dict (``FitReport.to_dict()``): ``candidates``
            (``lam``, ``val_loss``, ``val_accuracy``, ...), ``chosen`` and ``folds``.
        path: the PNG to write.

    Returns ``path``, or None when matplotlib is not installed or nothing was scored.
    """
    points = _best_per_lambda(report.get("candidates") or [])
    if not points:
        return None
    fig = new_figure(6.4, 4.0, "lambda-search plot")
    if fig is None:
        return None
    folds = int(report.get("folds") or 1)
    held_out = f"{folds}-fold cross-validated" if folds > 1 else "validation"
    # A dense fit selects by the NLL of held-out human triplets, not by its training loss (a KL).
    human = all("human_val_nll" in p for p in points)
    loss_name = f"human {held_out} NLL" if human else f"{held_out} loss"
    acc_name = f"human {held_out} accuracy" if human else f"{held_out} accuracy"
    lams = [float(p["lam"]) for p in points]
    losses = [float(p["val_loss"]) for p in points]
    accs = [100.0 * float(p["val_accuracy"]) for p in points if p.get("val_accuracy") is not None]
    chosen = float(report["chosen"]["lam"])
    extra = len(points) < len(report["candidates"])
    edge = len(lams) > 1 and chosen in (min(lams), max(lams))

    ax = fig.subplots()
    handles = ax.plot(lams, losses, "o-", color=_LOSS_COLOUR, label=loss_name)
    ax.set_ylabel(f"{loss_name} (nats)", color=_LOSS_COLOUR)
    ax.set_ylim(*_span(losses, _MIN_LOSS_SPAN_REL * abs(sum(losses) / len(losses)), lo_bound=0.0))
    ax.tick_params(axis="y", colors=_LOSS_COLOUR)
    if len(accs) == len(points):
        ax2 = ax.twinx()
        handles += ax2.plot(lams, accs, "s--", color=_ACC_COLOUR, label=acc_name)
        ax2.set_ylabel(f"{acc_name} (%)", color=_ACC_COLOUR)
        ax2.set_ylim(*_span(accs, _MIN_ACC_SPAN, 0.0, 100.0))
        ax2.tick_params(axis="y", colors=_ACC_COLOUR)
    why = ("the only value searched" if len(lams) == 1
           else f"lowest {loss_name}" + (",\nat the edge of the searched grid" if edge else ""))
    handles.append(ax.axvline(chosen, color=_CHOSEN_COLOUR, ls=":", lw=1.2, label=f"chosen lambda = {chosen:g} ({why})"))
    ax.set_xlabel(f"regulariser weight lambda ({_x_axis(ax, lams, chosen)})")
    ax.set_title("Teacher: search over lambda" + (" (best alpha, tau per lambda)" if extra else ""))
    ax.grid(True, which="major", axis="x", color="0.9", lw=0.8)
    fig.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False, fontsize="small")
    save_figure(fig, path)
    return Path(path)
