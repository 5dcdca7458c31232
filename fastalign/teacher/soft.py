"""Soft targets for uncertainty distillation: per-triplet human choice distributions.

Two sources:

- repeated human responses to the same object set (in any order), aggregated
  by ``choice_distributions``;
- a human similarity model's probabilities (e.g. softmax of SPoSE-49 dot
  products), from ``model_targets``.

Targets are in pair order ``[p01, p02, p12]`` of the returned triplet rows:
``p01`` = P(item 2 is the odd one out), ``p02`` = P(item 1), ``p12`` = P(item 0).
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from ..ops import odd_one_out_probs


def choice_distributions(triplets: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Aggregate repeated responses into per-object-set choice distributions.

    Args:
        triplets: (k, 3) responses, column 2 the odd one out chosen by a person.

    Returns:
        ``unique`` (U, 3): each object set once, objects sorted ascending;
        ``probs`` (U, 3) float64 in pair order of ``unique`` (rows sum to 1);
        ``counts`` (U,) number of responses per set.
    """
    t = np.asarray(triplets, dtype=np.int64)
    if t.ndim != 2 or t.shape[1] != 3:
        raise ValueError(f"triplets must have shape (k, 3), got {t.shape}")
    key = np.sort(t, axis=1)
    unique, inverse, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    # Position of the chosen odd object inside the sorted row: 0, 1 or 2.
    pos = (unique[inverse] == t[:, 2:3]).argmax(axis=1)
    # Odd object at sorted position 2 -> pair (0, 1) = column 0; at 1 -> column 1; at 0 -> column 2.
    col = 2 - pos
    hist = np.zeros((len(unique), 3), dtype=np.float64)
    np.add.at(hist, (inverse, col), 1.0)
    return unique, hist / counts[:, None], counts


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
