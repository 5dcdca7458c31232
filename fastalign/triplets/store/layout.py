"""The triplet store's layout on disk: the one module that knows it.

Layout of a store directory::

    STORE/
      manifest.json            counts, dtypes, shard list + checksums, generation meta
      shards/shard-00000000.bin
      shards/shard-00000001.bin
      parts/rank-00001.json    (only while a distributed write is in progress)

A shard file is raw little-endian C-order data, in this order (``columns``)::

    indices  (count, 3) int32        rows (i, j, k), the odd one out last
    sims     (count, 3) sim_dtype    [s01, s02, s12], float16 or float32
    probs    (count, 3) float32      softmax(s / T), only when with_probs

Probabilities are always float32: rows of float16 probabilities would miss the
row-sum tolerance the distillation loss checks in float32.

Shards are numbered globally: shard ``s`` holds triplets
``[s * shard_size, (s + 1) * shard_size)`` of the whole store and every shard
but the last is full (``check_contiguous``). A store therefore has the same
bytes whatever the number of ranks that wrote it.

The manifest (and a rank's part file) is ``manifest_doc(header, shards,
complete)``: the ``header`` fields, ``complete``, ``count`` and the list of
``shard_entry`` dicts; it is written as key-sorted JSON with indent 1
(``write_manifest``), so equal content gives equal bytes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ...io.atomic import HASH_NAME, TMP_PREFIX, atomic_write_json

FORMAT = "fastalign-triplet-store"
VERSION = 1
MANIFEST = "manifest.json"
SHARD_DIR = "shards"
PART_DIR = "parts"
SIM_DTYPES = {"float16": np.float16, "float32": np.float32}
INDEX_DTYPE = np.dtype("<i4")
PROB_DTYPE = np.dtype("<f4")
# Parameters a resumed writer must repeat exactly (else it would mix two stores).
RESUME_KEYS = ("num_items", "sim_dtype", "with_probs", "shard_size", "meta")
# Fields of a part file that differ between ranks; the rest must agree for a merge.
PER_RANK_KEYS = ("rank", "world_size", "shards", "count", "complete")


def shard_file(shard_id: int) -> str:
    """Relative path of shard ``shard_id`` inside a store."""
    return f"{SHARD_DIR}/shard-{shard_id:08d}.bin"


def part_file(rank: int) -> str:
    """Relative path of rank ``rank``'s progress file during a distributed write."""
    return f"{PART_DIR}/rank-{rank:05d}.json"


def check_sim_dtype(sim_dtype: str) -> str:
    if sim_dtype not in SIM_DTYPES:
        raise ValueError(f"sim_dtype must be one of {sorted(SIM_DTYPES)}, got {sim_dtype!r}")
    return sim_dtype


def sim_dtype_of(sim_dtype: str) -> np.dtype:
    """The little-endian numpy dtype of the stored similarities."""
    return np.dtype(SIM_DTYPES[check_sim_dtype(sim_dtype)]).newbyteorder("<")


def columns(count: int, sim_dtype: str, with_probs: bool) -> List[Tuple[str, int, np.dtype]]:
    """``(name, byte offset, dtype)`` of each (count, 3) column of a shard, in file order."""
    out, off = [], 0
    dtypes = [("indices", INDEX_DTYPE), ("sims", sim_dtype_of(sim_dtype))]
    if with_probs:
        dtypes.append(("probs", PROB_DTYPE))
    for name, dt in dtypes:
        out.append((name, off, dt))
        off += count * 3 * dt.itemsize
    return out


def row_bytes(sim_dtype: str, with_probs: bool) -> int:
    """Bytes one triplet takes in a shard."""
    return sum(3 * dt.itemsize for _, _, dt in columns(1, sim_dtype, with_probs))


def manifest_header(num_items: int, sim_dtype: str, with_probs: bool, shard_size: int,
                    meta: Dict[str, Any]) -> Dict[str, Any]:
    """The fields every manifest and part file of one store share."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "num_items": num_items,
        "sim_dtype": sim_dtype,
        "index_dtype": "int32",
        "prob_dtype": "float32" if with_probs else None,
        "with_probs": with_probs,
        "shard_size": shard_size,
        "checksum": HASH_NAME,
        "meta": meta,
    }


def shard_entry(shard_id: int, count: int, nbytes: int, checksum: str) -> Dict[str, Any]:
    """The manifest's record of one committed shard."""
    return {"id": shard_id, "file": shard_file(shard_id), "count": count, "bytes": nbytes, "checksum": checksum}


def manifest_doc(header: Dict[str, Any], shards: Sequence[Dict[str, Any]], complete: bool) -> Dict[str, Any]:
    return dict(header, complete=complete, count=sum(s["count"] for s in shards), shards=list(shards))


def write_manifest(path: Union[str, os.PathLike], doc: Dict[str, Any]) -> None:
    """Write a manifest or part file (``.tmp-`` temp name: a resumed writer deletes a killed one's)."""
    atomic_write_json(path, doc, indent=1, sort_keys=True, named_tmp=True)


def check_header(path: Path, doc: Dict[str, Any]) -> None:
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path}: not a fastalign triplet store (format={doc.get('format')!r})")
    if doc.get("version") != VERSION:
        raise ValueError(f"{path}: unsupported triplet store version {doc.get('version')!r} (this fastalign reads {VERSION})")


def check_contiguous(path: Path, shards: Sequence[Dict[str, Any]], shard_size: int) -> None:
    """The invariant that makes stores layout-independent: ids 0..S-1, all full but the last."""
    ids = [int(s["id"]) for s in shards]
    if ids != list(range(len(ids))):
        missing = sorted(set(range(max(ids, default=-1) + 1)) - set(ids))
        raise ValueError(f"{path}: shards are not contiguous (missing ids {missing[:10]})")
    for s in shards[:-1]:
        if s["count"] != shard_size:
            raise ValueError(f"{path}: shard {s['id']} holds {s['count']} rows, expected {shard_size} (only the last may be short)")


def tmp_target(name: str) -> Optional[Tuple[str, int]]:
    """``("shard", 3)`` / ``("rank", 1)`` for the temp file of a shard or part, ``("", -1)`` for any
    other ``.tmp-`` file, None for a name that is no temp file (see ``io.atomic.tmp_name``)."""
    if not name.startswith(TMP_PREFIX):
        return None
    rest = name[len(TMP_PREFIX):]
    for kind in ("shard", "rank"):
        if rest.startswith(kind + "-"):
            try:
                return kind, int(rest.split("-", 1)[1].split(".")[0])
            except ValueError:
                return None
    return "", -1
