"""Fit the teacher transform fast: full-batch L-BFGS, early stopping, CV over lambda.

Why it is fast: the N feature rows are transformed once per objective
evaluation (one GEMM), the triplet loss and its gradient w.r.t. the N
transformed rows come from the fused triplet op, and the gradient reaches W
through one more GEMM. Full-batch L-BFGS with a strong-Wolfe line search needs
tens of evaluations where a minibatch Adam loop needs thousands of steps.
The validation loss is read off the same transformed rows at every evaluation,
so early stopping costs one extra fused forward over the validation triplets.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..ops import odd_one_out_accuracy, triplet_similarities
from .objective import Batch, ObjectiveConfig, objective, triplet_term
from .split import SPLITS, Split, kfold_splits, train_val_split
from .transform import INIT_SCALE as INIT_SCALE_VALUE
from .transform import AffineTransform

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
        progress: show progress (tqdm when installed, else one line per fit).
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


@dataclass
class CandidateResult:
    """Held-out numbers of one hyper-parameter setting (means over folds)."""

    lam: float
    alpha: float
    tau: float
    val_loss: float
    val_accuracy: float
    fold_val_losses: List[float]
    fold_val_accuracies: List[float]
    iterations: List[int]
    seconds: float


@dataclass
class FitReport:
    """What ``fit_transform`` did; ``to_dict()`` is JSON-serialisable.

    Attributes:
        candidates: one entry per (lambda, alpha, tau) searched.
        chosen: the winning ``{"lam", "alpha", "tau"}`` (lowest held-out loss).
        final: numbers of the returned model: ``train_loss``, ``val_loss``,
            ``val_accuracy``, ``iterations``, ``evaluations``, ``stopped_early``.
        n_train, n_val, n_dropped: triplet counts of the final split.
        split, folds, optimizer, reg, loss: how it was fitted ("hard" or "kl").
        seconds: wall time of the whole search and refit.
        calibration, soft_targets, extra: filled by callers (e.g. the CLI).
    """

    candidates: List[CandidateResult]
    chosen: Dict[str, float]
    final: Dict[str, Any]
    n_train: int
    n_val: int
    n_dropped: int
    split: str
    folds: int
    optimizer: str
    reg: str
    loss: str
    seconds: float
    config: Dict[str, Any] = field(default_factory=dict)
    calibration: Optional[Dict[str, Any]] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        out = asdict(self)
        return _plain(out)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# --------------------------------------------------------------------- progress


class _Progress:
    """A tqdm bar over all fits when tqdm is installed, else one printed line per fit."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc="fit-teacher", unit="fit", file=sys.stderr)
            except ImportError:
                self.bar = None
        self.done, self.total = 0, total

    def update_iter(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)

    def fit_done(self, text: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(1)
        elif self.enabled:
            print(f"[{self.done}/{self.total}] {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------- one fit


@dataclass
class _Data:
    """Tensors of one train/validation problem."""

    x: torch.Tensor
    train: torch.Tensor
    val: torch.Tensor
    train_target: Optional[torch.Tensor]
    val_target: Optional[torch.Tensor]
    local_x: Optional[torch.Tensor]


def _new_transform(x: torch.Tensor, cfg: FitConfig, stats: AffineTransform) -> AffineTransform:
    """A fresh transform at gLocal's init, or a copy of ``stats`` when it was given as a warm start."""
    if getattr(stats, "_warm_start", False):
        t = AffineTransform.from_arrays(stats.to_arrays())
        t.set_temperature(1.0, calibrated=False)
    else:
        t = AffineTransform(x.shape[1], cfg.dim_out, bias=cfg.bias, mean=stats.mean, std=stats.std)
    return t.to(x.dtype)


def _snapshot(t: AffineTransform) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in t.state_dict().items()}


def _scale_init(t: AffineTransform, data: _Data, cfg: FitConfig) -> None:
    """Start from the best scaled identity ``W = c I`` instead of ``1e-3 I``.

    ``c I`` costs nothing under the identity regulariser, and with it (ignoring
    the tiny initial bias) the similarities are ``c^2`` times those of the
    standardised features, so the training loss as a function of c is the
    hard/KL loss of fixed similarities at temperature ``1 / c^2``: one fused
    similarity pass, then a 1-D search on (B, 3) logits, no GEMM. L-BFGS then skips the iterations it would spend finding
    the overall scale.
    """
    with torch.no_grad():
        xs = t(data.x) / INIT_SCALE_VALUE  # W = 1e-3 I: undo the scale, keep the standardisation
        if t.bias is not None:
            xs = xs - t.bias / INIT_SCALE_VALUE
        # One fused pass for the similarities; each trial scale then costs a (B, 3) log-softmax.
        sims = triplet_similarities(xs, data.train, backend=cfg.backend).double()
        target = None if data.train_target is None else data.train_target.double()

        def loss(log_c: float) -> float:
            logq = torch.log_softmax(sims * math.exp(2.0 * log_c), dim=1)
            # Cross-entropy to the targets has the same minimiser over c as the KL divergence.
            return float(-logq[:, 0].mean() if target is None else -(target * logq).sum(1).mean())

        a, b = math.log(1e-4), math.log(10.0)
        g = (math.sqrt(5) - 1) / 2
        c1, c2 = b - g * (b - a), a + g * (b - a)
        f1, f2 = loss(c1), loss(c2)
        while b - a > 0.01:
            if f1 < f2:
                b, c2, f2 = c2, c1, f1
                c1 = b - g * (b - a)
                f1 = loss(c1)
            else:
                a, c1, f1 = c1, c2, f2
                c2 = a + g * (b - a)
                f2 = loss(c2)
        c = math.exp((a + b) / 2)
        if c > INIT_SCALE_VALUE:
            t.weight.mul_(c / INIT_SCALE_VALUE)


class _EarlyStop(Exception):
    """Raised inside the L-BFGS closure when the validation loss stopped improving."""


def train_one(
    data: _Data,
    obj: ObjectiveConfig,
    cfg: FitConfig,
    stats: AffineTransform,
    on_iter: Optional[Callable[[int, float], None]] = None,
) -> Tuple[AffineTransform, Dict[str, Any]]:
    """Fit one transform with early stopping; returns the best-validation model and its numbers."""
    t = _new_transform(data.x, cfg, stats)
    if cfg.init_scale == "auto" and not getattr(stats, "_warm_start", False):
        _scale_init(t, data, cfg)
    batch = Batch(data.x, data.train, data.train_target, data.local_x)
    best = {"val": math.inf, "state": _snapshot(t), "train": math.inf, "iter": 0, "eval": 0}
    counters = {"evals": 0, "iter": 0}
    start = time.perf_counter()

    def evaluate(out: Dict[str, torch.Tensor]) -> None:
        # The validation loss reuses this evaluation's transformed rows: no extra GEMM.
        counters["evals"] += 1
        with torch.no_grad():
            vl = float(triplet_term(out["z"].detach(), data.val, data.val_target, cfg.backend))
        if vl < best["val"] - cfg.min_delta:
            best.update(val=vl, state=_snapshot(t), train=float(out["total"].detach()), iter=counters["iter"],
                        eval=counters["evals"])

    stopped_early = False
    if cfg.optimizer == "lbfgs":
        # One step() call runs the whole optimisation; early stopping leaves it through
        # an exception from the closure (the optimiser is discarded, the best state kept).
        opt = torch.optim.LBFGS(
            list(t.parameters()), lr=cfg.lr or 1.0, max_iter=cfg.max_iter, max_eval=cfg.max_iter * 5 // 4,
            history_size=cfg.history_size, line_search_fn="strong_wolfe",
            tolerance_grad=1e-12, tolerance_change=1e-12,
        )

        def closure():
            opt.zero_grad()
            out = objective(t, batch, obj, cfg.backend)
            out["total"].backward()
            counters["iter"] = int(opt.state[opt._params[0]].get("n_iter", 0))
            evaluate(out)
            if on_iter is not None:
                on_iter(counters["evals"], best["val"])
            if counters["evals"] - best["eval"] >= cfg.patience:
                raise _EarlyStop
            return out["total"]

        try:
            opt.step(closure)
        except _EarlyStop:
            stopped_early = True
        counters["iter"] = int(opt.state[opt._params[0]].get("n_iter", 0))
    else:
        opt = torch.optim.Adam(list(t.parameters()), lr=cfg.lr or 1e-3)
        n = data.train.shape[0]
        bs = n if cfg.batch_size is None else min(cfg.batch_size, n)
        gen = torch.Generator().manual_seed(cfg.seed)
        for epoch in range(cfg.max_iter):
            counters["iter"] = epoch + 1
            perm = torch.randperm(n, generator=gen)
            for s in range(0, n, bs):
                idx = perm[s:s + bs]
                sub = Batch(data.x, data.train[idx], None if data.train_target is None else data.train_target[idx],
                            data.local_x)
                opt.zero_grad()
                out = objective(t, sub, obj, cfg.backend)
                out["total"].backward()
                opt.step()
            with torch.no_grad():
                evaluate(objective(t, batch, obj, cfg.backend))
            if on_iter is not None:
                on_iter(epoch + 1, best["val"])
            if counters["iter"] - best["iter"] >= cfg.patience:
                stopped_early = True
                break
    t.load_state_dict(best["state"])
    with torch.no_grad():
        z = t(data.x)
        acc = odd_one_out_accuracy(z, data.val, backend=cfg.backend) if data.val.shape[0] else float("nan")
    info = {
        "train_loss": best["train"],
        "val_loss": best["val"],
        "val_accuracy": float(acc),
        "iterations": counters["iter"],
        "best_iteration": best["iter"],
        "evaluations": counters["evals"],
        "best_evaluation": best["eval"],
        "stopped_early": stopped_early,
        "seconds": time.perf_counter() - start,
    }
    return t, info


# --------------------------------------------------------------------- search


def _as_tensor(a, dtype) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=dtype)  # a copy: inputs may be read-only arrays


def _check_targets(name: str, targets: Optional[np.ndarray], k: int) -> Optional[np.ndarray]:
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
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    from ..io.features import check_features  # local import: io imports teacher
    from ..io.triplets import check_triplets_fit

    x_np = check_features(features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else features)
    n, d = x_np.shape
    trip = np.asarray(triplets.cpu().numpy() if isinstance(triplets, torch.Tensor) else triplets)
    if trip.ndim != 2 or trip.shape[1] != 3 or trip.dtype.kind not in "iu":
        raise ValueError(f"triplets must be a (k, 3) integer array, got shape {trip.shape} dtype {trip.dtype}")
    check_triplets_fit(trip, n, "triplets")
    soft = _check_targets("soft_targets", soft_targets, len(trip))
    vtrip = None
    if val_triplets is not None:
        vtrip = np.asarray(val_triplets.cpu().numpy() if isinstance(val_triplets, torch.Tensor) else val_triplets)
        if vtrip.ndim != 2 or vtrip.shape[1] != 3:
            raise ValueError(f"val_triplets must have shape (k, 3), got {vtrip.shape}")
        check_triplets_fit(vtrip, n, "val_triplets")
    vsoft = _check_targets("val_soft_targets", val_soft_targets, 0 if vtrip is None else len(vtrip))
    if vsoft is not None and vtrip is None:
        raise ValueError("val_soft_targets needs val_triplets")

    x = _as_tensor(x_np, dtype)
    if init is not None:
        if not isinstance(init, AffineTransform):
            raise TypeError(f"init must be an AffineTransform, got {type(init).__name__}")
        init.check_input_dim(d)
        stats = AffineTransform.from_arrays(init.to_arrays())
        stats._warm_start = True
    else:
        stats = AffineTransform.from_features(x_np, per_dim=cfg.per_dim)
    local_x = None
    if local_features is not None:
        lx = check_features(local_features, "local_features")
        if lx.shape[1] != d:
            raise ValueError(f"local_features have D={lx.shape[1]}, features have D={d}")
        rng = np.random.default_rng(cfg.seed)
        take = rng.permutation(len(lx))[: cfg.local_batch]
        local_x = _as_tensor(lx[np.sort(take)], dtype)
    alphas = [float(a) for a in cfg.alphas] if local_x is not None else [0.0]
    taus = [float(t) for t in cfg.taus] if local_x is not None else [1.0]
    grid = [ObjectiveConfig(float(lam), cfg.reg, a, tau) for lam, a, tau in itertools.product(cfg.lambdas, alphas, taus)]

    t_trip = _as_tensor(trip, torch.int64)
    t_soft = None if soft is None else _as_tensor(soft, dtype)

    def make_data(train_idx: np.ndarray, val: Tuple[torch.Tensor, Optional[torch.Tensor]]) -> _Data:
        ti = torch.as_tensor(train_idx, dtype=torch.int64)
        if len(train_idx) == 0 or val[0].shape[0] == 0:
            raise ValueError(
                f"split left {len(train_idx)} training and {val[0].shape[0]} validation triplets; "
                "use more triplets, a different val_fraction or split='triplet'"
            )
        return _Data(x, t_trip[ti], val[0], None if t_soft is None else t_soft[ti], val[1], local_x)

    def from_split(sp: Split) -> _Data:
        vi = torch.as_tensor(sp.val, dtype=torch.int64)
        return make_data(sp.train, (t_trip[vi], None if t_soft is None else t_soft[vi]))

    # The final train/validation problem (also the only one when folds == 1).
    if vtrip is not None:
        final_split = Split(np.arange(len(trip)), np.zeros(0, dtype=np.int64))
        final = make_data(final_split.train, (_as_tensor(vtrip, torch.int64), None if vsoft is None else _as_tensor(vsoft, dtype)))
        n_val = len(vtrip)
    else:
        final_split = train_val_split(trip, cfg.val_fraction, cfg.split, n, cfg.seed)
        final = from_split(final_split)
        n_val = len(final_split.val)
    problems = [final] if cfg.folds == 1 else [from_split(s) for s in kfold_splits(trip, cfg.folds, cfg.split, n, cfg.seed)]

    start = time.perf_counter()
    prog = _Progress(len(grid) * len(problems) + (1 if cfg.folds > 1 else 0), cfg.progress)
    candidates: List[CandidateResult] = []
    best_idx, best_model, best_info = -1, None, None
    try:
        for ci, obj in enumerate(grid):
            losses, accs, iters = [], [], []
            t0 = time.perf_counter()
            for fi, data in enumerate(problems):
                label = f"lambda={obj.lam:g}" + (f" alpha={obj.alpha:g} tau={obj.tau:g}" if local_x is not None else "")
                label += f" fold {fi + 1}/{len(problems)}" if len(problems) > 1 else ""
                model, info = train_one(
                    data, obj, cfg, stats,
                    on_iter=lambda it, v, label=label: prog.update_iter(f"{label} it {it} val {v:.4f}"),
                )
                losses.append(info["val_loss"])
                accs.append(info["val_accuracy"])
                iters.append(info["iterations"])
                prog.fit_done(f"{label}: val loss {info['val_loss']:.4f} acc {100 * info['val_accuracy']:.2f}% "
                              f"({info['iterations']} it, {info['seconds']:.1f} s)")
                if cfg.folds == 1 and (best_info is None or info["val_loss"] < best_info["val_loss"]):
                    best_model, best_info = model, info
            cand = CandidateResult(obj.lam, obj.alpha, obj.tau, float(np.mean(losses)), float(np.mean(accs)),
                                   losses, accs, iters, time.perf_counter() - t0)
            candidates.append(cand)
            if best_idx < 0 or cand.val_loss < candidates[best_idx].val_loss:
                best_idx = ci
        chosen = grid[best_idx]
        if cfg.folds > 1:
            # Refit the winner on the final split (early-stopped on its validation set).
            best_model, best_info = train_one(final, chosen, cfg, stats)
            prog.fit_done(f"refit lambda={chosen.lam:g}: val loss {best_info['val_loss']:.4f} "
                          f"acc {100 * best_info['val_accuracy']:.2f}%")
    finally:
        prog.close()

    report = FitReport(
        candidates=candidates,
        chosen={"lam": chosen.lam, "alpha": chosen.alpha, "tau": chosen.tau},
        final=best_info,
        n_train=int(final.train.shape[0]),
        n_val=int(n_val),
        n_dropped=int(final_split.dropped),
        split=cfg.split if vtrip is None else "given",
        folds=int(cfg.folds),
        optimizer=cfg.optimizer,
        reg=cfg.reg,
        loss="kl" if soft is not None else "hard",
        seconds=time.perf_counter() - start,
        config={k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
    )
    return best_model, report
