"""The whole teacher flow behind ``fastalign fit-teacher``, callable from Python.

``fit_teacher(TeacherOptions(...))`` loads the inputs (``things:KEY`` or files),
fits the hard-label teacher with the search over lambda, optionally calibrates
its temperature, optionally refits the chosen hyper-parameters to soft targets,
and scores every model on the test triplets (else the validation triplets).
``write_outputs`` writes the transforms, the lambda-search figure and ``report.json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

import numpy as np
import torch

from ..io.atomic import atomic_write_json
from ..io.heldout import check_held_out
from ..io.resolve import is_bundled, resolve_categories, resolve_features, resolve_triplets
from ..io.triplets import check_triplets_fit
from ..ops import odd_one_out_accuracy
from .calibrate import CalibrationResult, calibrate_temperature, uncertainty_metrics
from .dense import DenseOptions, dense_targets, resolve_embedding
from .dense_fit import DenseFitConfig, DenseFitReport, fit_dense
from .fit import fit_transform
from .options import FitConfig
from .plots import plot_lambda_search
from .results import FitReport
from .soft import soft_targets
from .split import train_val_split
from .transform import AffineTransform
from .transform_file import load_transform, save_transform

__all__ = ["SoftFit", "TeacherFitResult", "TeacherInputs", "TeacherOptions", "check_dense_options", "fit_teacher",
           "load_inputs", "run_teacher", "write_outputs"]

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass
class TeacherOptions:
    """What ``fit_teacher`` fits. Inputs are ``things:KEY`` or files (``fastalign.io.resolve``).

    Attributes:
        features: (N, D) features, e.g. ``things:clip``.
        triplets: training triplets, column 2 the odd one out, e.g. ``things:test_10``.
        file_names, key: for a features file, its ``file_names.txt`` and the array name inside it.
        val_triplets: validation triplets; without them ``fit.val_fraction`` of ``triplets``
            (``fit.split``, ``fit.seed``) is held out.
        test_triplets: triplets the fit never sees; the metrics are reported on them.
        local_features: unlabelled features for gLocal's local term.
        init: a transform file to warm-start from.
        calibrate: fit a temperature on the validation triplets.
        soft_targets: refit to soft targets: ``repeats``, ``spose49``, ``things:KEY`` or a file
            (see ``fastalign.teacher.soft_targets``).
        soft_triplets: with an embedding source (``spose49``, ``vice``, ``things:KEY``, a ``.npy``):
            label this many triplets sampled over all objects (``fastalign.teacher.dense_targets``)
            and fit them with ``fit_dense`` instead of the human triplets' own targets.
        soft_strata: category matrix (``things`` or a file) to stratify that draw by level.
        soft_temperature: T_h of the embedding's softmax (1 = as it was trained).
        dense: the options of the dense fit (its ``human_weight`` adds the human hard triplets).
        fit: the options of every fit (lambdas, folds, optimizer, seed, backend, progress, ...).
    """

    features: str
    triplets: str
    file_names: Optional[str] = None
    key: Optional[str] = None
    val_triplets: Optional[str] = None
    test_triplets: Optional[str] = None
    local_features: Optional[str] = None
    init: Optional[str] = None
    calibrate: bool = False
    soft_targets: Optional[str] = None
    soft_triplets: Optional[int] = None
    soft_strata: Optional[str] = None
    soft_temperature: float = 1.0
    dense: DenseFitConfig = field(default_factory=DenseFitConfig)
    fit: FitConfig = field(default_factory=FitConfig)


@dataclass
class TeacherInputs:
    """Loaded inputs: arrays, the train/validation split and how it was made."""

    features: np.ndarray
    train: np.ndarray
    val: np.ndarray
    test: Optional[np.ndarray]
    local: Optional[np.ndarray]
    init: Optional[AffineTransform]
    split: Dict[str, Any]
    names: Dict[str, Any]


@dataclass
class SoftFit:
    """The refit to soft targets: where they came from, the fit and its calibration."""

    source: str
    info: Dict[str, Any]
    fit: Union[FitReport, DenseFitReport]
    calibration: Optional[CalibrationResult]

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"source": self.source, "info": self.info, "fit": self.fit.to_dict()}
        if self.calibration is not None:
            out["calibration"] = self.calibration.to_dict()
        return out


@dataclass
class TeacherFitResult:
    """What ``fit_teacher`` produced.

    Attributes:
        transform: the result (the soft-target teacher when soft targets were given).
        hard_transform: the hard-label teacher (``transform`` itself without soft targets).
        fit: the hard fit's report (the search over lambda).
        calibration: the hard teacher's temperature calibration, when asked for.
        soft: the soft-target refit, when asked for.
        metrics_on: "test" or "val": the triplets ``metrics`` were computed on.
        metrics: per model, accuracy (and NLL, ECE, entropy) on those triplets.
        inputs, split: what was read and how it was split.
        seconds: wall time of loading and fitting.
    """

    transform: AffineTransform
    hard_transform: AffineTransform
    fit: FitReport
    calibration: Optional[CalibrationResult]
    soft: Optional[SoftFit]
    metrics_on: str
    metrics: Dict[str, Dict[str, Any]]
    inputs: Dict[str, Any]
    split: Dict[str, Any]
    seconds: float = 0.0

    def to_dict(self) -> Dict[str, Any]:
        """The body of ``report.json`` (without the outputs)."""
        return {
            "command": "fit-teacher",
            "inputs": self.inputs,
            "split": self.split,
            "fit": self.fit.to_dict(),
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
            "soft_targets": None if self.soft is None else self.soft.to_dict(),
            "metrics_on": self.metrics_on,
            "metrics": self.metrics,
            "seconds": self.seconds,
        }


# --------------------------------------------------------------------- inputs


def _triplets(spec: str, n: int, name: str) -> np.ndarray:
    t = resolve_triplets(spec)
    if len(t) == 0:
        raise ValueError(f"{name} {spec}: no triplets")
    check_triplets_fit(t, n, f"{name} {spec}")
    return t


_SHARED = {"val_in_train": "validation triplets are training triplets too",
           "test_in_train": "test triplets are training triplets too",
           "test_in_val": "test triplets are validation triplets too"}


def _features(spec: str, file_names: Optional[str] = None, key: Optional[str] = None) -> np.ndarray:
    x = resolve_features(spec, file_names=file_names, key=key)
    # Bundled features are fitted as float32, as they always were (SPoSE-49 is stored as float64).
    return x.astype(np.float32) if is_bundled(spec) else x


def load_inputs(options: TeacherOptions) -> TeacherInputs:
    """Read every input ``options`` names and make the train/validation split."""
    cfg = options.fit
    x = _features(options.features, options.file_names, options.key)
    n, d = x.shape
    trip = _triplets(options.triplets, n, "triplets")
    if options.val_triplets:
        train, val = trip, _triplets(options.val_triplets, n, "val_triplets")
        split = {"source": "given", "n_train": int(len(train)), "n_val": int(len(val)), "dropped": 0}
    else:
        sp = train_val_split(trip, cfg.val_fraction, cfg.split, n, cfg.seed)
        if len(sp.train) == 0 or len(sp.val) == 0:
            raise ValueError(f"the {cfg.split} split left {len(sp.train)} training and {len(sp.val)} "
                             "validation triplets")
        train, val = trip[sp.train], trip[sp.val]
        split = {"source": f"{cfg.split} split, val_fraction={cfg.val_fraction}",
                 "n_train": int(len(train)), "n_val": int(len(val)), "dropped": int(sp.dropped)}
    test = _triplets(options.test_triplets, n, "test_triplets") if options.test_triplets else None
    shared: Dict[str, int] = {}
    if options.val_triplets:
        shared["val_in_train"] = check_held_out("validation triplets", options.val_triplets, val,
                                                 "training triplets", options.triplets, trip)
    if test is not None:
        shared["test_in_train"] = check_held_out("test triplets", options.test_triplets, test,
                                                  "training triplets", options.triplets, trip)
        if options.val_triplets:
            shared["test_in_val"] = check_held_out("test triplets", options.test_triplets, test,
                                                    "validation triplets", options.val_triplets, val)
    split["shared_triplets"] = shared
    return TeacherInputs(
        features=x, train=train, val=val,
        test=test,
        local=_features(options.local_features) if options.local_features else None,
        init=load_transform(options.init, dim_in=d) if options.init else None,
        split=split,
        names={"features": options.features, "triplets": options.triplets, "val_triplets": options.val_triplets,
               "test_triplets": options.test_triplets, "n_objects": int(n), "dim": int(d)},
    )


# --------------------------------------------------------------------- fitting


def _transformed(model: AffineTransform, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x.to(model.weight.dtype))


def _calibrated(model: AffineTransform, z: torch.Tensor, val: torch.Tensor,
                backend: Optional[str]) -> CalibrationResult:
    """Fit the temperature on the validation triplets and store it in ``model``."""
    cal = calibrate_temperature(z, val, backend=backend)
    model.set_temperature(cal.temperature)
    return cal


def _dense_fit(options: TeacherOptions, inputs: TeacherInputs) -> tuple[AffineTransform, SoftFit]:
    """Sample and label ``soft_triplets`` triplets, then the dense fit with its own lambda search.

    The object sets of the validation and test triplets are never sampled: the validation triplets
    calibrate and score, the test triplets only score.
    """
    held = [t for t in (inputs.val, inputs.test) if t is not None]
    dopts = DenseOptions(num=int(options.soft_triplets), temperature=options.soft_temperature, seed=options.fit.seed)
    targets = dense_targets(options.soft_targets, len(inputs.features), dopts, strata=options.soft_strata,
                            exclude=np.concatenate(held))
    dense = replace(options.dense, seed=options.fit.seed, backend=options.fit.backend,
                    progress=options.fit.progress)
    model, fit = fit_dense(inputs.features, targets, inputs.train, dense)
    return model, SoftFit(targets.source, targets.info, fit, None)


def _soft_refit(options: TeacherOptions, inputs: TeacherInputs, report: FitReport, x: torch.Tensor,
                scored: torch.Tensor, val: torch.Tensor, metrics: Dict[str, Any],
                say: Say) -> tuple[AffineTransform, SoftFit]:
    """Refit to soft targets, score and calibrate it: the dense fit with ``soft_triplets``, else
    the chosen hyper-parameters refitted to the human triplets' own targets (one fit, no search)."""
    cfg = options.fit
    if options.soft_triplets is not None and options.soft_targets != "repeats":
        say(f"fit-teacher: dense soft targets ({options.soft_targets}, {options.soft_triplets} triplets)")
        model, fit = _dense_fit(options, inputs)
        say(f"fit-teacher: dense fit chose lambda={fit.fit.chosen['lam']:g} ({fit.fit.seconds:.1f} s)"
            + "".join(f"; {n}" for n in fit.fit.extensions))
        return _score_soft(options, model, fit, x, scored, val, metrics)
    soft = soft_targets(options.soft_targets, len(inputs.features), inputs.train, inputs.val, cfg.backend)
    say(f"fit-teacher: soft-target fit ({soft.source})")
    chosen = report.chosen
    soft_cfg = replace(cfg, lambdas=(chosen["lam"],), folds=1, alphas=(chosen["alpha"],), taus=(chosen["tau"],))
    model, fit = fit_transform(inputs.features, soft.train, config=soft_cfg, val_triplets=soft.val,
                               soft_targets=soft.train_targets, val_soft_targets=soft.val_targets,
                               local_features=inputs.local, init=inputs.init)
    return _score_soft(options, model, SoftFit(soft.source, soft.info, fit, None), x, scored, val, metrics)


def _score_soft(options: TeacherOptions, model: AffineTransform, soft: SoftFit, x: torch.Tensor,
                scored: torch.Tensor, val: torch.Tensor, metrics: Dict[str, Any]) -> tuple[AffineTransform, SoftFit]:
    backend = options.fit.backend
    z = _transformed(model, x)
    metrics["teacher (soft targets)"] = uncertainty_metrics(z, scored, backend=backend).to_dict()
    if options.calibrate:
        soft.calibration = _calibrated(model, z, val, backend)
        metrics["teacher (soft targets) + calibration"] = uncertainty_metrics(
            z, scored, soft.calibration.temperature, backend=backend).to_dict()
    return model, soft


def check_dense_options(options: TeacherOptions, n: int) -> None:
    """Refuse bad dense-target options before any fitting: the count, T_h, the embedding, the strata."""
    DenseOptions(num=int(options.soft_triplets), temperature=options.soft_temperature).validate(n)
    resolve_embedding(options.soft_targets, n)
    if options.soft_strata:
        cats, _ = resolve_categories(options.soft_strata)
        if cats.ndim != 2 or cats.shape[0] != n:
            raise ValueError(f"--soft-strata {options.soft_strata}: the category matrix must have shape ({n}, K), "
                             f"got {cats.shape}")


def run_teacher(inputs: TeacherInputs, options: TeacherOptions, say: Say = _quiet) -> TeacherFitResult:
    """Fit, calibrate and refit to soft targets as ``options`` asks, on already loaded ``inputs``."""
    cfg = options.fit
    backend = cfg.backend
    model, report = fit_transform(inputs.features, inputs.train, config=cfg, val_triplets=inputs.val,
                                  local_features=inputs.local, init=inputs.init)
    say(f"fit-teacher: chosen lambda={report.chosen['lam']:g}, val loss {report.final['val_loss']:.4f}, "
        f"val accuracy {100 * report.final['val_accuracy']:.2f}% ({report.seconds:.1f} s)")
    metrics_on, scored_np = ("test", inputs.test) if inputs.test is not None else ("val", inputs.val)
    x = torch.from_numpy(np.ascontiguousarray(inputs.features))
    scored = torch.from_numpy(np.ascontiguousarray(scored_np))
    val = torch.from_numpy(np.ascontiguousarray(inputs.val))
    with torch.no_grad():
        raw = float(odd_one_out_accuracy(x, scored, similarity="cosine", backend=backend))
    metrics: Dict[str, Dict[str, Any]] = {"raw (cosine)": {"accuracy": raw}}
    z = _transformed(model, x)
    metrics["teacher"] = uncertainty_metrics(z, scored, backend=backend).to_dict()
    cal = None
    if options.calibrate:
        cal = _calibrated(model, z, val, backend)
        metrics["teacher + calibration"] = uncertainty_metrics(z, scored, cal.temperature, backend=backend).to_dict()
        say(f"fit-teacher: temperature {cal.temperature:.4f} (val NLL {cal.nll_before:.4f} -> {cal.nll_after:.4f})")
    final, soft = model, None
    if options.soft_targets:
        final, soft = _soft_refit(options, inputs, report, x, scored, val, metrics, say)
    return TeacherFitResult(final, model, report, cal, soft, metrics_on, metrics, inputs.names, inputs.split)


def fit_teacher(options: TeacherOptions, say: Say = _quiet) -> TeacherFitResult:
    """Load the inputs ``options`` names and run the whole teacher flow (see the module docstring).

    Args:
        options: inputs and fit options.
        say: receives one-line progress messages (e.g. ``print``); silent by default.
    """
    start = time.perf_counter()
    options.fit.validate()
    options.dense.validate()
    if options.soft_triplets is not None and not options.soft_targets:
        raise ValueError("--soft-triplets needs --soft-targets (a similarity embedding such as things:spose49)")
    inputs = load_inputs(options)
    if options.soft_triplets is not None and options.soft_targets != "repeats":
        check_dense_options(options, len(inputs.features))
    t = inputs.test
    say(f"fit-teacher: features {inputs.features.shape[0]}x{inputs.features.shape[1]}, {len(inputs.train)} train / "
        f"{len(inputs.val)} val triplets" + (f", {len(t)} test" if t is not None else "")
        + "".join(f"; {k} {_SHARED[what]} (repeated trials)" for what, k in inputs.split.get("shared_triplets", {}).items() if k))
    result = run_teacher(inputs, options, say)
    result.seconds = time.perf_counter() - start
    return result


# --------------------------------------------------------------------- outputs


def write_outputs(result: TeacherFitResult, out: Union[str, Path], safetensors: bool = False) -> Dict[str, Any]:
    """Write ``OUT/transform.npz`` (and ``transform_hard.npz`` after a soft-target refit,
    ``transform.safetensors`` when asked), ``OUT/lambda_curve.png`` and ``OUT/report.json``.

    Returns the report written (``outputs`` names the files; ``notes`` says what was skipped).
    """
    out = Path(out)
    if result.soft is not None:
        # The hard-label teacher is kept for comparison; the soft-target one is the result.
        save_transform(out / "transform_hard.npz", result.hard_transform)
    save_transform(out / "transform.npz", result.transform)
    if safetensors:
        save_transform(out / "transform.safetensors", result.transform)
    report = result.to_dict()
    plot = plot_lambda_search(report["fit"], out / "lambda_curve.png")
    report["outputs"] = {"transform": str(out / "transform.npz"), "plot": None if plot is None else str(plot)}
    report["notes"] = [] if plot is not None else ["matplotlib is not installed; no plot written"]
    report["seconds"] = report.pop("seconds")  # last, as report.json has always had it
    atomic_write_json(out / "report.json", report)
    return report
