"""Coordination of ``make-triplets`` ranks, through files only (no process group).

Rank 0 checks the output path, writes ``run.json`` (the content options and
the torchrun run id) and computes what every rank shares (the k-means
clusters); the other ranks wait until those files exist and match their own
options. Each rank then writes its own shards; rank 0 merges the manifests
(``TripletStoreWriter.close`` -> ``store.merge.merge_parts``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from ..io.atomic import atomic_write_json, read_json
from .fingerprint import fingerprint_diff


def rank_and_world(rank: Optional[int], world_size: Optional[int]) -> Tuple[int, int]:
    """(rank, world_size): the given values, else ``$RANK``/``$WORLD_SIZE`` (torchrun), else (0, 1)."""
    r = int(os.environ.get("RANK", 0)) if rank is None else int(rank)
    w = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else int(world_size)
    if not 0 <= r < w:
        raise ValueError(f"need 0 <= RANK < WORLD_SIZE, got {r}/{w}")
    return r, w


def rank_device(device: Optional[str], rank: int, world: int) -> torch.device:
    """The device of this rank: ``device`` if given, else its own GPU (``$LOCAL_RANK``) when there are several."""
    if world > 1 and device is None and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def wait_for(path: Path, timeout: Optional[float], what: str, check: Callable[[Path], bool] = lambda p: True) -> None:
    """Poll until ``path`` exists and passes ``check``; TimeoutError after ``timeout`` seconds (None = forever)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not (path.exists() and check(path)):
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what} ({path})")
        time.sleep(0.5)


def write_shared_json(path: Path, doc: Any) -> None:
    """Write a file the ranks share (key-sorted, ``.tmp-`` temp name so a resume deletes a killed write)."""
    atomic_write_json(path, doc, indent=1, sort_keys=True, named_tmp=True)


def check_fresh(root: Path, resume: bool) -> None:
    """Rank 0, before any work: refuse a non-empty output directory unless resuming."""
    if resume or not root.exists():
        return
    if not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a directory")
    if any(root.iterdir()):
        raise FileExistsError(f"{root} already exists and is not empty; pass --resume to continue it, or choose a new --out")


def _refuse_changes(root: Path, prev: Dict[str, Any], options: Dict[str, Any], fingerprint: Dict[str, Any],
                    what: str) -> None:
    """ValueError naming every content option and fingerprint entry of ``prev`` (a run.json) that differs."""
    old = prev.get("options") or {}
    lines = [f"option {k}: {old.get(k)!r} -> {options.get(k)!r}"
             for k in sorted(set(old) | set(options)) if old.get(k) != options.get(k)]
    if "fingerprint" not in prev:
        lines.append("the interrupted run recorded no input fingerprint (a fastalign from before issue 15), so "
                     "unchanged inputs cannot be checked; start a new --out")
    else:
        lines += fingerprint_diff(prev["fingerprint"], fingerprint)
    if lines:
        names = ", ".join(sorted({k for k in set(old) | set(options) if old.get(k) != options.get(k)}))
        head = f"options differ ({names}); " if names else ""
        raise ValueError(f"{root}: cannot {what}: {head}" + "; ".join(lines))


def start_run(root: Path, options: Dict[str, Any], fingerprint: Dict[str, Any], resume: bool, rank: int, world: int,
              timeout: Optional[float]) -> None:
    """Rank 0 records the run in ``run.json`` (refusing to resume a run whose options or input
    fingerprint differ, ``fingerprint``); the other ranks wait for the ``run.json`` of this torchrun
    run and refuse to join one with other options or another fingerprint."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    run_file = root / "run.json"
    if rank != 0:
        wait_for(run_file, timeout, "rank 0 to start", lambda p: read_json(p).get("run_id") == run_id)
        _refuse_changes(root, read_json(run_file), options, fingerprint, f"join rank 0 as rank {rank}")
        return
    root.mkdir(parents=True, exist_ok=True)
    if resume and run_file.exists():
        _refuse_changes(root, read_json(run_file), options, fingerprint, "resume")
    write_shared_json(run_file, {"options": options, "fingerprint": fingerprint, "run_id": run_id, "world_size": world})
