"""One teacher fit: a fresh (or warm-started) transform, trained with early stopping.

Full-batch L-BFGS and minibatch Adam share one ``EarlyStopper``: it keeps the
state with the lowest validation loss and says when ``patience`` evaluations
(L-BFGS: objective evaluations; Adam: epochs, one evaluation each) brought no
improvement. The validation loss reuses each evaluation's transformed rows, so
it costs one fused forward over the validation triplets and no extra GEMM.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from ..ops import odd_one_out_accuracy, triplet_similarities
from .inputs import FitStart
from .objective import ObjectiveConfig, objective, triplet_term
from .options import FitConfig
from .problems import Problem
from .search1d import bracket_midpoint
from .transform import INIT_SCALE, AffineTransform

__all__ = ["EarlyStopper", "scale_init", "train_one"]

OnEvaluation = Callable[[int, float], None]  # (evaluations so far, best validation loss)

# Bracket and tolerance of the search over log c for the scaled-identity start.
_LOG_SCALE_BOUNDS = (math.log(1e-4), math.log(10.0))
_LOG_SCALE_TOL = 0.01


def scale_init(t: AffineTransform, data: Problem, cfg: FitConfig) -> None:
    """Start from the best scaled identity ``W = c I`` instead of ``1e-3 I``.

    ``c I`` costs nothing under the identity regulariser, and with it (ignoring
    the tiny initial bias) the similarities are ``c^2`` times those of the
    standardised features, so the training loss as a function of c is the
    hard/KL loss of fixed similarities at temperature ``1 / c^2``: one fused
    similarity pass, then a 1-D search on (B, 3) logits, no GEMM. L-BFGS then
    skips the iterations it would spend finding the overall scale.
    """
    with torch.no_grad():
        xs = t(data.x) / INIT_SCALE  # W = 1e-3 I: undo the scale, keep the standardisation
        if t.bias is not None:
            xs = xs - t.bias / INIT_SCALE
        sims = triplet_similarities(xs, data.train, backend=cfg.backend).double()
        target = None if data.train_target is None else data.train_target.double()

        def loss(log_c: float) -> float:
            logq = torch.log_softmax(sims * math.exp(2.0 * log_c), dim=1)
            # Cross-entropy to the targets has the same minimiser over c as the KL divergence.
            return float(-logq[:, 0].mean() if target is None else -(target * logq).sum(1).mean())

        c = math.exp(bracket_midpoint(loss, *_LOG_SCALE_BOUNDS, tol=_LOG_SCALE_TOL))
        if c > INIT_SCALE:
            t.weight.mul_(c / INIT_SCALE)


class EarlyStopper:
    """Keeps the model state with the lowest validation loss and counts evaluations since.

    Args:
        model: the module whose state is kept.
        patience: evaluations without an improvement after which ``exhausted`` is True.
        min_delta: an improvement must lower the validation loss by more than this.
    """

    def __init__(self, model: torch.nn.Module, patience: int, min_delta: float) -> None:
        self.model, self.patience, self.min_delta = model, patience, min_delta
        self.evaluations = 0
        self.best_loss = math.inf
        self.best_train_loss = math.inf
        self.best_iteration = 0
        self.best_evaluation = 0
        self._best_state = self._snapshot()

    def _snapshot(self) -> Dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def record(self, val_loss: float, train_loss: float, iteration: int) -> None:
        """Count one evaluation; keep the model's state when ``val_loss`` improved."""
        self.evaluations += 1
        if val_loss < self.best_loss - self.min_delta:
            self.best_loss, self.best_train_loss = val_loss, train_loss
            self.best_iteration, self.best_evaluation = iteration, self.evaluations
            self._best_state = self._snapshot()

    @property
    def exhausted(self) -> bool:
        return self.evaluations - self.best_evaluation >= self.patience

    def restore(self) -> None:
        """Load the best state back into the model."""
        self.model.load_state_dict(self._best_state)


def _observe(stopper: EarlyStopper, out: Dict[str, torch.Tensor], data: Problem, cfg: FitConfig,
             iteration: int, on_eval: Optional[OnEvaluation]) -> None:
    """Score one objective evaluation on the validation triplets (reusing its transformed rows)."""
    with torch.no_grad():
        val = float(triplet_term(out["z"].detach(), data.val, data.val_target, cfg.backend))
    stopper.record(val, float(out["total"].detach()), iteration)
    if on_eval is not None:
        on_eval(stopper.evaluations, stopper.best_loss)


class _Stop(Exception):
    """Raised inside the L-BFGS closure when the early stopper is exhausted."""


def _run_lbfgs(t: AffineTransform, data: Problem, obj: ObjectiveConfig, cfg: FitConfig, stopper: EarlyStopper,
               on_eval: Optional[OnEvaluation]) -> Tuple[int, bool]:
    """Full-batch L-BFGS (strong Wolfe); returns (iterations, stopped early)."""
    params = list(t.parameters())
    opt = torch.optim.LBFGS(
        params, lr=cfg.lr or 1.0, max_iter=cfg.max_iter, max_eval=cfg.max_iter * 5 // 4,
        history_size=cfg.history_size, line_search_fn="strong_wolfe", tolerance_grad=1e-12, tolerance_change=1e-12,
    )
    batch = data.batch()

    def iterations() -> int:
        # L-BFGS keeps its iteration count in the (public) state of its first parameter.
        return int(opt.state[params[0]].get("n_iter", 0))

    def closure() -> torch.Tensor:
        opt.zero_grad()
        out = objective(t, batch, obj, cfg.backend)
        out["total"].backward()
        _observe(stopper, out, data, cfg, iterations(), on_eval)
        if stopper.exhausted:
            raise _Stop
        return out["total"]

    # One step() call runs the whole optimisation; early stopping leaves it through an
    # exception from the closure (the optimiser is discarded, the stopper has the best state).
    try:
        opt.step(closure)
    except _Stop:
        return iterations(), True
    return iterations(), False


def _run_adam(t: AffineTransform, data: Problem, obj: ObjectiveConfig, cfg: FitConfig, stopper: EarlyStopper,
              on_eval: Optional[OnEvaluation]) -> Tuple[int, bool]:
    """Minibatch Adam, one validation evaluation per epoch; returns (epochs, stopped early)."""
    opt = torch.optim.Adam(list(t.parameters()), lr=cfg.lr or 1e-3)
    n = data.train.shape[0]
    bs = n if cfg.batch_size is None else min(cfg.batch_size, n)
    # Seeded with cfg.seed itself (not a derived seed) so that Adam fits reproduce earlier versions.
    gen = torch.Generator().manual_seed(cfg.seed)
    full = data.batch()
    for epoch in range(1, cfg.max_iter + 1):
        perm = torch.randperm(n, generator=gen)
        for s in range(0, n, bs):
            opt.zero_grad()
            out = objective(t, data.batch(perm[s:s + bs]), obj, cfg.backend)
            out["total"].backward()
            opt.step()
        with torch.no_grad():
            _observe(stopper, objective(t, full, obj, cfg.backend), data, cfg, epoch, on_eval)
        if stopper.exhausted:
            return epoch, True
    return cfg.max_iter, False


_RUNNERS = {"lbfgs": _run_lbfgs, "adam": _run_adam}


def train_one(
    data: Problem,
    obj: ObjectiveConfig,
    cfg: FitConfig,
    start: FitStart,
    on_iter: Optional[OnEvaluation] = None,
) -> Tuple[AffineTransform, Dict[str, Any]]:
    """Fit one transform with early stopping; returns the best-validation model and its numbers.

    Args:
        data: the train/validation problem.
        obj: the objective's hyper-parameters (lambda, alpha, tau).
        cfg: the fit options (optimizer, iterations, patience, ...).
        start: the standardisation and, for a warm start, the transform to copy.
        on_iter: called after every validation evaluation with (evaluations, best validation loss).
    """
    t = start.new_transform(data.x, cfg)
    if cfg.init_scale == "auto" and not start.warm:
        scale_init(t, data, cfg)
    stopper = EarlyStopper(t, cfg.patience, cfg.min_delta)
    t0 = time.perf_counter()
    iterations, stopped_early = _RUNNERS[cfg.optimizer](t, data, obj, cfg, stopper, on_iter)
    stopper.restore()
    with torch.no_grad():
        z = t(data.x)
        acc = odd_one_out_accuracy(z, data.val, backend=cfg.backend) if data.val.shape[0] else float("nan")
    info = {
        "train_loss": stopper.best_train_loss,
        "val_loss": stopper.best_loss,
        "val_accuracy": float(acc),
        "iterations": iterations,
        "best_iteration": stopper.best_iteration,
        "evaluations": stopper.evaluations,
        "best_evaluation": stopper.best_evaluation,
        "stopped_early": stopped_early,
        "seconds": time.perf_counter() - t0,
    }
    return t, info
