"""Load (N, D) feature matrices from .npy, .npz, .pt/.pth, HDF5 and text files.

thingsvision writes features as ``features.npy`` / ``.pt`` / ``.hdf5`` (key
``features``) / ``.txt`` next to a ``file_names.txt`` listing one image path
per row. ``load_features`` reads any of these; ``read_file_names`` and
``order_rows`` put the rows into a wanted order (e.g. THINGS ``unique_id``).

One array of a container that holds several is named ``FILE:KEY`` (``two.npz:a``),
so every command and config key that takes a features path can choose it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .untrusted import load_npy, load_npz, torch_load

PathLike = Union[str, os.PathLike]

FEATURE_FORMATS = (".npy", ".npz", ".pt", ".pth", ".h5", ".hdf5", ".txt", ".csv")
# The formats that hold named arrays, so that ``FILE:KEY`` can name one.
CONTAINER_FORMATS = (".npz", ".pt", ".pth", ".h5", ".hdf5")
# Keys tried, in order, when a container holds several arrays and no key is given.
DEFAULT_KEYS = ("features", "embeddings", "x")


def split_key(path: PathLike) -> Tuple[Path, Optional[str]]:
    """``two.npz:a`` -> (``two.npz``, ``"a"``); any other path -> (path, None).

    A file that exists under the whole name is that file (a colon is a legal file-name character).
    """
    text = os.fspath(path)
    base, sep, key = text.rpartition(":")
    if (sep and key and not Path(text).is_file() and Path(base).suffix.lower() in CONTAINER_FORMATS
            and not any(s in key for s in ("/", "\\"))):
        return Path(base), key
    return Path(text), None


def _choices(name: str, keys: List[str]) -> str:
    forms = [f"{name}:{k}" for k in keys]
    return f"{forms[0]} or {forms[1]}" if len(forms) == 2 else "one of " + ", ".join(forms)


def _pick(name: str, mapping: Dict[str, object], key: Optional[str]) -> object:
    """Choose one array out of a dict-like container (npz, pt dict, HDF5 file)."""
    keys = [str(k) for k in mapping.keys()]
    if key is not None:
        if key not in mapping:
            raise ValueError(f"{name}: holds no array {key!r}; its arrays: {', '.join(f'{name}:{k}' for k in keys)}")
        return mapping[key]
    if len(keys) == 1:
        return mapping[keys[0]]
    for k in DEFAULT_KEYS:
        if k in mapping:
            return mapping[k]
    raise ValueError(f"{name}: holds several arrays {keys}; pass {_choices(name, keys)} to choose one")


def _load_raw(path: Path, key: Optional[str]) -> np.ndarray:
    suffix = path.suffix.lower()
    # untrusted readers: plain arrays only, a one-line error naming the file otherwise
    if suffix == ".npy":
        return load_npy(path)
    if suffix == ".npz":
        return np.asarray(_pick(str(path), load_npz(path), key))
    if suffix in (".pt", ".pth"):
        obj = torch_load(path)
        if isinstance(obj, dict):
            obj = _pick(str(path), obj, key)
        if not isinstance(obj, torch.Tensor):
            raise ValueError(f"{path}: expected a tensor or a dict of tensors, got {type(obj).__name__}")
        if obj.dtype in (torch.bfloat16, torch.float16):
            obj = obj.float()
        return obj.detach().numpy()
    if suffix in (".h5", ".hdf5"):
        try:
            import h5py  # optional extra: fastalign[io]
        except ImportError:
            raise ValueError(
                f"{path}: reading HDF5 needs h5py; install it with `pip install h5py` (or fastalign[io])"
            ) from None
        with h5py.File(path, "r") as f:
            datasets = {k: f[k] for k in f.keys() if isinstance(f[k], h5py.Dataset)}
            return np.asarray(_pick(str(path), datasets, key)[()])
    if suffix in (".txt", ".csv"):
        delimiter = "," if suffix == ".csv" else None
        try:
            return np.loadtxt(path, dtype=np.float32, delimiter=delimiter, ndmin=2)
        except ValueError as exc:
            raise ValueError(f"{path}: not a numeric table: {exc}") from None
    raise ValueError(f"{path}: unknown feature file format {suffix!r}; supported: {', '.join(FEATURE_FORMATS)}")


def check_features(features: np.ndarray, name: str = "features") -> np.ndarray:
    """Validate a feature matrix and return it as float32/float64.

    Raises ValueError if it is not 2-D with at least one row and column, is
    not numeric, or holds NaN/Inf (naming the first bad row and column).
    """
    arr = np.asarray(features)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (N, D) feature matrix, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name}: feature matrix is empty, shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{name}: expected numeric features, got dtype {arr.dtype}")
    if arr.dtype == np.float64:
        out = arr
    elif arr.dtype.kind == "f":
        out = arr.astype(np.float32, copy=False)
    else:
        out = arr.astype(np.float64)
    # Row chunks of about 1M elements: a full-size boolean mask would cost
    # N * D bytes (1.4 GB for ImageNet-sized CLIP features) on top of the matrix.
    step = max(1, (1 << 20) // out.shape[1])
    for start in range(0, out.shape[0], step):
        finite = np.isfinite(out[start:start + step])
        if not finite.all():
            row, col = np.argwhere(~finite)[0]
            row += start
            raise ValueError(
                f"{name}: row {int(row)} has a non-finite value ({out[row, col]}) in column {int(col)}; "
                "features must be finite"
            )
    return out


def read_file_names(path: PathLike) -> List[str]:
    """Read ``file_names.txt``: one name per line, blank lines ignored."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: file-names file not found")
    return [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def _name_keys(name: str) -> List[Optional[str]]:
    """Identifiers for a file name: (exact, parent folder, stem); THINGS folders are concept ids."""
    p = Path(name.replace("\\", "/"))
    return [name, p.parent.name or None, p.stem]


def order_rows(names: Sequence[str], wanted: Sequence[str]) -> np.ndarray:
    """Indices ``idx`` such that ``names[idx[r]]`` matches ``wanted[r]`` for every r.

    A name matches if it equals the wanted entry exactly; failing that, if its
    parent folder does (thingsvision lists ``aardvark/aardvark_01b.jpg`` for
    concept ``aardvark``); failing that, if its stem does. When several rows
    match at the same level the first one listed wins, so the first image of a
    concept represents it.

    Raises ValueError naming the first wanted entry that matches no row.
    """
    lookups: List[Dict[str, int]] = [{}, {}, {}]
    for i, name in enumerate(names):
        for level, k in enumerate(_name_keys(name)):
            if k is not None:
                lookups[level].setdefault(k, i)
    idx = np.empty(len(wanted), dtype=np.int64)
    for r, w in enumerate(wanted):
        for table in lookups:
            if w in table:
                idx[r] = table[w]
                break
        else:
            raise ValueError(f"wanted row {r} ({w!r}) matches no entry of the file names ({len(names)} names)")
    return idx


def load_features(
    path: PathLike,
    file_names: Optional[PathLike] = None,
    key: Optional[str] = None,
    order: Optional[Sequence[str]] = None,
) -> np.ndarray:
    """Load an (N, D) feature matrix.

    Args:
        path: ``.npy``; ``.npz`` (``key`` or ``FILE.npz:KEY``, else the single array, else ``features``);
            ``.pt``/``.pth`` (a tensor or a dict of tensors, read with
            ``torch.load(weights_only=True)``); ``.h5``/``.hdf5`` (thingsvision's
            ``features`` dataset; needs h5py); ``.txt``/``.csv`` (numeric table).
        file_names: optional ``file_names.txt``; its line count must equal N.
        key: which array to read from a container format (the same as a ``:KEY`` tail of ``path``).
        order: optional list of wanted names (needs ``file_names``); the rows are
            returned in this order (see ``order_rows``).

    Returns float32 (float64 if stored as float64) features, C-contiguous.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unknown format, wrong rank, NaN/Inf (naming the first bad
            row), a ``file_names`` count that differs from N, or an unmatched name.
    """
    p, named = split_key(path)
    if named is not None and key is not None and named != key:
        raise ValueError(f"{path} names the array {named!r} but key={key!r} was given too; give one")
    key = named if named is not None else key
    if not p.is_file():
        raise FileNotFoundError(f"{p}: feature file not found")
    if p.suffix.lower() not in FEATURE_FORMATS:
        raise ValueError(f"{p}: unknown feature file format {p.suffix!r}; supported: {', '.join(FEATURE_FORMATS)}")
    feats = check_features(_load_raw(p, key), name=str(p))
    if file_names is not None:
        names = read_file_names(file_names)
        if len(names) != feats.shape[0]:
            raise ValueError(
                f"{file_names}: lists {len(names)} names but {p} has {feats.shape[0]} feature rows"
            )
        if order is not None:
            feats = feats[order_rows(names, order)]
    elif order is not None:
        raise ValueError("order= needs file_names= to know which row is which")
    return np.ascontiguousarray(feats)
