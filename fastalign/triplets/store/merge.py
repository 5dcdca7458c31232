"""Finishing a distributed store write: rank 0 merges every rank's part file into the manifest.

Coordination is through files only, so no process group is needed: each rank
keeps ``parts/rank-RRRRR.json`` current and marks it complete when it is done;
rank 0 waits for all of them, checks that they describe one store and writes
the final manifest. The per-rank files are then deleted, so the finished tree
equals a one-rank write byte for byte.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional, Union

from ...io.atomic import fsync_dir, read_json
from .layout import MANIFEST, PART_DIR, PER_RANK_KEYS, check_contiguous, manifest_doc, part_file, write_manifest


def merge_parts(path: Union[str, os.PathLike], world_size: int, timeout: Optional[float] = None, poll: float = 0.5) -> None:
    """Rank 0: wait until every rank's part is complete, then write the final manifest.

    Raises ``TimeoutError`` after ``timeout`` seconds; the store then stays incomplete.
    """
    path = Path(path)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        docs = []
        for r in range(world_size):
            f = path / part_file(r)
            doc = read_json(f) if f.exists() else None
            if doc is None or not doc.get("complete"):
                break
            docs.append(doc)
        if len(docs) == world_size:
            break
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"{path}: ranks did not all finish within {timeout} s; the store stays incomplete")
        time.sleep(poll)
    head = {k: v for k, v in docs[0].items() if k not in PER_RANK_KEYS}
    for d in docs[1:]:
        if {k: v for k, v in d.items() if k not in PER_RANK_KEYS} != head:
            raise ValueError(f"{path}: ranks wrote different store parameters; cannot merge")
    shards = sorted((s for d in docs for s in d["shards"]), key=lambda s: s["id"])
    check_contiguous(path, shards, head["shard_size"])
    write_manifest(path / MANIFEST, manifest_doc(head, shards, complete=True))
    remove_parts(path)


def remove_parts(path: Path) -> None:
    """Delete the per-rank progress files once the manifest is final (the tree then equals a 1-rank write)."""
    d = path / PART_DIR
    if not d.is_dir():
        return
    for f in d.iterdir():
        try:
            f.unlink()
        except OSError:
            pass
    try:
        d.rmdir()
    except OSError:
        pass
    fsync_dir(path)
