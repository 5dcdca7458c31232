"""Options of the teacher fit (``fit_transform``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from .objective import ObjectiveConfig
from .split import SPLITS

__all__ = ["DEFAULT_LAMBDAS", "OPTIMIZERS", "FitConfig"]

OPTIMIZERS = ("lbfgs", "adam")
DEFAULT_LAMBDAS = (1e-2, 1e-1, 1.0)


@dataclass
class FitConfig:
    """Options of ``fit_transform``.

    Attributes:
        lambdas: regulariser weights to search.
        reg: "identity" (``||W - mean(diag W) I||_F^2``) or "l2".
        alphas: local-term weights to search (used only with local features).
        taus: local-term temperatures to search (used only with local features).
        val_fraction: share held out for validation when no ``val_triplets`` are given.
        split: "triplet" or "object" (object-disjoint) for the train/validation split and folds.
        folds: 1 = one train/validation split; k >= 2 = k-fold CV to choose the
            hyper-parameters, then one refit of the winner.
        optimizer: "lbfgs" (full batch, strong Wolfe) or "adam".
        max_iter: L-BFGS iterations (at most 1.25x as many evaluations) or Adam epochs per fit.
        patience: stop after this many objective evaluations (L-BFGS) or epochs (Adam)
            without a lower validation loss.
        min_delta: an improvement must lower the validation loss by more than this.
        lr: learning rate (L-BFGS step scale 1.0; Adam default 1e-3 is set when lr is None).
        batch_size: Adam minibatch size in triplets (None = full batch).
        history_size: L-BFGS memory.
        init_scale: "auto" starts each fit from the best scaled identity ``c I``
            (found by a 1-D search on the training loss; free under the identity
            regulariser, it saves most of the iterations L-BFGS spends on the
            overall scale); "glocal" starts from gLocal's ``1e-3 I``.
        per_dim: standardise per dimension instead of gLocal's one scalar mean/std.
        dim_out: output dimension D' (default D).
        bias: learn a bias.
        local_batch: rows of the unlabelled features used by the local term.
        seed: seed for splits, folds and the local batch.
        backend: triplet-op backend (None = auto).
        dtype: "float32" or "float64" for the fit.
        progress: show a progress bar over the fits (stderr).
    """

    lambdas: Sequence[float] = DEFAULT_LAMBDAS
    reg: str = "identity"
    alphas: Sequence[float] = (0.25,)
    taus: Sequence[float] = (0.1,)
    val_fraction: float = 0.1
    split: str = "triplet"
    folds: int = 1
    optimizer: str = "lbfgs"
    max_iter: int = 300
    patience: int = 10
    min_delta: float = 1e-5
    lr: Optional[float] = None
    batch_size: Optional[int] = None
    history_size: int = 20
    init_scale: str = "auto"
    per_dim: bool = False
    dim_out: Optional[int] = None
    bias: bool = True
    local_batch: int = 1024
    seed: int = 0
    backend: Optional[str] = None
    dtype: str = "float32"
    progress: bool = True

    def validate(self) -> None:
        """Raise ValueError for an option out of range."""
        if len(self.lambdas) == 0:
            raise ValueError("lambdas must list at least one value")
        for lam in self.lambdas:
            ObjectiveConfig(lam=float(lam), reg=self.reg)
        for a in self.alphas:
            ObjectiveConfig(alpha=float(a))
        for t in self.taus:
            ObjectiveConfig(tau=float(t))
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {self.split!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        if not (0.0 < self.val_fraction < 1.0):
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        if int(self.folds) < 1:
            raise ValueError(f"folds must be >= 1, got {self.folds!r}")
        if self.max_iter < 1 or self.patience < 1:
            raise ValueError("max_iter and patience must be >= 1")
        if self.init_scale not in ("auto", "glocal"):
            raise ValueError(f"init_scale must be 'auto' or 'glocal', got {self.init_scale!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size!r}")
