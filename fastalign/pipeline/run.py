"""``fastalign run``: all of AligNet on one set of objects, as cached stages.

1. ``data``      resolve and check every input; split the human triplets into
                 teacher-train, calibration and held-out parts (held-out
                 triplets are never trained, calibrated or selected on).
2. ``teacher``   fit the affine transform on the teacher features: by default
                 KL to the choice distributions of ``data.human_embedding``
                 on ``teacher.soft_triplets`` sampled triplets (lambda by the
                 NLL of a validation split of the teacher-train human
                 triplets); without a human embedding, or with
                 ``teacher.recipe = "human"``, to the human triplets alone
                 (lambda by cross-validation). Then calibrate its temperature.
3. ``triplets``  cluster the teacher representation, sample soft-labelled
                 triplets (train store + item-disjoint validation store).
4. ``student``   distil the student with decay-to-init: a ``FeatureStudent``
                 on frozen features, or an image backbone (timm, open_clip
                 or any module) on one image per object.
5. ``evaluate``  score raw teacher features, teacher, raw student features and
                 student on the held-out human triplets; report and figures.

Every stage calls the public API that users call.
"""

from __future__ import annotations

import copy
import hashlib
import sys
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, Iterable

import numpy as np
import torch

from ..common.calibration import reliability
from ..common.timing import StageTimer
from ..distill import DistillConfig, Student, build_student, distill, embed_student
from ..distill.export import export_embeddings, sidecar_path
from ..eval.calibration import plot_reliability
from ..io import atomic_save_npy, atomic_save_npz, atomic_write_json, save_triplets_txt
from ..io.lock import hold_folder_lock
from ..io.resolve import feature_path, resolve_categories
from ..ops import odd_one_out_probs
from ..teacher import (
    DenseFitConfig,
    DenseOptions,
    calibrate_temperature,
    dense_targets,
    fit_dense,
    fit_transform,
    plot_lambda_search,
    save_transform,
)
from ..triplets.generate import GenerateOptions, generate
from ..triplets.heldout import heldout_rows
from .config import RunConfig
from .inputs import Inputs
from .outdir import check_run_folder, mark_run_folder
from .report import write_report
from .stages import Stage, StageResult, StageRunner, digest_files, spec_inputs

__all__ = ["STAGES", "Inputs", "check_student", "run_pipeline", "student_config"]

STAGES = ("data", "teacher", "triplets", "student", "evaluate")


# ------------------------------------------------------------------ stages


def _split_human(triplets: np.ndarray, heldout: float, seed: int):
    """Triplet-level split: (teacher-train, calibration, held-out); calibration is 1/8 of the rest.
    ``fastalign split-triplets`` holds out the same rows (``fastalign.triplets.heldout``)."""
    rows = heldout_rows(len(triplets), heldout, seed)
    n_cal = max(1, len(rows.rest) // 8)
    return triplets[rows.rest[n_cal:]], triplets[rows.rest[:n_cal]], triplets[rows.heldout]


def _stage_data(cfg: RunConfig, inputs: Inputs, say):
    def body(stage_dir: Path):
        train, calib, held = _split_human(inputs.triplets, cfg.data.heldout_fraction, cfg.data.seed)
        path = stage_dir / "human_triplets.npz"
        atomic_save_npz(path, train=train, calibration=calib, heldout=held)
        say(f"  human triplets: {len(train)} teacher-train, {len(calib)} calibration, {len(held)} held-out")
        return [path], {"n_train": len(train), "n_calibration": len(calib), "n_heldout": len(held),
                        "n_objects": inputs.n}

    # The human triplets' content keys the split (the digest alone counts rows and sums indices).
    return Stage("data", {"data": asdict(cfg.data), "inputs": inputs.digest()}, [], body,
                 inputs=spec_inputs({"human_triplets": cfg.data.human_triplets}))


def _load_split(out: Path) -> Dict[str, np.ndarray]:
    with np.load(out / "data" / "human_triplets.npz") as z:
        return {k: z[k] for k in z.files}


def teacher_recipe(cfg: RunConfig) -> str:
    """The recipe the teacher stage runs: ``teacher.recipe``, or "human" without a human embedding."""
    return cfg.teacher.recipe if cfg.data.human_embedding else "human"


def _strata(cfg: RunConfig) -> np.ndarray:
    """The category matrix ``teacher.strata`` names, as a contiguous 0/1 array."""
    return np.ascontiguousarray(resolve_categories(cfg.teacher.strata)[0], dtype=np.uint8)


def check_teacher(cfg: RunConfig, inputs: Inputs) -> None:
    """Refuse dense-teacher options that cannot work with these inputs, before any stage runs."""
    if teacher_recipe(cfg) != "dense":
        return
    DenseOptions(num=cfg.teacher.soft_triplets, temperature=cfg.teacher.human_temperature).validate(
        inputs.n, "teacher.soft_triplets")
    if cfg.teacher.strata and _strata(cfg).shape[0] != inputs.n:
        raise ValueError(f"teacher.strata {cfg.teacher.strata}: the category matrix has {_strata(cfg).shape[0]} rows "
                         f"but there are {inputs.n} objects")


def _fit_dense_teacher(cfg: RunConfig, inputs: Inputs, split: Dict[str, np.ndarray], say):
    """KL to the human embedding on sampled triplets; held-out and calibration object sets never sampled."""
    t = cfg.teacher
    opts = DenseOptions(num=t.soft_triplets, temperature=t.human_temperature, seed=cfg.data.seed)
    targets = dense_targets(inputs.human, inputs.n, opts, strata=_strata(cfg) if t.strata else None,
                            exclude=np.concatenate([split["heldout"], split["calibration"]]))
    targets.source = f"embedding:{cfg.data.human_embedding}"
    say(f"  {len(targets.train) + len(targets.val)} triplets labelled by {cfg.data.human_embedding} "
        f"(T_h = {t.human_temperature:g}); held-out and calibration object sets excluded")
    dense = DenseFitConfig(lambdas=tuple(t.dense_lambdas), max_extensions=t.max_extensions,
                           human_weight=t.human_weight, seed=cfg.data.seed, progress=False)
    transform, report = fit_dense(inputs.teacher, targets, split["train"], dense)
    for note in report.extensions:
        say(f"  {note}")
    say(f"  dense fit: lambda {report.chosen['lam']:g} chosen by human validation NLL ({report.seconds:.1f} s)")
    return transform, {"recipe": "dense", "targets": {"source": targets.source, **targets.info},
                       **report.to_dict()}


def _fit_teacher(cfg: RunConfig, inputs: Inputs, split: Dict[str, np.ndarray], say):
    """(transform, the fit's report as a dict) for the recipe ``teacher_recipe`` names."""
    t = cfg.teacher
    if teacher_recipe(cfg) == "dense":
        return _fit_dense_teacher(cfg, inputs, split, say)
    if t.recipe == "dense":
        say("  no data.human_embedding: the teacher is fitted to the human triplets alone (teacher.recipe human)")
    transform, report = fit_transform(inputs.teacher, split["train"], lambdas=tuple(t.lambdas), folds=t.folds,
                                      val_fraction=t.val_fraction, seed=cfg.data.seed, progress=False)
    return transform, {"recipe": "human", **report.to_dict()}


def _teacher_key(cfg: RunConfig) -> Dict[str, Any]:
    """The teacher stage's key: its options, the recipe it runs and the content its targets come from."""
    key: Dict[str, Any] = {"teacher": asdict(cfg.teacher), "recipe": teacher_recipe(cfg)}
    if key["recipe"] == "dense":
        key["human_embedding"] = digest_files([feature_path(cfg.data.human_embedding)])
        if cfg.teacher.strata:
            key["strata"] = hashlib.sha256(_strata(cfg).tobytes()).hexdigest()
    return key


def _stage_teacher(cfg: RunConfig, inputs: Inputs, out: Path, say):
    def body(stage_dir: Path):
        split = _load_split(out)
        t = cfg.teacher
        transform, fit_report = _fit_teacher(cfg, inputs, split, say)
        x = torch.from_numpy(np.ascontiguousarray(inputs.teacher, dtype=np.float32))
        with torch.no_grad():
            z = transform(x)
        calib = torch.from_numpy(split["calibration"])
        metrics: Dict[str, Any] = {"fit": fit_report}
        figures = []
        if t.calibrate:
            cal = calibrate_temperature(z, calib)
            transform.temperature.fill_(cal.temperature)
            metrics["calibration"] = cal.to_dict()
            say(f"  calibrated T = {cal.temperature:.3g} (NLL {cal.nll_before:.4f} -> {cal.nll_after:.4f} "
                f"on {cal.n} calibration triplets)")
            held = torch.from_numpy(split["heldout"])
            before = reliability(odd_one_out_probs(z, held, temperature=1.0))
            after = reliability(odd_one_out_probs(z, held, temperature=cal.temperature))
            figures.append(plot_reliability(before, after, stage_dir / "reliability.png",
                                            labels=("T = 1", f"calibrated T = {cal.temperature:.2f}"),
                                            title="Teacher reliability on held-out human triplets"))
        save_transform(stage_dir / "transform.npz", transform)
        figures.append(plot_lambda_search(fit_report, stage_dir / "lambda_search.png"))
        emb_dir = out / "embeddings"
        emb_dir.mkdir(exist_ok=True)
        atomic_save_npy(emb_dir / "teacher.npy", z.numpy().astype(np.float32))
        atomic_write_json(stage_dir / "report.json", metrics)
        outputs = [stage_dir / "transform.npz", emb_dir / "teacher.npy", stage_dir / "report.json"]
        return outputs + [f for f in figures if f is not None], metrics

    return Stage("teacher", _teacher_key(cfg), ["data"], body)


def _stage_triplets(cfg: RunConfig, inputs: Inputs, out: Path, say):
    def body(stage_dir: Path):
        tc = cfg.triplets
        store = stage_dir / "store"
        opts = GenerateOptions(
            embeddings=inputs.teacher_source, transform=str(out / "teacher" / "transform.npz"), out=str(store),
            num=tc.num, val_num=tc.val_num, strategy=tc.strategy, clusters=tc.clusters, seed=cfg.data.seed,
            kmeans_normalize=tc.normalize, sim_dtype="float32", resume=store.exists(), progress=False,
        )
        # The stage folder only survives an interrupted attempt with the same
        # options (see stages.py), so an existing store is always resumable.
        summary = generate(opts, say=lambda s: say("  " + s))
        # The manifests and shards are deterministic for the options; summary.json
        # and run.json hold timings, so they stay out of the stage's digest.
        files = sorted(p for p in store.rglob("*") if p.is_file() and (p.name == "manifest.json" or p.suffix == ".bin"))
        metrics = {"splits": [asdict(s) for s in summary.splits], "seconds": summary.seconds,
                   "temperature": summary.temperature}
        return files, metrics

    return Stage("triplets", asdict(cfg.triplets), ["teacher"], body, resumes=True)


def student_config(cfg: RunConfig, inputs: Inputs, out: Path) -> DistillConfig:
    """The ``DistillConfig`` of the student stage: the ``[student]`` section plus what
    the pipeline provides (``pipeline.config.PIPELINE_OWNED``), built and validated
    before any work."""
    dc = copy.deepcopy(cfg.student)
    stage_dir = out / "student"
    if inputs.images:
        dc.data.items = "images"
        dc.data.image_root = str(inputs.image_root)
        dc.data.file_names = str(inputs.file_names_path)
    else:
        dc.student.features = inputs.student_source
        dc.data.num_workers = 0  # the inputs are row indices: nothing to decode in workers
    store = out / "triplets" / "store"
    dc.data.source = "store"
    dc.data.store = str(store)
    dc.data.val_store = str(store / "val") if (store / "val").exists() else ""
    dc.train.micro_batch = dc.train.micro_batch or (64 if inputs.images else 4096)
    dc.train.ckpt_every = dc.train.ckpt_every or max(1, dc.train.steps // 4)
    dc.train.seed = cfg.data.seed
    dc.train.out_dir = str(stage_dir / "run")
    dc.eval.human_triplets = str(stage_dir / "calibration_triplets.txt")
    return dc.validate(prefix="student.")


def check_student(cfg: RunConfig, inputs: Inputs, out: Path) -> None:
    """Fail now, not after the teacher and triplet stages, on a student that
    cannot be built (a missing package, weights file or module)."""
    dc = student_config(cfg, inputs, out)
    if inputs.images:
        build_student(dc.student)


def _stage_student(cfg: RunConfig, inputs: Inputs, out: Path, say, progress: bool = True):
    def body(stage_dir: Path):
        split = _load_split(out)
        save_triplets_txt(stage_dir / "calibration_triplets.txt", split["calibration"])
        with warnings.catch_warnings():  # check_student said them before any stage ran
            warnings.simplefilter("ignore")
            dc = student_config(cfg, inputs, out)
        # Showing the bar or not changes no result, so the stage key keeps the configured value.
        dc.train.progress = dc.train.progress and progress
        images = dict(image_root=str(inputs.image_root), file_names=inputs.file_names) if inputs.images else {}
        device = "cuda" if dc.train.device == "cuda" or (dc.train.device == "auto" and torch.cuda.is_available()) \
            else "cpu"
        emb_dir = out / "embeddings"
        emb_dir.mkdir(exist_ok=True)
        outputs = []
        metrics: Dict[str, Any] = {}
        if inputs.images:
            # The image model's own representation before distillation: the
            # "raw student" the report compares against.
            say("  embedding the images with the untrained backbone")
            torch.manual_seed(dc.train.seed)
            raw, ok = embed_student(Student(build_student(dc.student).backbone), dc, **images,
                                    micro_batch=dc.train.micro_batch, device=device)
            atomic_save_npy(emb_dir / "student_raw.npy", raw)
            outputs.append(emb_dir / "student_raw.npy")
            metrics["images_failed"] = int((~ok).sum())
            if metrics["images_failed"]:
                say(f"  {metrics['images_failed']} images could not be decoded: their rows are zero")
        result = distill(dc)
        # With its sidecar (the training temperature), so that `fastalign evaluate` on
        # embeddings/student.npy scores it as the report does.
        student_npy = emb_dir / "student.npy"
        if inputs.images:
            export_embeddings(result.checkpoint, student_npy, **images, micro_batch=dc.train.micro_batch,
                              device=device)
        else:
            export_embeddings(result.checkpoint, student_npy, features=inputs.student_source)
        outputs += [student_npy, sidecar_path(student_npy)] + ([result.curves] if result.curves else [])
        metrics.update({"final": result.metrics, "steps": result.steps,
                        "checkpoint": str(Path(result.checkpoint).relative_to(out))})
        return outputs, metrics

    # The student's own inputs are part of its key: the triplets do not depend on them.
    return Stage("student", {"student": asdict(cfg.student), "inputs": inputs.student_digest()}, ["triplets"], body,
                 resumes=True)


def _stage_evaluate(cfg: RunConfig, inputs: Inputs, out: Path, runner: StageRunner, say,
                    progress: bool = True):
    def body(stage_dir: Path):
        return write_report(cfg, inputs, out, stage_dir, runner, say, progress)

    d = cfg.data
    key = {**asdict(cfg.eval), "human_rdms": list(d.human_rdms), "human_rdm_items": list(d.human_rdm_items),
           "levels_data": d.levels_data, "allow_missing": d.allow_missing,
           "measured_human_data": inputs.measured_digest()}
    return Stage("evaluate", key, ["data", "teacher", "student"], body,
                 inputs=spec_inputs({"categories": cfg.data.categories, "human_embedding": cfg.data.human_embedding,
                                     "human_triplets": cfg.data.human_triplets}))


# ------------------------------------------------------------------ driver


def run_pipeline(cfg: RunConfig, out: Path, force: Iterable[str] = (), say: Callable[[str], None] = None,
                 progress: bool = True, overwrite: bool = False):
    """Run (or resume) every stage; returns the evaluation metrics.

    ``say`` takes the stage lines (default: stderr); ``progress=False`` hides the progress bars
    of the student and the evaluation (``fastalign run --quiet``) without touching any stage's key.
    ``out`` must be new, empty or a run's own folder (``ForeignFiles`` otherwise, before any work)
    unless ``overwrite``; a stage folder holding files the run did not write is never cleared.
    """
    say = say or (lambda s: print(s, file=sys.stderr, flush=True))
    out = Path(out)
    force = list(force)
    if "all" in force:
        force = list(STAGES)
    bad = [f for f in force if f not in STAGES]
    if bad:
        raise ValueError(f"--force names unknown stage(s) {bad}; stages are {list(STAGES)} or 'all'")
    timer = StageTimer()
    check_run_folder(out, overwrite)  # before the lock, whose file would make any folder look used
    # One run per folder: a second one would interleave its stages' writes with ours.
    with hold_folder_lock(out, "fastalign run"), timer("run"):
        evaluated = _run_stages(cfg, out, force, say, progress)
    # A stage redone to the same bytes leaves the evaluation cached: say the report is the earlier one.
    kept = " (unchanged: the evaluation was cached, so its stages table is of the run that wrote it)" \
        if evaluated.cached else ""
    say(f"done in {timer.seconds['run']:.1f} s: {out / 'report.md'}{kept}")
    return evaluated.metrics


def _run_stages(cfg: RunConfig, out: Path, force: Iterable[str], say: Callable[[str], None],
                progress: bool) -> StageResult:
    inputs = Inputs(cfg)  # every input error surfaces here, before any long work
    check_student(cfg, inputs, out)
    check_teacher(cfg, inputs)
    out.mkdir(parents=True, exist_ok=True)
    # After the checks: a run refused for its inputs leaves no folder behind (the lock removes one it made empty).
    mark_run_folder(out)
    atomic_write_json(out / "config.json", cfg.to_dict())
    runner = StageRunner(out, force, say)
    stages = [
        _stage_data(cfg, inputs, say),
        _stage_teacher(cfg, inputs, out, say),
        _stage_triplets(cfg, inputs, out, say),
        _stage_student(cfg, inputs, out, say, progress),
    ]
    for i, stage in enumerate(stages, 1):
        runner.run(stage, i, len(STAGES))
    return runner.run(_stage_evaluate(cfg, inputs, out, runner, say, progress), len(STAGES), len(STAGES))
