"""``plot.png``: time (and, where recorded, peak memory) of the training step against size.

Plots the forward + backward rows of the KL distillation loss (the training
step; every preset measures it at several sizes, so each implementation's
points form one curve), with the p20-p80 range as error bars and noisy
measurements drawn hollow. Peak memory is a GPU-only panel: PyTorch keeps no
allocator statistics on CPU, so a CPU run gets the time panel alone.
Built on ``fastalign.io.figures`` (no pyplot, no global backend switch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from ..io.figures import new_figure, save_figure
from .timing import is_noisy

Point = Tuple[float, float, float, float, bool]  # size GB, value, low, high, noisy


def step_rows(results: dict) -> List[dict]:
    """The ok fwd+bwd rows of the KL loss with dot similarity (the plotted ones)."""
    return [r for r in results.get("results", []) if r.get("group") == "triplet" and r.get("phase") == "fwd+bwd"
            and r.get("op") == "kl" and r.get("similarity", "dot") == "dot" and r.get("status") == "ok"
            and r.get("bytes")]


def series(rows: Sequence[dict], value: str) -> Dict[str, List[Point]]:
    """Points per "impl dtype", sorted by size; ``value`` is "ms" or "peak_mem_bytes"."""
    out: Dict[str, List[Point]] = {}
    for r in rows:
        v = r.get(value)
        if v is None:
            continue
        lo, hi = (r.get("ms_p20", v), r.get("ms_p80", v)) if value == "ms" else (v, v)
        out.setdefault(f"{r['impl']} {r['dtype']}", []).append((r["bytes"] / 1e9, float(v), lo, hi, is_noisy(r)))
    return {k: sorted(v) for k, v in sorted(out.items())}


def _panel(ax, pts_by_name: Dict[str, List[Point]], ylabel: str, colors: Dict[str, str]) -> None:
    for name, pts in pts_by_name.items():
        xs, ys, lo, hi, noisy = zip(*pts)
        color = colors[name]
        ax.errorbar(xs, ys, yerr=[[y - a for y, a in zip(ys, lo)], [b - y for y, b in zip(ys, hi)]],
                    color=color, marker="o", capsize=2, label=name)
        hollow = [(x, y) for x, y, n in zip(xs, ys, noisy) if n]
        if hollow:
            ax.plot(*zip(*hollow), linestyle="none", marker="o", markersize=9, markerfacecolor="white",
                    markeredgecolor=color)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("problem size (minimal GB moved)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)


def plot_results(results: dict, path: Path) -> bool:
    """Draw the figure to ``path``; False (nothing written) without matplotlib or without timings."""
    rows = step_rows(results)
    times = series(rows, "ms")
    memory = series(rows, "peak_mem_bytes")
    fig = new_figure(12 if memory else 7, 4.5, "benchmark plot")
    if fig is None:
        return False
    axes = fig.subplots(1, 2 if memory else 1, squeeze=False)[0]
    names = sorted(set(times) | set(memory))
    palette = [f"C{i}" for i in range(10)]
    colors = {n: palette[i % len(palette)] for i, n in enumerate(names)}
    if times:
        _panel(axes[0], times, "time (ms, median; bars p20-p80; hollow = noisy)", colors)
    else:
        axes[0].text(0.5, 0.5, "no timings", ha="center", va="center", transform=axes[0].transAxes)
        axes[0].set_axis_off()
    if memory:
        _panel(axes[1], memory, "peak memory (bytes)", colors)
    meta = results.get("meta", {})
    fig.suptitle(f"fastalign KL distillation loss, fwd+bwd - {meta.get('device_name', '?')} "
                 f"({meta.get('preset', '?')})")
    save_figure(fig, path, dpi=110)
    return True
