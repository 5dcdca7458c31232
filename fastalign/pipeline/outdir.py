"""Whose folder ``--out`` is: a run writes only into an empty folder or one of its own.

A run replaces files of the names it writes (``report.md``, ``config.json``,
``figures/``) and clears a stage folder before it redoes that stage, so a
non-empty folder that holds no run's marks is refused before any work, like
``distill --out`` and ``fit-teacher --out`` refuse theirs. The marks: the
``.fastalign-run`` file every run writes first, or (folders of older versions)
a stage's ``stage.json`` / ``stage.pending``.
"""

from __future__ import annotations

from pathlib import Path

from .._version import __version__
from ..io import atomic_write_json
from .stages import PENDING_FILE, STAGE_FILE, ForeignFiles

RUN_MARKER = ".fastalign-run"


def is_run_folder(out: Path) -> bool:
    """True when ``out`` carries a run's marker or a stage's record of one."""
    out = Path(out)
    if (out / RUN_MARKER).is_file():
        return True
    return any((d / STAGE_FILE).is_file() or (d / PENDING_FILE).is_file() for d in out.iterdir() if d.is_dir())


def check_run_folder(out: Path, overwrite: bool = False) -> None:
    """ForeignFiles when ``out`` is a non-empty folder that is no run's (unless ``overwrite``).

    With ``overwrite`` the run writes its files into the folder; a stage folder
    holding files it did not write is still never cleared (``StageRunner``).
    A path that is not a folder is left to the folder lock, which names it.
    """
    out = Path(out)
    if overwrite or not out.is_dir() or not any(out.iterdir()) or is_run_folder(out):
        return
    raise ForeignFiles(f"{out} already exists and is not empty, and holds no fastalign run output; choose a "
                       "new --out, or pass --overwrite to write into it anyway (files of the names the run writes "
                       "are replaced)")


def mark_run_folder(out: Path) -> None:
    """Write the marker that makes ``out`` a run folder (first, before any other file of the run)."""
    atomic_write_json(Path(out) / RUN_MARKER, {"fastalign": __version__}, named_tmp=True)
