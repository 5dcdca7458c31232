"""Inputs for evaluation by name: files, or ``things`` shorthands for the bundled THINGS data.

Shorthands (rows in the bundled ``unique_id`` order, 1,854 objects):

- features / RDM reference: ``things:clip``, ``things:word2vec``, ``things:spose49``
  (``things`` alone means ``things:spose49`` for a human reference);
- triplets: ``things:test_10``, ``things:train_90_ID_smallsample``, ``things:test_10_ID_smallsample``;
- categories: ``things`` (the 27-category membership matrix);
- few-shot labels: ``things`` (objects in exactly one of the 27 categories; the rest unlabelled).

File formats read here (features, triplets and transforms go through ``fastalign.io``):

- categories: ``.npy`` (N, K) 0/1, or a text table (tab, comma or space
  separated) with an optional header row of category names, one row per object;
- labels: ``.npy`` (N,) integers (negative = unlabelled), or text with one label
  per line; a label of ``-1``, ``NA``, ``none`` or an empty line is unlabelled,
  other strings are classes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

__all__ = ["THINGS_PREFIX", "load_categories", "load_labels", "resolve_features", "resolve_triplets"]

THINGS_PREFIX = "things"
_UNLABELLED = {"", "-1", "na", "nan", "none", "null"}


def _things_key(spec: str, kind: str, default: Optional[str] = None) -> Optional[str]:
    """``"things:KEY"`` -> KEY (``"things"`` -> default); None when ``spec`` is a path."""
    if spec == THINGS_PREFIX and default is not None:
        return default
    if spec.startswith(THINGS_PREFIX + ":"):
        return spec.split(":", 1)[1]
    if spec == THINGS_PREFIX:
        raise ValueError(f"'{THINGS_PREFIX}' needs a key for {kind}: write {THINGS_PREFIX}:KEY")
    return None


def _things():
    from ..datasets.things import load_things

    return load_things()


def resolve_features(spec: str, file_names: Optional[str] = None, default: Optional[str] = None) -> np.ndarray:
    """(N, D) features from ``things:KEY`` or a file (via ``fastalign.io.load_features``)."""
    key = _things_key(spec, "features", default)
    if key is not None:
        data = _things()
        if key not in data.features:
            raise ValueError(f"unknown bundled features {key!r}; choose one of {sorted(data.features)}")
        return np.array(data.features[key])
    from ..io import load_features

    return load_features(spec, file_names=file_names)


def resolve_triplets(spec: str) -> np.ndarray:
    """(B, 3) triplets from ``things:KEY`` or a file (via ``fastalign.io.load_triplets``)."""
    key = _things_key(spec, "triplets")
    if key is not None:
        data = _things()
        if key not in data.triplets:
            raise ValueError(f"unknown bundled triplets {key!r}; choose one of {sorted(data.triplets)}")
        return np.array(data.triplets[key])
    from ..io import load_triplets

    return load_triplets(spec).triplets


def _split(line: str) -> List[str]:
    return [c.strip() for c in re.split(r"[\t,]" if ("\t" in line or "," in line) else r"\s+", line.strip())]


def load_categories(spec: str) -> Tuple[np.ndarray, Optional[List[str]]]:
    """(N, K) uint8 category membership and the category names (or None).

    Args:
        spec: ``things`` or a file (see the module docstring).
    """
    if spec == THINGS_PREFIX or spec == THINGS_PREFIX + ":categories":
        data = _things()
        return np.array(data.categories), list(data.category_names)
    p = Path(spec)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: categories file not found")
    if p.suffix.lower() == ".npy":
        arr = np.load(p, allow_pickle=False)
        names = None
    else:
        lines = [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not lines:
            raise ValueError(f"{p}: empty categories file")
        first = _split(lines[0])
        names = None
        try:
            [float(v) for v in first]
        except ValueError:
            names, lines = first, lines[1:]
        try:
            arr = np.array([[float(v) for v in _split(ln)] for ln in lines])
        except ValueError as exc:
            raise ValueError(f"{p}: categories must be a numeric 0/1 table ({exc})") from None
    if arr.ndim != 2:
        raise ValueError(f"{p}: categories must be a 2-D (N, K) table, got shape {arr.shape}")
    if not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{p}: categories must hold only 0 and 1")
    if names is not None and len(names) != arr.shape[1]:
        raise ValueError(f"{p}: header names {len(names)} categories but rows have {arr.shape[1]} columns")
    return arr.astype(np.uint8), names


def load_labels(spec: str) -> Tuple[np.ndarray, Optional[List[str]]]:
    """(N,) int64 class per object (-1 = unlabelled) and the class names (or None).

    Args:
        spec: ``things`` (single-category THINGS objects) or a file (see the module docstring).
    """
    if spec == THINGS_PREFIX or spec == THINGS_PREFIX + ":categories":
        from .few_shot import single_category_labels

        data = _things()
        return single_category_labels(data.categories), list(data.category_names)
    p = Path(spec)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: labels file not found")
    if p.suffix.lower() == ".npy":
        arr = np.load(p, allow_pickle=False)
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise ValueError(f"{p}: labels must be a 1-D integer array, got {arr.dtype} shape {arr.shape}")
        return arr.astype(np.int64), None
    raw = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    while raw and raw[-1] == "":
        raw.pop()
    if all(r.lower() in _UNLABELLED or re.fullmatch(r"-?\d+", r) for r in raw):
        return np.array([-1 if r.lower() in _UNLABELLED else int(r) for r in raw], dtype=np.int64), None
    names = sorted({r for r in raw if r.lower() not in _UNLABELLED})
    code = {n: i for i, n in enumerate(names)}
    return np.array([code.get(r, -1) for r in raw], dtype=np.int64), names
