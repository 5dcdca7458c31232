"""Crash-safe file writes: temp file in the target's directory, fsync, rename.

A reader never sees a half-written file: the data goes to a temporary file
next to the target (same filesystem, so ``os.replace`` is atomic), is flushed
and fsynced, and only then renamed over the target. If the body raises, the
temporary file is removed and the target is left exactly as it was.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator, Union

import numpy as np

PathLike = Union[str, os.PathLike]


def _create_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_CREATE_MODE = _create_mode()


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


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb", encoding: str = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary file that replaces ``path`` when the block exits cleanly.

    Args:
        path: the target file. Its parent directory is created if missing.
        mode: ``"wb"`` (bytes) or ``"w"`` (text).
        encoding: text encoding when ``mode="w"``.

    Yields the open temporary file. On exception the temporary file is deleted,
    the target is untouched and the exception propagates.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        # mkstemp creates the file 0600; give the result the mode a plain open() would.
        os.fchmod(fd, _CREATE_MODE)
        kwargs = {"encoding": encoding, "newline": ""} if mode == "w" else {}
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    fsync_dir(target.parent)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path, "w") as fh:
        fh.write(text)


def atomic_write_json(path: PathLike, obj: Any, indent: int = 2) -> None:
    """Write ``obj`` as JSON (UTF-8, trailing newline) to ``path`` atomically.

    NaN/Inf floats are written as ``null`` so the file stays strict JSON.
    """
    atomic_write_text(path, json.dumps(_json_safe(obj), indent=indent, allow_nan=False) + "\n")


def atomic_save_npy(path: PathLike, array: Any) -> None:
    """``np.save`` to ``path`` atomically (no pickled objects)."""
    with atomic_write(path, "wb") as fh:
        np.save(fh, np.asarray(array), allow_pickle=False)


def atomic_save_npz(path: PathLike, **arrays: Any) -> None:
    """``np.savez`` to ``path`` atomically (uncompressed; the exact name is kept, no ``.npz`` appended)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write_bytes(path, buf.getvalue())


def _json_safe(obj: Any) -> Any:
    """Convert numpy scalars/arrays, paths and non-finite floats into plain JSON values."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj
