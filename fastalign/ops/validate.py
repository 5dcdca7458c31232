"""Input validation, done once in ``ops`` and never inside a kernel.

Two kinds of check:

- *static* checks (ranks, shapes, dtypes, devices, option values) look only at
  metadata, so they cost nothing and are traced away by ``torch.compile``;
- *data* checks (index range, probability rows, finiteness) read values; they
  run inside the registered custom op, where ``torch.compile`` treats them as
  opaque, so they never cause a graph break.
"""

from __future__ import annotations

import numbers
from typing import Optional

import torch

FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)
REDUCTIONS = ("mean", "sum", "none")
SIMILARITIES = ("dot", "cosine")
DIVERGENCES = ("kl", "jsd")

# Row-sum tolerance for target probabilities, per dtype: a few ulps times 3 terms, and never
# below 1e-6, so float32-rounded probabilities passed as float64 are accepted (three float32
# roundings move a sum by at most ~2e-7).
PROB_SUM_TOL = {
    torch.float64: 1e-6,
    torch.float32: 1e-4,
    torch.float16: 5e-3,
    torch.bfloat16: 2e-2,
}


def check_emb(emb) -> None:
    if not isinstance(emb, torch.Tensor):
        raise TypeError(f"emb must be a torch.Tensor, got {type(emb).__name__}")
    if emb.dim() != 2:
        raise ValueError(f"emb must be 2-D (N, D), got shape {tuple(emb.shape)}")
    if emb.dtype not in FLOAT_DTYPES:
        raise TypeError(f"emb must be float64/float32/float16/bfloat16, got {emb.dtype}")
    if emb.shape[1] == 0:
        raise ValueError("emb must have D >= 1 columns")


def check_triplets(triplets, emb: torch.Tensor) -> None:
    if not isinstance(triplets, torch.Tensor):
        raise TypeError(f"triplets must be a torch.Tensor, got {type(triplets).__name__}")
    if triplets.dim() != 2 or triplets.shape[1] != 3:
        raise ValueError(f"triplets must have shape (B, 3), got {tuple(triplets.shape)}")
    if triplets.dtype not in INDEX_DTYPES:
        raise TypeError(f"triplets must be int32 or int64, got {triplets.dtype}")
    if triplets.device != emb.device:
        raise ValueError(f"emb is on {emb.device} but triplets are on {triplets.device}; move both to one device")


def check_choice(name: str, value, b: int, device: torch.device) -> None:
    if value is None:
        return
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.shape != (b,):
        raise ValueError(f"{name} must have shape ({b},), got {tuple(value.shape)}")
    if value.dtype not in INDEX_DTYPES + (torch.uint8, torch.int8, torch.int16):
        raise TypeError(f"{name} must be an integer tensor, got {value.dtype}")
    if value.device != device:
        raise ValueError(f"{name} is on {value.device}, expected {device}")


def check_rows(name: str, value, b: int, device: torch.device, width: Optional[int]) -> None:
    if value is None:
        return
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    shape = (b, width) if width else (b,)
    if tuple(value.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(value.shape)}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {value.dtype}")
    if value.device != device:
        raise ValueError(f"{name} is on {value.device}, expected {device}")


def check_option(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def check_temperature(name: str, value) -> float:
    """A temperature as a Python float: a real number, finite and > 0.

    Tensors are refused rather than read with ``float()``: that would silently
    detach a learnable temperature and, under ``torch.compile``, fail on a
    data-dependent guard. Strings and bools are refused too.
    """
    if isinstance(value, torch.Tensor):
        raise TypeError(
            f"{name} must be a Python number, got a tensor; the fused kernels take a fixed temperature "
            f"(pass float(t) for a fixed one; for a learnable one with dot similarity, scale emb by a "
            f"learnable factor c instead: (c * emb) gives similarities c^2 * s)"
        )
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive number, got {value!r}")
    t = float(value)
    if not t > 0 or t == float("inf"):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return t


# ----------------------------------------------------------------- data checks


def check_index_range(triplets: torch.Tensor, n: int) -> None:
    if triplets.numel() == 0:
        return
    bad = ((triplets < 0) | (triplets >= n)).any(dim=1)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        values = triplets[row].tolist()
        raise ValueError(f"triplets row {row} = {values} has an index outside [0, {n}) (emb has N={n} rows)")


def check_choice_range(name: str, choice: torch.Tensor) -> None:
    if choice.numel() == 0:
        return
    bad = (choice < 0) | (choice > 2)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"{name}[{row}] = {int(choice[row])} is not a triplet position in {{0, 1, 2}}")


def check_sims(name: str, sims: torch.Tensor) -> None:
    """Teacher similarities: -inf is a similarity (probability 0), NaN and +inf are not."""
    if sims.numel() == 0:
        return
    bad = (torch.isnan(sims) | (sims == float("inf"))).any(1)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"{name} row {row} = {sims[row].tolist()} has a NaN or +Inf")
    if bool((sims == float("-inf")).all(1).any()):
        row = int((sims == float("-inf")).all(1).nonzero()[0, 0])
        raise ValueError(f"{name} row {row} is all -Inf: no pair has a probability")


def check_probs(target: torch.Tensor, source_dtype: torch.dtype) -> None:
    if target.numel() == 0:
        return
    bad = torch.isnan(target).any(1) | (target < 0).any(1)
    tol = PROB_SUM_TOL.get(source_dtype, 1e-4)
    bad |= (target.sum(1) - 1).abs() > tol
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"target_probs row {row} = {target[row].tolist()} is not a probability vector "
            f"(entries >= 0, no NaN, sum 1 within {tol})"
        )


def check_weights(weight: torch.Tensor) -> None:
    """Per-triplet weights must be finite and >= 0: a NaN or negative weight would give a NaN
    or negative loss that looks like a training signal."""
    if weight.numel() == 0:
        return
    bad = ~torch.isfinite(weight) | (weight < 0)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"weight[{row}] = {float(weight[row])} is not a finite, non-negative triplet weight")


def check_finite(name: str, value: torch.Tensor) -> None:
    if value.numel() and not bool(torch.isfinite(value).all()):
        row = int((~torch.isfinite(value)).reshape(value.shape[0], -1).any(1).nonzero()[0, 0])
        raise ValueError(f"{name} has a NaN or Inf in row {row}")


def check_finite_sims(sims: torch.Tensor, triplets: torch.Tensor) -> None:
    """Similarities that decide a triplet must be finite: NaN and Inf come from NaN/Inf embeddings."""
    if sims.numel() == 0:
        return
    bad = ~torch.isfinite(sims).all(1)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"triplets row {row} = {triplets[row].tolist()} has a NaN or Inf similarity "
            f"({sims[row].tolist()}): emb has NaN or Inf in one of those rows"
        )
