"""Configuration of ``fastalign run``: dataclasses filled from defaults, a TOML
file and ``--set section.field=value`` overrides.

Data sources are file paths or ``things:KEY`` for the bundled THINGS data
(``things:clip``, ``things:word2vec``, ``things:spose49``, ``things:test_10``,
``things`` for the 27-category matrix).

An image student (``student.kind`` "timm", "open_clip" or "module") reads one
image per object: ``data.student_images`` (a folder) and ``data.file_names``
(a text file, one path per line, relative to the folder, in object order)
replace ``data.student_features``.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..config import apply_overrides, build_dataclass, deep_merge, read_toml


@dataclass
class DataConfig:
    teacher_features: str = "things:clip"  # the frozen model the teacher transform is fitted on
    student_features: str = "things:word2vec"  # the student's frozen input features (student.kind "features")
    student_images: str = ""  # image folder of an image student (student.kind timm, open_clip or module)
    file_names: str = ""  # one name per object, in object order (thingsvision's file_names.txt): the images an
    # image student reads under student_images; with a features student only its length is checked
    human_triplets: str = "things:test_10"  # human odd-one-out triplets (column 2 odd)
    heldout_fraction: float = 0.2  # share of human triplets no stage ever trains on
    categories: str = "things"  # (N, C) 0/1 category matrix, for levels and few-shot
    human_embedding: str = "things:spose49"  # human similarity embedding, for RSA
    seed: int = 0


@dataclass
class TeacherConfig:
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


@dataclass
class StudentConfig:
    # "features": data.student_features with a trainable head; "timm", "open_clip" or "module": an
    # image backbone fine-tuned on data.student_images (see fastalign.distill.StudentConfig)
    kind: str = "features"
    model_name: str = ""  # timm / open_clip architecture
    model_kwargs: Dict[str, Any] = field(default_factory=dict)  # more model-factory arguments
    weights: str = ""  # local pretrained weights (never downloaded)
    pooling: str = "avg"  # cls, avg or map
    image_size: int = 0  # side of the square crop fed to an image student; 0: the model's own
    module: str = ""  # "pkg.mod:factory" for kind "module"
    head: str = "linear"
    head_init: str = "identity"  # start at the raw student features; decay-to-init pulls back toward them
    dim_out: int = 0  # 0 keeps the student feature width
    steps: int = 2000
    batch_size: int = 1024
    lr: float = 1e-2
    weight_decay: float = 0.01  # decay toward the initial weights (AligNet's decay_to_init)
    warmup_steps: int = 100
    divergence: str = "jsd"
    temperature: float = 1.0
    eval_every: int = 250
    micro_batch: int = 0  # items per forward; 0: 4096 feature rows or 64 images
    amp: str = "none"  # "bf16" autocast for image backbones
    num_workers: int = 2  # image-decoding DataLoader workers
    device: str = "auto"  # cpu, cuda, or auto (cuda when available)


@dataclass
class EvalConfig:
    few_shot_shots: List[int] = field(default_factory=lambda: [1, 5, 10])
    few_shot_episodes: int = 200
    ceiling: float = 0.67


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    triplets: TripletsConfig = field(default_factory=TripletsConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: Dict[str, Dict[str, Dict[str, Any]]] = {
    # A reduced run for CI and quick looks: same stages, fewer triplets and steps.
    "quick": {
        "teacher": {"lambdas": [1e-2, 1e-1], "folds": 2},
        "triplets": {"num": 100_000, "val_num": 2_000, "clusters": 20},
        "student": {"steps": 300, "eval_every": 100},
        "eval": {"few_shot_episodes": 20},
    },
}


def load_config(path: Optional[str] = None, overrides: Sequence[str] = (), preset: Optional[str] = None) -> RunConfig:
    """Defaults, then the preset, then the TOML file, then ``--set section.key=value`` overrides."""
    data: Dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
        deep_merge(data, copy.deepcopy(PRESETS[preset]))
    if path:
        deep_merge(data, read_toml(path))
    return build_dataclass(RunConfig, apply_overrides(data, overrides))


def split_spec(spec: str) -> Tuple[str, Optional[str]]:
    """``things:clip`` -> ("things", "clip"); a path -> (path, None)."""
    if spec == "things":
        return "things", None
    if spec.startswith("things:"):
        return "things", spec.split(":", 1)[1]
    return spec, None
