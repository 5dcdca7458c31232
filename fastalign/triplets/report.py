"""What ``make-triplets`` reports: the run summary, its text form and the teacher-entropy histogram."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..io import figures
from ..io.atomic import atomic_write_json
from .label import entropy, softmax_np
from .store import TripletStore
from .store.layout import columns

ENTROPY_BINS = 60


@dataclass
class SplitSummary:
    """What one split produced."""

    name: str
    path: str
    num: int
    items: int
    strategy_counts: Dict[str, int]
    skipped: Dict[str, object]
    shards_written: int
    shards_resumed: int


@dataclass
class GenerateSummary:
    """Returned by ``generate`` (and written to ``OUT/summary.json`` by rank 0)."""

    splits: List[SplitSummary] = field(default_factory=list)
    seconds: Dict[str, float] = field(default_factory=dict)
    temperature: float = 1.0
    kmeans: Optional[Dict[str, object]] = None
    entropy_hist: Optional[Dict[str, object]] = None
    rank: int = 0
    world_size: int = 1


def entropy_histogram(store: TripletStore, temperature: float, bins: int = ENTROPY_BINS,
                      chunk: int = 65536) -> Dict[str, object]:
    """Histogram of teacher entropies (nats) over the whole store, streamed in chunks.

    Reads shards with plain file reads (at the offsets of ``store.layout.columns``)
    rather than through the memory maps, so resident memory stays at one chunk
    however large the store is. Without stored probabilities they are
    ``softmax(sims / temperature)``.
    """
    edges = np.linspace(0.0, math.log(3.0), bins + 1)
    counts = np.zeros(bins, dtype=np.int64)
    total = 0.0
    with_probs = store.probs is not None
    for sh in store.shards:
        cols = {name: (off, dt) for name, off, dt in columns(sh.count, store.manifest["sim_dtype"], with_probs)}
        off, dt = cols["probs" if with_probs else "sims"]
        for a in range(0, sh.count, chunk):
            m = min(chunk, sh.count - a)
            rows = np.fromfile(sh.file, dtype=dt, count=3 * m, offset=off + a * 3 * dt.itemsize).reshape(m, 3)
            p = rows if with_probs else softmax_np(rows, temperature)
            h = np.clip(entropy(p), 0.0, math.log(3.0))
            counts += np.histogram(h, bins=edges)[0]
            total += float(h.sum())
    n = int(counts.sum())
    return {"edges": edges.tolist(), "counts": counts.tolist(), "mean": total / n if n else float("nan"), "n": n}


def plot_entropy(hists: Dict[str, Dict[str, object]], path: Path) -> bool:
    """Write the teacher-entropy histogram(s) as a PNG; False (figure skipped, one notice) without matplotlib."""
    fig = figures.new_figure(6, 3.6, "teacher-entropy histogram")
    if fig is None:
        return False
    ax = fig.subplots()
    for name, h in hists.items():
        edges = np.asarray(h["edges"])
        counts = np.asarray(h["counts"], dtype=np.float64)
        dens = counts / max(counts.sum(), 1) / np.diff(edges)
        ax.stairs(dens, edges, label=f"{name} (n={h['n']:,}, mean {h['mean']:.3f})", fill=name == "train", alpha=0.6)
    ax.axvline(math.log(3.0), color="k", lw=0.8, ls="--")
    ax.set_xlabel("teacher entropy (nats); ln 3 = uniform")
    ax.set_ylabel("density")
    ax.set_title("Teacher odd-one-out entropy")
    ax.legend(fontsize=8)
    figures.save_figure(fig, path, dpi=120)
    return True


def write_summary(path: Path, summary: GenerateSummary) -> None:
    """``summary.json``: strict JSON (NaN -> null), key-sorted; a ``.tmp-`` temp name a resume deletes."""
    atomic_write_json(path, summary, indent=1, sort_keys=True, named_tmp=True)


def format_summary(s: GenerateSummary) -> str:
    """Human-readable summary: counts per strategy, skipped labels, time per stage, throughput."""
    lines = []
    for sp in s.splits:
        lines.append(f"{sp.name}: {sp.num:,} triplets over {sp.items:,} items -> {sp.path} "
                     f"({sp.shards_written} shards written, {sp.shards_resumed} resumed)")
        for name, c in sp.strategy_counts.items():
            rep = sp.skipped.get(name, {}) if isinstance(sp.skipped, dict) else {}
            skip = rep.get("skipped_labels", 0) if isinstance(rep, dict) else 0
            extra = f"; {skip} label(s) with too few items skipped for the {rep.get('role')} role" if skip else ""
            lines.append(f"  {name:<15} {c:>14,}{extra}")
    if s.entropy_hist:
        for name, h in s.entropy_hist.items():
            lines.append(f"teacher entropy ({name}): mean {h['mean']:.4f} nats (ln 3 = {math.log(3):.4f}) over {h['n']:,}")
    lines.append(f"temperature: {s.temperature:g}")
    total = sum(sp.num for sp in s.splits)
    lines.append("| stage | seconds | triplets/s |")
    lines.append("|---|---:|---:|")
    for k, v in s.seconds.items():
        rate = f"{total / v:,.0f}" if k in ("sample", "label", "write") and v > 0 else ""
        lines.append(f"| {k} | {v:.3f} | {rate} |")
    return "\n".join(lines)
