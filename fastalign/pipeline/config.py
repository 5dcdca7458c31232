"""Configuration of ``fastalign run``: dataclasses filled from defaults, a TOML
file and ``--set section.field=value`` overrides.

Data sources are file paths or ``things:KEY`` for the bundled THINGS data
(``things:clip``, ``things:word2vec``, ``things:spose49``, ``things:test_10``,
``things`` for the 27-category matrix).
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple


@dataclass
class DataConfig:
    teacher_features: str = "things:clip"  # the frozen model the teacher transform is fitted on
    student_features: str = "things:word2vec"  # the student's frozen input features
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
    num: int = 200_000
    val_num: int = 10_000
    clusters: int = 50
    strategy: str = "cluster_border:0.8,random:0.2"
    normalize: bool = False  # L2-normalise teacher embeddings before k-means


@dataclass
class StudentConfig:
    head: str = "linear"
    dim_out: int = 512
    steps: int = 1500
    batch_size: int = 2048
    lr: float = 3e-3
    weight_decay: float = 1.0  # decay toward the initial weights (AligNet's decay_to_init)
    warmup_steps: int = 100
    divergence: str = "jsd"
    temperature: float = 1.0
    eval_every: int = 250


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


def _coerce(value: Any, current: Any, where: str) -> Any:
    """Convert ``value`` to the type of the field's current value, or raise naming the key."""
    if isinstance(current, bool):
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        if isinstance(value, bool):
            return value
    elif isinstance(current, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
    elif isinstance(current, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif isinstance(current, str):
        if isinstance(value, str):
            return value
    elif isinstance(current, list):
        if isinstance(value, str):
            try:
                value = json.loads(value if value.startswith("[") else f"[{value}]")
            except json.JSONDecodeError:
                raise ValueError(f"config {where}: expected a list like [1, 2], got {value!r}") from None
        if isinstance(value, list):
            elem = current[0] if current else None
            return [_coerce(v, elem, f"{where}[]") if elem is not None else v for v in value]
    elif current is None:
        return value
    raise ValueError(f"config {where}: expected {type(current).__name__}, got {value!r}")


def apply(cfg: RunConfig, values: Dict[str, Any], where: str = "") -> RunConfig:
    """Set fields from a nested dict; unknown sections or keys raise naming them."""
    for section, entries in values.items():
        if not hasattr(cfg, section) or not dataclasses.is_dataclass(getattr(cfg, section)):
            known = [f.name for f in dataclasses.fields(cfg)]
            raise ValueError(f"config{where}: unknown section [{section}]; known sections are {known}")
        if not isinstance(entries, dict):
            raise ValueError(f"config{where}: [{section}] must be a table")
        sub = getattr(cfg, section)
        names = {f.name for f in dataclasses.fields(sub)}
        for key, value in entries.items():
            if key not in names:
                raise ValueError(f"config{where}: unknown key {section}.{key}; known keys are {sorted(names)}")
            setattr(sub, key, _coerce(value, getattr(sub, key), f"{section}.{key}"))
    return cfg


def parse_overrides(items: Sequence[str]) -> Dict[str, Dict[str, str]]:
    out: Dict[str, Dict[str, str]] = {}
    for item in items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"--set expects section.key=value, got {item!r}")
        path, value = item.split("=", 1)
        section, key = path.split(".", 1)
        out.setdefault(section.strip(), {})[key.strip()] = value.strip()
    return out


def load_config(path: Optional[str] = None, overrides: Sequence[str] = (), preset: Optional[str] = None) -> RunConfig:
    """Defaults, then the preset, then the TOML file, then ``--set`` overrides."""
    cfg = with_preset(RunConfig(), preset)
    if path:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"config file {p} does not exist")
        try:
            values = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"config file {p} is not valid TOML: {exc}") from None
        apply(cfg, values, f" file {p}")
    apply(cfg, parse_overrides(overrides), " override")
    return cfg


PRESETS: Dict[str, Dict[str, Dict[str, Any]]] = {
    # A reduced run for CI and quick looks: same stages, fewer triplets and steps.
    "quick": {
        "teacher": {"lambdas": [1e-2, 1e-1], "folds": 2},
        "triplets": {"num": 20_000, "val_num": 2_000, "clusters": 20},
        "student": {"steps": 300, "batch_size": 1024, "eval_every": 100},
        "eval": {"few_shot_episodes": 20},
    },
}


def with_preset(cfg: RunConfig, preset: Optional[str]) -> RunConfig:
    if preset is None:
        return cfg
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    return apply(cfg, PRESETS[preset], f" preset {preset}")


def split_spec(spec: str) -> Tuple[str, Optional[str]]:
    """``things:clip`` -> ("things", "clip"); a path -> (path, None)."""
    if spec == "things":
        return "things", None
    if spec.startswith("things:"):
        return "things", spec.split(":", 1)[1]
    return spec, None
