"""`fastalign fit-teacher`: fit the human-aligned affine transform (AligNet stage 1).

Writes ``DIR/transform.npz`` (gLocal keys), ``DIR/report.json`` and
``DIR/lambda_curve.png`` (validation loss and accuracy against lambda).
``--features`` and ``--triplets`` accept files or the bundled THINGS data as
``things:clip`` / ``things:test_10`` (see ``fastalign.datasets.things``).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

BUNDLED = "things:"


def register(sub) -> None:
    p = sub.add_parser(
        "fit-teacher",
        help="fit the human-aligned affine transform on features and odd-one-out triplets",
        description="Fit z = ((x - mean) / std) @ W + b to human odd-one-out triplets "
        "(full-batch L-BFGS, early stopping, CV over lambda), optionally calibrate its "
        "temperature and distil soft targets. Writes DIR/transform.npz, DIR/report.json and a PNG.",
    )
    p.add_argument("--features", required=True, help="features file (.npy/.npz/.pt/.h5/.txt) or things:clip|word2vec|spose49")
    p.add_argument("--file-names", default=None, help="file_names.txt listing one name per feature row (count is checked)")
    p.add_argument("--key", default=None, help="array name inside a .npz/.pt/.h5 features file")
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
    p.add_argument("--local-features", default=None, help="unlabelled features for gLocal's local term")
    p.add_argument("--alphas", type=float, nargs="+", default=None, help="local-term weights to search (with --local-features)")
    p.add_argument("--taus", type=float, nargs="+", default=None, help="local-term temperatures to search (with --local-features)")
    p.add_argument("--init", default=None, help="warm-start from this transform (.npz/.safetensors)")
    p.add_argument("--calibrate", action="store_true", help="fit a temperature on the validation triplets and store it")
    p.add_argument("--soft-targets", default=None,
                   help="also fit with KL to soft targets: spose49 (bundled SPoSE-49 probabilities), repeats "
                        "(choice distributions of repeated triplets), a (k, 3) probability file aligned with "
                        "--triplets, or an (N, d) embedding file whose dot products give the targets")
    p.add_argument("--safetensors", action="store_true", help="also write DIR/transform.safetensors")
    p.add_argument("--backend", default=None, help="triplet-op backend (default: auto)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=_run)


# --------------------------------------------------------------------- inputs


def _load_features(spec: str, file_names: Optional[str], key: Optional[str]):
    import numpy as np

    from ..io import load_features

    if spec.startswith(BUNDLED):
        from ..datasets.things import load_things

        name = spec[len(BUNDLED):]
        feats = load_things().features
        if name not in feats:
            raise ValueError(f"--features {spec}: bundled features are {', '.join(BUNDLED + k for k in feats)}")
        return np.array(feats[name], dtype=np.float32)
    return load_features(spec, file_names=file_names, key=key)


def _load_triplets(spec: str, n: int, flag: str):
    import numpy as np

    from ..io import check_triplets_fit, load_triplets

    if spec.startswith(BUNDLED):
        from ..datasets.things import load_things

        name = spec[len(BUNDLED):]
        trips = load_things().triplets
        if name not in trips:
            raise ValueError(f"{flag} {spec}: bundled triplets are {', '.join(BUNDLED + k for k in trips)}")
        t = np.array(trips[name])
    else:
        t = load_triplets(spec).triplets
    if len(t) == 0:
        raise ValueError(f"{flag} {spec}: no triplets")
    check_triplets_fit(t, n, f"{flag} {spec}")
    return t


@dataclass
class _Soft:
    """Soft targets for the train and validation triplets (the triplets may be re-aggregated)."""

    source: str
    train: Any
    train_targets: Any
    val: Any
    val_targets: Any
    info: Dict[str, Any] = field(default_factory=dict)


def _soft_targets(spec: str, x, train, val, backend) -> _Soft:
    import numpy as np

    from ..io import check_features, load_features
    from ..teacher import choice_distributions, model_targets

    n = x.shape[0]
    if spec == "repeats":
        tu, tp, tc = choice_distributions(train)
        vu, vp, vc = choice_distributions(val)
        return _Soft("repeats", tu, tp, vu, vp, {
            "train_sets": int(len(tu)), "train_sets_repeated": int((tc > 1).sum()),
            "val_sets": int(len(vu)), "val_sets_repeated": int((vc > 1).sum()),
        })
    if spec == "spose49":
        from ..datasets.things import load_things

        emb = load_things().features["spose49"]
        if emb.shape[0] != n:
            raise ValueError(f"--soft-targets spose49 needs features of the {emb.shape[0]} THINGS objects, got N={n}")
        return _Soft("spose49", train, model_targets(emb, train, backend=backend),
                     val, model_targets(emb, val, backend=backend))
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"--soft-targets {spec}: not spose49, repeats or an existing file")
    arr = load_features(path)
    if arr.shape == (len(train), 3) and np.allclose(arr.sum(1), 1.0, atol=1e-4) and (arr >= 0).all():
        # Per-triplet probabilities of the training triplets; validate on hard choices.
        return _Soft(f"probs:{spec}", train, arr.astype(np.float64), val, None)
    emb = check_features(arr, str(path))
    if emb.shape[0] != n:
        raise ValueError(
            f"--soft-targets {spec}: shape {emb.shape} is neither ({len(train)}, 3) probabilities for the "
            f"triplets nor an embedding with one row per feature row (N={n})"
        )
    return _Soft(f"embedding:{spec}", train, model_targets(emb, train, backend=backend),
                 val, model_targets(emb, val, backend=backend))


# --------------------------------------------------------------------- outputs


def _plot(path: Path, candidates: List[Dict[str, Any]], chosen: float) -> Optional[str]:
    """Validation loss and accuracy against lambda; returns None or why no plot was made."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed; no plot written"
    from ..io import atomic_write

    # One point per lambda: the best (alpha, tau) for it.
    by_lam: Dict[float, Dict[str, Any]] = {}
    for c in candidates:
        if c["lam"] not in by_lam or c["val_loss"] < by_lam[c["lam"]]["val_loss"]:
            by_lam[c["lam"]] = c
    lams = sorted(by_lam)
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    ax.plot(lams, [by_lam[v]["val_loss"] for v in lams], "o-", color="tab:blue", label="val loss")
    ax.set_xscale("log") if min(lams) > 0 else ax.set_xscale("symlog", linthresh=1e-4)
    ax.set_xlabel("lambda")
    ax.set_ylabel("validation loss", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(lams, [100 * by_lam[v]["val_accuracy"] for v in lams], "s--", color="tab:orange", label="val accuracy")
    ax2.set_ylabel("validation accuracy (%)", color="tab:orange")
    ax.axvline(chosen, color="gray", lw=0.8, ls=":")
    ax.set_title(f"fit-teacher: chosen lambda = {chosen:g}")
    fig.tight_layout()
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)
    return None


def _table(rows: List[Tuple[str, Dict[str, float]]]) -> str:
    lines = ["| model | accuracy | NLL | ECE | entropy |", "|---|---|---|---|---|"]
    for name, m in rows:
        def f(key, scale=1.0, fmt="{:.4f}"):
            v = m.get(key)
            return "-" if v is None else fmt.format(v * scale)
        lines.append(f"| {name} | {f('accuracy', 100, '{:.2f}%')} | {f('nll')} | {f('ece')} | {f('entropy')} |")
    return "\n".join(lines)


# --------------------------------------------------------------------- main


def _run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..io import atomic_write_json, load_transform, save_transform
    from ..ops import odd_one_out_accuracy
    from ..teacher import (
        FitConfig,
        calibrate_temperature,
        fit_transform,
        train_val_split,
        uncertainty_metrics,
    )
    from .main import CLIError

    start = time.perf_counter()
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a directory")
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))

    x = _load_features(args.features, args.file_names, args.key)
    n, d = x.shape
    trip = _load_triplets(args.triplets, n, "--triplets")
    if args.val_triplets:
        train, val = trip, _load_triplets(args.val_triplets, n, "--val-triplets")
        split_info = {"source": "given", "n_train": int(len(train)), "n_val": int(len(val)), "dropped": 0}
    else:
        sp = train_val_split(trip, args.val_fraction, args.split, n, args.seed)
        if len(sp.train) == 0 or len(sp.val) == 0:
            raise CLIError(f"the {args.split} split left {len(sp.train)} training and {len(sp.val)} validation triplets")
        train, val = trip[sp.train], trip[sp.val]
        split_info = {"source": f"{args.split} split, val_fraction={args.val_fraction}",
                      "n_train": int(len(train)), "n_val": int(len(val)), "dropped": int(sp.dropped)}
    test = _load_triplets(args.test_triplets, n, "--test-triplets") if args.test_triplets else None
    local = _load_features(args.local_features, None, None) if args.local_features else None
    init = load_transform(args.init, dim_in=d) if args.init else None
    say(f"fit-teacher: features {n}x{d}, {len(train)} train / {len(val)} val triplets"
        + (f", {len(test)} test" if test is not None else ""))

    overrides: Dict[str, Any] = dict(
        reg=args.reg, folds=args.folds, split=args.split, optimizer=args.optimizer, max_iter=args.max_iter,
        patience=args.patience, per_dim=args.per_dim, dim_out=args.dim_out, bias=not args.no_bias,
        seed=args.seed, backend=args.backend, progress=not args.quiet,
    )
    if args.lambdas:
        overrides["lambdas"] = tuple(args.lambdas)
    if args.alphas:
        overrides["alphas"] = tuple(args.alphas)
    if args.taus:
        overrides["taus"] = tuple(args.taus)
    cfg = FitConfig(**overrides)
    cfg.validate()

    model, report = fit_transform(x, train, config=cfg, val_triplets=val, local_features=local, init=init)
    say(f"fit-teacher: chosen lambda={report.chosen['lam']:g}, val loss {report.final['val_loss']:.4f}, "
        f"val accuracy {100 * report.final['val_accuracy']:.2f}% ({report.seconds:.1f} s)")

    # Metrics on the test triplets when given, else on the validation triplets.
    eval_name, eval_trip = ("test", test) if test is not None else ("val", val)
    xt = torch.from_numpy(np.ascontiguousarray(x))
    et = torch.from_numpy(np.ascontiguousarray(eval_trip))
    metrics: Dict[str, Dict[str, float]] = {}
    with torch.no_grad():
        metrics["raw (cosine)"] = {"accuracy": float(odd_one_out_accuracy(xt, et, similarity="cosine", backend=args.backend))}
        z_hard = model(xt.to(model.weight.dtype))
    metrics["teacher"] = uncertainty_metrics(z_hard, et, backend=args.backend).to_dict()

    calibration = None
    vt = torch.from_numpy(np.ascontiguousarray(val))
    if args.calibrate:
        cal = calibrate_temperature(z_hard, vt, backend=args.backend)
        model.set_temperature(cal.temperature)
        calibration = cal.to_dict()
        metrics["teacher + calibration"] = uncertainty_metrics(z_hard, et, cal.temperature, backend=args.backend).to_dict()
        say(f"fit-teacher: temperature {cal.temperature:.4f} (val NLL {cal.nll_before:.4f} -> {cal.nll_after:.4f})")

    soft_report = None
    final = model
    if args.soft_targets:
        soft = _soft_targets(args.soft_targets, x, train, val, args.backend)
        say(f"fit-teacher: soft-target fit ({soft.source})")
        soft_cfg = FitConfig(**{**overrides, "lambdas": (report.chosen["lam"],), "folds": 1,
                                "alphas": (report.chosen["alpha"],), "taus": (report.chosen["tau"],)})
        soft_model, soft_fit = fit_transform(
            x, soft.train, config=soft_cfg, val_triplets=soft.val, soft_targets=soft.train_targets,
            val_soft_targets=soft.val_targets, local_features=local, init=init,
        )
        with torch.no_grad():
            z_soft = soft_model(xt.to(soft_model.weight.dtype))
        metrics["teacher (soft targets)"] = uncertainty_metrics(z_soft, et, backend=args.backend).to_dict()
        soft_report = {"source": soft.source, "info": soft.info, "fit": soft_fit.to_dict()}
        if args.calibrate:
            cal_s = calibrate_temperature(z_soft, vt, backend=args.backend)
            soft_model.set_temperature(cal_s.temperature)
            soft_report["calibration"] = cal_s.to_dict()
            metrics["teacher (soft targets) + calibration"] = uncertainty_metrics(
                z_soft, et, cal_s.temperature, backend=args.backend).to_dict()
        # The hard-label teacher is kept for comparison; the soft-target one is the result.
        save_transform(out / "transform_hard.npz", model)
        final = soft_model

    save_transform(out / "transform.npz", final)
    if args.safetensors:
        save_transform(out / "transform.safetensors", final)
    fit_dict = report.to_dict()
    plot_note = _plot(out / "lambda_curve.png", fit_dict["candidates"], report.chosen["lam"])
    result = {
        "command": "fit-teacher",
        "inputs": {"features": args.features, "triplets": args.triplets, "val_triplets": args.val_triplets,
                   "test_triplets": args.test_triplets, "n_objects": n, "dim": d},
        "split": split_info,
        "fit": fit_dict,
        "calibration": calibration,
        "soft_targets": soft_report,
        "metrics_on": eval_name,
        "metrics": metrics,
        "outputs": {"transform": str(out / "transform.npz"),
                    "plot": None if plot_note else str(out / "lambda_curve.png")},
        "notes": [plot_note] if plot_note else [],
        "seconds": time.perf_counter() - start,
    }
    atomic_write_json(out / "report.json", result)
    print(f"fit-teacher: metrics on the {eval_name} triplets ({len(eval_trip)})")
    print(_table(list(metrics.items())))
    print(f"wrote {out / 'transform.npz'}, {out / 'report.json'}" + ("" if plot_note else f", {out / 'lambda_curve.png'}"))
    return 0
