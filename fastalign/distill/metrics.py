"""Observability: NVTX ranges, metrics files (JSONL + CSV, TensorBoard when
installed) and the PNG of training curves. (The progress bar is
``fastalign.common.progress.Progress``.)"""

from __future__ import annotations

import contextlib
import csv
import json
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import torch

from ..common.jsonsafe import json_safe
from ..io import atomic_write, atomic_write_text
from ..io.figures import new_figure, save_figure


@contextlib.contextmanager
def nvtx_range(name: str) -> Iterator[None]:
    """An NVTX range on CUDA (so a GPU profile shows the phases); no-op on CPU."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.nvtx.range_push(name)
        try:
            yield
        finally:
            torch.cuda.nvtx.range_pop()
    else:
        yield


class MetricsWriter:
    """Appends one row per ``log`` call to ``metrics.jsonl`` and ``metrics.csv``.

    Args:
        out_dir: directory of the files.
        resume_step: on resume, rows with ``step > resume_step`` (written after
            the checkpoint we resume from) are dropped first, so the files read
            as one uninterrupted run.
        tensorboard: also write TensorBoard scalars when the package is installed.
    """

    def __init__(self, out_dir: Path, resume_step: int = 0, tensorboard: bool = True):
        self.out_dir = Path(out_dir)
        self.jsonl = self.out_dir / "metrics.jsonl"
        self.csv = self.out_dir / "metrics.csv"
        self.rows: List[Dict[str, Any]] = []
        if self.jsonl.exists():
            for line in self.jsonl.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line from a kill: drop it
                if int(row.get("step", 0)) <= resume_step:
                    self.rows.append(row)
        self._rewrite()
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # optional: needs the tensorboard package

                self.tb = SummaryWriter(str(self.out_dir / "tensorboard"))
            except Exception:  # tensorboard not installed
                self.tb = None

    def _rewrite(self) -> None:
        atomic_write_text(self.jsonl, "".join(json.dumps(row) + "\n" for row in self.rows))
        self._write_csv()

    def _write_csv(self) -> None:
        keys: List[str] = []
        for row in self.rows:
            keys += [k for k in row if k not in keys]
        with atomic_write(self.csv, "w") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            for row in self.rows:
                writer.writerow(row)

    def log(self, row: Dict[str, Any]) -> None:
        row = json_safe(row)
        self.rows.append(row)
        with open(self.jsonl, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and v is not None:
                    self.tb.add_scalar(k, v, int(row["step"]))

    def close(self) -> None:
        # The CSV is rewritten once at the end: its columns are the union of all rows'.
        self._write_csv()
        if self.tb is not None:
            self.tb.close()


def plot_curves(rows: List[Dict[str, Any]], path: Path) -> Optional[Path]:
    """Training curves (loss, learning rate, evaluation metrics) as a PNG.

    Returns the path, or None when matplotlib is missing or there is nothing to plot.
    """
    series = {}
    for key in ("loss", "distill", "human", "lr", "val_kl", "val_acc", "human_acc"):
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            series[key] = pts
    if not series:
        return None
    fig = new_figure(3.2 * len(series), 3.0, "the distillation curves")
    if fig is None:
        return None
    axes = fig.subplots(1, len(series), squeeze=False)
    for ax, (key, pts) in zip(axes[0], series.items()):
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="." if len(xs) < 30 else None)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    save_figure(fig, path, dpi=100)
    return Path(path)
