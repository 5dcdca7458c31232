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

Format versions (the shard bytes are the same in both):

- 1: the manifest as described, trusted as it stands;
- 2 (written since issue 15): each shard entry also records ``index_min`` and
  ``index_max`` (so a reader checks ``num_items`` in O(shards)) and the
  manifest carries ``manifest_digest``, the ``HASH_NAME`` digest of its own
  canonical content (``manifest_digest``), so an edit made after writing is
  detected. The digest guards against accidents and hand edits, not against
  someone who recomputes it: it is no signature.

This version reads both; fastalign versions that read only version 1 refuse a
version-2 store with "unsupported triplet store version 2" (they would not
check what version 2 records).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ...io.atomic import HASH_NAME, TMP_PREFIX, atomic_write, new_hash
from ...io.faults import fault_point

FORMAT = "fastalign-triplet-store"
VERSION = 2
READABLE_VERSIONS = (1, 2)
DIGEST_KEY = "manifest_digest"
MANIFEST = "manifest.json"
SHARD_DIR = "shards"
PART_DIR = "parts"
SIM_DTYPES = {"float16": np.float16, "float32": np.float32}
INDEX_DTYPE = np.dtype("<i4")
# num_items may be at most this: the largest index, num_items - 1, must fit INDEX_DTYPE.
INDEX_LIMIT = int(np.iinfo(INDEX_DTYPE).max) + 1
PROB_DTYPE = np.dtype("<f4")
# Parameters a resumed writer must repeat exactly (else it would mix two stores).
RESUME_KEYS = ("num_items", "sim_dtype", "with_probs", "shard_size", "meta")
# Fields of a part file that differ between ranks; the rest must agree for a merge.
PER_RANK_KEYS = ("rank", "world_size", "shards", "count", "complete", DIGEST_KEY)


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


def check_num_items(num_items: int) -> int:
    """``num_items`` if its indices fit ``INDEX_DTYPE``; else ValueError (an int32 cast would wrap them)."""
    if num_items > INDEX_LIMIT:
        raise ValueError(f"num_items={num_items:,} is more than int32 indices can address "
                         f"(at most {INDEX_LIMIT:,} items, indices 0..{INDEX_LIMIT - 1:,}); nothing was written")
    return num_items


def shard_entry(shard_id: int, count: int, nbytes: int, checksum: str, index_min: int,
                index_max: int) -> Dict[str, Any]:
    """The manifest's record of one committed shard (``index_min``/``index_max``: its smallest and largest item index)."""
    return {"id": shard_id, "file": shard_file(shard_id), "count": count, "bytes": nbytes, "checksum": checksum,
            "index_min": index_min, "index_max": index_max}


def manifest_doc(header: Dict[str, Any], shards: Sequence[Dict[str, Any]], complete: bool) -> Dict[str, Any]:
    return dict(header, complete=complete, count=sum(s["count"] for s in shards), shards=list(shards))


def manifest_digest(doc: Dict[str, Any]) -> str:
    """The digest of a manifest's canonical content: key-sorted compact JSON of every field but the digest."""
    body = {k: v for k, v in doc.items() if k != DIGEST_KEY}
    h = new_hash()
    h.update(json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8"))
    return h.hexdigest()


def write_manifest(path: Union[str, os.PathLike], doc: Dict[str, Any]) -> None:
    """Write a manifest or part file with its digest (``.tmp-`` temp name: a resumed writer deletes a killed one's).

    ``doc`` must hold JSON types only (the writer checks ``meta``).
    """
    # a JSON round trip first, so the digest is that of what a reader parses (tuples, int keys)
    body = json.loads(json.dumps({k: v for k, v in doc.items() if k != DIGEST_KEY}, allow_nan=False))
    text = json.dumps(dict(body, **{DIGEST_KEY: manifest_digest(body)}), indent=1, sort_keys=True, allow_nan=False) + "\n"
    tag = "manifest" if Path(path).name == MANIFEST else "part"
    with atomic_write(path, "w", named_tmp=True, fault=tag) as fh:
        half = len(text) // 2
        fh.write(text[:half])
        fh.flush()
        fault_point(tag + ".partial")
        fh.write(text[half:])


def check_header(path: Path, doc: Dict[str, Any]) -> None:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        fmt = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"{path}: not a fastalign triplet store (format={fmt!r})")
    if doc.get("version") not in READABLE_VERSIONS:
        raise ValueError(f"{path}: unsupported triplet store version {doc.get('version')!r} "
                         f"(this fastalign reads versions {', '.join(map(str, READABLE_VERSIONS))})")


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
