"""The on-disk triplet store: sharded, memory-mapped, checksummed, crash-safe.

Layout of a store directory::

    STORE/
      manifest.json            counts, dtypes, shard list + checksums, generation meta
      shards/shard-00000000.bin
      shards/shard-00000001.bin
      parts/rank-00001.json    (only while a distributed write is in progress)

A shard file is raw little-endian C-order data, in this order::

    indices  (count, 3) int32        rows (i, j, k), the odd one out last
    sims     (count, 3) sim_dtype    [s01, s02, s12], float16 or float32
    probs    (count, 3) float32      softmax(s / T), only when with_probs

Probabilities are always float32: rows of float16 probabilities would miss the
row-sum tolerance the distillation loss checks in float32.

Crash safety: a shard is written to ``.tmp-*``, fsynced and renamed, and only
then is it listed in the manifest, which is itself rewritten atomically. A
manifest has ``"complete": false`` until ``close()``; readers refuse an
incomplete store unless asked. Shards are numbered globally: shard ``s`` holds
triplets ``[s * shard_size, (s + 1) * shard_size)`` of the whole store, every
shard but the last is full, and in a distributed write rank ``r`` writes the
shards ``s`` with ``s % world_size == r``. A store therefore has the same bytes
whatever the number of ranks and whether or not the write was interrupted.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ._fs import HASH_NAME, file_checksum, fsync_dir, read_json, write_bytes_atomic, write_json_atomic

if TYPE_CHECKING:  # pragma: no cover
    from .stream import TripletBatch

FORMAT = "fastalign-triplet-store"
VERSION = 1
MANIFEST = "manifest.json"
SHARD_DIR = "shards"
PART_DIR = "parts"
SIM_DTYPES = {"float16": np.float16, "float32": np.float32}
INDEX_DTYPE = np.dtype("<i4")
PROB_DTYPE = np.dtype("<f4")


def shard_file(shard_id: int) -> str:
    """Relative path of shard ``shard_id`` inside a store."""
    return f"{SHARD_DIR}/shard-{shard_id:08d}.bin"


def _part_file(rank: int) -> str:
    return f"{PART_DIR}/rank-{rank:05d}.json"


def _row_bytes(sim_dtype: str, with_probs: bool) -> int:
    return 3 * (INDEX_DTYPE.itemsize + np.dtype(SIM_DTYPES[sim_dtype]).itemsize + (PROB_DTYPE.itemsize if with_probs else 0))


def _check_sim_dtype(sim_dtype: str) -> str:
    if sim_dtype not in SIM_DTYPES:
        raise ValueError(f"sim_dtype must be one of {sorted(SIM_DTYPES)}, got {sim_dtype!r}")
    return sim_dtype


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


# --------------------------------------------------------------------------- writer


class TripletStoreWriter:
    """Append triplets to a new (or resumed) store, one crash-safe shard at a time.

    Args:
        path: store directory (created; must not hold a store unless ``resume``).
        num_items: number of items the indices refer to; every index must be in [0, num_items).
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
        if not isinstance(num_items, (int, np.integer)) or isinstance(num_items, bool) or num_items < 1:
            raise ValueError(f"num_items must be a positive int, got {num_items!r}")
        if not isinstance(shard_size, (int, np.integer)) or isinstance(shard_size, bool) or shard_size < 1:
            raise ValueError(f"shard_size must be a positive int, got {shard_size!r}")
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank!r} world_size={world_size!r}")
        self.path = Path(path)
        self.num_items = int(num_items)
        self.sim_dtype = _check_sim_dtype(sim_dtype)
        self.with_probs = bool(with_probs)
        self.shard_size = int(shard_size)
        self.meta = dict(meta or {})
        self.rank = rank
        self.world_size = world_size
        self.merge_timeout = merge_timeout
        self._shards: Dict[int, Dict[str, Any]] = {}
        self._buf: List[Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]] = []
        self._buffered = 0
        self._closed = False
        self._check_json(self.meta)

        own = self.path / (MANIFEST if world_size == 1 else _part_file(rank))
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
        import json

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
        # range check on the caller's array, so the only copy is the int32 one (none if already int32)
        if b and (int(raw.min()) < 0 or int(raw.max()) >= self.num_items):
            raise ValueError(f"indices must be in [0, {self.num_items}), got range [{raw.min()}, {raw.max()}]")
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
        rel = shard_file(shard_id)
        chunks = [idx, sm] + ([pr] if pr is not None else [])
        digest = write_bytes_atomic(self.path / rel, chunks)
        nbytes = sum(c.nbytes for c in chunks)
        self._shards[shard_id] = {"id": shard_id, "file": rel, "count": int(idx.shape[0]), "bytes": nbytes, "checksum": digest}
        self._write_progress(complete=False)

    def _header(self) -> Dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "num_items": self.num_items,
            "sim_dtype": self.sim_dtype,
            "index_dtype": "int32",
            "prob_dtype": "float32" if self.with_probs else None,
            "with_probs": self.with_probs,
            "shard_size": self.shard_size,
            "checksum": HASH_NAME,
            "meta": self.meta,
        }

    def _write_progress(self, complete: bool) -> None:
        shards = [self._shards[k] for k in sorted(self._shards)]
        doc = dict(self._header(), complete=complete, count=sum(s["count"] for s in shards), shards=shards)
        if self.world_size == 1:
            if complete:
                _check_layout(self.path, shards, self.shard_size)
            write_json_atomic(self.path / MANIFEST, doc)
            if complete:
                _remove_parts(self.path)
        else:
            doc["rank"], doc["world_size"] = self.rank, self.world_size
            write_json_atomic(self.path / _part_file(self.rank), doc)

    def _load_for_resume(self, verify: bool) -> None:
        # Read the manifest and every rank's part, so a resume may even change world_size.
        docs = []
        files = [self.path / MANIFEST]
        if (self.path / PART_DIR).is_dir():
            files += sorted((self.path / PART_DIR).glob("rank-*.json"))
        for f in files:
            if f.exists():
                docs.append(read_json(f))
        for doc in docs:
            _check_header(self.path, doc)
            mine = dict(self._header())
            for key in ("num_items", "sim_dtype", "with_probs", "shard_size", "meta"):
                if doc.get(key) != mine[key]:
                    raise ValueError(
                        f"{self.path}: cannot resume: stored {key}={doc.get(key)!r} differs from requested {mine[key]!r}"
                    )
            for entry in doc.get("shards", []):
                sid = int(entry["id"])
                if not self.owns(sid):
                    continue
                f = self.path / entry["file"]
                ok = f.exists() and f.stat().st_size == entry["bytes"]
                if ok and verify:
                    ok = file_checksum(f) == entry["checksum"]
                # A damaged shard is dropped from the resume set and regenerated.
                if ok:
                    self._shards[sid] = dict(entry)

    def _clean_tmp(self) -> None:
        # Temp files are left behind only by a crash; ours are the ones for shards we own.
        for d in (self.path / SHARD_DIR, self.path / PART_DIR, self.path):
            if not d.is_dir():
                continue
            for f in d.iterdir():
                if not f.name.startswith(".tmp-"):
                    continue
                name = f.name[len(".tmp-"):]
                if name.startswith("shard-") or name.startswith("rank-"):
                    # other ranks may be writing their own shards/parts right now: touch only ours
                    try:
                        num = int(name.split("-", 1)[1].split(".")[0])
                    except ValueError:
                        continue
                    if (name.startswith("shard-") and not self.owns(num)) or (name.startswith("rank-") and num != self.rank):
                        continue
                elif self.rank != 0:
                    continue
                try:
                    f.unlink()
                except OSError:
                    pass


def _check_header(path: Path, doc: Dict[str, Any]) -> None:
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path}: not a fastalign triplet store (format={doc.get('format')!r})")
    if doc.get("version") != VERSION:
        raise ValueError(f"{path}: unsupported triplet store version {doc.get('version')!r} (this fastalign reads {VERSION})")


def _check_layout(path: Path, shards: Sequence[Dict[str, Any]], shard_size: int) -> None:
    """The invariant that makes stores layout-independent: ids 0..S-1, all full but the last."""
    ids = [int(s["id"]) for s in shards]
    if ids != list(range(len(ids))):
        missing = sorted(set(range(max(ids, default=-1) + 1)) - set(ids))
        raise ValueError(f"{path}: shards are not contiguous (missing ids {missing[:10]})")
    for s in shards[:-1]:
        if s["count"] != shard_size:
            raise ValueError(f"{path}: shard {s['id']} holds {s['count']} rows, expected {shard_size} (only the last may be short)")


def merge_parts(path: Union[str, os.PathLike], world_size: int, timeout: Optional[float] = None, poll: float = 0.5) -> None:
    """Rank 0: wait until every rank's part is complete, then write the final manifest.

    File-level coordination, so no process group is needed. Raises
    ``TimeoutError`` after ``timeout`` seconds; the store then stays incomplete.
    """
    path = Path(path)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        docs = []
        for r in range(world_size):
            f = path / _part_file(r)
            doc = read_json(f) if f.exists() else None
            if doc is None or not doc.get("complete"):
                break
            docs.append(doc)
        if len(docs) == world_size:
            break
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"{path}: ranks did not all finish within {timeout} s; the store stays incomplete")
        time.sleep(poll)
    head = {k: v for k, v in docs[0].items() if k not in ("rank", "world_size", "shards", "count", "complete")}
    for d in docs[1:]:
        other = {k: v for k, v in d.items() if k not in ("rank", "world_size", "shards", "count", "complete")}
        if other != head:
            raise ValueError(f"{path}: ranks wrote different store parameters; cannot merge")
    shards = sorted((s for d in docs for s in d["shards"]), key=lambda s: s["id"])
    _check_layout(path, shards, head["shard_size"])
    write_json_atomic(path / MANIFEST, dict(head, complete=True, count=sum(s["count"] for s in shards), shards=shards))
    _remove_parts(path)


def _remove_parts(path: Path) -> None:
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


# --------------------------------------------------------------------------- reader


@dataclass(frozen=True)
class Shard:
    """One shard's memory maps and its position in the store."""

    id: int
    start: int
    count: int
    file: Path
    indices: np.ndarray
    sims: np.ndarray
    probs: Optional[np.ndarray]


class ShardedArray:
    """A read-only (n, 3) view that concatenates per-shard memory maps without copying.

    Supports ``len``, ``shape``, ``dtype``, integer / slice / integer-array
    indexing (returning numpy arrays), ``np.asarray`` (materialises), and
    per-shard access through ``.shards``.
    """

    def __init__(self, parts: Sequence[np.ndarray], starts: np.ndarray, dtype) -> None:
        self.shards = list(parts)
        self._starts = starts  # (S + 1,) cumulative row offsets
        self.dtype = np.dtype(dtype)
        self.shape = (int(starts[-1]), 3)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        out = self[0: len(self)]
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key):
        n = len(self)
        if isinstance(key, (int, np.integer)):
            i = int(key)
            if i < 0:
                i += n
            if not 0 <= i < n:
                raise IndexError(f"index {key} out of range for {n} triplets")
            s = int(np.searchsorted(self._starts, i, side="right")) - 1
            return np.array(self.shards[s][i - self._starts[s]])
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1:
                return self[np.arange(start, stop, step)]
            out = np.empty((max(0, stop - start), 3), dtype=self.dtype)
            pos = start
            while pos < stop:
                s = int(np.searchsorted(self._starts, pos, side="right")) - 1
                hi = min(stop, int(self._starts[s + 1]))
                out[pos - start: hi - start] = self.shards[s][pos - self._starts[s]: hi - self._starts[s]]
                pos = hi
            return out
        idx = np.asarray(key)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        if not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"index must be int, slice or integer array, got {idx.dtype}")
        idx = np.where(idx < 0, idx + n, idx).astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"index out of range for {n} triplets")
        flat = idx.reshape(-1)
        out = np.empty((flat.size, 3), dtype=self.dtype)
        sid = np.searchsorted(self._starts, flat, side="right") - 1
        for s in np.unique(sid):
            m = sid == s
            out[m] = self.shards[s][flat[m] - self._starts[s]]
        return out.reshape(idx.shape + (3,))


class TripletStore:
    """A finished triplet store, opened read-only with memory maps.

    Attributes:
        path: the store directory.
        manifest: the parsed ``manifest.json``.
        num_items: number of items indices refer to.
        indices, sims, probs: (n, 3) ``ShardedArray`` views (``probs`` is None
            without probabilities); ``.shards`` gives per-shard memory maps.
        shards: list of ``Shard``.
    """

    def __init__(self, path: Path, manifest: Dict[str, Any], shards: List[Shard]) -> None:
        self.path = path
        self.manifest = manifest
        self.shards = shards
        starts = np.array([s.start for s in shards] + [manifest["count"]], dtype=np.int64)
        self._starts = starts
        self.indices = ShardedArray([s.indices for s in shards], starts, INDEX_DTYPE)
        self.sims = ShardedArray([s.sims for s in shards], starts, SIM_DTYPES[manifest["sim_dtype"]])
        self.probs = ShardedArray([s.probs for s in shards], starts, PROB_DTYPE) if manifest["with_probs"] else None

    @classmethod
    def open(cls, path: Union[str, os.PathLike], verify: bool = True, allow_incomplete: bool = False) -> "TripletStore":
        """Open a store.

        Args:
            path: the store directory.
            verify: re-hash every shard and compare with the manifest (sizes are always checked).
            allow_incomplete: open a store whose writer has not finished (its committed shards only).

        Raises:
            FileNotFoundError: no manifest. ValueError: not a store, incomplete,
            or a shard missing, truncated or corrupt (the message names the file).
        """
        path = Path(path)
        mf = path / MANIFEST
        if not mf.exists():
            raise FileNotFoundError(f"{path}: no {MANIFEST}; not a triplet store (or its writer has not written a shard yet)")
        doc = read_json(mf)
        _check_header(path, doc)
        if not doc.get("complete") and not allow_incomplete:
            raise ValueError(f"{path}: the store is incomplete (its writer did not finish); rerun the generator with --resume")
        sim_dt = np.dtype(SIM_DTYPES[_check_sim_dtype(doc["sim_dtype"])]).newbyteorder("<")
        with_probs = bool(doc["with_probs"])
        shards: List[Shard] = []
        start = 0
        for entry in doc["shards"]:
            f = path / entry["file"]
            n = int(entry["count"])
            expect = n * _row_bytes(doc["sim_dtype"], with_probs)
            if not f.exists():
                raise ValueError(f"{f}: shard file is missing")
            size = f.stat().st_size
            if size != entry["bytes"] or size != expect:
                raise ValueError(f"{f}: shard is truncated or has the wrong size ({size} bytes, expected {expect})")
            if verify and file_checksum(f) != entry["checksum"]:
                raise ValueError(f"{f}: shard checksum mismatch (the file is corrupt)")
            off = 0
            idx = np.memmap(f, dtype=INDEX_DTYPE, mode="r", offset=off, shape=(n, 3))
            off += idx.nbytes
            sm = np.memmap(f, dtype=sim_dt, mode="r", offset=off, shape=(n, 3))
            off += sm.nbytes
            pr = np.memmap(f, dtype=PROB_DTYPE, mode="r", offset=off, shape=(n, 3)) if with_probs else None
            shards.append(Shard(int(entry["id"]), start, n, f, idx, sm, pr))
            start += n
        if start != doc["count"]:
            raise ValueError(f"{mf}: manifest count {doc['count']} != sum of shard counts {start}")
        return cls(path, doc, shards)

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def num_items(self) -> int:
        return int(self.manifest["num_items"])

    @property
    def meta(self) -> Dict[str, Any]:
        return self.manifest.get("meta", {})

    @property
    def item_names(self) -> Optional[List[str]]:
        """Names of the items (e.g. image file names) when the store records them."""
        names = self.meta.get("file_names")
        if isinstance(names, list):
            return list(names)
        if isinstance(names, str):  # a reference to a text file inside the store (one name per line)
            f = self.path / names
            if not f.is_file():
                raise ValueError(f"{self.path}: manifest names file_names={names!r} but {f} is missing")
            return [line for line in f.read_text(encoding="utf-8").splitlines() if line]
        return None

    def __getitem__(self, key) -> Tuple[np.ndarray, np.ndarray]:
        """``(indices, sims)`` for an int, slice or integer array of triplet positions."""
        return self.indices[key], self.sims[key]

    def stream(self, batch_size: int, **kwargs) -> Iterator["TripletBatch"]:
        """Shuffled, resumable, rank/worker-sharded batches; see ``fastalign.triplets.stream.stream``."""
        from .stream import stream

        return stream(self, batch_size, **kwargs)

    def __repr__(self) -> str:
        return f"TripletStore({str(self.path)!r}, n={len(self)}, num_items={self.num_items}, shards={len(self.shards)})"
