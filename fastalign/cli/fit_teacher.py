"""`fastalign fit-teacher`: fit the human-aligned affine transform (AligNet stage 1).

Writes ``DIR/transform.npz`` (gLocal keys), ``DIR/report.json`` and
``DIR/lambda_curve.png`` (validation loss and accuracy against lambda).
``--features`` and ``--triplets`` accept files or the bundled THINGS data as
``things:clip`` / ``things:test_10`` (see ``fastalign.datasets.things``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

from ..teacher import DenseFitConfig, FitConfig, TeacherOptions, fit_teacher, write_outputs
from .outdir import FIT_TEACHER_MARKERS, OVERWRITE_HELP, check_out_dir


def register(sub) -> None:
    p = sub.add_parser(
        "fit-teacher",
        help="fit the human-aligned affine transform on features and odd-one-out triplets",
        description="Fit z = ((x - mean) / std) @ W + b to human odd-one-out triplets "
        "(full-batch L-BFGS, early stopping, CV over lambda), optionally calibrate its "
        "temperature and distil soft targets. Writes DIR/transform.npz, DIR/report.json and a PNG.",
    )
    p.add_argument("--features", required=True, help="features file (.npy/.npz/.pt/.h5/.txt; FILE.npz:KEY for one of several "
                   "arrays) or things:clip|word2vec|spose49")
    p.add_argument("--file-names", default=None, help="file_names.txt listing one name per feature row (count is checked)")
    p.add_argument("--key", default=None, help="array name inside a .npz/.pt/.h5 features file (the same as --features FILE.npz:KEY)")
    p.add_argument("--triplets", required=True, help="training triplets (.txt/.npy/.npz, column 2 the odd one out) or things:test_10")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val-triplets", default=None, help="validation triplets (early stopping, selection, calibration)")
    val.add_argument("--val-fraction", type=float, default=0.1, help="share held out for validation (default 0.1)")
    p.add_argument("--test-triplets", default=None, help="held-out triplets the fit never sees; metrics are reported on them")
    p.add_argument("--lambdas", type=float, nargs="+", default=None, help="regulariser weights to search (default 0.01 0.1 1)")
    p.add_argument("--reg", choices=("identity", "l2"), default="identity", help="||W - mean(diag W) I||^2 (default) or ||W||^2")
    p.add_argument("--folds", type=int, default=1, help="k-fold CV over the hyper-parameters (1 = the train/val split only)")
    p.add_argument("--split", choices=("triplet", "object"), default="triplet", help="triplet-level or object-disjoint split")
    p.add_argument("--optimizer", choices=("lbfgs", "adam"), default="lbfgs")
    p.add_argument("--max-iter", type=int, default=300, help="L-BFGS iterations (Adam epochs) per fit")
    p.add_argument("--patience", type=int, default=10, help="evaluations (Adam: epochs) without validation improvement before stopping")
    p.add_argument("--per-dim", action="store_true", help="standardise per dimension instead of one scalar mean/std")
    p.add_argument("--dim-out", type=int, default=None, help="output dimension D' (default D)")
    p.add_argument("--no-bias", action="store_true", help="fit W only")
    p.add_argument("--local-features", default=None, help="unlabelled features for gLocal's local term (a file or things:KEY)")
    p.add_argument("--alphas", type=float, nargs="+", default=None, help="local-term weights to search (with --local-features)")
    p.add_argument("--taus", type=float, nargs="+", default=None, help="local-term temperatures to search (with --local-features)")
    p.add_argument("--init", default=None, help="warm-start from this transform (.npz/.safetensors)")
    p.add_argument("--calibrate", action="store_true", help="fit a temperature on the validation triplets and store it")
    p.add_argument("--soft-targets", default=None,
                   help="also fit with KL to soft targets: spose49 or things:spose49 (bundled SPoSE-49 probabilities), "
                        "repeats (choice distributions of repeated triplets), a (k, 3) probability file aligned "
                        "with --triplets, or an (N, d) embedding (file or things:KEY) whose dot products give "
                        "the targets")
    p.add_argument("--soft-triplets", type=int, default=None,
                   help="with an embedding in --soft-targets (things:spose49, things:vice, a .npy): label this many "
                        "triplets sampled over all objects and fit them (KL), lambda chosen by human NLL")
    p.add_argument("--soft-strata", default=None,
                   help="category matrix (things or a file) to sample fine / class-boundary / coarse triplets in "
                        "equal shares (default: uniform)")
    p.add_argument("--soft-temperature", type=float, default=1.0, help="T_h of the embedding's softmax (default 1)")
    p.add_argument("--human-weight", type=float, default=0.0,
                   help="weight of the training human triplets' hard NLL added to the dense KL (default 0)")
    p.add_argument("--dense-lambdas", type=float, nargs="+", default=None,
                   help="initial lambda grid of the dense fit (default 1e-5 1e-4 1e-3; extended at an edge)")
    p.add_argument("--safetensors", action="store_true", help="also write DIR/transform.safetensors")
    p.add_argument("--backend", default=None, help="triplet-op backend (default: auto)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress and no table: print only the transform's path")
    p.add_argument("--out", required=True, help="output directory (new, empty, or an earlier fit-teacher output)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP.format(what="fit-teacher"))
    p.set_defaults(func=_run)


def _options(args: argparse.Namespace) -> TeacherOptions:
    fit: Dict[str, Any] = dict(
        reg=args.reg, folds=args.folds, split=args.split, optimizer=args.optimizer, max_iter=args.max_iter,
        patience=args.patience, per_dim=args.per_dim, dim_out=args.dim_out, bias=not args.no_bias,
        val_fraction=args.val_fraction, seed=args.seed, backend=args.backend, progress=not args.quiet,
    )
    for name in ("lambdas", "alphas", "taus"):
        if getattr(args, name):
            fit[name] = tuple(getattr(args, name))
    dense = DenseFitConfig(human_weight=args.human_weight)
    if args.dense_lambdas:
        dense = DenseFitConfig(lambdas=tuple(args.dense_lambdas), human_weight=args.human_weight)
    return TeacherOptions(
        features=args.features, triplets=args.triplets, file_names=args.file_names, key=args.key,
        val_triplets=args.val_triplets, test_triplets=args.test_triplets, local_features=args.local_features,
        init=args.init, calibrate=args.calibrate, soft_targets=args.soft_targets, soft_triplets=args.soft_triplets,
        soft_strata=args.soft_strata, soft_temperature=args.soft_temperature, dense=dense, fit=FitConfig(**fit),
    )


def _table(rows: List[Tuple[str, Dict[str, float]]]) -> str:
    lines = ["| model | accuracy | NLL | ECE | entropy |", "|---|---|---|---|---|"]
    for name, m in rows:
        def f(key, scale=1.0, fmt="{:.4f}"):
            v = m.get(key)
            return "-" if v is None else fmt.format(v * scale)
        lines.append(f"| {name} | {f('accuracy', 100, '{:.2f}%')} | {f('nll')} | {f('ece')} | {f('entropy')} |")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    check_out_dir(out, "fit-teacher", FIT_TEACHER_MARKERS, args.overwrite)
    say = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    result = fit_teacher(_options(args), say=say)
    report = write_outputs(result, out, safetensors=args.safetensors)
    if args.quiet:
        print(out / "transform.npz")
        return 0
    print(f"fit-teacher: metrics on the {result.metrics_on} triplets ({result.metrics['teacher']['n']})")
    print(_table(list(result.metrics.items())))
    plot = report["outputs"]["plot"]
    print(f"wrote {out / 'transform.npz'}, {out / 'report.json'}" + (f", {plot}" if plot else ""))
    return 0
