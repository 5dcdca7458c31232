"""Observability: NVTX ranges, metrics files (JSONL + CSV, TensorBoard when
installed), the PNG of training curves and the run's report (``report.json``,
``report.md``). (The progress bar is ``fastalign.common.progress.Progress``.)

Every file here is written through ``fastalign.io.atomic`` with named temp
files (``.tmp-NAME.PID``), so a kill leaves a leftover whose name says what it
was; ``remove_report_temps`` deletes them when the run starts again.
"""

from __future__ import annotations

import contextlib
import csv
import json
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch

from ..common.jsonsafe import json_safe
from ..io.atomic import TMP_PREFIX, atomic_write, atomic_write_json, atomic_write_text, read_json
from ..io.faults import fault_point
from ..io.figures import new_figure, save_figure

# Files of a run directory written here (curves.png by io.figures, with a random temp name).
RUN_FILES = ("report.json", "report.md", "metrics.jsonl", "metrics.csv", "curves.png")
# Final metrics that describe one call of distill(), not the trained model.
RUN_STATS = ("run_seconds", "triplets_per_s_run")


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
        atomic_write_text(self.jsonl, "".join(json.dumps(row) + "\n" for row in self.rows), named_tmp=True)
        self._write_csv()

    def _write_csv(self) -> None:
        keys: List[str] = []
        for row in self.rows:
            keys += [k for k in row if k not in keys]
        with atomic_write(self.csv, "w", named_tmp=True) as fh:
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


# Each curve's label in words; "loss" is the total (distillation + weighted human term). The human
# accuracy is on eval.human_triplets, a monitoring set: never the held-out triplets a report scores
# (the pipeline names its own, the training-side calibration triplets, through ``plot_curves(labels=)``).
CURVE_LABELS = {
    "loss": "total training loss",
    "distill": "distillation loss (train)",
    "human": "human-triplet loss (train)",
    "lr": "learning rate",
    "val_kl": "KL to the teacher (validation triplets)",
    "val_acc": "agreement with the teacher (validation, %)",
    "human_acc": "odd-one-out accuracy on the monitoring human triplets (%)",
}


def y_limits(key: str, ys: Sequence[float]) -> Optional[Tuple[float, float]]:
    """A panel's y-range when matplotlib's own would be too tight (else None): at least 10 points for a
    percentage and 10 % of the values' scale otherwise, so that a change of 0.3 % of a metric is not
    drawn across the whole panel."""
    lo, hi = min(ys), max(ys)
    span = 10.0 if key.endswith("acc") else 0.1 * max(abs(lo), abs(hi))
    if not span > hi - lo:
        return None
    mid = 0.5 * (lo + hi)
    return mid - 0.5 * span, mid + 0.5 * span


def _curves(rows: List[Dict[str, Any]]) -> Dict[str, List[Tuple[float, float]]]:
    """The series worth a panel: none that is constant zero (an unused human term), and no total loss
    that only repeats the distillation loss."""
    series = {}
    for key in CURVE_LABELS:
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if pts and any(v != 0 for _, v in pts):
            series[key] = pts
    if "loss" in series and series.get("loss") == series.get("distill"):
        del series["loss"]
    return series


def plot_curves(rows: List[Dict[str, Any]], path: Path, labels: Optional[Mapping[str, str]] = None) -> Optional[Path]:
    """Training curves (losses, learning rate, evaluation metrics) as a PNG grid, three panels a row.

    ``labels`` replaces panel titles of ``CURVE_LABELS`` by key (say which triplets a metric is on).
    Returns the path, or None when matplotlib is missing or there is nothing to plot.
    """
    titles = {**CURVE_LABELS, **(labels or {})}
    series = _curves(rows)
    if not series:
        return None
    cols = min(3, len(series))
    nrows = -(-len(series) // cols)
    fig = new_figure(4.2 * cols, 3.0 * nrows, "the distillation curves")
    if fig is None:
        return None
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax, (key, pts) in zip(axes, series.items()):
        xs, ys = zip(*pts)
        if key.endswith("acc"):
            ys = [100 * y for y in ys]
        ax.plot(xs, ys, marker="." if len(xs) < 30 else None)
        limits = y_limits(key, ys)
        if limits is not None:
            ax.set_ylim(*limits)
        ax.set_title(titles[key], fontsize=9)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    for ax in axes[len(series):]:
        ax.set_visible(False)
    save_figure(fig, path, dpi=110)
    return Path(path)


def remove_report_temps(out_dir: Path) -> List[Path]:
    """Delete the temp files a killed write of ``RUN_FILES`` left in ``out_dir``
    (named ``.tmp-NAME.PID``, or ``.NAME.*.tmp`` from the random-name writers); returns them."""
    out_dir = Path(out_dir)
    found: List[Path] = []
    for name in RUN_FILES:
        found += list(out_dir.glob(f"{TMP_PREFIX}{name}.*")) + list(out_dir.glob(f".{name}.*.tmp"))
    for path in found:
        path.unlink(missing_ok=True)
    return found


def previous_report_metrics(out_dir: Path, steps: int) -> Dict[str, Any]:
    """The metrics of ``out_dir/report.json`` if it reports ``steps`` steps, else ``{}``."""
    path = Path(out_dir) / "report.json"
    if not path.is_file():
        return {}
    try:
        report = read_json(path)
    except ValueError:  # a damaged report is rewritten, not trusted
        return {}
    if not isinstance(report, dict) or report.get("steps") != steps:
        return {}
    return dict(report.get("metrics") or {})


def _report_lines(steps: int, metrics: Dict[str, Any], ckpt: Path, curves: Optional[Path]) -> Tuple[str, str]:
    """``report.md`` in two halves (the fault point ``report.md`` falls between them)."""
    lines = ["# Distillation report", "", f"- steps: {steps}", f"- final checkpoint: `{ckpt}`"]
    if curves:
        lines.append(f"- curves: `{curves.name}`")
    lines += ["", "| metric | value |", "|---|---|"]
    table = [f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    return "\n".join(lines) + "\n", "".join(row + "\n" for row in table)


def write_report(out_dir: Path, steps: int, metrics: Dict[str, Any], ckpt: Path, curves: Optional[Path],
                 config: Dict[str, Any]) -> Path:
    """Write ``report.json`` then ``report.md`` atomically; returns the ``report.md`` path."""
    out_dir = Path(out_dir)
    report = {"steps": steps, "checkpoint": str(ckpt), "curves": str(curves) if curves else None,
              "metrics": metrics, "config": config}
    atomic_write_json(out_dir / "report.json", report, named_tmp=True)
    md = out_dir / "report.md"
    head, table = _report_lines(steps, metrics, ckpt, curves)
    with atomic_write(md, "w", named_tmp=True) as fh:
        fh.write(head)
        fh.flush()
        fault_point("report.md")
        fh.write(table)
    return md
