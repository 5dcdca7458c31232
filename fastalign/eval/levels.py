"""Odd-one-out accuracy by abstraction level.

The levels of a triplet (``fine``, ``class_boundary``, ``coarse``, ``mixed``, ``unlabelled``)
come from a category matrix and are defined in ``fastalign.common.category_levels`` (THINGS
category levels); a Levels-style file that gives the level per triplet goes through the same
``accuracy_by_level``. For the Levels dataset itself see ``fastalign.eval.levels_data``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from ..common.category_levels import LEVELS, encode_levels, triplet_levels
from ..common.tensors import as_emb, as_index, as_triplets
from ..ops import odd_one_out_accuracy

__all__ = ["LEVELS", "accuracy_by_level", "encode_levels", "load_level_labels", "triplet_levels"]

def accuracy_by_level(
    emb: Any,
    triplets: Any,
    levels: Any,
    odd: Optional[Any] = None,
    similarity: str = "dot",
    names: Optional[Sequence[str]] = None,
    backend: Optional[str] = None,
) -> Dict[str, Tuple[float, int]]:
    """Odd-one-out accuracy (ties wrong) within each level.

    Args:
        emb: (N, D) embeddings.
        triplets: (B, 3) indices, column 2 the odd one out unless ``odd`` is given.
        levels: (B,) level per triplet: integer codes (e.g. from ``triplet_levels``)
            or strings (a Levels-style file); see ``encode_levels``.
        odd: optional (B,) odd-one-out positions.
        similarity: ``"dot"`` or ``"cosine"``.
        names: names of integer codes (see ``encode_levels``).
        backend: kernel backend.

    Returns ``{level: (accuracy, count)}`` for every level with at least one triplet,
    in code order.
    """
    e = as_emb(emb)
    t = as_triplets(triplets, e.shape[0], e.device)
    codes, level_names = encode_levels(levels, names)
    if codes.shape[0] != t.shape[0]:
        raise ValueError(f"levels has {codes.shape[0]} entries but there are {t.shape[0]} triplets")
    o = None if odd is None else as_index(odd, "odd", e.device)
    correct = odd_one_out_accuracy(e, t, odd=o, similarity=similarity, backend=backend, reduction="none")
    codes = codes.to(correct.device)
    k = len(level_names)
    n = torch.bincount(codes, minlength=k)
    hits = torch.bincount(codes, weights=correct.to(torch.float64), minlength=k)
    return {level_names[i]: (float(hits[i] / n[i]), int(n[i])) for i in range(k) if int(n[i]) > 0}


def load_level_labels(path: str) -> np.ndarray:
    """Read per-triplet level labels: ``.npy`` (1-D ints or strings) or text, one label per line.

    Args:
        path: the file. Blank lines are skipped; labels that all parse as
            non-negative integers are returned as int64, otherwise as strings.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: levels file not found")
    if p.suffix.lower() == ".npy":
        arr = np.load(p, allow_pickle=False)
        if arr.ndim != 1:
            raise ValueError(f"{p}: levels must be a 1-D array, got shape {arr.shape}")
        return arr
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"{p}: no level labels found")
    if all(ln.isdigit() for ln in lines):
        return np.array([int(ln) for ln in lines], dtype=np.int64)
    return np.array(lines)
