"""Figures without pyplot: a library must not switch a notebook's global backend.

Matplotlib is optional (``pip install 'fastalign[report]'``). :func:`new_figure` returns
``None`` with a one-line notice when it is missing, and callers skip the figure.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import Any, Optional, Union

from .atomic import atomic_write_bytes

REPORT_EXTRA = "pip install 'fastalign[report]'"
_warned = False


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401  (optional extra)
    except ImportError:
        return False
    return True


def new_figure(width: float, height: float, what: str = "figure") -> Optional[Any]:
    """A ``matplotlib.figure.Figure`` of ``width`` x ``height`` inches, or None (with one notice
    per process) when matplotlib is not installed. The figure owns its Agg canvas, so nothing
    global changes."""
    global _warned
    try:
        from matplotlib.figure import Figure  # optional extra
    except ImportError:
        if not _warned:
            print(f"note: {what} skipped (matplotlib is not installed; {REPORT_EXTRA})", file=sys.stderr)
            _warned = True
        return None
    return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig: Any, path: Union[str, os.PathLike], dpi: int = 150) -> Path:
    """Render ``fig`` to PNG bytes in memory, then write them atomically to ``path``; returns the path."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
