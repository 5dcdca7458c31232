"""Refuse an --out folder that is not empty and holds another program's files, and a
single-file --out that names a folder.

A command may write into a folder that does not exist, is empty, or already holds
its own output (a rerun of fit-teacher replaces its files; distill resumes). Any
other non-empty folder is refused before any work starts: files of the same name
(report.json, metrics.csv) would be replaced without a word. make-triplets refuses
every non-empty folder unless --resume (``fastalign.triplets.ranks.check_fresh``);
the wording here is the same.
"""

from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path
from typing import Iterable

from ..io.atomic import check_file_target
from .main import CLIError

OVERWRITE_HELP = "write into a non-empty --out that holds no {what} output (files of the names it writes are replaced)"

# Names only these commands write, so their presence marks the folder as theirs (report.json
# alone would not: every tool writes one). Temp names count too: a run killed in its first
# write leaves only those.
DISTILL_MARKERS = ("ckpt-*", ".ckpt-*.tmp", "metrics.jsonl", ".tmp-metrics.jsonl.*")
FIT_TEACHER_MARKERS = ("transform.npz", "transform_hard.npz", ".transform.npz.*.tmp", ".transform_hard.npz.*.tmp")


def holds_output_of(folder: Path, markers: Iterable[str]) -> bool:
    """True when an entry of ``folder`` has a name that matches one of ``markers``."""
    patterns = tuple(markers)
    return any(fnmatch(p.name, pat) for p in folder.iterdir() for pat in patterns)


def check_out_dir(out: Path, what: str, markers: Iterable[str], overwrite: bool) -> None:
    """CLIError when ``out`` is a file, or a non-empty folder without ``what``'s output (unless ``overwrite``)."""
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise CLIError(f"{out} exists and is not a directory")
    if overwrite or not any(out.iterdir()) or holds_output_of(out, markers):
        return
    raise CLIError(f"{out} already exists and is not empty, and holds no {what} output; pass --overwrite to "
                   "write into it anyway, or choose a new --out")


def check_out_file(flag: str, value, suffix: str) -> Path:
    """CLIError when the single file ``flag`` names is a folder (an existing one, or a name ending in
    a slash), before any work starts; the atomic writer would refuse it only when it writes."""
    try:
        check_file_target(value, f" ending in {suffix}")
    except ValueError as exc:
        raise CLIError(f"{flag} {exc}") from None
    return Path(value)
