"""Cached, resumable stages.

A stage's *key* hashes its *fingerprint*: its configuration, the output
digests of the stages it reads, the content of every input file it declares
(``Stage.inputs``: blake2b of the full bytes, streamed, each file hashed once
per run), its byte-changing options (``Stage.options``) and the run's
environment (the resolved device and triplet backend: ``runtime_environment``).
Paths are not part of it; contents are.

When a stage finishes, it writes ``<out>/<stage>/stage.json`` (atomically, last)
with its key, its fingerprint, its outputs' digest and its metrics. A rerun
skips a stage whose ``stage.json`` holds the same key *and* whose outputs still
match that digest on disk (a changed ``transform.npz`` or store is never
trusted because a record says so). While a stage runs, ``stage.pending`` holds
its key and fingerprint: an interrupted stage with the same key resumes (its own
resume logic, such as the triplet store's or the distillation checkpoints',
picks up the partial work); a stage folder left by another key is cleared
first, and the log names what differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

import torch

from ..common.jsonsafe import json_safe
from ..common.timing import StageTimer
from ..io import atomic_write_json
from ..io.atomic import file_checksum
from ..io.faults import fault_point
from ..io.resolve import is_bundled
from ..ops.registry import ENV_VAR as BACKEND_ENV_VAR
from ..ops.registry import auto_choice

STAGE_FILE = "stage.json"
PENDING_FILE = "stage.pending"  # the key (and fingerprint) of the attempt in progress


class ForeignFiles(ValueError):
    """A folder the run would write into or clear holds files it did not write."""


def _check_stage_dir_is_ours(stage_dir: Path) -> None:
    """Refuse to clear a stage folder that holds files but neither marker of a stage attempt.

    Every attempt writes ``stage.pending`` before anything else and removes it
    only after ``stage.json``, so a folder of ours always has one of them (or is
    empty). Anything else is the user's: a ``data/`` or ``triplets/`` folder that
    happened to sit in ``--out``.
    """
    entries = sorted(p.name for p in stage_dir.iterdir())
    if entries and not (stage_dir / PENDING_FILE).exists() and not (stage_dir / STAGE_FILE).exists():
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise ForeignFiles(f"{stage_dir} holds files that fastalign run did not write ({shown}), and its "
                           f"{stage_dir.name} stage would clear that folder; move them or choose another --out")


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


def runtime_environment() -> Dict[str, str]:
    """What changes a stage's bytes without being in its config: the device "auto" resolves
    to and the triplet backend that device's "auto" (or ``$FASTALIGN_BACKEND``) picks (the
    backends round differently: fp16 similarities, loss gradients). The intra-op thread count
    also changes CPU reductions; the distillation checkpoints restore it instead."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backend = os.environ.get(BACKEND_ENV_VAR, "auto") or "auto"
    return {"device": device, "backend": auto_choice(device) if backend == "auto" else backend}


def spec_inputs(specs: Dict[str, str]) -> Dict[str, Path]:
    """``Stage.inputs`` for config specs (``data.categories`` and the like): each file spec
    as its path. Empty specs and bundled ``things:`` data (versioned with the package and
    named in the config) are left out.

    Example: ``Stage(..., inputs=spec_inputs({"categories": cfg.data.categories}))``.
    """
    return {name: Path(spec) for name, spec in specs.items() if spec and not is_bundled(spec)}


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
        inputs: files from outside the run folder that the stage reads, by name
            (features, triplets, categories, embeddings, transform): their
            content is part of the key, so the same path with new bytes is a new key.
        options: resolved options that change the stage's bytes but are not in
            ``config`` (a backend, a device).
        resumes: the body picks up an interrupted attempt's partial work (the
            triplet store, the distillation checkpoints); other stages start over.
    """

    name: str
    config: Dict[str, Any]
    depends: List[str]
    body: Callable[[Path], Any]
    inputs: Dict[str, Any] = field(default_factory=dict)
    options: Dict[str, Any] = field(default_factory=dict)
    resumes: bool = False


def _read_pending(path: Path) -> Optional[Dict[str, Any]]:
    """``stage.pending`` as ``{"key", "fingerprint"}`` (a bare key from an older release: no fingerprint)."""
    if not path.exists():
        return None
    text = path.read_text().strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return None  # torn by a kill before the atomic stack wrote it: unusable, start clean
    return {"key": text, "fingerprint": None}


def _read_record(path: Path) -> Optional[Dict[str, Any]]:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def fingerprint_changes(old: Optional[Dict[str, Any]], new: Dict[str, Any]) -> List[str]:
    """What differs between two fingerprints, in words (``["input teacher_features", ...]``)."""
    if not old:
        return ["its record predates input fingerprints (written by an older fastalign)"]
    out = []
    if old.get("config") != new["config"]:
        out.append("its configuration")
    for part, label in (("upstream", "the output of stage"), ("inputs", "the content of input")):
        for name in sorted(set(old.get(part, {})) | set(new[part])):
            if old.get(part, {}).get(name) != new[part].get(name):
                out.append(f"{label} {name}")
    for part in ("options", "environment"):
        for name in sorted(set(old.get(part, {})) | set(new[part])):
            was, now = old.get(part, {}).get(name), new[part].get(name)
            if was != now:
                out.append(f"{name} {was} -> {now}")
    return out or ["its key"]


class StageRunner:
    """Runs stages in order, skipping or resuming each by its key (see the module docstring).

    Args:
        out: the run's output folder.
        force: names of stages to redo even when cached.
        log: where progress lines go.
        environment: the byte-changing runtime facts; default ``runtime_environment()``.
    """

    def __init__(self, out: Path, force: Iterable[str] = (), log: Callable[[str], None] = print,
                 environment: Optional[Dict[str, str]] = None):
        self.out = Path(out)
        self.force = set(force)
        self.results: Dict[str, StageResult] = {}
        self.log = log
        self.environment = dict(runtime_environment() if environment is None else environment)
        self._content: Dict[str, str] = {}  # resolved path -> digest: each input hashed once per run

    def content_digest(self, path: Any) -> str:
        """blake2b of the file's full bytes (streamed), computed once per run and path."""
        real = str(Path(path).resolve())
        if real not in self._content:
            self._content[real] = file_checksum(real)
        return self._content[real]

    def fingerprint(self, stage: Stage) -> Dict[str, Any]:
        """Everything the key covers, each part kept apart so a mismatch can be named."""
        return {"stage": stage.name, "config": digest_obj(stage.config),
                "upstream": {d: self.results[d].outputs_digest for d in stage.depends},
                "inputs": {name: self.content_digest(p) for name, p in sorted(stage.inputs.items())},
                "options": json_safe(stage.options), "environment": self.environment}

    def key(self, stage: Stage) -> str:
        return digest_obj(self.fingerprint(stage))

    def _outputs_intact(self, saved: Dict[str, Any]) -> bool:
        """The recorded outputs still hash to the recorded digest (files changed since are not trusted)."""
        try:
            paths = [self.out / rel for rel in saved["outputs"]]
            return digest_files(sorted(paths)) == saved["outputs_digest"]
        except (KeyError, OSError):
            return False

    def _cached(self, stage: Stage, key: str, fp: Dict[str, Any], record: Path) -> Optional[StageResult]:
        """The recorded result when the stage is done for this key and its outputs are intact."""
        saved = _read_record(record)
        if stage.name in self.force or saved is None:
            return None
        if saved.get("key") != key:
            self.log(f"  {stage.name}: changed since it ran: {', '.join(fingerprint_changes(saved.get('fingerprint'), fp))}")
            return None
        if not self._outputs_intact(saved):
            self.log(f"  {stage.name}: its outputs changed on disk since it finished: running it again")
            return None
        return StageResult(stage.name, key, saved["outputs_digest"], saved.get("metrics", {}),
                           saved.get("seconds", 0.0), cached=True)

    def _prepare(self, stage: Stage, stage_dir: Path, key: str, fp: Dict[str, Any]) -> bool:
        """Resume an interrupted attempt at the same key, else clear the folder; True when resuming."""
        # Any other leftover (older config or inputs, or --force) is cleared first so
        # that stale partial work (a store, checkpoints) is never picked up.
        pending = stage_dir / PENDING_FILE
        attempt = None if stage.name in self.force else _read_pending(pending)
        if attempt is not None and attempt.get("key") == key:
            return True
        if attempt is not None:
            self.log(f"  {stage.name}: not resuming the interrupted attempt, it differs in "
                     f"{', '.join(fingerprint_changes(attempt.get('fingerprint'), fp))}: starting clean")
        _check_stage_dir_is_ours(stage_dir)
        shutil.rmtree(stage_dir)
        stage_dir.mkdir(parents=True)
        atomic_write_json(pending, {"key": key, "fingerprint": fp}, named_tmp=True)
        return False

    def run(self, stage: Stage, index: int, total: int) -> StageResult:
        stage_dir = self.out / stage.name
        stage_dir.mkdir(parents=True, exist_ok=True)
        fp = self.fingerprint(stage)
        key = digest_obj(fp)
        record = stage_dir / STAGE_FILE
        result = self._cached(stage, key, fp, record)
        if result is not None:
            self.log(f"[{index}/{total}] {stage.name}: cached ({result.seconds:.1f} s when run)")
            self.results[stage.name] = result
            return result
        resuming = self._prepare(stage, stage_dir, key, fp)
        record.unlink(missing_ok=True)  # a stage without its record is unfinished
        state = "resuming" if resuming and stage.resumes else "running again (nothing to resume)" if resuming \
            else "running"
        self.log(f"[{index}/{total}] {stage.name}: {state}")
        timer = StageTimer()
        with timer(stage.name):
            outputs, metrics = stage.body(stage_dir)
        seconds = timer.seconds[stage.name]
        outputs = sorted(Path(p) for p in outputs)
        result = StageResult(stage.name, key, digest_files(outputs), metrics, seconds)
        fault_point("stage.before_record")
        atomic_write_json(record, {"key": key, "fingerprint": fp, "outputs_digest": result.outputs_digest,
                                   "metrics": metrics, "seconds": seconds,
                                   "inputs": {n: str(p) for n, p in sorted(stage.inputs.items())},
                                   "outputs": [str(p.relative_to(self.out)) for p in outputs]}, named_tmp=True)
        (stage_dir / PENDING_FILE).unlink(missing_ok=True)
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
