"""Cached, resumable stages.

A stage's *key* hashes its configuration and the digests of what it reads.
When a stage finishes, it writes ``<out>/<stage>/stage.json`` (atomically, last)
with its key, its outputs' digest and its metrics. A rerun skips every stage
whose ``stage.json`` holds the same key. While a stage runs, ``stage.pending``
holds its key: an interrupted stage with the same key resumes (its own resume
logic, such as the triplet store's or the distillation checkpoints', picks up
the partial work); a stage folder left by another key is cleared first.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

from ..common.jsonsafe import json_safe
from ..common.timing import StageTimer
from ..io import atomic_write_json, atomic_write_text

STAGE_FILE = "stage.json"
PENDING_FILE = "stage.pending"  # the key of the attempt in progress


def digest_files(paths: Iterable[Path]) -> str:
    """sha256 over the bytes of the files (in the given order)."""
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        h.update(p.name.encode())
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def digest_obj(obj: Any) -> str:
    return hashlib.sha256(json.dumps(json_safe(obj), sort_keys=True).encode()).hexdigest()


@dataclass
class StageResult:
    name: str
    key: str
    outputs_digest: str
    metrics: Dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    cached: bool = False


@dataclass
class Stage:
    """One step of the pipeline.

    Args:
        name: folder name under the run's output directory.
        config: the JSON-able configuration the stage depends on.
        depends: names of earlier stages whose outputs it reads.
        body: ``body(stage_dir) -> (output_paths, metrics)``.
    """

    name: str
    config: Dict[str, Any]
    depends: List[str]
    body: Callable[[Path], Any]


class StageRunner:
    def __init__(self, out: Path, force: Iterable[str] = (), log: Callable[[str], None] = print):
        self.out = Path(out)
        self.force = set(force)
        self.results: Dict[str, StageResult] = {}
        self.log = log

    def key(self, stage: Stage) -> str:
        upstream = {d: self.results[d].outputs_digest for d in stage.depends}
        return digest_obj({"stage": stage.name, "config": stage.config, "upstream": upstream})

    def run(self, stage: Stage, index: int, total: int) -> StageResult:
        stage_dir = self.out / stage.name
        stage_dir.mkdir(parents=True, exist_ok=True)
        key = self.key(stage)
        record = stage_dir / STAGE_FILE
        if stage.name not in self.force and record.exists():
            saved = json.loads(record.read_text())
            if saved.get("key") == key:
                result = StageResult(stage.name, key, saved["outputs_digest"], saved.get("metrics", {}),
                                     saved.get("seconds", 0.0), cached=True)
                self.log(f"[{index}/{total}] {stage.name}: cached ({result.seconds:.1f} s when run)")
                self.results[stage.name] = result
                return result
        # An interrupted attempt at the same key resumes from what it left; any
        # other leftover (older config or inputs, or --force) is cleared first so
        # that stale partial work (a store, checkpoints) is never picked up.
        pending = stage_dir / PENDING_FILE
        resuming = stage.name not in self.force and pending.exists() and pending.read_text().strip() == key
        if not resuming:
            shutil.rmtree(stage_dir)
            stage_dir.mkdir(parents=True)
            atomic_write_text(pending, key + "\n")
        record.unlink(missing_ok=True)  # a stage without its record is unfinished
        self.log(f"[{index}/{total}] {stage.name}: {'resuming' if resuming else 'running'}")
        timer = StageTimer()
        with timer(stage.name):
            outputs, metrics = stage.body(stage_dir)
        seconds = timer.seconds[stage.name]
        result = StageResult(stage.name, key, digest_files(sorted(Path(p) for p in outputs)), metrics, seconds)
        atomic_write_json(record, {"key": key, "outputs_digest": result.outputs_digest, "metrics": metrics,
                                   "seconds": seconds, "outputs": [str(Path(p).relative_to(self.out))
                                                                   for p in sorted(outputs)]})
        pending.unlink(missing_ok=True)
        self.log(f"[{index}/{total}] {stage.name}: done in {seconds:.1f} s")
        self.results[stage.name] = result
        return result

    def run_all(self, stages: List[Stage]) -> Dict[str, StageResult]:
        names = {s.name for s in stages}
        unknown = self.force - names
        if unknown:
            raise ValueError(f"--force names unknown stage(s) {sorted(unknown)}; stages are {[s.name for s in stages]}")
        for i, stage in enumerate(stages, 1):
            self.run(stage, i, len(stages))
        return self.results


def find_stage_record(out: Path, name: str) -> Optional[dict]:
    p = Path(out) / name / STAGE_FILE
    return json.loads(p.read_text()) if p.exists() else None
