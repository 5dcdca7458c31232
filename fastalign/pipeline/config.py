"""Configuration of ``fastalign run``: dataclasses filled from defaults, a
preset, a TOML file and ``--set section.field=value`` overrides.

Data sources are file paths or ``things:KEY`` for the bundled THINGS data
(``things:clip``, ``things:word2vec``, ``things:spose49``, ``things:test_10``,
``things`` for the 27-category matrix).

The ``[student]`` section *is* a ``fastalign distill`` configuration
(``fastalign.distill.DistillConfig``): ``student.train.steps`` here is
``train.steps`` there, ``student.student.kind`` is ``student.kind``. Only its
defaults differ (``STUDENT_DEFAULTS``: a residual MLP head on frozen features, a few
thousand steps), and the stage fills in what the pipeline itself provides
(``PIPELINE_OWNED``: the triplet store, the student's features or images, the
output folder, the seed).

An image student (``student.student.kind`` "timm", "open_clip" or "module")
reads one image per object: ``data.student_images`` (a folder) and
``data.file_names`` (a text file, one path per line, relative to the folder, in
object order) replace ``data.student_features``.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Sequence

from ..config import apply_aliases, apply_overrides, build_dataclass, deep_merge, read_toml
from ..distill.config import DistillConfig
from ..io.resolve import split_spec  # noqa: F401  (re-exported: it lived here before io.resolve)


@dataclass
class RunDataConfig:
    teacher_features: str = "things:clip"  # the frozen model the teacher transform is fitted on
    student_features: str = "things:word2vec"  # the student's frozen input features (student.student.kind "features")
    student_images: str = ""  # image folder of an image student (student.student.kind timm, open_clip or module)
    file_names: str = ""  # one name per object, in object order (thingsvision's file_names.txt): the images an
    # image student reads under student_images; with a features student only its length is checked
    human_triplets: str = "things:test_10"  # human odd-one-out triplets (column 2 odd)
    heldout_fraction: float = 0.2  # share of human triplets no stage ever trains on
    categories: str = "things"  # (N, C) 0/1 category matrix, for levels and few-shot
    human_embedding: str = "things:spose49"  # human similarity model: the dense teacher's targets, and RSA
    # Measured human RDMs ("FILE" or "FILE:VAR" for .mat), each compared with every representation,
    # with noise ceilings when it holds several subjects (fastalign.io.read_human_rdm).
    human_rdms: List[str] = field(default_factory=list)
    # Per entry of human_rdms (or one for all): which object each RDM row is (indices, or names matched
    # against data.file_names); "" = the RDM's rows are the objects.
    human_rdm_items: List[str] = field(default_factory=list)
    levels_data: str = ""  # the Levels dataset pickle (fastalign.datasets.load_levels); needs data.file_names
    allow_missing: bool = False  # score the Levels dataset on the images that have feature rows
    seed: int = 0


TEACHER_RECIPES = ("dense", "human")


@dataclass
class TeacherConfig:
    # "dense" (AligNet): KL to the choice distributions of data.human_embedding on soft_triplets triplets
    # sampled over all objects, lambda chosen by the NLL of a validation split of the teacher-train human
    # triplets. "human": the earlier recipe, a fit to the human triplets alone (lambdas by folds-fold CV).
    # A run without data.human_embedding falls back to "human" and says so.
    recipe: str = "dense"
    soft_triplets: int = 1_000_000
    human_temperature: float = 1.0  # T_h of the embedding's softmax
    human_weight: float = 0.0  # weight of the teacher-train human triplets' hard NLL added to the KL
    strata: str = ""  # category matrix ("things" or a file) for a level-stratified draw; "" = uniform
    dense_lambdas: List[float] = field(default_factory=lambda: [1e-5, 1e-4, 1e-3])
    max_extensions: int = 2  # times the dense grid may be extended past an edge holding the best lambda
    # The "human" recipe's options (lambdas, folds, val_fraction); calibrate and similarity are shared.
    lambdas: List[float] = field(default_factory=lambda: [1e-3, 1e-2, 1e-1])
    folds: int = 3
    val_fraction: float = 0.1
    calibrate: bool = True
    similarity: str = "dot"


@dataclass
class TripletsConfig:
    num: int = 1_000_000
    val_num: int = 10_000
    clusters: int = 50
    # Mostly random: the human test triplets are random THINGS triplets; cluster-border
    # triplets (AligNet's default) add the local structure.
    strategy: str = "cluster_border:0.3,random:0.7"
    normalize: bool = False  # L2-normalise teacher embeddings before k-means


# The run's student defaults, where they differ from ``fastalign distill``'s: a
# residual MLP head (identity + an MLP whose last layer starts at zero) that starts
# at the raw student features (decay-to-init pulls back toward them), and a short,
# fast schedule for a frozen-feature student. The head was chosen on the calibration
# split of the training-side human triplets (the distillation's human evaluation),
# never on the held-out triplets, on the bundled data (2026-12-01): linear 56.0 %,
# residual MLP hidden 256 57.0 %, hidden 512 57.3 % at almost three times the
# student's time; 256 keeps ``fastalign run`` within its time budget.
STUDENT_DEFAULTS: Dict[str, Dict[str, Any]] = {
    # head_dim 0 keeps the student feature width
    "student": {"head": "mlp", "hidden_dim": 256, "head_init": "identity", "head_dim": 0},
    "data": {"num_workers": 2},
    "loss": {"temperature": 1.0},
    "optim": {"lr": 1e-2, "weight_decay": 0.01, "warmup_steps": 100},
    # micro_batch 0: 4096 feature rows or 64 images; ckpt_every 0: a quarter of the steps
    "train": {"steps": 2000, "batch_triplets": 1024, "micro_batch": 0, "eval_every": 250, "ckpt_every": 0},
}


def student_defaults() -> DistillConfig:
    """The ``[student]`` section's defaults (a ``DistillConfig``, not yet complete: see ``PIPELINE_OWNED``)."""
    return build_dataclass(DistillConfig, STUDENT_DEFAULTS)


# Keys of the [student] section that the pipeline sets itself, and where they come from.
PIPELINE_OWNED: Dict[str, str] = {
    "student.features": "data.student_features",
    "data.source": "the triplets stage (a store)",
    "data.store": "the triplets stage",
    "data.val_store": "the triplets stage",
    "data.teacher_embeddings": "the triplets stage (a store)",
    "data.items": "student.student.kind (features or images)",
    "data.image_root": "data.student_images",
    "data.file_names": "data.file_names",
    "eval.human_triplets": "the calibration split of data.human_triplets",
    "train.out_dir": "fastalign run --out",
    "train.seed": "data.seed",
}


@dataclass
class RunEvalConfig:
    few_shot_shots: List[int] = field(default_factory=lambda: [1, 5, 10])
    few_shot_episodes: int = 200
    ceiling: float = 0.67
    rdm_bootstrap: int = 1000  # stimulus resamples for the 95 % intervals of data.human_rdms (0 skips them)


# Keys of the [student] section before it became a distill config (fastalign <= 0.x):
# they keep working for one release, with a warning naming the new key.
OLD_STUDENT_KEYS: Dict[str, str] = {
    "kind": "student.kind",
    "model_name": "student.model_name",
    "model_kwargs": "student.model_kwargs",
    "weights": "student.weights",
    "pooling": "student.pooling",
    "module": "student.module",
    "head": "student.head",
    "head_init": "student.head_init",
    "dim_out": "student.head_dim",
    "image_size": "data.image_size",
    "num_workers": "data.num_workers",
    "divergence": "loss.divergence",
    "temperature": "loss.temperature",
    "lr": "optim.lr",
    "weight_decay": "optim.weight_decay",
    "warmup_steps": "optim.warmup_steps",
    "steps": "train.steps",
    "batch_size": "train.batch_triplets",
    "eval_every": "train.eval_every",
    "micro_batch": "train.micro_batch",
    "amp": "train.amp",
    "device": "train.device",
}


@dataclass
class RunConfig:
    CONFIG_ALIASES: ClassVar[Dict[str, str]] = {f"student.{old}": f"student.{new}"
                                                for old, new in OLD_STUDENT_KEYS.items()}

    data: RunDataConfig = field(default_factory=RunDataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    triplets: TripletsConfig = field(default_factory=TripletsConfig)
    student: DistillConfig = field(default_factory=student_defaults)
    eval: RunEvalConfig = field(default_factory=RunEvalConfig)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


# The names these classes had before the student section became a DistillConfig.
DataConfig = RunDataConfig
EvalConfig = RunEvalConfig


PRESETS: Dict[str, Dict[str, Dict[str, Any]]] = {
    # A reduced run for CI and quick looks: same stages, fewer triplets and steps.
    "quick": {
        "teacher": {"lambdas": [1e-2, 1e-1], "folds": 2, "soft_triplets": 200_000, "dense_lambdas": [1e-4, 1e-3],
                    "max_extensions": 1},
        "triplets": {"num": 100_000, "val_num": 2_000, "clusters": 20},
        "student": {"train": {"steps": 300, "eval_every": 100}},
        "eval": {"few_shot_episodes": 20},
    },
}


def load_config(path: Optional[str] = None, overrides: Sequence[str] = (), preset: Optional[str] = None) -> RunConfig:
    """Defaults, then the preset, then the TOML file, then ``--set section.key=value`` overrides.

    Each layer's old key names are renamed before the layers merge, so a later
    layer wins whichever spelling each uses.
    """
    layers: List[Dict[str, Any]] = []
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
        layers.append(copy.deepcopy(PRESETS[preset]))
    if path:
        layers.append(read_toml(path))
    layers.append(apply_overrides({}, overrides))
    data: Dict[str, Any] = {}
    for layer in layers:
        deep_merge(data, apply_aliases(RunConfig, layer))
    cfg = build_dataclass(RunConfig, data)
    check_student_section(cfg)
    check_teacher_section(cfg)
    check_triplets_section(cfg)
    return cfg


def check_triplets_section(cfg: RunConfig) -> None:
    """Refuse triplet counts the student stage could not train on (one line, before the teacher is fitted)."""
    t = cfg.triplets
    for key, value, least in (("num", t.num, 1), ("clusters", t.clusters, 1), ("val_num", t.val_num, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"triplets.{key} must be an integer >= {least}, got {value!r}")
    batch = cfg.student.train.batch_triplets
    if t.num < batch:
        raise ValueError(f"triplets.num = {t.num} is less than one student batch (student.train.batch_triplets = "
                         f"{batch}): raise triplets.num or lower student.train.batch_triplets")


def check_teacher_section(cfg: RunConfig) -> None:
    """Refuse an unknown teacher recipe or a dense option out of range (one line, before any work)."""
    t = cfg.teacher
    if t.recipe not in TEACHER_RECIPES:
        raise ValueError(f"teacher.recipe must be one of {list(TEACHER_RECIPES)}, got {t.recipe!r}")
    if t.soft_triplets < 1:
        raise ValueError(f"teacher.soft_triplets must be >= 1, got {t.soft_triplets}")
    if not (t.human_temperature > 0) or not (t.human_weight >= 0):
        raise ValueError("teacher.human_temperature must be > 0 and teacher.human_weight >= 0")


def check_student_section(cfg: RunConfig) -> None:
    """Refuse a [student] key that the pipeline sets itself (it would be silently replaced)."""
    defaults = student_defaults()
    for key, source in PIPELINE_OWNED.items():
        section, name = key.split(".")
        if getattr(getattr(cfg.student, section), name) != getattr(getattr(defaults, section), name):
            raise ValueError(f"student.{key} is set by fastalign run from {source}; remove it from the config")
