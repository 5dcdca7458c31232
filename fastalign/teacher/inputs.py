"""Input checking of the teacher fit: features, triplets, soft targets, local features, warm start."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from ..common.seeds import derive_rng
from ..io.features import check_features
from ..io.triplets import check_triplets_fit
from .options import FitConfig
from .transform import AffineTransform

__all__ = ["FitInputs", "FitStart", "check_fit_inputs"]


@dataclass(frozen=True)
class FitStart:
    """What every fit of one search starts from.

    Attributes:
        stats: holds the standardisation (mean, std); for a warm start, the whole transform.
        warm: True when ``stats`` is a warm-start transform to copy rather than gLocal's init.
    """

    stats: AffineTransform
    warm: bool = False

    def new_transform(self, x: torch.Tensor, cfg: FitConfig) -> AffineTransform:
        """A fresh transform at gLocal's init, or an uncalibrated copy of the warm start."""
        if self.warm:
            t = AffineTransform.from_arrays(self.stats.to_arrays())
            t.set_temperature(1.0, calibrated=False)
        else:
            t = AffineTransform(x.shape[1], cfg.dim_out, bias=cfg.bias, mean=self.stats.mean, std=self.stats.std)
        return t.to(x.dtype)


@dataclass
class FitInputs:
    """Checked inputs as tensors of the fit dtype.

    Attributes:
        x: (N, D) features.
        table: (k, 3) training triplets as given (numpy; the splits index it).
        triplets: the same as an int64 tensor.
        soft: optional (k, 3) soft targets.
        val_triplets, val_soft: optional given validation triplets and their targets.
        local_x: optional (M, D) rows of the unlabelled features for the local term.
        start: what every fit starts from.
    """

    x: torch.Tensor
    table: np.ndarray
    triplets: torch.Tensor
    soft: Optional[torch.Tensor]
    val_triplets: Optional[torch.Tensor]
    val_soft: Optional[torch.Tensor]
    local_x: Optional[torch.Tensor]
    start: FitStart


def _numpy(a: Any) -> np.ndarray:
    return np.asarray(a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a)


def _as_tensor(a: Any, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=dtype)  # a copy: inputs may be read-only arrays


def _check_targets(name: str, targets: Any, k: int) -> Optional[np.ndarray]:
    if targets is None:
        return None
    p = np.asarray(targets, dtype=np.float64)
    if p.shape != (k, 3):
        raise ValueError(f"{name} must have shape ({k}, 3) to match the triplets, got {p.shape}")
    bad = ~np.isfinite(p).all(1) | (p < 0).any(1) | (np.abs(p.sum(1) - 1) > 1e-4)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name} row {row} = {p[row].tolist()} is not a probability vector")
    return p


def _check_triplets(name: str, triplets: Any, n: int, integer: bool) -> np.ndarray:
    t = _numpy(triplets)
    if integer and (t.ndim != 2 or t.shape[1] != 3 or t.dtype.kind not in "iu"):
        raise ValueError(f"{name} must be a (k, 3) integer array, got shape {t.shape} dtype {t.dtype}")
    if t.ndim != 2 or t.shape[1] != 3:
        raise ValueError(f"{name} must have shape (k, 3), got {t.shape}")
    check_triplets_fit(t, n, name)
    return t


def _start(init: Optional[AffineTransform], x: np.ndarray, cfg: FitConfig) -> FitStart:
    if init is None:
        return FitStart(AffineTransform.from_features(x, per_dim=cfg.per_dim))
    if not isinstance(init, AffineTransform):
        raise TypeError(f"init must be an AffineTransform, got {type(init).__name__}")
    init.check_input_dim(x.shape[1])
    return FitStart(AffineTransform.from_arrays(init.to_arrays()), warm=True)


def _local_rows(local_features: Any, d: int, cfg: FitConfig, dtype: torch.dtype) -> Optional[torch.Tensor]:
    if local_features is None:
        return None
    lx = check_features(local_features, "local_features")
    if lx.shape[1] != d:
        raise ValueError(f"local_features have D={lx.shape[1]}, features have D={d}")
    take = derive_rng(cfg.seed).permutation(len(lx))[: cfg.local_batch]
    return _as_tensor(lx[np.sort(take)], dtype)


def check_fit_inputs(features: Any, triplets: Any, cfg: FitConfig, *, val_triplets: Any = None,
                     soft_targets: Any = None, val_soft_targets: Any = None, local_features: Any = None,
                     init: Optional[AffineTransform] = None) -> FitInputs:
    """Check every input of ``fit_transform`` (raising ValueError/TypeError naming the first bad row
    or option) and convert it to tensors of ``cfg.dtype``."""
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    x = check_features(_numpy(features))
    n, d = x.shape
    trip = _check_triplets("triplets", triplets, n, integer=True)
    soft = _check_targets("soft_targets", soft_targets, len(trip))
    vtrip = None if val_triplets is None else _check_triplets("val_triplets", val_triplets, n, integer=False)
    vsoft = _check_targets("val_soft_targets", val_soft_targets, 0 if vtrip is None else len(vtrip))
    if vsoft is not None and vtrip is None:
        raise ValueError("val_soft_targets needs val_triplets")
    start = _start(init, x, cfg)
    return FitInputs(
        x=_as_tensor(x, dtype),
        table=trip,
        triplets=_as_tensor(trip, torch.int64),
        soft=None if soft is None else _as_tensor(soft, dtype),
        val_triplets=None if vtrip is None else _as_tensor(vtrip, torch.int64),
        val_soft=None if vsoft is None else _as_tensor(vsoft, dtype),
        local_x=_local_rows(local_features, d, cfg, dtype),
        start=start,
    )
