"""The dense teacher fit: KL to a human similarity model's choice distributions on M sampled
triplets (optionally plus human hard triplets), lambda chosen by the NLL of held-out human choices.

With plentiful soft triplets no cross-validation folds are needed:

- a validation share of the sampled triplets early-stops every fit (its KL);
- a validation split of the *training-side* human triplets chooses lambda (their NLL at T = 1),
  so the choice is made on human data, never on the held-out evaluation triplets;
- lambdas are fitted from the largest down, each warm-started from the previous fit (an
  extension above the grid starts cold: its fit would climb the soft-validation KL);
- when the best lambda is at an edge of the grid, the grid is extended in that direction
  (``max_extensions`` times at most), so the reported optimum is bracketed or says it is not.

Every evaluation transforms the N rows once (one GEMM) and reads the triplet KL off the
N x N similarity matrix (``pairs``) or from the fused kernel, full batch, L-BFGS.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..common.jsonsafe import json_safe
from ..common.progress import Progress
from .calibrate import calibrate_temperature, uncertainty_metrics
from .dense import DenseTargets
from .inputs import FitStart
from .objective import ObjectiveConfig, triplet_term
from .options import FitConfig
from .pairs import PairKL, use_pairs
from .problems import Problem
from .split import train_val_split
from .train import train_one
from .transform import AffineTransform

__all__ = ["DEFAULT_DENSE_LAMBDAS", "DenseCandidate", "DenseFitConfig", "DenseFitReport", "fit_dense",
           "next_lambda"]

DEFAULT_DENSE_LAMBDAS = (1e-5, 1e-4, 1e-3)


@dataclass
class DenseFitConfig:
    """Options of ``fit_dense``.

    Attributes:
        lambdas: the initial grid of regulariser weights (extended at an edge, see ``max_extensions``).
        max_extensions: how many times the grid may grow past an edge holding the best lambda.
        extension_factor: each extension multiplies (or divides) the edge lambda by this.
        human_weight: weight of the hard NLL of the training-side human triplets added to the KL (0 = KL only).
        human_val_fraction: share of the training-side human triplets held out to choose lambda.
        loss: "auto", "pairs" (N x N similarity matrix) or "fused" (``fastalign.triplet_distill_loss``).
        max_iter: L-BFGS iterations per lambda (evaluations at most 1.25x as many).
        patience: evaluations without a lower soft-validation KL before a fit stops.
        history_size: L-BFGS memory.
        reg: "identity" or "l2" (as ``FitConfig.reg``).
        per_dim, bias: as ``FitConfig``.
        seed: seed of the human validation split.
        backend: triplet-op backend of the fused terms.
        progress: progress bar over the fits.
    """

    lambdas: Sequence[float] = DEFAULT_DENSE_LAMBDAS
    max_extensions: int = 2
    extension_factor: float = 10.0
    human_weight: float = 0.0
    human_val_fraction: float = 0.1
    loss: str = "auto"
    max_iter: int = 30
    patience: int = 8
    history_size: int = 20
    reg: str = "identity"
    per_dim: bool = False
    bias: bool = True
    seed: int = 0
    backend: Optional[str] = None
    progress: bool = True

    def validate(self) -> None:
        """Raise ValueError (one line) for an option out of range."""
        if not self.lambdas or any(not (float(v) >= 0) for v in self.lambdas):
            raise ValueError(f"dense lambdas must be a non-empty list of values >= 0, got {list(self.lambdas)}")
        if self.max_extensions < 0 or not (self.extension_factor > 1):
            raise ValueError("max_extensions must be >= 0 and extension_factor > 1")
        if not (self.human_weight >= 0):
            raise ValueError(f"human_weight must be >= 0, got {self.human_weight!r}")
        if not (0.0 < self.human_val_fraction < 1.0):
            raise ValueError(f"human_val_fraction must be in (0, 1), got {self.human_val_fraction!r}")
        if self.loss not in ("auto", "pairs", "fused"):
            raise ValueError(f"loss must be 'auto', 'pairs' or 'fused', got {self.loss!r}")

    def fit_config(self) -> FitConfig:
        """The ``FitConfig`` of one L-BFGS fit (``train_one``)."""
        return FitConfig(lambdas=(float(self.lambdas[0]),), reg=self.reg, max_iter=self.max_iter,
                         patience=self.patience, history_size=self.history_size, per_dim=self.per_dim,
                         bias=self.bias, seed=self.seed, backend=self.backend, progress=False)


@dataclass
class DenseCandidate:
    """One lambda: the soft-validation KL that stopped it and the human validation numbers that choose."""

    lam: float
    val_kl: float
    human_val_nll: float
    human_val_accuracy: float
    evaluations: int
    seconds: float
    extension: bool = False

    # The lambda-search figure reads these two names.
    @property
    def val_loss(self) -> float:
        return self.human_val_nll

    @property
    def val_accuracy(self) -> float:
        return self.human_val_accuracy


@dataclass
class DenseFitReport:
    """What ``fit_dense`` did (``to_dict()`` is JSON-able and reads like a ``FitReport`` for the plots)."""

    candidates: List[DenseCandidate]
    chosen: Dict[str, float]
    selection: str
    extensions: List[str]
    bracketed: bool
    calibration: Dict[str, Any]
    n_soft_train: int
    n_soft_val: int
    n_human_train: int
    n_human_val: int
    loss: str
    seconds: float
    config: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        out = json_safe(self)
        out["candidates"] = [{**json_safe(c), "val_loss": c.val_loss, "val_accuracy": c.val_accuracy}
                             for c in self.candidates]
        out["folds"] = 1
        return out


def next_lambda(lams: Sequence[float], best: int, factor: float) -> Optional[float]:
    """The lambda that extends the grid past the edge holding the best one, or None when bracketed.

    Args:
        lams: the grid so far, sorted ascending.
        best: index of the best lambda in ``lams``.
        factor: ratio of the new lambda to the edge one (> 1).

    An optimum at lambda = 0 (the lower edge) cannot be extended further down.
    """
    if len(lams) < 2 and lams[0] == 0:
        return None
    if best == len(lams) - 1:
        return float(lams[-1]) * factor if lams[-1] > 0 else 1e-6
    if best == 0 and lams[0] > 0:
        return float(lams[0]) / factor
    return None


def _problem(x: torch.Tensor, targets: DenseTargets, human: Optional[torch.Tensor], cfg: DenseFitConfig) -> Problem:
    train = torch.from_numpy(np.ascontiguousarray(targets.train, dtype=np.int64))
    target = torch.from_numpy(np.ascontiguousarray(targets.train_targets)).to(x.dtype)
    pairs = None
    if cfg.loss == "pairs" or (cfg.loss == "auto" and use_pairs(x.shape[0], train.shape[0])):
        pairs = PairKL.build(train, target, x.shape[0], x.dtype)
    return Problem(x, train, torch.from_numpy(np.ascontiguousarray(targets.val, dtype=np.int64)), target,
                   torch.from_numpy(np.ascontiguousarray(targets.val_targets)).to(x.dtype), None,
                   train_pairs=pairs, human=human if cfg.human_weight > 0 else None, human_weight=cfg.human_weight)


def _score(lam: float, data: Problem, fit_cfg: FitConfig, start: FitStart, human_val: torch.Tensor,
           bar: Progress, extension: bool) -> Tuple[DenseCandidate, AffineTransform]:
    t0 = time.perf_counter()
    model, info = train_one(data, ObjectiveConfig(lam, fit_cfg.reg), fit_cfg, start,
                            on_iter=lambda it, v: bar.note(f"lambda={lam:g} eval {it} soft val KL {v:.4f}"))
    with torch.no_grad():
        m = uncertainty_metrics(model(data.x), human_val, backend=fit_cfg.backend)
    cand = DenseCandidate(lam, float(info["val_loss"]), m.nll, m.accuracy, int(info["evaluations"]),
                          time.perf_counter() - t0, extension)
    bar.note(f"lambda={lam:g}: human val NLL {m.nll:.4f} acc {100 * m.accuracy:.2f}% "
             f"({cand.evaluations} evals, {cand.seconds:.1f} s)")
    bar.update(1)
    return cand, model


def _search(data: Problem, cfg: DenseFitConfig, stats: AffineTransform, human_val: torch.Tensor,
            bar: Progress) -> Tuple[List[DenseCandidate], Dict[float, AffineTransform], List[str]]:
    """Fit the grid from the largest lambda down (warm starts), then extend it at an edge holding the best."""
    fit_cfg = cfg.fit_config()
    models: Dict[float, AffineTransform] = {}
    cands: Dict[float, DenseCandidate] = {}
    prev: Optional[AffineTransform] = None
    for lam in sorted({float(v) for v in cfg.lambdas}, reverse=True):
        start = FitStart(stats) if prev is None else FitStart(prev, warm=True)
        cands[lam], models[lam] = _score(lam, data, fit_cfg, start, human_val, bar, False)
        prev = models[lam]
    notes: List[str] = []
    for _ in range(cfg.max_extensions):
        lams = sorted(cands)
        best = min(range(len(lams)), key=lambda i: cands[lams[i]].human_val_nll)
        new = next_lambda(lams, best, cfg.extension_factor)
        if new is None:
            break
        edge = lams[best]
        notes.append(f"best lambda {edge:g} was at the {'upper' if new > edge else 'lower'} edge: "
                     f"extended the grid to {new:g}")
        bar.note(notes[-1])
        # Downward, the weaker-regularised fit starts from its neighbour (the soft-validation KL falls
        # along that path). Upward it would rise, so early stopping would keep the neighbour's state:
        # a stronger lambda starts from the cold start instead.
        start = FitStart(models[edge], warm=True) if new < edge else FitStart(stats)
        cands[new], models[new] = _score(new, data, fit_cfg, start, human_val, bar, True)
    return [cands[k] for k in sorted(cands)], models, notes


def _calibration(model: AffineTransform, data: Problem, human_val: torch.Tensor,
                 backend: Optional[str]) -> Dict[str, Any]:
    """T fitted on the human validation split, and the human NLL and soft-validation KL at T = 1 and at T."""
    with torch.no_grad():
        z = model(data.x)
        cal = calibrate_temperature(z, human_val, backend=backend)

        def kl(temp: float) -> float:
            return float(triplet_term(z / temp ** 0.5, data.val, data.val_target, backend))

        return {"temperature": cal.temperature, "fitted_temperature": cal.fitted_temperature,
                "human_nll_before": cal.nll_before, "human_nll_after": cal.nll_after,
                "soft_kl_before": kl(1.0), "soft_kl_after": kl(cal.temperature), "n": cal.n,
                "on": "the validation split of the training-side human triplets"}


def _human_split(human: np.ndarray, n: int, cfg: DenseFitConfig) -> Tuple[np.ndarray, np.ndarray]:
    if len(human) < 2:
        raise ValueError(f"the dense fit needs at least 2 training-side human triplets to choose lambda, got {len(human)}")
    sp = train_val_split(human, cfg.human_val_fraction, "triplet", n, cfg.seed)
    return human[sp.train], human[sp.val]


def fit_dense(features: Any, targets: DenseTargets, human_triplets: Any,
              config: Optional[DenseFitConfig] = None, **overrides: Any) -> Tuple[AffineTransform, DenseFitReport]:
    """Fit the teacher transform to dense soft targets; lambda chosen by held-out human NLL.

    Args:
        features: (N, D) features (numpy or tensor); fitted in float32.
        targets: sampled triplets and their targets (``dense_targets``).
        human_triplets: (H, 3) training-side human triplets, column 2 the odd one out; a
            ``human_val_fraction`` share chooses lambda (and calibrates the reported T), the rest
            joins the loss when ``human_weight > 0``. Never pass the held-out evaluation triplets.
        config: a ``DenseFitConfig``; keyword ``overrides`` replace its fields.

    Returns ``(transform, report)``: the chosen lambda's fit (temperature left at 1) and a report.
    """
    cfg = replace(config or DenseFitConfig(), **overrides)
    cfg.validate()
    x = torch.tensor(np.asarray(features.detach().numpy() if isinstance(features, torch.Tensor) else features,
                                dtype=np.float32))
    human = np.asarray(human_triplets, dtype=np.int64)
    h_train, h_val = _human_split(human, x.shape[0], cfg)
    human_val = torch.from_numpy(h_val)
    data = _problem(x, targets, torch.from_numpy(h_train), cfg)
    stats = AffineTransform.from_features(x, per_dim=cfg.per_dim, bias=cfg.bias)
    t0 = time.perf_counter()
    with Progress(len(set(cfg.lambdas)) + cfg.max_extensions, "fit-teacher (dense)", cfg.progress, unit="fit") as bar:
        cands, models, notes = _search(data, cfg, stats, human_val, bar)
    best = min(cands, key=lambda c: c.human_val_nll)
    model = models[best.lam]
    lams = [c.lam for c in cands]
    bracketed = 0 < lams.index(best.lam) < len(lams) - 1 or (best.lam == 0 and len(lams) > 1)
    report = DenseFitReport(
        candidates=cands, chosen={"lam": best.lam, "alpha": 0.0, "tau": 1.0},
        selection=f"lambda chosen by the NLL (T = 1) of {len(h_val)} training-side validation human triplets "
                  f"(a {cfg.human_val_fraction:g} split); each fit early-stopped on the KL of "
                  f"{len(targets.val)} validation soft triplets",
        extensions=notes, bracketed=bool(bracketed),
        calibration=_calibration(model, data, human_val, cfg.backend),
        n_soft_train=int(len(targets.train)), n_soft_val=int(len(targets.val)),
        n_human_train=int(len(h_train)), n_human_val=int(len(h_val)),
        loss="kl (pairs)" if data.train_pairs is not None else "kl (fused)",
        seconds=time.perf_counter() - t0,
        config={k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
    )
    return model, report
