"""Crash-safe file writes: temp file in the target's directory, fsync, rename.

A reader never sees a half-written file: the data goes to a temporary file
next to the target (same filesystem, so ``os.replace`` is atomic), is flushed
and fsynced, and only then renamed over the target. If the body raises, the
temporary file is removed and the target is left exactly as it was.

Temporary names: by default a unique random name (``.NAME.XXXX.tmp``), so
concurrent writers of one target never collide. With ``named_tmp=True`` the
name is ``tmp_name(target)`` = ``.tmp-NAME.PID``: a writer that is killed
leaves a file whose name says which target it was for, so a resumed run can
find and delete exactly its own leftovers (the triplet store does this).

``atomic_write_chunks`` also checksums the bytes as they stream out
(``HASH_NAME``, blake2b with a 32-byte digest), so a large file is hashed
without being read back.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Optional, Union

import numpy as np

from ..common.jsonsafe import json_safe
from .faults import fault_point

PathLike = Union[str, os.PathLike]

# blake2b is in hashlib (no dependency) and hashes at ~1 GB/s per core.
HASH_NAME = "blake2b"
TMP_PREFIX = ".tmp-"
_READ_BLOCK = 8 << 20


def _create_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_CREATE_MODE = _create_mode()


def new_hash():
    """A fresh streaming hash object of ``HASH_NAME`` (blake2b, 32-byte digest)."""
    return hashlib.blake2b(digest_size=32)


def file_checksum(path: PathLike) -> str:
    """Hex ``HASH_NAME`` checksum of a file, read in 8 MiB blocks (bounded memory)."""
    h = new_hash()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(_READ_BLOCK)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def tmp_name(final: PathLike) -> Path:
    """The ``named_tmp`` temp name of ``final``: ``.tmp-NAME.PID`` in the same directory."""
    final = Path(final)
    return final.with_name(f"{TMP_PREFIX}{final.name}.{os.getpid()}")


def fsync_dir(directory: Path) -> None:
    """fsync the directory so the rename itself survives a crash (POSIX only)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _open_tmp(target: Path, named_tmp: bool) -> tuple:
    """(fd, temp path) of a new temp file next to ``target``, with the mode a plain open() gives."""
    if named_tmp:
        tmp = tmp_name(target)
        return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666), str(tmp)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.fchmod(fd, _CREATE_MODE)  # mkstemp creates the file 0600
    return fd, tmp


def check_file_target(path: PathLike, hint: str = "") -> None:
    """ValueError when ``path`` names a folder: an existing one, or a name ending in a slash.

    ``hint`` completes the advice, e.g. ``" ending in .json"``.
    """
    text = os.fspath(path)
    seps = (os.sep, os.altsep) if os.altsep else (os.sep,)
    if text.endswith(seps) or os.path.isdir(text):
        raise ValueError(f"{text} is a folder; give a file name{hint}")


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb", encoding: str = "utf-8", *,
                 named_tmp: bool = False, fault: Optional[str] = None) -> Iterator[IO[Any]]:
    """Open a temporary file that replaces ``path`` when the block exits cleanly.

    Args:
        path: the target file. Its parent directory is created if missing.
        mode: ``"wb"`` (bytes) or ``"w"`` (text).
        encoding: text encoding when ``mode="w"``.
        named_tmp: write to ``tmp_name(path)`` instead of a random name (see the module docstring).
        fault: a tag naming the fault points ``TAG.written``, ``TAG.before_rename`` and
            ``TAG.renamed`` of this write (``fastalign.io.faults``; tests only).

    Yields the open temporary file. On exception the temporary file is deleted,
    the target is untouched and the exception propagates. A ``path`` that is a
    folder, or ends in a slash, is a ValueError naming it (``os.replace`` would
    fail only after the body ran, and ``Path`` drops a trailing slash).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    check_file_target(path)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _open_tmp(target, named_tmp)
    try:
        kwargs = {"encoding": encoding, "newline": ""} if mode == "w" else {}
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            if fault:
                fault_point(fault + ".written")
            os.fsync(fh.fileno())
        if fault:
            fault_point(fault + ".before_rename")
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if fault:
        fault_point(fault + ".renamed")
    fsync_dir(target.parent)


def atomic_write_chunks(path: PathLike, chunks: Iterable[Any], *, named_tmp: bool = False,
                        fault: Optional[str] = None) -> str:
    """Write the buffers in ``chunks`` (bytes, C-contiguous arrays) to ``path`` atomically.

    Returns the hex ``HASH_NAME`` checksum of the bytes written, computed as they stream out.
    ``fault`` tags the write's fault points (see ``atomic_write``).
    """
    h = new_hash()
    with atomic_write(path, "wb", named_tmp=named_tmp, fault=fault) as fh:
        for chunk in chunks:
            mv = memoryview(chunk).cast("B")
            h.update(mv)
            fh.write(mv)
    return h.hexdigest()


def atomic_write_bytes(path: PathLike, data: bytes, *, named_tmp: bool = False) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb", named_tmp=named_tmp) as fh:
        fh.write(data)


def atomic_write_text(path: PathLike, text: str, *, named_tmp: bool = False) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path, "w", named_tmp=named_tmp) as fh:
        fh.write(text)


def atomic_write_json(path: PathLike, obj: Any, indent: int = 2, *, sort_keys: bool = False,
                      named_tmp: bool = False) -> None:
    """Write ``obj`` as JSON (UTF-8, trailing newline) to ``path`` atomically.

    ``obj`` is cleaned by ``json_safe`` first (dataclasses, numpy, tensors, paths;
    NaN/Inf become ``null``), so the file stays strict JSON. ``sort_keys`` gives
    the same bytes for equal content whatever the insertion order.
    """
    text = json.dumps(json_safe(obj), indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n"
    atomic_write_text(path, text, named_tmp=named_tmp)


def read_json(path: PathLike) -> Any:
    """Read a JSON file, turning a parse error into a ValueError naming the file.

    The reading side of ``atomic_write_json``: such a file is never half-written,
    so a parse error means the file is damaged, and the message says which one.
    """
    try:
        with open(path, "r", encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def atomic_save_npy(path: PathLike, array: Any, *, named_tmp: bool = False) -> None:
    """``np.save`` to ``path`` atomically (no pickled objects)."""
    with atomic_write(path, "wb", named_tmp=named_tmp) as fh:
        np.save(fh, np.asarray(array), allow_pickle=False)


def atomic_save_npz(path: PathLike, **arrays: Any) -> None:
    """``np.savez`` to ``path`` atomically (uncompressed; the exact name is kept, no ``.npz`` appended)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write_bytes(path, buf.getvalue())
