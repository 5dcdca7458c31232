"""Train/validation splits of triplets: triplet-level or object-disjoint, and k folds.

Object-disjoint splits partition the *objects* into folds and keep a triplet
only when all three of its objects fall in one side of the split, so no
validation object was ever seen in training. With a validation fraction f a
triplet survives with probability ``(1-f)^3 + f^3``; the rest are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from ..common.seeds import derive_rng

SPLITS = ("triplet", "object")


@dataclass(frozen=True)
class Split:
    """Indices into the triplet table.

    Attributes:
        train: int64 indices of training triplets.
        val: int64 indices of validation triplets.
        dropped: number of triplets used by neither (object splits only).
    """

    train: np.ndarray
    val: np.ndarray
    dropped: int = 0


def _check(triplets: np.ndarray) -> np.ndarray:
    t = np.asarray(triplets)
    if t.ndim != 2 or t.shape[1] != 3:
        raise ValueError(f"triplets must have shape (k, 3), got {t.shape}")
    return t


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")


def _object_folds(n_objects: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Fold id per object: a random balanced assignment into k folds."""
    return rng.permutation(np.arange(n_objects) % k)


def train_val_split(
    triplets: np.ndarray,
    val_fraction: float,
    split: str = "triplet",
    n_objects: Optional[int] = None,
    seed: int = 0,
) -> Split:
    """One random train/validation split.

    Args:
        triplets: (k, 3) object indices.
        val_fraction: share of triplets (split="triplet") or of objects
            (split="object") that go to validation, in (0, 1).
        split: "triplet" or "object" (object-disjoint).
        n_objects: number of objects (default ``triplets.max() + 1``).
        seed: RNG seed.
    """
    t = _check(triplets)
    _check_split(split)
    if not (0.0 < val_fraction < 1.0):
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    rng = derive_rng(seed)
    if split == "triplet":
        perm = rng.permutation(len(t))
        n_val = max(1, int(round(val_fraction * len(t)))) if len(t) > 1 else 0
        return Split(np.sort(perm[n_val:]), np.sort(perm[:n_val]))
    n = int(t.max()) + 1 if n_objects is None else int(n_objects)
    is_val = np.zeros(n, dtype=bool)
    is_val[rng.permutation(n)[: max(1, int(round(val_fraction * n)))]] = True
    v = is_val[t]
    val = np.flatnonzero(v.all(1))
    train = np.flatnonzero((~v).all(1))
    return Split(train, val, int(len(t) - len(train) - len(val)))


def kfold_splits(
    triplets: np.ndarray,
    k: int,
    split: str = "triplet",
    n_objects: Optional[int] = None,
    seed: int = 0,
) -> List[Split]:
    """k folds; fold f validates on its share and trains on the rest.

    For split="object" the objects are partitioned into k folds; fold f's
    validation triplets have all three objects in fold f, its training
    triplets none, and triplets that straddle are dropped for that fold.
    """
    t = _check(triplets)
    _check_split(split)
    if not isinstance(k, (int, np.integer)) or k < 2:
        raise ValueError(f"folds must be an int >= 2, got {k!r}")
    rng = derive_rng(seed)
    if split == "triplet":
        if len(t) < k:
            raise ValueError(f"{len(t)} triplets cannot make {k} folds")
        fold = rng.permutation(np.arange(len(t)) % k)
        return [Split(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(k)]
    n = int(t.max()) + 1 if n_objects is None else int(n_objects)
    obj_fold = _object_folds(n, k, rng)[t]  # (k_trip, 3) fold of each object
    out = []
    for f in range(k):
        inside = obj_fold == f
        val = np.flatnonzero(inside.all(1))
        train = np.flatnonzero((~inside).all(1))
        out.append(Split(train, val, int(len(t) - len(train) - len(val))))
    return out
