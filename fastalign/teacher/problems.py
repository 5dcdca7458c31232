"""The train/validation problems of a teacher fit: the final split and the folds that choose the
hyper-parameters (the final split is the only one when ``folds == 1``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch

from .inputs import FitInputs
from .objective import Batch
from .options import FitConfig
from .pairs import PairKL
from .split import Split, kfold_splits, train_val_split

__all__ = ["FitProblems", "Problem", "build_problems"]


@dataclass
class Problem:
    """Tensors of one train/validation problem.

    Attributes:
        x: (N, D) features the triplets index into (fit dtype).
        train, val: (k, 3) int64 triplets, column 2 the odd one out.
        train_target, val_target: optional (k, 3) soft targets (None: hard choices).
        local_x: optional (M, D) unlabelled features for the local term.
        train_pairs: optional ``PairKL`` of ``train`` and ``train_target`` (full-batch dense fits).
        human, human_weight: optional human hard triplets added to the training loss with this weight.
    """

    x: torch.Tensor
    train: torch.Tensor
    val: torch.Tensor
    train_target: Optional[torch.Tensor]
    val_target: Optional[torch.Tensor]
    local_x: Optional[torch.Tensor]
    train_pairs: Optional[PairKL] = None
    human: Optional[torch.Tensor] = None
    human_weight: float = 0.0

    def batch(self, rows: Optional[torch.Tensor] = None) -> Batch:
        """The training objective's data: all training triplets, or the ``rows`` of a minibatch."""
        if rows is None:
            return Batch(self.x, self.train, self.train_target, self.local_x, self.train_pairs, self.human,
                         self.human_weight)
        target = None if self.train_target is None else self.train_target[rows]
        return Batch(self.x, self.train[rows], target, self.local_x, None, self.human, self.human_weight)


@dataclass
class FitProblems:
    """The final problem (refit and report), the problems the search scores, and the split's counts."""

    final: Problem
    search: List[Problem]
    n_val: int
    dropped: int


def _problem(inputs: FitInputs, train_idx: np.ndarray, val: torch.Tensor,
             val_target: Optional[torch.Tensor]) -> Problem:
    if len(train_idx) == 0 or val.shape[0] == 0:
        raise ValueError(
            f"split left {len(train_idx)} training and {val.shape[0]} validation triplets; "
            "use more triplets, a different val_fraction or split='triplet'"
        )
    ti = torch.as_tensor(train_idx, dtype=torch.int64)
    soft = inputs.soft
    return Problem(inputs.x, inputs.triplets[ti], val, None if soft is None else soft[ti], val_target, inputs.local_x)


def _from_split(inputs: FitInputs, sp: Split) -> Problem:
    vi = torch.as_tensor(sp.val, dtype=torch.int64)
    return _problem(inputs, sp.train, inputs.triplets[vi], None if inputs.soft is None else inputs.soft[vi])


def build_problems(inputs: FitInputs, cfg: FitConfig) -> FitProblems:
    """The final split (given validation triplets, or ``val_fraction`` held out) and the CV folds."""
    table, n = inputs.table, inputs.x.shape[0]
    if inputs.val_triplets is not None:
        final = _problem(inputs, np.arange(len(table)), inputs.val_triplets, inputs.val_soft)
        n_val, dropped = int(inputs.val_triplets.shape[0]), 0
    else:
        sp = train_val_split(table, cfg.val_fraction, cfg.split, n, cfg.seed)
        final = _from_split(inputs, sp)
        n_val, dropped = len(sp.val), int(sp.dropped)
    if cfg.folds == 1:
        search = [final]
    else:
        search = [_from_split(inputs, s) for s in kfold_splits(table, cfg.folds, cfg.split, n, cfg.seed)]
    return FitProblems(final, search, n_val, dropped)
