"""Benchmark: fastalign's teacher fit against a plain-PyTorch gLocal-style loop.

Both fit ``z = ((x - mean) / std) @ W + b`` (scalar mean/std, W = 1e-3 I,
b = 1e-3, regulariser ``lambda * ||W - mean(diag W) I||_F^2``) on the bundled
CLIP ViT-B/32 THINGS features and the human triplets of ``test_10``:

- split: ``--test-fraction`` of the triplets are held out and never seen by
  either fit; the rest is split into train and validation (``--val-fraction``);
- baseline: the gLocal recipe in plain PyTorch: Adam (lr 1e-3), minibatches of
  256 triplets, the batch's rows gathered and transformed per triplet, softmax
  cross-entropy, one validation pass per epoch, early stopping on validation
  loss (``--patience`` epochs), best state restored;
- fastalign: ``fastalign.teacher.fit_transform`` (full-batch L-BFGS, fused
  triplet loss, early stopping on validation loss) at the same lambda.

Run (one command, prints a markdown table, writes it with ``--out``)::

    python benchmarks/bench_fit_transform.py [--lam 0.1] [--threads 2] [--out bench.md]
    python benchmarks/bench_fit_transform.py --smoke     # small and quick

``--dense`` benchmarks the dense teacher instead (AligNet's recipe): ``--soft-triplets``
(default 1M) triplets over the 1,854 objects labelled by SPoSE-49, the pipeline's split of
``test_10`` (10k held out, 5k calibration, 35k teacher-train), and

- fastalign: ``fit_dense``, the whole selection (every lambda, extensions, the final model),
  L-BFGS full batch, the KL read off the N x N similarity matrix (``pairs``) or from the fused
  kernel (``--dense-loss fused``);
- baseline: a plain-PyTorch minibatch fit of the same objective at the chosen lambda (Adam,
  4096 soft triplets per step, rows gathered and transformed per triplet, early stopping on the
  soft-validation KL);
- a per-evaluation profile: transform GEMM, pair KL forward/backward, fused kernel, optimiser::

    python benchmarks/bench_fit_transform.py --dense [--soft-triplets 1000000] [--out dense.md]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fastalign  # noqa: E402
from fastalign.common.seeds import derive_rng  # noqa: E402
from fastalign.common.timing import StageTimer  # noqa: E402
from fastalign.datasets.things import load_things  # noqa: E402
from fastalign.io import atomic_write_text  # noqa: E402
from fastalign.teacher import (  # noqa: E402
    AffineTransform,
    DenseOptions,
    PairKL,
    dense_targets,
    fit_dense,
    fit_transform,
    pair_kl,  # noqa: E402
)
from fastalign.teacher.objective import regulariser  # noqa: E402


@dataclass
class Result:
    name: str
    seconds: float
    steps: str
    val_loss: float
    test_accuracy: float
    test_nll: float


def split_data(n_triplets: int, test_fraction: float, val_fraction: float, seed: int, limit: Optional[int]):
    rng = derive_rng(seed)  # == np.random.default_rng(seed)
    perm = rng.permutation(n_triplets)
    if limit:
        perm = perm[:limit]
    n_test = int(round(test_fraction * len(perm)))
    test, rest = perm[:n_test], perm[n_test:]
    n_val = int(round(val_fraction * len(rest)))
    return rest[n_val:], rest[:n_val], test


def glocal_baseline(x: np.ndarray, train: np.ndarray, val: np.ndarray, lam: float, lr: float, batch: int,
                    max_epochs: int, patience: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor, Dict]:
    """The plain-PyTorch minibatch loop (gLocal recipe): gather, transform per triplet, CE."""
    torch.manual_seed(seed)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    mean, std = xt.mean(), xt.std(unbiased=False)
    xs = (xt - mean) / std
    d = xs.shape[1]
    W = torch.nn.Parameter(1e-3 * torch.eye(d))
    b = torch.nn.Parameter(torch.full((d,), 1e-3))
    opt = torch.optim.Adam([W, b], lr=lr)
    tr = torch.from_numpy(train)
    va = torch.from_numpy(val)
    eye = torch.eye(d)

    def batch_loss(trip: torch.Tensor) -> torch.Tensor:
        e = xs[trip.reshape(-1)] @ W + b          # transform the gathered rows (per triplet)
        e = e.view(-1, 3, d)
        s = torch.stack([(e[:, 0] * e[:, 1]).sum(1), (e[:, 0] * e[:, 2]).sum(1), (e[:, 1] * e[:, 2]).sum(1)], 1)
        return torch.nn.functional.cross_entropy(s, torch.zeros(len(trip), dtype=torch.long))

    best, best_state, since, epochs = math.inf, None, 0, 0
    for epoch in range(max_epochs):
        epochs = epoch + 1
        perm = torch.randperm(len(tr))
        for s in range(0, len(tr), batch):
            opt.zero_grad()
            loss = batch_loss(tr[perm[s:s + batch]]) + lam * ((W - W.diagonal().mean() * eye) ** 2).sum()
            loss.backward()
            opt.step()
        with torch.no_grad():
            vl = float(sum(batch_loss(va[s:s + 4096]) * len(va[s:s + 4096]) for s in range(0, len(va), 4096)) / len(va))
        if vl < best - 1e-5:
            best, best_state, since = vl, (W.detach().clone(), b.detach().clone()), 0
        else:
            since += 1
            if since >= patience:
                break
    W_best, b_best = best_state
    with torch.no_grad():
        z = xs @ W_best + b_best
    return z, {"epochs": epochs, "val_loss": best}


def evaluate(z: torch.Tensor, test: np.ndarray) -> Tuple[float, float]:
    t = torch.from_numpy(test)
    with torch.no_grad():
        return float(fastalign.odd_one_out_accuracy(z, t)), float(fastalign.triplet_loss(z, t))


def _pipeline_split(trip: np.ndarray, seed: int = 0):
    """``fastalign run``'s split: (teacher-train, calibration, held-out)."""
    perm = np.random.default_rng(seed).permutation(len(trip))
    rest = perm[10_000:] if len(trip) > 20_000 else perm[len(trip) // 5:]
    held = perm[:len(trip) - len(rest)]
    n_cal = max(1, len(rest) // 8)
    return trip[rest[n_cal:]], trip[rest[:n_cal]], trip[held]


def _timed(f, repeats: int = 3) -> Tuple[float, float]:
    """Best wall and process-CPU seconds of ``f()`` over ``repeats`` calls."""
    wall, cpu = math.inf, math.inf
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        f()
        wall, cpu = min(wall, time.perf_counter() - w0), min(cpu, time.process_time() - c0)
    return wall, cpu


def dense_profile(x: np.ndarray, targets, lam: float) -> List[Tuple[str, float, float]]:
    """Where one L-BFGS evaluation's time goes (best of 3, wall and CPU seconds)."""
    xt = torch.from_numpy(x)
    t = AffineTransform.from_features(x)
    t.weight.data.mul_(50.0)
    trip = torch.from_numpy(targets.train)
    p = torch.from_numpy(targets.train_targets).float()
    pairs = PairKL.build(trip, p, len(x), torch.float32)
    rows: List[Tuple[str, float, float]] = []

    def gemm():
        with torch.no_grad():
            t(xt)

    def pairs_step():
        z = t(xt).detach().requires_grad_()
        pair_kl(z, pairs).backward()

    def fused_step():
        z = t(xt).detach().requires_grad_()
        fastalign.triplet_distill_loss(z, trip, target_probs=p, divergence="kl", backend="cpu").backward()

    def full_eval():
        t.zero_grad()
        (pair_kl(t(xt), pairs) + lam * regulariser(t.weight)).backward()

    for name, f in [("transform GEMM z = ((x-mu)/sigma) W + b (N rows)", gemm),
                    ("pair KL fwd+bwd (S = Z Z^T, gathers, scatter, (G+G^T) Z)", pairs_step),
                    ("fused kernel KL fwd+bwd (triplet_distill_loss, backend cpu)", fused_step),
                    ("one whole evaluation (pairs): transform, KL, reg, backward to W", full_eval)]:
        rows.append((name, *_timed(f)))
    return rows


def minibatch_dense(x: np.ndarray, targets, lam: float, batch: int, max_epochs: int, patience: int,
                    seed: int) -> Tuple[torch.Tensor, Dict]:
    """Plain-PyTorch minibatch fit of the dense objective: Adam, rows gathered and transformed per triplet."""
    torch.manual_seed(seed)
    xt = torch.from_numpy(x)
    xs = (xt - xt.mean()) / xt.std(unbiased=False)
    d = xs.shape[1]
    W = torch.nn.Parameter(0.05 * torch.eye(d))
    b = torch.nn.Parameter(torch.zeros(d))
    opt = torch.optim.Adam([W, b], lr=1e-3)
    tr, p = torch.from_numpy(targets.train), torch.from_numpy(targets.train_targets).float()
    va, pv = torch.from_numpy(targets.val), torch.from_numpy(targets.val_targets).float()
    eye = torch.eye(d)

    def kl(trip, target):
        e = (xs[trip.reshape(-1)] @ W + b).view(-1, 3, d)
        s = torch.stack([(e[:, 0] * e[:, 1]).sum(1), (e[:, 0] * e[:, 2]).sum(1), (e[:, 1] * e[:, 2]).sum(1)], 1)
        return torch.nn.functional.kl_div(torch.log_softmax(s, 1), target, reduction="batchmean")

    best, state, since, epochs = math.inf, None, 0, 0
    for epoch in range(max_epochs):
        epochs = epoch + 1
        perm = torch.randperm(len(tr))
        for s0 in range(0, len(tr), batch):
            rows = perm[s0:s0 + batch]
            opt.zero_grad()
            (kl(tr[rows], p[rows]) + lam * ((W - W.diagonal().mean() * eye) ** 2).sum()).backward()
            opt.step()
        with torch.no_grad():
            vl = float(sum(kl(va[i:i + 8192], pv[i:i + 8192]) * len(va[i:i + 8192])
                           for i in range(0, len(va), 8192)) / len(va))
        if vl < best - 1e-5:
            best, state, since = vl, (W.detach().clone(), b.detach().clone()), 0
        else:
            since += 1
            if since >= patience:
                break
    with torch.no_grad():
        return xs @ state[0] + state[1], {"epochs": epochs, "val_kl": best}


def dense_main(args: argparse.Namespace) -> int:
    """The dense benchmark (see the module docstring)."""
    data = load_things()
    x = np.array(data.features["clip"], dtype=np.float32)
    train, calib, held = _pipeline_split(np.array(data.triplets["test_10"]), args.seed)
    w0 = time.perf_counter()
    targets = dense_targets("things:spose49", len(x), DenseOptions(num=args.soft_triplets, seed=args.seed),
                            exclude=np.concatenate([held, calib]))
    t_targets = time.perf_counter() - w0
    w0, c0 = time.perf_counter(), time.process_time()
    model, report = fit_dense(x, targets, train, loss=args.dense_loss, progress=False, seed=args.seed)
    t_fit, c_fit = time.perf_counter() - w0, time.process_time() - c0
    xt = torch.from_numpy(x)
    with torch.no_grad():
        acc, nll = evaluate(model(xt), held)
    evals = sum(c.evaluations for c in report.candidates)
    lam = report.chosen["lam"]
    lines = [f"dense teacher benchmark: CLIP ViT-B/32 (1854x512), {len(targets.train)} + {len(targets.val)} "
             f"SPoSE-49 soft triplets (labelled in {t_targets:.1f} s), {len(train)} teacher-train human triplets, "
             f"{len(held)} held out; torch threads {torch.get_num_threads()}; load average "
             f"{os.getloadavg()[0]:.1f} at the start", "",
             "| method | wall (s) | CPU (s) | fits / evaluations | chosen lambda | held-out accuracy | held-out NLL |",
             "|---|---|---|---|---|---|---|",
             f"| fastalign fit_dense, whole selection ({report.loss}) | {t_fit:.1f} | {c_fit:.1f} | "
             f"{len(report.candidates)} / {evals} | {lam:g} | {100 * acc:.2f}% | {nll:.4f} |"]
    if not args.skip_baseline:
        w0, c0 = time.perf_counter(), time.process_time()
        z, info = minibatch_dense(x, targets, lam, 4096, args.max_epochs, args.patience, args.seed)
        tb, cb = time.perf_counter() - w0, time.process_time() - c0
        acc_b, nll_b = evaluate(z, held)
        lines.append(f"| plain PyTorch minibatch (Adam 1e-3, 4096/step), one lambda | {tb:.1f} | {cb:.1f} | "
                     f"1 / {info['epochs']} epochs | {lam:g} | {100 * acc_b:.2f}% | {nll_b:.4f} |")
    lines += ["", "Lambda search: " + ", ".join(f"{c.lam:g}: human val NLL {c.human_val_nll:.4f} "
                                                 f"({c.evaluations} evals, {c.seconds:.1f} s)"
                                                 for c in report.candidates),
              "Extensions: " + ("; ".join(report.extensions) or "none"), "",
              "| one evaluation, 1M triplets | wall (s) | CPU (s) |", "|---|---|---|"]
    lines += [f"| {name} | {w:.3f} | {c:.3f} |" for name, w, c in dense_profile(x, targets, lam)]
    table = "\n".join(lines)
    print(table)
    if args.out:
        atomic_write_text(args.out, table + "\n")
    return 0


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lam", type=float, default=0.1, help="regulariser weight for both fits")
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=1e-3, help="baseline Adam learning rate")
    ap.add_argument("--batch", type=int, default=256, help="baseline batch size")
    ap.add_argument("--max-epochs", type=int, default=100)
    ap.add_argument("--patience", type=int, default=5, help="baseline early-stopping patience (epochs)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--limit", type=int, default=None, help="use only this many triplets")
    ap.add_argument("--smoke", action="store_true", help="small quick run (5k triplets, few epochs)")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the markdown table here")
    ap.add_argument("--dense", action="store_true", help="benchmark the dense teacher (SPoSE-49 soft triplets)")
    ap.add_argument("--soft-triplets", type=int, default=1_000_000, help="dense: sampled soft triplets")
    ap.add_argument("--dense-loss", choices=("auto", "pairs", "fused"), default="auto", help="dense: KL path")
    args = ap.parse_args(argv)
    if args.smoke:
        args.limit, args.max_epochs = args.limit or 5000, min(args.max_epochs, 3)
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.dense:
        return dense_main(args)

    data = load_things()
    x = np.array(data.features["clip"], dtype=np.float32)
    trip = np.array(data.triplets["test_10"])
    tr_i, va_i, te_i = split_data(len(trip), args.test_fraction, args.val_fraction, args.seed, args.limit)
    train, val, test = trip[tr_i], trip[va_i], trip[te_i]
    xt = torch.from_numpy(x)
    raw_acc = float(fastalign.odd_one_out_accuracy(xt, torch.from_numpy(test), similarity="cosine"))

    results: List[Result] = []
    timer = StageTimer()
    with timer("fastalign"):
        model, report = fit_transform(x, train, val_triplets=val, lambdas=(args.lam,),
                                      max_iter=300 if not args.smoke else 20, progress=False, seed=args.seed)
    t_fast = timer.seconds["fastalign"]
    with torch.no_grad():
        acc, nll = evaluate(model(xt), test)
    results.append(Result("fastalign fit_transform (L-BFGS, fused)", t_fast,
                          f"{report.final['iterations']} it / {report.final['evaluations']} evals",
                          report.final["val_loss"], acc, nll))
    print(f"fastalign: {t_fast:.1f} s, test accuracy {100 * acc:.2f}%", file=sys.stderr, flush=True)

    if not args.skip_baseline:
        with timer("baseline"):
            z, info = glocal_baseline(x, train, val, args.lam, args.lr, args.batch, args.max_epochs, args.patience,
                                      args.seed)
        t_base = timer.seconds["baseline"]
        acc, nll = evaluate(z, test)
        results.insert(0, Result(f"plain PyTorch gLocal loop (Adam lr {args.lr:g}, batch {args.batch})", t_base,
                                 f"{info['epochs']} epochs", info["val_loss"], acc, nll))
        print(f"baseline: {t_base:.1f} s, test accuracy {100 * acc:.2f}%", file=sys.stderr, flush=True)

    base_t = results[0].seconds if not args.skip_baseline else None
    lines = [
        f"fit_transform benchmark: CLIP ViT-B/32 THINGS features (1854x512), test_10 triplets: "
        f"{len(train)} train / {len(val)} val / {len(test)} held-out test; lambda {args.lam:g}; "
        f"torch threads {torch.get_num_threads()}; backend auto={fastalign.backends()['auto'].get('cpu')}",
        "",
        f"raw CLIP (cosine) held-out accuracy: {100 * raw_acc:.2f}%",
        "",
        "| method | time (s) | speed-up | steps | val loss | held-out accuracy | held-out NLL |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        speed = f"{base_t / r.seconds:.1f}x" if base_t else "-"
        lines.append(f"| {r.name} | {r.seconds:.2f} | {speed} | {r.steps} | {r.val_loss:.4f} | "
                     f"{100 * r.test_accuracy:.2f}% | {r.test_nll:.4f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        atomic_write_text(args.out, table + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
