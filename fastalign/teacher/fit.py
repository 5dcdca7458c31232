"""Fit the teacher transform fast: full-batch L-BFGS, early stopping, CV over lambda.

Why it is fast: the N feature rows are transformed once per objective
evaluation (one GEMM), the triplet loss and its gradient w.r.t. the N
transformed rows come from the fused triplet op, and the gradient reaches W
through one more GEMM. Full-batch L-BFGS with a strong-Wolfe line search needs
tens of evaluations where a minibatch Adam loop needs thousands of steps.
The validation loss is read off the same transformed rows at every evaluation,
so early stopping costs one extra fused forward over the validation triplets.

The jobs live in their own modules: ``inputs`` (checking), ``problems`` (the
split and folds), ``select`` (the search and the refit), ``train`` (one fit
with early stopping); this module puts them in order.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, Optional, Tuple

from ..common.progress import Progress
from .inputs import FitStart, check_fit_inputs
from .options import DEFAULT_LAMBDAS, OPTIMIZERS, FitConfig
from .problems import build_problems
from .results import CandidateResult, FitReport
from .select import refit, search_grid, select
from .train import train_one
from .transform import AffineTransform

__all__ = ["DEFAULT_LAMBDAS", "OPTIMIZERS", "CandidateResult", "FitConfig", "FitReport", "FitStart",
           "fit_transform", "train_one"]


def fit_transform(
    features,
    triplets,
    *,
    config: Optional[FitConfig] = None,
    val_triplets=None,
    soft_targets=None,
    val_soft_targets=None,
    local_features=None,
    init: Optional[AffineTransform] = None,
    **overrides: Any,
) -> Tuple[AffineTransform, FitReport]:
    """Fit ``z = ((x - mean) / std) @ W + b`` to human odd-one-out triplets.

    Args:
        features: (N, D) features (numpy or tensor).
        triplets: (k, 3) training triplets, column 2 the odd one out.
        config: a ``FitConfig``; keyword ``overrides`` replace its fields
            (e.g. ``lambdas=(0.1,)``, ``folds=3``, ``split="object"``).
        val_triplets: optional held-out validation triplets; without them
            ``val_fraction`` of ``triplets`` (or of the objects) is held out.
        soft_targets: optional (k, 3) per-triplet choice distributions
            ``[p01, p02, p12]``; then the triplet term is KL(target || model).
        val_soft_targets: optional targets for ``val_triplets`` (the validation
            loss is the hard NLL of the validation choices when missing).
        local_features: optional (M, D) unlabelled features; enables the gLocal
            local term and the search over ``alphas`` and ``taus``.
        init: optional transform to start every fit from (warm start); its
            mean/std are kept and its D must match the features.

    Returns ``(transform, report)``: the model with the lowest held-out loss
    (refit on the final split when ``folds >= 2``) and a ``FitReport``.
    """
    cfg = FitConfig(**{**asdict(config or FitConfig()), **overrides})
    cfg.validate()
    inputs = check_fit_inputs(features, triplets, cfg, val_triplets=val_triplets, soft_targets=soft_targets,
                              val_soft_targets=val_soft_targets, local_features=local_features, init=init)
    local = inputs.local_x is not None
    grid = search_grid(cfg, local)
    problems = build_problems(inputs, cfg)
    start = time.perf_counter()
    fits = len(grid) * len(problems.search) + (1 if cfg.folds > 1 else 0)
    with Progress(fits, "fit-teacher", cfg.progress, unit="fit") as bar:
        found = select(grid, problems.search, cfg, inputs.start, bar, local)
        model, info = found.model, found.info
        if cfg.folds > 1:
            model, info = refit(problems.final, found.chosen, cfg, inputs.start, bar)
    report = FitReport(
        candidates=found.candidates,
        chosen={"lam": found.chosen.lam, "alpha": found.chosen.alpha, "tau": found.chosen.tau},
        final=info,
        n_train=int(problems.final.train.shape[0]),
        n_val=int(problems.n_val),
        n_dropped=problems.dropped,
        split=cfg.split if inputs.val_triplets is None else "given",
        folds=int(cfg.folds),
        optimizer=cfg.optimizer,
        reg=cfg.reg,
        loss="kl" if inputs.soft is not None else "hard",
        seconds=time.perf_counter() - start,
        config={k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
    )
    return model, report
