"""Read and write odd-one-out triplet tables.

A triplet row ``(i, j, k)`` holds 0-based object (feature row) indices with the
odd one out in column 2. A fourth column, when present, is a participant id.

Text files (``.txt``, ``.tsv``, ``.csv``) are comma-separated when their first line
holds a comma, else whitespace-separated; ``#`` starts a comment. Their errors name
1-based line numbers (arrays' errors name 0-based rows).
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Union

import numpy as np

from .atomic import atomic_save_npz, atomic_write, atomic_write_bytes
from .untrusted import load_npy, load_npz

PathLike = Union[str, os.PathLike]

TRIPLET_FORMATS = (".txt", ".tsv", ".csv", ".npy", ".npz")
# Floats hold every integer exactly only up to 2**53.
_FLOAT_EXACT = 2 ** 53


@dataclass(frozen=True)
class TripletTable:
    """Triplets read from a file.

    Attributes:
        triplets: (k, 3) int64, column 2 the odd one out.
        participants: (k,) int64 participant ids, or None when the file had 3 columns.
    """

    triplets: np.ndarray
    participants: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.triplets.shape[0])


def _row(r: int) -> str:
    return f"row {r}"


def _as_table(arr: np.ndarray, name: str, where: Callable[[int], str] = _row) -> TripletTable:
    """Check a (k, 3) or (k, 4) table; ``where(r)`` names row ``r`` in messages (a text file's line)."""
    arr = np.asarray(arr)
    if arr.ndim != 2 or arr.shape[1] not in (3, 4):
        raise ValueError(f"{name}: expected a (k, 3) or (k, 4) triplet table, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        # Text files and some exports store indices as floats; accept only exact integers.
        if not np.isfinite(arr).all() or not (arr == np.round(arr)).all():
            row = int(np.argwhere(~np.isfinite(arr) | (arr != np.round(arr)))[0, 0])
            raise ValueError(f"{name}: {where(row)} = {arr[row].tolist()} is not integer indices")
    elif arr.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected integer triplet indices, got dtype {arr.dtype}")
    # The int64 cast below must not wrap: a float above 2**53 is no exact index, and
    # uint64 values from 2**63 on would come out negative.
    limit = _FLOAT_EXACT if arr.dtype.kind == "f" else np.iinfo(np.int64).max
    if arr.size and arr.dtype.kind in "fu" and (arr > limit).any():
        row = int(np.argwhere(arr > limit)[0, 0])
        raise ValueError(f"{name}: {where(row)} = {arr[row].tolist()} holds an index above {limit}, "
                         "too large to be an item index")
    table = arr.astype(np.int64)
    trip = np.ascontiguousarray(table[:, :3])
    neg = (trip < 0).any(axis=1)
    if neg.any():
        row = int(np.flatnonzero(neg)[0])
        raise ValueError(f"{name}: {where(row)} = {trip[row].tolist()} has a negative index")
    rep = (trip[:, 0] == trip[:, 1]) | (trip[:, 0] == trip[:, 2]) | (trip[:, 1] == trip[:, 2])
    if rep.any():
        row = int(np.flatnonzero(rep)[0])
        raise ValueError(f"{name}: {where(row)} = {trip[row].tolist()} repeats an object; "
                         "a triplet needs 3 distinct objects")
    part = np.ascontiguousarray(table[:, 3]) if table.shape[1] == 4 else None
    return TripletTable(trip, part)


def _data_lines(p: Path):
    """(1-based line number, text, cells) of each line of a text table that holds data (not blank, not a comment)."""
    delimiter = _delimiter(p)
    with open(p, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            data = line.split("#", 1)[0].strip()
            if data:
                yield number, data, [c.strip() for c in data.split(delimiter)] if delimiter else data.split()


def _delimiter(p: Path) -> Optional[str]:
    """``","`` when the first data line of a text table holds a comma, else None (whitespace)."""
    with open(p, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            data = line.split("#", 1)[0].strip()
            if data:
                return "," if "," in data else None
    return None


def _first_bad_line(p: Path) -> Optional[str]:
    """What is wrong with the first line of a text table numpy could not read, or None."""
    width = first = None
    for number, text, cells in _data_lines(p):
        try:
            [float(c) for c in cells]
        except ValueError:
            hint = " (a header? remove it)" if first is None else ""
            return f"{p}: line {number} is not three integers: {text[:60]!r}{hint}"
        if len(cells) not in (3, 4):
            return (f"{p}: line {number} has {len(cells)} column{'s' if len(cells) != 1 else ''}; a triplet line "
                    "needs 3 integers (i j odd-one-out), optionally a 4th (participant id)")
        if width is None:
            width, first = len(cells), number
        elif len(cells) != width:
            return f"{p}: line {number} has {len(cells)} columns but line {first} has {width}"
    return None


def _line_of(p: Path) -> Callable[[int], str]:
    """``where`` for ``_as_table``: row r of the table is the r-th data line of the file."""
    def where(row: int) -> str:
        lines: List[int] = []
        for number, _, _ in _data_lines(p):
            lines.append(number)
            if len(lines) > row:
                return f"line {number}"
        return f"row {row}"
    return where


def _load_text(p: Path) -> TripletTable:
    name = str(p)
    try:
        with warnings.catch_warnings():
            # An empty file is an empty table (the caller decides whether that is an error),
            # not numpy's "input contained no data" warning.
            warnings.filterwarnings("ignore", message=".*[Ee]mpty input file.*")
            warnings.filterwarnings("ignore", message=".*input contained no data.*")
            arr = np.loadtxt(p, dtype=np.float64, delimiter=_delimiter(p), ndmin=2)
    except ValueError as exc:
        # numpy's wording mixes 0-based rows with 1-based columns: say which line instead.
        raise ValueError(_first_bad_line(p) or f"{name}: not a numeric triplet table: {exc}") from None
    if arr.size == 0:
        arr = np.zeros((0, 3), dtype=np.int64)
    if arr.shape[1] not in (3, 4):
        raise ValueError(_first_bad_line(p) or f"{name}: expected 3 or 4 columns, got {arr.shape[1]}")
    return _as_table(arr, name, _line_of(p))


def load_triplets(path: PathLike, key: Optional[str] = None) -> TripletTable:
    """Load a triplet table.

    Args:
        path: text (``.txt``/``.tsv``/``.csv``: whitespace- or comma-separated) or
            ``.npy`` with 3 or 4 integer columns, or ``.npz`` with ``key`` (default
            ``triplets``, plus an optional ``participants`` array).
        key: array name inside an ``.npz``.

    Returns a ``TripletTable``. Raises FileNotFoundError, or ValueError for an
    unknown format, a wrong shape, non-integer or negative indices, or a row
    that repeats an object (each naming the first bad row).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: triplet file not found")
    suffix = p.suffix.lower()
    name = str(p)
    if suffix in (".txt", ".tsv", ".csv"):
        return _load_text(p)
    if suffix == ".npy":
        return _as_table(load_npy(p), name)
    if suffix == ".npz":
        z = load_npz(p)
        if key is None and "triplets" not in z and "indices" in z:
            key = "indices"  # fastalign's own AligNet export (export-triplets --format alignet-npz)
        k = key or "triplets"
        if k not in z:
            raise ValueError(f"{name}: no array {k!r}; available: {sorted(z)}")
        table = _as_table(z[k], name)
        if "participants" in z and table.participants is None:
            part = np.asarray(z["participants"]).astype(np.int64).reshape(-1)
            if part.shape[0] != len(table):
                raise ValueError(f"{name}: participants has {part.shape[0]} entries, triplets {len(table)}")
            table = TripletTable(table.triplets, part)
        return table
    raise ValueError(f"{name}: unknown triplet file format {p.suffix!r}; supported: {', '.join(TRIPLET_FORMATS)}")


def check_triplets_fit(triplets: np.ndarray, n: int, name: str = "triplets") -> None:
    """Raise ValueError naming the first row of ``triplets`` with an index outside [0, n).

    Args:
        triplets: (k, 3) integer array.
        n: number of feature rows the triplets index into.
        name: what to call the triplets in the message (e.g. the file name).
    """
    t = np.asarray(triplets)
    if t.size == 0:
        return
    bad = ((t < 0) | (t >= n)).any(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        hint = ("; the file looks 1-based (index 0 never appears, index N does): subtract 1 from every index"
                if int(t.max()) == n and int(t.min()) >= 1 else "")
        raise ValueError(
            f"{name}: row {row} = {t[row].tolist()} indexes past the {n} feature rows (valid indices 0..{n - 1})"
            + hint)
    if int(t.min()) >= 1 and 3 * len(t) >= 20 * n:
        # In range, but a 1-based file that happens to fit scores chance without any error. With 20+
        # appearances per object expected, a missing object 0 is no accident (p ~ e^-20 if uniform).
        warnings.warn(f"{name}: index 0 never appears in {len(t)} triplets; if the file is 1-based, subtract 1 "
                      "from every index (fastalign's indices are 0-based rows of the features)", stacklevel=2)


def shared_triplets(reference: np.ndarray, rows: np.ndarray) -> int:
    """How many of ``rows`` are triplets of ``reference``: the same two kept objects (in either order)
    and the same odd one out."""
    a, b = np.asarray(reference)[:, :3], np.asarray(rows)[:, :3]
    if len(a) == 0 or len(b) == 0:
        return 0

    def keys(t: np.ndarray) -> np.ndarray:
        t = t.astype(np.int64)
        lo, hi = np.minimum(t[:, 0], t[:, 1]), np.maximum(t[:, 0], t[:, 1])
        return np.stack([lo, hi, t[:, 2]], axis=1)

    ka, kb = keys(a), keys(b)
    n = int(max(ka.max(), kb.max())) + 1
    if n < 2 ** 21:  # one int64 per triplet: n ** 3 fits
        return int(np.isin(kb @ np.array([n * n, n, 1]), ka @ np.array([n * n, n, 1])).sum())
    seen = set(map(tuple, ka.tolist()))
    return sum(tuple(r) in seen for r in kb.tolist())


def save_triplets_txt(path: PathLike, triplets: np.ndarray, participants: Optional[np.ndarray] = None) -> None:
    """Write triplets (and optional participant ids) as whitespace text, atomically."""
    table = _as_table(_stack(triplets, participants), str(path))
    full = table.triplets if table.participants is None else np.column_stack([table.triplets, table.participants])
    with atomic_write(path, "w") as fh:
        np.savetxt(fh, full, fmt="%d", delimiter=" ")


def save_triplets(path: PathLike, triplets: np.ndarray, participants: Optional[np.ndarray] = None) -> None:
    """Write triplets atomically; the format follows the suffix (.txt/.tsv, .npy, .npz)."""
    suffix = Path(path).suffix.lower()
    if suffix in (".txt", ".tsv"):
        save_triplets_txt(path, triplets, participants)
        return
    table = _as_table(_stack(triplets, participants), str(path))
    if suffix == ".npy":
        full = table.triplets if table.participants is None else np.column_stack([table.triplets, table.participants])
        buf = io.BytesIO()
        np.save(buf, full)
        atomic_write_bytes(path, buf.getvalue())
    elif suffix == ".npz":
        arrays = {"triplets": table.triplets}
        if table.participants is not None:
            arrays["participants"] = table.participants
        atomic_save_npz(path, **arrays)
    else:
        raise ValueError(f"{path}: unknown triplet file format {suffix!r}; supported: .txt, .tsv, .npy, .npz")


def _stack(triplets: np.ndarray, participants: Optional[np.ndarray]) -> np.ndarray:
    t = np.asarray(triplets)
    if participants is None:
        return t
    p = np.asarray(participants).reshape(-1, 1)
    if t.ndim != 2 or p.shape[0] != t.shape[0]:
        raise ValueError(f"participants has {p.shape[0]} entries but triplets has shape {t.shape}")
    return np.concatenate([t, p.astype(t.dtype) if t.dtype.kind in 'iu' else p], axis=1)
