"""Small crash-safe file helpers for the triplet store (temp file, fsync, rename).

``fastalign.io.atomic_write`` does this for the rest of the package; the
store writes its own way because it checksums the bytes as they stream out and
names its temp files ``.tmp-*`` so that a resumed run can delete the leftovers
of a killed writer.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Union

from ..io.atomic import fsync_dir  # noqa: F401  (re-exported for the store)

PathLike = Union[str, os.PathLike]

# blake2b is in hashlib (no dependency) and hashes at ~1 GB/s per core.
HASH_NAME = "blake2b"
_READ_BLOCK = 8 << 20


def new_hash():
    """A fresh streaming hash object of the store's checksum algorithm."""
    return hashlib.blake2b(digest_size=32)


def file_checksum(path: PathLike) -> str:
    """Hex checksum of a file, read in 8 MiB blocks (bounded memory)."""
    h = new_hash()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(_READ_BLOCK)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def tmp_name(final: Path) -> Path:
    """Temp name next to ``final``; the ``.tmp-`` prefix marks it as garbage a resume may delete."""
    return final.with_name(f".tmp-{final.name}.{os.getpid()}")


def write_bytes_atomic(final: PathLike, chunks: Iterable[bytes]) -> str:
    """Write ``chunks`` to ``final`` via temp file + fsync + rename; return the checksum of the bytes."""
    final = Path(final)
    tmp = tmp_name(final)
    h = new_hash()
    try:
        with open(tmp, "wb") as fh:
            for chunk in chunks:
                mv = memoryview(chunk).cast("B")
                h.update(mv)
                fh.write(mv)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    fsync_dir(final.parent)
    return h.hexdigest()


def write_json_atomic(final: PathLike, obj: Any) -> None:
    """Write ``obj`` as pretty, key-sorted JSON atomically (deterministic bytes for equal content)."""
    data = (json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")
    write_bytes_atomic(final, [data])


def read_json(path: PathLike) -> Any:
    """Read a JSON file, turning a parse error into a ValueError naming the file."""
    try:
        with open(path, "r", encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
