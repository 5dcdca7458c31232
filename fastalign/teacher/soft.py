"""Soft targets for uncertainty distillation: per-triplet human choice distributions.

Three sources:

- repeated human responses to the same object set (in any order), aggregated
  by ``choice_distributions`` (``fastalign.common.choices``; the evaluation uses
  the same function);
- a human similarity model's probabilities (e.g. softmax of SPoSE-49 dot
  products), from ``model_targets``;
- a (k, 3) table of probabilities aligned with the training triplets.

Targets are in pair order ``[p01, p02, p12]`` of the returned triplet rows:
``p01`` = P(item 2 is the odd one out), ``p02`` = P(item 1), ``p12`` = P(item 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from ..common.choices import choice_distributions
from ..io.resolve import is_bundled, resolve_features
from ..ops import odd_one_out_probs

__all__ = ["SOFT_TARGET_SOURCES", "SoftTargets", "choice_distributions", "model_targets", "soft_targets"]

# The bare names ``--soft-targets`` has always taken (``things:spose49`` means the same as ``spose49``).
SOFT_TARGET_SOURCES = ("spose49", "repeats")
_SPOSE = "things:spose49"


def model_targets(
    embedding: np.ndarray,
    triplets: np.ndarray,
    temperature: float = 1.0,
    backend: Optional[str] = None,
) -> np.ndarray:
    """``softmax(dot / temperature)`` of a human similarity embedding, (B, 3) float32.

    Args:
        embedding: (N, d) e.g. SPoSE-49 (``load_things().features["spose49"]``).
        triplets: (B, 3) indices into ``embedding``.
        temperature: softmax temperature > 0.
        backend: triplet-op backend.
    """
    e = torch.as_tensor(np.asarray(embedding, dtype=np.float32))
    t = torch.as_tensor(np.asarray(triplets, dtype=np.int64))
    with torch.no_grad():
        return odd_one_out_probs(e, t, temperature=temperature, backend=backend).numpy()


@dataclass
class SoftTargets:
    """Soft targets for the train and validation triplets.

    ``repeats`` re-aggregates the triplets (one row per object set), so the
    triplets the soft fit trains and validates on are part of the result.

    Attributes:
        source: ``repeats``, ``spose49``, ``probs:SPEC`` or ``embedding:SPEC``.
        train, train_targets: (k, 3) triplets and their (k, 3) target distributions.
        val, val_targets: validation triplets and their targets (None: hard validation choices).
        info: counts worth reporting (object sets and how many were repeated, for ``repeats``).
    """

    source: str
    train: np.ndarray
    train_targets: np.ndarray
    val: np.ndarray
    val_targets: Optional[np.ndarray]
    info: Dict[str, Any] = field(default_factory=dict)


def _is_probability_table(arr: np.ndarray, k: int) -> bool:
    return arr.shape == (k, 3) and bool(np.allclose(arr.sum(1), 1.0, atol=1e-4)) and bool((arr >= 0).all())


def soft_targets(spec: str, n_objects: int, train: np.ndarray, val: np.ndarray,
                 backend: Optional[str] = None) -> SoftTargets:
    """Build the soft targets that ``spec`` names for the given train and validation triplets.

    Args:
        spec: ``repeats`` (choice distributions of repeated triplets), ``spose49`` /
            ``things:spose49`` (bundled SPoSE-49 probabilities), or ``things:KEY`` / a file holding
            either (k, 3) probabilities aligned with ``train`` or an (N, d) embedding whose dot
            products give the targets.
        n_objects: N, the feature rows the triplets index into.
        train, val: (k, 3) triplets, column 2 the odd one out.
        backend: triplet-op backend for the embedding softmaxes.
    """
    spec = str(spec)
    if spec == "repeats":
        return _repeats(train, val)
    if spec in ("spose49", _SPOSE):
        emb = resolve_features(_SPOSE)
        if emb.shape[0] != n_objects:
            raise ValueError(f"soft targets {spec}: need features of the {emb.shape[0]} THINGS objects, "
                             f"got N={n_objects}")
        return SoftTargets("spose49", train, model_targets(emb, train, backend=backend),
                           val, model_targets(emb, val, backend=backend))
    if not is_bundled(spec) and not Path(spec).is_file():
        raise FileNotFoundError(f"soft targets {spec}: not {', '.join(SOFT_TARGET_SOURCES)}, things:KEY "
                                "or an existing file")
    arr = resolve_features(spec)
    if _is_probability_table(arr, len(train)):
        # Per-triplet probabilities of the training triplets; validate on hard choices.
        return SoftTargets(f"probs:{spec}", train, arr.astype(np.float64), val, None)
    if arr.shape[0] != n_objects:
        raise ValueError(
            f"soft targets {spec}: shape {arr.shape} is neither ({len(train)}, 3) probabilities for the "
            f"triplets nor an embedding with one row per feature row (N={n_objects})"
        )
    return SoftTargets(f"embedding:{spec}", train, model_targets(arr, train, backend=backend),
                       val, model_targets(arr, val, backend=backend))


def _repeats(train: np.ndarray, val: np.ndarray) -> SoftTargets:
    tu, tp, tc = choice_distributions(train)
    vu, vp, vc = choice_distributions(val)
    return SoftTargets("repeats", tu, tp, vu, vp, {
        "train_sets": int(len(tu)), "train_sets_repeated": int((tc > 1).sum()),
        "val_sets": int(len(vu)), "val_sets_repeated": int((vc > 1).sum()),
    })
