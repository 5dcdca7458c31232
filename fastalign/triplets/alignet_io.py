"""Import and export triplet stores: AligNet's released ``.npz`` and THINGS text triplets.

AligNet ``.npz`` (as released with the paper's data):

- ``indices``       (n, 3) int   item indices of each triplet;
- ``similarities``  (n, 3) float ``[s01, s02, s12]`` of those items in that order;
- ``filenames``     (n, 3) str   the items' image file names (optional here).

Its README says rows are sorted so that ``s12 < s01`` and ``s12 < s02``. That
makes item 0 never the odd one out but does *not* make ``s01`` the largest, so
the importer derives the odd one out from the similarities of every row and
reorders the row into fastalign's convention (``s01`` largest, item 2 the odd
one out); the similarity values themselves are kept, only permuted with their
items. The exporter writes fastalign's convention.

THINGS text: one triplet per line, ``i j k`` with the odd one out in column 2
(0-based item indices). Importing one gives a store of *hard* labels: its
probabilities are the one-hot human choice ``[1, 0, 0]`` and its similarities
the same one-hot vector as a placeholder (``meta["hard_labels"] = true``), so
distillation should use ``probs``.
"""

from __future__ import annotations

import io as _io
import os
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

from ..io.atomic import atomic_write, atomic_write_bytes, atomic_write_text
from ..io.triplets import load_triplets
from ..io.untrusted import RefusedFileError, load_npz
from .store import TripletStore, TripletStoreWriter
from .store.layout import INDEX_LIMIT

PathLike = Union[str, os.PathLike]
FORMATS = ("alignet-npz", "things-txt")
_ROWS = 1 << 20  # rows per write/read step (bounded memory per step)

# Same reorder table as ``label.reorder_by_odd``, in numpy.
_ITEM_ORDER = np.array([[0, 1, 2], [0, 2, 1], [1, 2, 0]])
_SIM_ORDER = np.array([[0, 1, 2], [1, 0, 2], [2, 0, 1]])


def reorder_np(indices: np.ndarray, sims: np.ndarray, *extra: np.ndarray) -> Tuple[np.ndarray, ...]:
    """Reorder rows so ``sims[:, 0]`` is the largest (item 2 the odd one out); ``extra`` (n, 3) arrays
    are permuted like the items (e.g. file names)."""
    p = np.argmax(sims, axis=1)
    io, so = _ITEM_ORDER[p], _SIM_ORDER[p]
    out = [np.take_along_axis(indices, io, 1), np.take_along_axis(sims, so, 1)]
    out += [np.take_along_axis(e, io, 1) for e in extra]
    return tuple(out)


def detect_format(path: PathLike) -> str:
    """``alignet-npz`` for ``.npz``, ``things-txt`` for ``.txt``/``.tsv``; else ValueError."""
    suffix = Path(path).suffix.lower()
    if suffix == ".npz":
        return "alignet-npz"
    if suffix in (".txt", ".tsv"):
        return "things-txt"
    raise ValueError(f"{path}: cannot tell the triplet format from {suffix!r}; pass --format ({' or '.join(FORMATS)})")


def _names_for(n_items: int, idx: np.ndarray, names: np.ndarray, src: str) -> np.ndarray:
    """Per-item names from per-triplet names, checking that an index always carries the same name."""
    table = np.full(n_items, "", dtype=object)
    flat_i, flat_n = idx.reshape(-1), names.reshape(-1).astype(str)
    order = np.argsort(flat_i, kind="stable")
    fi, fn = flat_i[order], flat_n[order]
    first = np.concatenate([[True], fi[1:] != fi[:-1]])
    # every occurrence must equal the first occurrence of its index
    ref = fn[first][np.cumsum(first) - 1]
    bad = np.flatnonzero(ref != fn)
    if bad.size:
        i = int(fi[bad[0]])
        raise ValueError(f"{src}: item {i} is named both {ref[bad[0]]!r} and {fn[bad[0]]!r}; filenames and indices disagree")
    table[fi[first]] = fn[first]
    return table


def _read_npz(path: PathLike, allow_pickle: bool) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """(indices int64, similarities float64, filenames or None) of an AligNet ``.npz``, every row checked."""
    src = str(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"{src}: file not found")
    try:
        z = load_npz(path, ("indices", "similarities", "filenames"), allow_pickle=allow_pickle)
    except RefusedFileError as exc:
        # The released 'filenames' may be an object array: reading it is the user's explicit choice.
        raise RefusedFileError(f"{exc}. Only for a file you made or trust: --allow-pickle reads object arrays "
                               "(unpickling can run code)") from None
    for key in ("indices", "similarities"):
        if key not in z:
            raise ValueError(f"{src}: missing array {key!r}; an AligNet .npz has 'indices', 'similarities' and 'filenames' (found {sorted(z)})")
    idx = np.asarray(z["indices"])
    try:
        sims = np.asarray(z["similarities"], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{src}: 'similarities' is not numeric (dtype {z['similarities'].dtype})") from None
    names = np.asarray(z["filenames"]) if "filenames" in z else None
    if idx.ndim != 2 or idx.shape[1] != 3 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"{src}: 'indices' must be an (n, 3) integer array, got shape {idx.shape} dtype {idx.dtype}")
    n = idx.shape[0]
    if sims.shape != (n, 3):
        raise ValueError(f"{src}: 'similarities' must have shape ({n}, 3), got {sims.shape}")
    if not np.isfinite(sims).all():
        raise ValueError(f"{src}: 'similarities' contain NaN or Inf (first at row {int(np.flatnonzero(~np.isfinite(sims).all(1))[0])})")
    if n and idx.dtype.kind == "u" and int(idx.max()) >= INDEX_LIMIT:  # checked before an int64 cast could wrap it
        raise ValueError(_too_large(src, int(idx.max())))
    idx = idx.astype(np.int64)
    if n and idx.min() < 0:
        raise ValueError(f"{src}: negative item index")
    rep = (idx[:, 0] == idx[:, 1]) | (idx[:, 0] == idx[:, 2]) | (idx[:, 1] == idx[:, 2])
    if rep.any():
        raise ValueError(f"{src}: row {int(np.flatnonzero(rep)[0])} repeats an item")
    return idx, sims, names


def _too_large(src: str, index: int) -> str:
    return (f"{src}: item index {index:,} does not fit the store's int32 indices (at most {INDEX_LIMIT - 1:,}); "
            "nothing was written")


def _item_count(src: str, idx: np.ndarray, num_items: Optional[int]) -> int:
    """``num_items`` (default: largest index + 1), checked against the indices and the int32 index range."""
    n_items = int(idx.max()) + 1 if idx.shape[0] else 1
    if n_items > INDEX_LIMIT:
        raise ValueError(_too_large(src, n_items - 1))
    if num_items is not None:
        if num_items < n_items:
            raise ValueError(f"num_items={num_items} but {src} uses index {n_items - 1}")
        if num_items > INDEX_LIMIT:
            raise ValueError(f"num_items={num_items:,} is more than int32 indices can address "
                             f"(at most {INDEX_LIMIT:,}); nothing was written")
        n_items = int(num_items)
    return n_items


def import_alignet_npz(
    path: PathLike, out: PathLike, *, num_items: Optional[int] = None, sim_dtype: str = "float32",
    temperature: Optional[float] = None, shard_size: int = 1_000_000, allow_pickle: bool = False,
) -> TripletStore:
    """Import AligNet's ``.npz`` into a new store at ``out`` (see the module docstring).

    Args:
        path: the ``.npz`` file.
        out: the store directory to create (must not hold a store).
        num_items: number of items (default: largest index + 1).
        sim_dtype: storage dtype of the similarities ("float32" keeps them exactly).
        temperature: also store ``softmax(s / T)`` with this T.
        shard_size: triplets per shard.
        allow_pickle: let numpy unpickle object arrays (only for files you trust; the
            released ``filenames`` may be stored as objects).
    """
    src = str(path)
    idx, sims, names = _read_npz(path, allow_pickle)
    n = idx.shape[0]
    n_items = _item_count(src, idx, num_items)
    item_names = None
    if names is not None:
        if names.shape != (n, 3):
            raise ValueError(f"{src}: 'filenames' must have shape ({n}, 3), got {names.shape}")
        item_names = _names_for(n_items, idx, names, src)
    idx, sims = reorder_np(idx, sims)
    meta = {"source": "alignet-npz", "source_path": os.path.basename(src),
            "file_names": "file_names.txt" if item_names is not None else None,
            "temperature": temperature}
    out = Path(out)
    _check_new(out)
    out.mkdir(parents=True, exist_ok=True)
    if item_names is not None:
        # a .tmp- temp name: the store writer's resume deletes it if this write is killed
        atomic_write_text(out / "file_names.txt", "\n".join(item_names.tolist()) + "\n", named_tmp=True)
    with TripletStoreWriter(out, num_items=n_items, sim_dtype=sim_dtype, with_probs=temperature is not None,
                            shard_size=shard_size, meta=meta) as w:
        for a in range(0, n, _ROWS):
            s = sims[a: a + _ROWS]
            probs = None
            if temperature is not None:
                z_ = (s - s.max(1, keepdims=True)) / float(temperature)
                e = np.exp(z_)
                probs = e / e.sum(1, keepdims=True)
            w.write(idx[a: a + _ROWS], s.astype(np.float32), probs)
    return TripletStore.open(out)


def import_things_txt(path: PathLike, out: PathLike, *, num_items: Optional[int] = None,
                      shard_size: int = 1_000_000) -> TripletStore:
    """Import THINGS text triplets (odd one out in column 2) as a hard-label store (see module docstring)."""
    table = load_triplets(path)
    idx = table.triplets
    n = idx.shape[0]
    n_items = _item_count(str(path), idx, num_items)
    meta = {"source": "things-txt", "source_path": os.path.basename(str(path)), "hard_labels": True,
            "note": "sims and probs are the one-hot human choice [1, 0, 0]; use probs as targets"}
    out = Path(out)
    _check_new(out)
    onehot = np.zeros((min(n, _ROWS), 3), dtype=np.float32)
    onehot[:, 0] = 1
    with TripletStoreWriter(out, num_items=n_items, sim_dtype="float32", with_probs=True, shard_size=shard_size,
                            meta=meta) as w:
        for a in range(0, n, _ROWS):
            b = min(n, a + _ROWS)
            w.write(idx[a:b], onehot[: b - a], onehot[: b - a])
    return TripletStore.open(out)


def _check_new(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not empty; choose a new --out")


def export_alignet_npz(store: TripletStore, out: PathLike) -> int:
    """Write ``indices``, ``similarities`` (float32, ``s01`` largest) and ``filenames`` to an ``.npz``.

    File names come from the store's item list, else the index as a string.
    The whole file is built in memory (npz is not streamable), then written atomically.
    Returns the number of triplets written.
    """
    idx = np.asarray(store.indices[:], dtype=np.int64)
    sims = np.asarray(store.sims[:], dtype=np.float32)
    idx, sims = reorder_np(idx, sims)  # a no-op for stores fastalign wrote; enforces the convention
    names = store.item_names
    table = np.array(names if names is not None else [str(i) for i in range(store.num_items)])
    buf = _io.BytesIO()
    np.savez(buf, indices=idx, similarities=sims, filenames=table[idx])
    atomic_write_bytes(out, buf.getbuffer())
    return int(idx.shape[0])


def export_things_txt(store: TripletStore, out: PathLike) -> int:
    """Write ``i j k`` lines (odd one out last), streaming shard by shard; returns the row count."""
    n = 0
    with atomic_write(out, "w") as fh:
        for sh in store.shards:
            for a in range(0, sh.count, _ROWS):
                rows = np.asarray(sh.indices[a: a + _ROWS], dtype=np.int64)
                np.savetxt(fh, rows, fmt="%d")
                n += rows.shape[0]
    return n


def export_store(store_path: PathLike, out: PathLike, fmt: str, verify: bool = True) -> int:
    """Export the store at ``store_path`` to ``out`` in ``fmt`` (one of ``FORMATS``)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    store = TripletStore.open(store_path, verify=verify)
    return export_alignet_npz(store, out) if fmt == "alignet-npz" else export_things_txt(store, out)


def import_store(path: PathLike, out: PathLike, fmt: Optional[str] = None, **kwargs) -> TripletStore:
    """Import ``path`` (format from ``fmt`` or the suffix) into a new store at ``out``."""
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "alignet-npz":
        return import_alignet_npz(path, out, **kwargs)
    kwargs = {k: v for k, v in kwargs.items() if k in ("num_items", "shard_size")}
    return import_things_txt(path, out, **kwargs)
