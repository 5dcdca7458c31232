"""Reading a finished triplet store: memory maps over its shards, checked against a verified manifest.

``TripletStore.open`` trusts nothing it has not checked: the manifest against
the layout and its own digest (``verify.check_manifest``), every shard's size
(and, with ``verify``, its checksum), the item indices against ``num_items``
and ``meta.temperature`` against the stored probabilities (``verify``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ...io.atomic import file_checksum, read_json
from ..batch import TripletBatch
from ..epoch import epoch_batches
from .layout import INDEX_DTYPE, MANIFEST, PROB_DTYPE, SIM_DTYPES, columns, row_bytes
from .verify import check_digest, check_index_data, check_manifest, check_temperature, note_legacy

# Rows of the first shard that ``check_temperature`` compares (a few KB read).
_TEMPERATURE_ROWS = 4096


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
            FileNotFoundError: no manifest. ValueError: not a store, incomplete, a
            manifest that breaks the layout or whose digest does not match (a
            dropped, swapped or duplicated entry, a changed count, ``num_items``
            or ``meta.temperature``), or a shard missing, truncated or corrupt.
            Every message names the store or the file and what is wrong.
        Warns:
            ``LegacyStoreWarning`` once for a store of format version 1 (no digest).
        """
        path = Path(path)
        mf = path / MANIFEST
        if not mf.exists():
            raise FileNotFoundError(f"{path}: no {MANIFEST}; not a triplet store (or its writer has not written a shard yet)")
        doc = read_json(mf)
        check_manifest(path, doc, allow_incomplete)
        shards: List[Shard] = []
        start = 0
        for entry in doc["shards"]:
            shards.append(_open_shard(path, doc, entry, start, verify))
            start += shards[-1].count
        legacy = doc["version"] < 2
        if legacy and verify:  # no recorded statistics: scan the indices while the pages are warm from hashing
            check_index_data(path, doc["num_items"], [s.indices for s in shards])
        if shards and shards[0].probs is not None:
            rows = slice(0, _TEMPERATURE_ROWS)
            check_temperature(path, doc, shards[0].sims[rows], shards[0].probs[rows])
        check_digest(mf, doc)  # last: the checks above name what is wrong where they can
        note_legacy(path, doc, indices_checked=verify)
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

    def stream(self, batch_size: int, **kwargs) -> Iterator[TripletBatch]:
        """Shuffled, resumable, rank/worker-sharded batches; see ``fastalign.triplets.stream.stream``.

        The method is the triplet-source protocol the distillation data pipeline calls.
        """
        return epoch_batches(self, batch_size, **kwargs)

    def __repr__(self) -> str:
        return f"TripletStore({str(self.path)!r}, n={len(self)}, num_items={self.num_items}, shards={len(self.shards)})"


def _open_shard(path: Path, doc: Dict[str, Any], entry: Dict[str, Any], start: int, verify: bool) -> Shard:
    """Memory-map one shard after checking its size (and, with ``verify``, its checksum)."""
    f = path / entry["file"]
    n = int(entry["count"])
    with_probs = bool(doc["with_probs"])
    expect = n * row_bytes(doc["sim_dtype"], with_probs)
    if not f.exists():
        raise ValueError(f"{f}: shard file is missing")
    size = f.stat().st_size
    if size != entry["bytes"] or size != expect:
        raise ValueError(f"{f}: shard is truncated or has the wrong size ({size} bytes, expected {expect})")
    if verify and file_checksum(f) != entry["checksum"]:
        raise ValueError(f"{f}: shard checksum mismatch (the file is corrupt)")
    maps = {name: np.memmap(f, dtype=dt, mode="r", offset=off, shape=(n, 3))
            for name, off, dt in columns(n, doc["sim_dtype"], with_probs)}
    return Shard(int(entry["id"]), start, n, f, maps["indices"], maps["sims"], maps.get("probs"))
