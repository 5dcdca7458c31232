"""The one resolver of every input a user names: ``things:KEY`` or a file.

Every command, stage and config key goes through these functions, so the same
spec means the same thing everywhere and fails with the same message.

Bundled shorthands (rows in the bundled ``unique_id`` order, 1,854 objects):

- features: ``things:clip``, ``things:word2vec``, ``things:spose49``, ``things:vice`` when bundled
  (``things`` alone means the default of the caller, e.g. ``things:spose49`` for a human reference);
- triplets: ``things:test_10``, ``things:train_90_ID_smallsample``, ``things:test_10_ID_smallsample``;
- categories: ``things`` (the 27-category membership matrix; also ``things:categories``);
- labels: ``things`` (objects in exactly one of the 27 categories; the rest unlabelled).

File formats: features and triplets as in ``fastalign.io`` (transforms: ``fastalign.teacher``);

- categories: ``.npy`` (N, K) 0/1, or a text table (tab, comma or space
  separated) with an optional header row of category names, one row per object;
- labels: ``.npy`` / ``.npz`` (an array ``labels`` or a single array) of integers
  (negative = unlabelled), or text with one label per line; a label of ``-1``,
  ``NA``, ``none`` or an empty line is unlabelled, other strings are classes;
- file names: text, one name per line (blank lines ignored).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from ..common.category_levels import single_category_labels
from ..datasets.things import FEATURES, ROOT, TRIPLETS, load_things
from .features import load_features, read_file_names, split_key
from .triplets import TripletTable, load_triplets
from .untrusted import load_npy, load_npz

__all__ = [
    "THINGS_PREFIX",
    "feature_path",
    "is_bundled",
    "read_file_names",
    "resolve_categories",
    "resolve_features",
    "resolve_file_names",
    "resolve_labels",
    "resolve_triplet_table",
    "resolve_triplets",
    "rows_mismatch",
    "split_spec",
]

THINGS_PREFIX = "things"
_UNLABELLED = {"", "-1", "na", "nan", "none", "null"}


def split_spec(spec: str) -> Tuple[str, Optional[str]]:
    """``things:clip`` -> ("things", "clip"); ``things`` -> ("things", None); a path -> (path, None)."""
    spec = str(spec)
    if spec == THINGS_PREFIX:
        return THINGS_PREFIX, None
    if spec.startswith(THINGS_PREFIX + ":"):
        return THINGS_PREFIX, spec.split(":", 1)[1]
    return spec, None


def is_bundled(spec: str) -> bool:
    """True when ``spec`` names bundled THINGS data rather than a file."""
    return split_spec(spec)[0] == THINGS_PREFIX


def _bundled_key(spec: str, kind: str, known, default: Optional[str]) -> Optional[str]:
    """The bundled key ``spec`` names, checked against ``known``; None when ``spec`` is a path."""
    src, key = split_spec(spec)
    if src != THINGS_PREFIX:
        return None
    key = key if key is not None else default
    if key is None:
        raise ValueError(f"'{THINGS_PREFIX}' needs a key for {kind}: write one of "
                         f"{', '.join(THINGS_PREFIX + ':' + k for k in sorted(known))}")
    if key not in known:
        raise ValueError(f"unknown bundled {kind} {spec!r}; choose one of "
                         f"{', '.join(THINGS_PREFIX + ':' + k for k in sorted(known))}")
    return key


def rows_mismatch(first: Tuple[str, str, int], second: Tuple[str, str, int]) -> str:
    """The message for two inputs over different objects, each given as (what, spec, rows): both
    files and their counts, and, when one is bundled, that its count is the THINGS one."""
    (wa, sa, na), (wb, sb, nb) = first, second
    text = (f"{wa} {sa} has {na:,} rows but {wb} {sb} has {nb:,}; every input must list the same objects "
            "in the same order")
    bundled = [(s, n) for s, n in ((sa, na), (sb, nb)) if is_bundled(s)]
    if len(bundled) == 1:
        other = sb if bundled[0][0] == sa else sa
        text += f" (the bundled THINGS data has {bundled[0][1]:,} objects, so {other} lists other objects)"
    return text


def _existing_file(spec: str, kind: str) -> Path:
    p = Path(spec)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: {kind} file not found (give a file or {THINGS_PREFIX}:KEY)")
    return p


def feature_path(spec: str, default: Optional[str] = None) -> Path:
    """The file behind a features spec (``things:KEY`` -> the bundled ``.npy``, ``two.npz:a`` -> ``two.npz``):
    what a cache key hashes (with the spec, which names the array)."""
    key = _bundled_key(spec, "features", FEATURES, default)
    return ROOT / FEATURES[key] if key is not None else _existing_file(str(split_key(spec)[0]), "features")


def resolve_features(spec: str, file_names: Optional[str] = None, key: Optional[str] = None,
                     default: Optional[str] = None) -> np.ndarray:
    """(N, D) features from ``things:KEY`` or a file (``fastalign.io.load_features``: checked finite).

    Args:
        spec: ``things:KEY``, a features file, or ``FILE:KEY`` for one array of a ``.npz`` / ``.pt`` / ``.h5``.
        file_names: for a file, ``file_names.txt`` whose count must match the rows.
        key: array name inside a ``.npz`` / ``.pt`` / ``.h5`` file (the same as a ``:KEY`` tail).
        default: the key that a bare ``things`` means (None: a bare ``things`` is an error).
    """
    bkey = _bundled_key(spec, "features", FEATURES, default)
    if bkey is not None:
        return np.array(load_things().features[bkey])  # a writable copy of the read-only bundled array
    feature_path(spec)  # the file must exist: a one-line error that says what else the spec may be
    return load_features(spec, key=key, file_names=file_names)


def resolve_triplet_table(spec: str) -> TripletTable:
    """Triplets with their participant ids when the source has them."""
    bkey = _bundled_key(spec, "triplets", TRIPLETS, None)
    if bkey is not None:
        data = load_things()
        part = data.participants.get(bkey)
        return TripletTable(np.array(data.triplets[bkey]), None if part is None else np.array(part))
    return load_triplets(_existing_file(spec, "triplets"))


def resolve_triplets(spec: str) -> np.ndarray:
    """(B, 3) int64 triplets, column 2 the odd one out, from ``things:KEY`` or a file."""
    return resolve_triplet_table(spec).triplets


def _split_row(line: str) -> List[str]:
    return [c.strip() for c in re.split(r"[\t,]" if ("\t" in line or "," in line) else r"\s+", line.strip())]


def _bundled_categories(spec: str) -> bool:
    return spec in (THINGS_PREFIX, THINGS_PREFIX + ":categories")


def resolve_categories(spec: str, n: Optional[int] = None) -> Tuple[np.ndarray, Optional[List[str]]]:
    """(N, K) uint8 category membership and the category names (or None).

    Args:
        spec: ``things`` or a file (see the module docstring).
        n: the number of objects the caller has; a matrix with another row count is refused.
    """
    if _bundled_categories(spec):
        data = load_things()
        arr, names = np.array(data.categories), list(data.category_names)
    else:
        arr, names = _read_category_file(_existing_file(spec, "categories"))
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{spec}: the category matrix has {arr.shape[0]} rows but there are {n} objects")
    return arr, names


def _read_category_file(p: Path) -> Tuple[np.ndarray, Optional[List[str]]]:
    names = None
    if p.suffix.lower() == ".npy":
        arr = load_npy(p)
    else:
        lines = [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not lines:
            raise ValueError(f"{p}: empty categories file")
        first = _split_row(lines[0])
        try:
            [float(v) for v in first]
        except ValueError:
            names, lines = first, lines[1:]
        try:
            arr = np.array([[float(v) for v in _split_row(ln)] for ln in lines])
        except ValueError as exc:
            raise ValueError(f"{p}: categories must be a numeric 0/1 table ({exc})") from None
    if arr.ndim != 2:
        raise ValueError(f"{p}: categories must be a 2-D (N, K) table, got shape {arr.shape}")
    # min/max for integer matrices: np.isin sorts, which is ~50x slower on a 1e6 x 1000 matrix.
    only_01 = (arr.min(initial=0) >= 0 and arr.max(initial=0) <= 1) if arr.dtype.kind in "iub" \
        else bool(np.isin(arr, (0, 1)).all())
    if not only_01:
        raise ValueError(f"{p}: categories must hold only 0 and 1")
    if names is not None and len(names) != arr.shape[1]:
        raise ValueError(f"{p}: header names {len(names)} categories but rows have {arr.shape[1]} columns")
    return arr.astype(np.uint8), names


def resolve_labels(spec: str, n: Optional[int] = None) -> Tuple[np.ndarray, Optional[List[str]]]:
    """(N,) int64 class per object (-1 = unlabelled) and the class names (or None).

    Args:
        spec: ``things`` (single-category THINGS objects) or a file (see the module docstring).
        n: the number of objects the caller has; another length is refused.
    """
    if _bundled_categories(spec):
        data = load_things()
        labels, names = single_category_labels(data.categories), list(data.category_names)
    else:
        labels, names = _read_label_file(_existing_file(spec, "labels"))
    if n is not None and labels.shape[0] != n:
        raise ValueError(f"{spec}: has {labels.shape[0]} labels but there are {n} objects")
    return labels, names


def _read_label_file(p: Path) -> Tuple[np.ndarray, Optional[List[str]]]:
    if p.suffix.lower() in (".npy", ".npz"):
        return _integer_labels(p, _load_label_array(p)), None
    raw = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    while raw and raw[-1] == "":
        raw.pop()
    if all(r.lower() in _UNLABELLED or re.fullmatch(r"-?\d+(\.0*)?", r) for r in raw):
        return np.array([-1 if r.lower() in _UNLABELLED else int(float(r)) for r in raw], dtype=np.int64), None
    names = sorted({r for r in raw if r.lower() not in _UNLABELLED})
    code = {name: i for i, name in enumerate(names)}
    return np.array([code.get(r, -1) for r in raw], dtype=np.int64), names


def _load_label_array(p: Path) -> np.ndarray:
    if p.suffix.lower() == ".npy":
        return load_npy(p)
    arrays = load_npz(p)
    key = "labels" if "labels" in arrays else (next(iter(arrays)) if len(arrays) == 1 else None)
    if key is None:
        raise ValueError(f"{p}: expected an array 'labels' (or a single array); found {sorted(arrays)}")
    return arrays[key]


def _integer_labels(p: Path, arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise ValueError(f"{p}: labels must be 1-D (one per object), got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not (arr == np.round(arr)).all():
            raise ValueError(f"{p}: labels must be integers")
    elif arr.dtype.kind not in "iu":
        raise ValueError(f"{p}: labels must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def resolve_file_names(spec: str, n: Optional[int] = None) -> List[str]:
    """File names in object order; ``things`` gives the bundled concept ids. ``n`` checks the count."""
    names = list(load_things().unique_id) if _bundled_categories(spec) else read_file_names(spec)
    if n is not None and len(names) != n:
        raise ValueError(f"{spec}: lists {len(names)} names but there are {n} objects")
    return names
