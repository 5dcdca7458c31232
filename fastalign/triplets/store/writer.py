"""Writing a triplet store: one crash-safe shard at a time, alone or as one of several ranks.

Crash safety: a shard is written to ``.tmp-*``, fsynced and renamed, and only
then is it listed in the manifest, which is itself rewritten atomically. A
manifest has ``"complete": false`` until ``close()``; readers refuse an
incomplete store unless asked. In a distributed write rank ``r`` writes the
shards ``s`` with ``s % world_size == r`` and its own part file; rank 0 merges
(``merge.merge_parts``). A store therefore has the same bytes whatever the
number of ranks and whether or not the write was interrupted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from ...io.atomic import atomic_write_chunks, file_checksum, read_json
from .layout import (
    INDEX_DTYPE,
    INDEX_LIMIT,
    MANIFEST,
    PART_DIR,
    PROB_DTYPE,
    RESUME_KEYS,
    SHARD_DIR,
    SIM_DTYPES,
    check_contiguous,
    check_header,
    check_num_items,
    check_sim_dtype,
    columns,
    manifest_doc,
    manifest_header,
    part_file,
    shard_entry,
    shard_file,
    tmp_target,
    write_manifest,
)
from .merge import merge_parts, remove_parts
from .verify import check_digest


def _as_rows(name: str, value, dtype, b: Optional[int]) -> np.ndarray:
    """Convert a (b, 3) numpy array or torch tensor to a C-contiguous numpy array of ``dtype``."""
    if hasattr(value, "detach"):  # torch.Tensor without importing torch here
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{name} must have shape (B, 3), got {arr.shape}")
    if b is not None and arr.shape[0] != b:
        raise ValueError(f"{name} has {arr.shape[0]} rows but indices have {b}")
    return np.ascontiguousarray(arr, dtype=dtype)


def _positive_int(name: str, value) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


class TripletStoreWriter:
    """Append triplets to a new (or resumed) store, one crash-safe shard at a time.

    Args:
        path: store directory (created; must not hold a store unless ``resume``).
        num_items: number of items the indices refer to; every index must be in [0, num_items),
            and num_items at most ``INDEX_LIMIT`` (2**31: indices are stored as int32).
        sim_dtype: ``"float16"`` or ``"float32"`` storage dtype of the similarities.
        with_probs: also store float32 probabilities (pass ``probs`` to ``write``).
        shard_size: triplets per shard (every shard but the last is full).
        meta: JSON-serialisable generation parameters (teacher id, seed, strategy,
            item names ...). On resume it must equal the stored meta.
        resume: continue a store an earlier writer left incomplete; shards it
            committed are kept (``count`` / ``completed_shard_ids`` say which).
        rank, world_size: this process's share of a distributed write (rank ``r``
            owns shards ``s % world_size == r``); rank 0 merges the manifest on ``close``.
        verify_on_resume: re-hash committed shards on resume (else only sizes are checked).
        merge_timeout: seconds rank 0 waits in ``close`` for the other ranks (None = forever).

    Use as a context manager; leaving the block with an exception keeps the
    store incomplete (and resumable) instead of finalising it.
    """

    def __init__(
        self,
        path: Union[str, os.PathLike],
        *,
        num_items: int,
        sim_dtype: str = "float16",
        with_probs: bool = False,
        shard_size: int = 1_000_000,
        meta: Optional[Dict[str, Any]] = None,
        resume: bool = False,
        rank: int = 0,
        world_size: int = 1,
        verify_on_resume: bool = True,
        merge_timeout: Optional[float] = None,
    ) -> None:
        self.num_items = check_num_items(_positive_int("num_items", num_items))
        self.shard_size = _positive_int("shard_size", shard_size)
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank!r} world_size={world_size!r}")
        self.path = Path(path)
        self.sim_dtype = check_sim_dtype(sim_dtype)
        self.with_probs = bool(with_probs)
        self._check_json(dict(meta or {}))
        # as a reader will parse it back (tuples become lists), so a resume compares like with like
        self.meta = json.loads(json.dumps(dict(meta or {})))
        self.rank = rank
        self.world_size = world_size
        self.merge_timeout = merge_timeout
        self._shards: Dict[int, Dict[str, Any]] = {}
        self._buf: List[Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]] = []
        self._buffered = 0
        self._closed = False

        own = self.path / (MANIFEST if world_size == 1 else part_file(rank))
        exists = own.exists() or (rank == 0 and (self.path / MANIFEST).exists())
        if world_size == 1 and not exists and (self.path / SHARD_DIR).is_dir():
            exists = any((self.path / SHARD_DIR).iterdir())
        if exists and not resume:
            raise FileExistsError(f"{self.path} already holds a triplet store; pass resume=True (--resume) to continue it or choose a new path")
        (self.path / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        if world_size > 1:
            (self.path / PART_DIR).mkdir(parents=True, exist_ok=True)
        if exists:
            self._load_for_resume(verify_on_resume)
        self._clean_tmp()
        self._write_progress(complete=False)

    # -- public -------------------------------------------------------------

    @property
    def count(self) -> int:
        """Triplets this rank has committed to disk (buffered rows not included)."""
        return sum(s["count"] for s in self._shards.values())

    @property
    def completed_shard_ids(self) -> List[int]:
        """Ids of the shards this rank has committed, ascending."""
        return sorted(self._shards)

    def owns(self, shard_id: int) -> bool:
        """Whether this rank writes shard ``shard_id``."""
        return shard_id % self.world_size == self.rank

    def write(self, indices, sims, probs=None) -> None:
        """Append rows; full shards are committed as soon as they fill up.

        Args:
            indices: (b, 3) integer array/tensor, values in [0, num_items).
            sims: (b, 3) similarities ``[s01, s02, s12]``.
            probs: (b, 3) probabilities; required iff ``with_probs``.
        """
        idx, sm, pr = self._validate(indices, sims, probs)
        if idx.shape[0] == 0:
            return
        self._buf.append((idx, sm, pr))
        self._buffered += idx.shape[0]
        while self._buffered >= self.shard_size:
            self._flush(self.shard_size)

    def write_shard(self, shard_id: int, indices, sims, probs=None) -> None:
        """Commit one whole shard by its global id (the generator's entry point).

        The shard must hold ``shard_size`` rows, except the store's last shard.
        Rewriting a committed shard replaces it (the generator never does).
        """
        if not isinstance(shard_id, (int, np.integer)) or shard_id < 0:
            raise ValueError(f"shard_id must be a non-negative int, got {shard_id!r}")
        if not self.owns(int(shard_id)):
            raise ValueError(f"rank {self.rank} of {self.world_size} does not own shard {shard_id}")
        idx, sm, pr = self._validate(indices, sims, probs)
        if not 0 < idx.shape[0] <= self.shard_size:
            raise ValueError(f"a shard holds 1..{self.shard_size} rows, got {idx.shape[0]}")
        self._commit(int(shard_id), idx, sm, pr)

    def close(self) -> None:
        """Commit buffered rows as the last shard and finalise the manifest (rank 0 merges all ranks)."""
        if self._closed:
            return
        if self._buffered:
            self._flush(self._buffered)
        self._write_progress(complete=True)
        if self.world_size > 1 and self.rank == 0:
            merge_parts(self.path, self.world_size, timeout=self.merge_timeout)
        self._closed = True

    def __enter__(self) -> "TripletStoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._closed = True  # keep the store incomplete: a resume picks it up

    # -- internals ----------------------------------------------------------

    @staticmethod
    def _check_json(meta: Dict[str, Any]) -> None:
        try:
            json.dumps(meta, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"meta must be JSON-serialisable: {exc}") from None

    def _validate(self, indices, sims, probs):
        if self._closed:
            raise ValueError("writer is closed")
        if hasattr(indices, "detach"):
            indices = indices.detach().cpu().numpy()
        raw = np.asarray(indices)
        if raw.ndim != 2 or raw.shape[1] != 3:
            raise ValueError(f"indices must have shape (B, 3), got {raw.shape}")
        if raw.dtype.kind not in "iu":
            raise TypeError(f"indices must be integers, got {raw.dtype}")
        b = raw.shape[0]
        # Range check on the caller's array, before the int32 cast that would wrap 2**31 to -2**31
        # (num_items <= INDEX_LIMIT, so the num_items bound is also the dtype's); the only copy is
        # the int32 one (none if already int32).
        lo, hi = (int(raw.min()), int(raw.max())) if b else (0, 0)
        if lo < 0 or hi >= self.num_items or hi >= INDEX_LIMIT:
            raise ValueError(f"indices must be in [0, {self.num_items:,}) (int32 item indices), got range "
                             f"[{lo:,}, {hi:,}]; nothing was written")
        idx = np.ascontiguousarray(raw, dtype=INDEX_DTYPE)
        sm_in = sims.detach().cpu().numpy() if hasattr(sims, "detach") else np.asarray(sims)
        if sm_in.dtype.kind != "f":
            raise TypeError(f"sims must be floating point, got {sm_in.dtype}")
        sm = _as_rows("sims", sm_in, SIM_DTYPES[self.sim_dtype], b)
        if not np.isfinite(sm).all():
            raise ValueError("sims contain NaN or Inf (or overflow the storage dtype)")
        if self.with_probs:
            if probs is None:
                raise ValueError("this store has with_probs=True: pass probs")
            pr = _as_rows("probs", probs, PROB_DTYPE, b)
        else:
            if probs is not None:
                raise ValueError("this store has with_probs=False: do not pass probs")
            pr = None
        return idx, sm, pr

    def _next_append_id(self) -> int:
        # Append order within a rank: its n-th shard is global shard n * world_size + rank.
        return len(self._shards) * self.world_size + self.rank

    def _flush(self, n: int) -> None:
        idx = np.concatenate([b[0] for b in self._buf])
        sm = np.concatenate([b[1] for b in self._buf])
        pr = np.concatenate([b[2] for b in self._buf]) if self.with_probs else None
        self._commit(self._next_append_id(), idx[:n], sm[:n], None if pr is None else pr[:n])
        self._buf = [(idx[n:], sm[n:], None if pr is None else pr[n:])] if idx.shape[0] > n else []
        self._buffered = idx.shape[0] - n

    def _commit(self, shard_id: int, idx: np.ndarray, sm: np.ndarray, pr: Optional[np.ndarray]) -> None:
        chunks = [idx, sm] + ([pr] if pr is not None else [])  # the column order of layout.columns
        digest = atomic_write_chunks(self.path / shard_file(shard_id), chunks, named_tmp=True, fault="shard")
        nbytes = sum(c.nbytes for c in chunks)
        # index statistics let a reader check num_items in O(shards) (layout, format version 2)
        self._shards[shard_id] = shard_entry(shard_id, int(idx.shape[0]), nbytes, digest, int(idx.min()), int(idx.max()))
        self._write_progress(complete=False)

    def _header(self) -> Dict[str, Any]:
        return manifest_header(self.num_items, self.sim_dtype, self.with_probs, self.shard_size, self.meta)

    def _write_progress(self, complete: bool) -> None:
        shards = [self._shards[k] for k in sorted(self._shards)]
        doc = manifest_doc(self._header(), shards, complete)
        if self.world_size == 1:
            if complete:
                check_contiguous(self.path, shards, self.shard_size)
            write_manifest(self.path / MANIFEST, doc)
            if complete:
                remove_parts(self.path)
        else:
            doc["rank"], doc["world_size"] = self.rank, self.world_size
            write_manifest(self.path / part_file(self.rank), doc)

    def _load_for_resume(self, verify: bool) -> None:
        # Read the manifest and every rank's part, so a resume may even change world_size.
        files = [self.path / MANIFEST]
        if (self.path / PART_DIR).is_dir():
            files += sorted((self.path / PART_DIR).glob("rank-*.json"))
        mine = self._header()
        for f in files:
            if not f.exists():
                continue
            doc = read_json(f)
            check_header(self.path, doc)
            check_digest(f, doc)  # progress files are replaced atomically: a mismatch is an edit
            for key in RESUME_KEYS:
                if doc.get(key) != mine[key]:
                    raise ValueError(
                        f"{self.path}: cannot resume: stored {key}={doc.get(key)!r} differs from requested {mine[key]!r}"
                    )
            for entry in doc.get("shards", []):
                sid = int(entry["id"])
                if not self.owns(sid):
                    continue
                sf = self.path / entry["file"]
                ok = sf.exists() and sf.stat().st_size == entry["bytes"]
                if ok and verify:
                    ok = file_checksum(sf) == entry["checksum"]
                # A damaged shard is dropped from the resume set and regenerated.
                if ok:
                    self._shards[sid] = self._with_stats(sf, dict(entry))

    def _with_stats(self, f: Path, entry: Dict[str, Any]) -> Dict[str, Any]:
        """A committed entry with its index statistics (a version-1 part or manifest has none: read them)."""
        if "index_min" not in entry:
            _, off, dt = columns(entry["count"], self.sim_dtype, self.with_probs)[0]
            idx = np.memmap(f, dtype=dt, mode="r", offset=off, shape=(entry["count"], 3))
            entry["index_min"], entry["index_max"] = int(idx.min()), int(idx.max())
            del idx
        return entry

    def _clean_tmp(self) -> None:
        # Temp files are left behind only by a crash; ours are the ones for shards and parts we own,
        # plus (rank 0) any other temp file in the store (a manifest's).
        for d in (self.path / SHARD_DIR, self.path / PART_DIR, self.path):
            if not d.is_dir():
                continue
            for f in d.iterdir():
                target = tmp_target(f.name)
                if target is None:
                    continue
                kind, num = target
                # other ranks may be writing their own shards/parts right now: touch only ours
                if kind == "shard" and not self.owns(num) or kind == "rank" and num != self.rank:
                    continue
                if kind == "" and self.rank != 0:
                    continue
                try:
                    f.unlink()
                except OSError:
                    pass
