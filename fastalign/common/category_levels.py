"""Abstraction levels of triplets from a category matrix (THINGS category levels).

Levels from object categories (an object may belong to several categories or
to none; THINGS has 27). For a triplet, a pair *shares* when its two objects
have at least one category in common. Then:

- ``fine``: one category holds all three objects;
- ``class_boundary``: exactly one of the three pairs shares;
- ``coarse``: no pair shares;
- ``mixed``: two or three pairs share but no category holds all three (only
  possible with multi-category objects, e.g. A and B are both *food*, B and C
  both *plant*, A and C nothing in common). Such a triplet is neither within
  one category nor one clean category boundary, so it is reported as its own
  level rather than forced into one of the three.

Objects with no category: ``uncategorized="distinct"`` (the default) takes the
definition literally, such an object shares no category with anything;
``uncategorized="exclude"`` labels every triplet holding one ``unlabelled``.

These mirror the global-coarse, local-fine and class-boundary triplets of
AligNet's *Levels* data. A Levels-style file that gives the level per
triplet goes through the same ``accuracy_by_level``.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .tensors import as_index, as_triplets

__all__ = ["CLASS_BOUNDARY", "COARSE", "FINE", "LEVELS", "MIXED", "UNCATEGORIZED", "UNLABELLED",
           "encode_levels", "single_category_labels", "triplet_levels"]

LEVELS = ("fine", "class_boundary", "coarse", "mixed", "unlabelled")
FINE, CLASS_BOUNDARY, COARSE, MIXED, UNLABELLED = range(5)
UNCATEGORIZED = ("distinct", "exclude")
_CHUNK = 1 << 20  # triplets per chunk: bounds the (chunk, K) gathers


def _as_categories(categories: Any, device) -> torch.Tensor:
    if isinstance(categories, np.ndarray):
        categories = torch.from_numpy(np.array(categories))
    if not isinstance(categories, torch.Tensor) or categories.dim() != 2:
        raise ValueError(
            f"categories must be a 2-D (N, K) 0/1 membership matrix, got {getattr(categories, 'shape', type(categories))}"
        )
    if categories.is_floating_point():
        bad = (categories != 0) & (categories != 1)
        if bool(bad.any()):
            raise ValueError("categories must hold only 0 and 1")
    return (categories != 0).to(device)


def triplet_levels(triplets: Any, categories: Any, uncategorized: str = "distinct") -> torch.Tensor:
    """The level code of each triplet (index into ``LEVELS``), shape (B,) int64.

    Args:
        triplets: (B, 3) object indices (order within a row does not matter).
        categories: (N, K) 0/1 membership, row = object, column = category.
        uncategorized: ``"distinct"`` or ``"exclude"`` (see the module docstring).
    """
    if uncategorized not in UNCATEGORIZED:
        raise ValueError(f"uncategorized must be one of {list(UNCATEGORIZED)}, got {uncategorized!r}")
    t0 = as_index(triplets, "triplets", width=3)
    cats = _as_categories(categories, t0.device)
    t = as_triplets(t0, cats.shape[0], name="triplets")
    out = torch.empty(t.shape[0], dtype=torch.int64, device=t.device)
    has_any = cats.any(1)
    for s in range(0, t.shape[0], _CHUNK):
        tc = t[s:s + _CHUNK]
        a, b, c = cats[tc[:, 0]], cats[tc[:, 1]], cats[tc[:, 2]]
        ab, ac, bc = (a & b).any(1), (a & c).any(1), (b & c).any(1)
        all3 = (a & b & c).any(1)
        shared = ab.long() + ac.long() + bc.long()
        lv = torch.full_like(shared, MIXED)
        lv[shared == 0] = COARSE
        lv[shared == 1] = CLASS_BOUNDARY
        lv[all3] = FINE
        if uncategorized == "exclude":
            lv[~has_any[tc].all(1)] = UNLABELLED
        out[s:s + _CHUNK] = lv
    return out


def encode_levels(levels: Any, names: Optional[Sequence[str]] = None) -> Tuple[torch.Tensor, List[str]]:
    """Turn per-triplet level labels into (codes, names).

    Args:
        levels: (B,) integer codes, or a sequence / array of strings.
        names: names of the integer codes (code ``i`` is ``names[i]``); default
            ``str(code)``. Pass ``LEVELS`` for codes from ``triplet_levels``.
            Ignored for string labels, whose names are their sorted distinct values.
    """
    if isinstance(levels, (list, tuple)) or (isinstance(levels, np.ndarray) and levels.dtype.kind in "USO"):
        arr = np.asarray(levels).astype(str)
        if arr.ndim != 1:
            raise ValueError(f"levels must be 1-D, got shape {arr.shape}")
        uniq, inv = np.unique(arr, return_inverse=True)
        return torch.from_numpy(inv.astype(np.int64)), [str(u) for u in uniq]
    codes = as_index(levels, "levels")
    if codes.numel() and int(codes.min()) < 0:
        raise ValueError("integer level codes must be >= 0")
    top = int(codes.max()) + 1 if codes.numel() else 0
    if names is None:
        names = [str(i) for i in range(top)]
    names = [str(n) for n in names]
    if top > len(names):
        raise ValueError(f"level code {top - 1} has no name (got {len(names)} names)")
    return codes, names


def single_category_labels(categories: Any) -> np.ndarray:
    """Class label per object from a membership matrix: the category of objects in exactly one, else -1.

    Args:
        categories: (N, K) 0/1 membership (e.g. ``load_things().categories``).
    """
    c = np.asarray(categories) != 0
    if c.ndim != 2:
        raise ValueError(f"categories must be 2-D (N, K), got shape {c.shape}")
    return np.where(c.sum(1) == 1, c.argmax(1), -1).astype(np.int64)
