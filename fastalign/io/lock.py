"""An exclusive lock on an output folder, so that two runs never write one folder at once.

``hold_folder_lock(folder)`` takes ``flock(LOCK_EX | LOCK_NB)`` on ``folder/.lock``
and writes the holder's PID and name into it. A second holder fails at once with
``FolderLocked``, naming the lock file, the holder and its PID. The kernel releases a flock
when its process ends, however it ends (``kill -9`` included), so a crashed run
never leaves a stale lock: its file stays, but nobody holds it.

On release the lock file is removed (a finished run leaves no trace), and so is
the folder when the lock created it and nothing else was written into it (a run
refused for bad input). Without ``fcntl`` (Windows) there is no lock, and a
warning says so.
"""

from __future__ import annotations

import contextlib
import os
import stat
import warnings
from pathlib import Path
from typing import Iterator, Union

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

LOCK_NAME = ".lock"


class FolderLocked(RuntimeError):
    """Another process holds the folder's lock."""


def _holder(path: Path) -> str:
    """Who holds the lock, in words, from what the holder wrote into the lock file."""
    try:
        pid, _, what = path.read_text(encoding="utf-8").strip().partition(" ")
    except (OSError, UnicodeDecodeError):
        pid, what = "", ""
    if not pid.isdigit():  # the holder has not written its line yet
        return "another process (its PID is not written yet)"
    return f"{what or 'a process'} (PID {pid})"


def _make_folder(folder: Path) -> bool:
    """``mkdir -p folder``; True if this call created it. FileExistsError if something else is there.

    ``Path.mkdir(exist_ok=True)`` is not enough: when the folder exists at its mkdir but a releaser
    removes it (see ``hold_folder_lock``) before its own is-dir check, it raises FileExistsError
    for a folder that no longer exists. Here that case tries again.
    """
    while True:
        try:
            folder.mkdir(parents=True)
            return True
        except FileExistsError:
            # One lstat decides: two checks (is it a folder? does it exist?) can each see another
            # moment, as the folder comes and goes.
            try:
                mode = os.lstat(folder).st_mode
            except FileNotFoundError:
                continue  # removed between our mkdir and our lstat: try again
            if stat.S_ISDIR(mode):
                return False
            if stat.S_ISLNK(mode) and os.path.isdir(folder):  # a link to a folder is a folder
                return False
            kind = "a link to nowhere" if stat.S_ISLNK(mode) else "not a folder"
            raise FileExistsError(f"{folder} exists and is {kind}; choose another output folder") from None


def _acquire(folder: Path, what: str) -> int:
    """The fd of ``folder/.lock``, flocked by this process; FolderLocked if another holds it."""
    path = folder / LOCK_NAME
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the folder was removed by a releaser that had created it
            _make_folder(folder)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderLocked(f"{folder} is in use by {_holder(path)}, which holds the lock {path}; wait for "
                               "it to end, or choose another output folder") from None
        except BaseException:
            os.close(fd)
            raise
        # A releaser may have unlinked the file between our open and our flock: then we hold a lock
        # on a file nobody else can find; try again on the file the path names now.
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {what}\n".encode("utf-8"))
    return fd


@contextlib.contextmanager
def hold_folder_lock(folder: Union[str, os.PathLike], what: str = "fastalign") -> Iterator[Path]:
    """Hold the exclusive lock of ``folder`` (created if missing) for the ``with`` body.

    Args:
        folder: the output folder to lock.
        what: the holder in words, written into the lock file for the message a second holder gets
            (e.g. "fastalign run").

    Yields the folder. Raises ``FolderLocked`` at once if another process holds the lock.
    """
    folder = Path(folder)
    if fcntl is None:
        warnings.warn(f"no file locking on this platform: nothing stops two runs writing {folder} at once",
                      stacklevel=3)
        yield folder
        return
    created = _make_folder(folder)
    try:
        fd = _acquire(folder, what)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    try:
        yield folder
    finally:
        # Unlinked while still held: a process that opened this file meanwhile finds, once it gets
        # the flock, that the path names another file or none, and tries again (see _acquire).
        with contextlib.suppress(OSError):
            (folder / LOCK_NAME).unlink()
        if created:
            with contextlib.suppress(OSError):  # only an empty folder goes
                folder.rmdir()
        os.close(fd)  # releases the flock
