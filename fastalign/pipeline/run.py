"""``fastalign run``: all of AligNet on one set of objects, as cached stages.

1. ``data``      resolve and check every input; split the human triplets into
                 teacher-train, calibration and held-out parts (held-out
                 triplets are never trained, calibrated or selected on).
2. ``teacher``   fit the affine transform on the teacher features (lambda by
                 cross-validation), calibrate its temperature.
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

import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np

from ..eval.sources import resolve_features, resolve_triplets
from ..io import atomic_save_npy, atomic_save_npz, atomic_write, atomic_write_json
from .config import RunConfig, split_spec
from .stages import Stage, StageRunner, digest_files

STAGES = ("data", "teacher", "triplets", "student", "evaluate")


# ------------------------------------------------------------------ inputs


def _feature_path(spec: str) -> Path:
    """A file path for a features spec (``things:KEY`` -> the bundled file)."""
    src, key = split_spec(spec)
    if src == "things":
        from ..datasets.things import FEATURES, ROOT

        if key not in FEATURES:
            raise ValueError(f"unknown bundled features {spec!r}; expected one of {['things:' + k for k in FEATURES]}")
        return ROOT / FEATURES[key]
    p = Path(src)
    if not p.exists():
        raise FileNotFoundError(f"features file {p} does not exist")
    return p


def _categories(spec: str) -> Tuple[np.ndarray, List[str]]:
    from ..eval.sources import load_categories

    cats, names = load_categories(spec)
    return np.asarray(cats), list(names or [f"category {i}" for i in range(np.asarray(cats).shape[1])])


def _file_names(d, images: bool) -> Tuple[Optional[Path], List[str]]:
    """``data.file_names``: one name per object, in object order (thingsvision's
    ``file_names.txt``). An image student reads these images under
    ``data.student_images``, and every one of them must exist."""
    from ..distill.data import read_file_names

    if images and (not d.student_images or not d.file_names):
        raise ValueError("an image student (student.kind timm, open_clip or module) needs data.student_images "
                         "(a folder) and data.file_names (one image per object, in object order)")
    if not images and d.student_images:
        raise ValueError("data.student_images is read by an image student only: set student.kind to timm, "
                         "open_clip or module")
    if not d.file_names:
        return None, []
    listing = Path(d.file_names)
    if not listing.is_file():
        raise FileNotFoundError(f"data.file_names {listing} does not exist")
    names = read_file_names(str(listing))
    if images:
        root = Path(d.student_images)
        if not root.is_dir():
            raise FileNotFoundError(f"data.student_images {root} is not a folder")
        missing = [n for n in names if not (root / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} of {len(names)} images in {listing} are missing under {root}, "
                                    f"e.g. {missing[:3]}")
    return listing, names


def _digest_images(listing: Path, root: Path, names: List[str]) -> str:
    """The list file's bytes and every image's size and mtime (hashing the
    pixels of a million images would cost more than the stage it guards)."""
    import hashlib

    h = hashlib.sha256(digest_files([listing]).encode())
    for name in names:
        st = (root / name).stat()
        h.update(f"{name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


class Inputs:
    """Every input of the run, loaded and cross-checked once, before any long work."""

    def __init__(self, cfg: RunConfig):
        d = cfg.data
        self.teacher_path = _feature_path(d.teacher_features)
        self.teacher = resolve_features(d.teacher_features)
        self.images = cfg.student.kind != "features"
        self.file_names_path, self.file_names = _file_names(d, self.images)
        self.image_root: Optional[Path] = Path(d.student_images) if self.images else None
        if self.images:
            self.student_path, self.student = None, None
        else:
            self.student_path = _feature_path(d.student_features)
            self.student = resolve_features(d.student_features)
        self.human = resolve_features(d.human_embedding) if d.human_embedding else None
        self.triplets = resolve_triplets(d.human_triplets)
        self.categories, self.category_names = _categories(d.categories) if d.categories else (None, [])
        n = self.teacher.shape[0]
        if self.file_names_path is not None and len(self.file_names) != n:
            raise ValueError(f"data.file_names lists {len(self.file_names)} objects but the teacher features have "
                             f"{n} rows; every input must list the same objects in the same order")
        for name, arr in [("student features", self.student), ("human embedding", self.human),
                          ("categories", self.categories)]:
            if arr is not None and arr.shape[0] != n:
                raise ValueError(f"{name} have {arr.shape[0]} rows but the teacher features have {n}; "
                                 "every input must list the same objects in the same order")
        from ..io import check_triplets_fit

        check_triplets_fit(self.triplets, n, "human triplets")
        if not 0.0 < d.heldout_fraction < 1.0:
            raise ValueError(f"data.heldout_fraction must be in (0, 1), got {d.heldout_fraction}")
        if len(self.triplets) < 100:
            raise ValueError(f"need at least 100 human triplets, got {len(self.triplets)}")
        self.n = n

    def student_digest(self) -> str:
        """What the student reads besides the triplets: its features or images."""
        if self.images:
            return _digest_images(self.file_names_path, self.image_root, self.file_names)
        return digest_files([self.student_path])

    def digest(self) -> str:
        return (digest_files([self.teacher_path]) + f":{self.student_digest()}:{len(self.triplets)}:"
                f"{int(self.triplets.sum())}")


# ------------------------------------------------------------------ stages


def _split_human(triplets: np.ndarray, heldout: float, seed: int):
    """Triplet-level split: (teacher-train, calibration, held-out); calibration is 1/8 of the rest."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(triplets))
    n_held = int(round(heldout * len(triplets)))
    rest = perm[n_held:]
    n_cal = max(1, len(rest) // 8)
    return triplets[rest[n_cal:]], triplets[rest[:n_cal]], triplets[perm[:n_held]]


def _stage_data(cfg: RunConfig, inputs: Inputs, say):
    def body(stage_dir: Path):
        train, calib, held = _split_human(inputs.triplets, cfg.data.heldout_fraction, cfg.data.seed)
        path = stage_dir / "human_triplets.npz"
        atomic_save_npz(path, train=train, calibration=calib, heldout=held)
        say(f"  human triplets: {len(train)} teacher-train, {len(calib)} calibration, {len(held)} held-out")
        return [path], {"n_train": len(train), "n_calibration": len(calib), "n_heldout": len(held),
                        "n_objects": inputs.n}

    return Stage("data", {"data": asdict(cfg.data), "inputs": inputs.digest()}, [], body)


def _load_split(out: Path) -> Dict[str, np.ndarray]:
    with np.load(out / "data" / "human_triplets.npz") as z:
        return {k: z[k] for k in z.files}


def _stage_teacher(cfg: RunConfig, inputs: Inputs, out: Path, say):
    def body(stage_dir: Path):
        import torch

        from ..eval.calibration import plot_reliability, reliability
        from ..teacher import save_transform
        from ..teacher import calibrate_temperature, fit_transform

        split = _load_split(out)
        t = cfg.teacher
        transform, report = fit_transform(inputs.teacher, split["train"], lambdas=tuple(t.lambdas), folds=t.folds,
                                          val_fraction=t.val_fraction, seed=cfg.data.seed)
        x = torch.from_numpy(np.ascontiguousarray(inputs.teacher, dtype=np.float32))
        with torch.no_grad():
            z = transform(x)
        calib = torch.from_numpy(split["calibration"])
        metrics: Dict[str, Any] = {"fit": report.to_dict()}
        figures = []
        if t.calibrate:
            cal = calibrate_temperature(z, calib)
            transform.temperature.fill_(cal.temperature)
            metrics["calibration"] = cal.to_dict()
            say(f"  calibrated T = {cal.temperature:.3g} (NLL {cal.nll_before:.4f} -> {cal.nll_after:.4f} "
                f"on {cal.n} calibration triplets)")
            held = torch.from_numpy(split["heldout"])
            import fastalign

            before = reliability(fastalign.odd_one_out_probs(z, held, temperature=1.0))
            after = reliability(fastalign.odd_one_out_probs(z, held, temperature=cal.temperature))
            figures.append(plot_reliability(before, after, stage_dir / "reliability.png",
                                            labels=("T = 1", f"calibrated T = {cal.temperature:.2f}"),
                                            title="Teacher reliability on held-out human triplets"))
        save_transform(stage_dir / "transform.npz", transform)
        figures.append(_plot_lambda_search(report.to_dict(), stage_dir / "lambda_search.png"))
        emb_dir = out / "embeddings"
        emb_dir.mkdir(exist_ok=True)
        atomic_save_npy(emb_dir / "teacher.npy", z.numpy().astype(np.float32))
        atomic_write_json(stage_dir / "report.json", metrics)
        outputs = [stage_dir / "transform.npz", emb_dir / "teacher.npy", stage_dir / "report.json"]
        return outputs + [f for f in figures if f is not None], metrics

    return Stage("teacher", asdict(cfg.teacher), ["data"], body)


def _stage_triplets(cfg: RunConfig, inputs: Inputs, out: Path, say):
    def body(stage_dir: Path):
        from ..triplets.generate import GenerateOptions, generate

        tc = cfg.triplets
        store = stage_dir / "store"
        opts = GenerateOptions(
            embeddings=str(inputs.teacher_path), transform=str(out / "teacher" / "transform.npz"), out=str(store),
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

    return Stage("triplets", asdict(cfg.triplets), ["teacher"], body)


def student_config(cfg: RunConfig, inputs: Inputs, out: Path):
    """The ``DistillConfig`` of the student stage (built and validated before any work)."""
    from ..distill import DistillConfig

    sc = cfg.student
    dc = DistillConfig()
    dc.student.kind = sc.kind
    dc.student.head = sc.head
    dc.student.head_init = sc.head_init
    dc.student.head_dim = sc.dim_out
    if inputs.images:
        dc.student.model_name = sc.model_name
        dc.student.model_kwargs = dict(sc.model_kwargs)
        dc.student.weights = sc.weights
        dc.student.pooling = sc.pooling
        dc.student.module = sc.module
        dc.data.items = "images"
        dc.data.image_root = str(inputs.image_root)
        dc.data.file_names = str(inputs.file_names_path)
        dc.data.num_workers = sc.num_workers
        dc.data.image_size = sc.image_size
    else:
        dc.student.features = str(inputs.student_path)
    dc.data.source = "store"
    dc.data.store = str(out / "triplets" / "store")
    val = out / "triplets" / "store" / "val"
    dc.data.val_store = str(val) if val.exists() else ""
    dc.loss.divergence = sc.divergence
    dc.loss.temperature = sc.temperature
    dc.optim.lr = sc.lr
    dc.optim.weight_decay = sc.weight_decay
    dc.optim.warmup_steps = sc.warmup_steps
    dc.train.steps = sc.steps
    dc.train.batch_triplets = sc.batch_size
    dc.train.micro_batch = sc.micro_batch or (64 if inputs.images else 4096)
    dc.train.amp = sc.amp
    dc.train.seed = cfg.data.seed
    dc.train.out_dir = str(out / "student" / "run")
    dc.train.eval_every = sc.eval_every
    dc.train.ckpt_every = max(1, sc.steps // 4)
    dc.train.device = sc.device
    dc.train.progress = sys.stderr.isatty()
    dc.eval.human_triplets = str(out / "student" / "calibration_triplets.txt")
    return dc.validate()


def check_student(cfg: RunConfig, inputs: Inputs, out: Path) -> None:
    """Fail now, not after the teacher and triplet stages, on a student that
    cannot be built (a missing package, weights file or module)."""
    dc = student_config(cfg, inputs, out)
    if inputs.images:
        from ..distill import build_student

        build_student(dc.student)


def _stage_student(cfg: RunConfig, inputs: Inputs, out: Path, say):
    def body(stage_dir: Path):
        import torch

        from ..distill import Student, build_student, distill, embed_checkpoint, embed_student
        from ..io import save_triplets_txt

        split = _load_split(out)
        save_triplets_txt(stage_dir / "calibration_triplets.txt", split["calibration"])
        dc = student_config(cfg, inputs, out)
        dc.train.out_dir = str(stage_dir / "run")
        dc.eval.human_triplets = str(stage_dir / "calibration_triplets.txt")
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
        if inputs.images:
            emb, _ = embed_checkpoint(result.checkpoint, **images, micro_batch=dc.train.micro_batch, device=device)
        else:
            emb, _ = embed_checkpoint(result.checkpoint, features=str(inputs.student_path))
        atomic_save_npy(emb_dir / "student.npy", emb.astype(np.float32))
        outputs += [emb_dir / "student.npy"] + ([result.curves] if result.curves else [])
        metrics.update({"final": result.metrics, "steps": result.steps,
                        "checkpoint": str(Path(result.checkpoint).relative_to(out))})
        return outputs, metrics

    # The student's own inputs are part of its key: the triplets do not depend on them.
    return Stage("student", {"student": asdict(cfg.student), "inputs": inputs.student_digest()}, ["triplets"], body)


def _stage_evaluate(cfg: RunConfig, inputs: Inputs, out: Path, runner: StageRunner, say):
    def body(stage_dir: Path):
        from .report import write_report

        return write_report(cfg, inputs, out, stage_dir, runner, say)

    return Stage("evaluate", asdict(cfg.eval), ["data", "teacher", "student"], body)


def _plot_lambda_search(report: Dict[str, Any], path: Path) -> Optional[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    cands = sorted(report["candidates"], key=lambda c: c["lam"])
    lams = [c["lam"] for c in cands]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    ax[0].plot(lams, [c["val_loss"] for c in cands], "o-")
    ax[0].set(xscale="log", xlabel="lambda", ylabel="held-out loss (CV mean)", title="Teacher lambda search")
    ax[1].plot(lams, [100 * c["val_accuracy"] for c in cands], "o-", color="tab:green")
    ax[1].set(xscale="log", xlabel="lambda", ylabel="held-out accuracy (%)", title="")
    chosen = report["chosen"]["lam"]
    for a in ax:
        a.axvline(chosen, color="grey", ls="--", lw=1)
    fig.tight_layout()
    with atomic_write(path) as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------ driver


def run_pipeline(cfg: RunConfig, out: Path, force: Iterable[str] = (), say: Callable[[str], None] = None):
    """Run (or resume) every stage; returns the evaluation metrics."""
    say = say or (lambda s: print(s, file=sys.stderr, flush=True))
    out = Path(out)
    force = list(force)
    if "all" in force:
        force = list(STAGES)
    bad = [f for f in force if f not in STAGES]
    if bad:
        raise ValueError(f"--force names unknown stage(s) {bad}; stages are {list(STAGES)} or 'all'")
    start = time.perf_counter()
    inputs = Inputs(cfg)  # every input error surfaces here, before any long work
    check_student(cfg, inputs, out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", cfg.to_dict())
    runner = StageRunner(out, force, say)
    stages = [
        _stage_data(cfg, inputs, say),
        _stage_teacher(cfg, inputs, out, say),
        _stage_triplets(cfg, inputs, out, say),
        _stage_student(cfg, inputs, out, say),
    ]
    for i, stage in enumerate(stages, 1):
        runner.run(stage, i, len(STAGES))
    result = runner.run(_stage_evaluate(cfg, inputs, out, runner, say), len(STAGES), len(STAGES))
    say(f"done in {time.perf_counter() - start:.1f} s: {out / 'report.md'}")
    return result.metrics
