"""Held-out splits of human triplets: the part no stage may train, calibrate or select on.

One function per kind of split, shared by ``fastalign run`` (its data stage) and
``fastalign split-triplets``, so the command holds out exactly the triplets a run
with the same fraction and seed holds out:

- ``heldout_rows``: triplet-level, a seeded permutation; the first ``round(f * k)``
  rows of it are held out.
- ``object_heldout_rows``: object-disjoint, the object split of ``fit-teacher
  --split object`` (``fastalign.teacher.split``): a share ``f`` of the *objects* is
  held out; a triplet is held out when all three of its objects are, trained on when
  none is, and dropped otherwise (about ``1 - (1-f)^3 - f^3`` of them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..teacher.split import train_val_split

SPLIT_KINDS = ("triplet", "object")


@dataclass(frozen=True)
class HeldoutRows:
    """Row indices into the triplet table.

    Attributes:
        rest: rows a run may use (train, calibrate, select on), int64; for a
            triplet-level split in permutation order (``fastalign run`` takes its
            calibration rows from the front).
        heldout: held-out rows, int64.
        dropped: rows in neither part (object-disjoint splits only).
    """

    rest: np.ndarray
    heldout: np.ndarray
    dropped: int = 0


def _check_fraction(fraction: float) -> None:
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction!r}")


def heldout_rows(k: int, fraction: float, seed: int = 0) -> HeldoutRows:
    """Triplet-level split of ``k`` rows: ``round(fraction * k)`` held out, seeded."""
    _check_fraction(fraction)
    perm = np.random.default_rng(seed).permutation(int(k))
    n_held = int(round(fraction * k))
    return HeldoutRows(perm[n_held:], perm[:n_held])


def object_heldout_rows(triplets: np.ndarray, fraction: float, seed: int = 0, n_objects=None) -> HeldoutRows:
    """Object-disjoint split: no held-out object appears in a kept training triplet."""
    _check_fraction(fraction)
    split = train_val_split(triplets, fraction, split="object", n_objects=n_objects, seed=seed)
    return HeldoutRows(split.train, split.val, split.dropped)


def split_rows(triplets: np.ndarray, fraction: float, seed: int = 0, kind: str = "triplet",
               n_objects=None) -> HeldoutRows:
    """The ``kind`` split (``SPLIT_KINDS``) of a (k, 3) triplet table."""
    if kind not in SPLIT_KINDS:
        raise ValueError(f"the split must be one of {list(SPLIT_KINDS)}, got {kind!r}")
    if kind == "object":
        return object_heldout_rows(triplets, fraction, seed, n_objects)
    return heldout_rows(len(triplets), fraction, seed)
