"""Checkpoints: one directory per step, written atomically, checksummed, no pickles.

Layout of ``<out_dir>/ckpt-00001000/``:

- ``model.safetensors``: the student's state dict (trainable weights and
  persistent buffers; a ``FeatureStudent``'s feature matrix is not included);
- ``optim.safetensors``: ``theta0.<name>``, ``exp_avg.<name>``, ``exp_avg_sq.<name>``;
- ``rng.safetensors``: CPU (and CUDA) RNG states of every rank;
- ``state.json``: step, optimiser step counts, data-stream position of every
  rank, the config, the parameter shapes, the intra-op thread count, and
  ``files``: the size and blake2b digest (``fastalign.io.atomic.file_checksum``)
  of each file above; ``digest`` covers the rest of ``state.json`` itself.
  Written last: a directory without it is incomplete and ignored.

The directory is built under a temporary name, every file fsynced, then
renamed into place and the parent fsynced, so a kill at any moment leaves
either the old set of checkpoints or the new one. Old checkpoints are pruned by
first moving them aside (one atomic rename), so a kill mid-prune never leaves a
``ckpt-*`` directory whose ``state.json`` outlives its tensors.

Loading verifies before it trusts: sizes, digests, a readable safetensors
header and finite tensors. ``resume_checkpoint`` walks back from the newest:
a corrupt checkpoint is reported, renamed ``corrupt-ckpt-*`` (set aside, not
deleted) and the newest intact one is used; if none is intact it raises
``CorruptCheckpoint`` and moves nothing. Checkpoints written before digests
existed load with a warning that their files are not verified (the header and
finiteness checks still apply). Loading uses safetensors and ``json`` only;
nothing is unpickled.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..common.jsonsafe import json_safe
from ..io.atomic import HASH_NAME, atomic_write_json, file_checksum, fsync_dir, new_hash
from ..io.faults import fault_point
from .parallel import load_full_state

log = logging.getLogger("fastalign.distill")

FORMAT = "fastalign-distill-checkpoint/1"
PREFIX = "ckpt-"
CORRUPT_PREFIX = "corrupt-"  # set-aside checkpoints: not ckpt-*, so never listed again
TENSOR_FILES = ("model.safetensors", "optim.safetensors", "rng.safetensors")


class CorruptCheckpoint(ValueError):
    """A checkpoint whose files do not match their digests or cannot be read."""


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _save_tensors(tensors: Dict[str, torch.Tensor], path: Path) -> Dict[str, Any]:
    """Write and fsync ``path``; return its size and digest for ``state.json``."""
    # safetensors refuses shared or strided storage: give it compact copies.
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(path))
    _fsync_file(path)
    # Read back from the page cache: the digest is of the bytes on disk, not of
    # what we meant to write.
    return {"bytes": path.stat().st_size, HASH_NAME: file_checksum(path)}


def _state_digest(state: Dict[str, Any]) -> str:
    """Digest of ``state.json``'s content without its own ``digest`` field (canonical JSON)."""
    body = {k: v for k, v in state.items() if k != "digest"}
    h = new_hash()
    h.update(json.dumps(json_safe(body), sort_keys=True, allow_nan=False).encode())
    return h.hexdigest()


def _load_tensors(path: Path) -> Dict[str, torch.Tensor]:
    if not path.is_file():
        raise CorruptCheckpoint(f"{path}: file missing")
    try:
        return load_file(str(path))
    except SafetensorError as exc:  # truncated, or a damaged header
        raise CorruptCheckpoint(f"{path}: not a readable safetensors file ({exc})") from None


def _check_finite(tensors: Dict[str, torch.Tensor], path: Path) -> None:
    # Training stops before it would save a non-finite value, so one here is
    # damage (the check that catches a flipped exponent bit in an undigested file).
    for key, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CorruptCheckpoint(f"{path}: tensor {key} holds NaN or Inf")


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def list_checkpoints(out_dir: Path) -> List[Path]:
    """Complete checkpoints in ``out_dir``, oldest first."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = []
    for p in out_dir.iterdir():
        if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").is_file():
            try:
                found.append((int(p.name[len(PREFIX):]), p))
            except ValueError:
                continue
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: Path) -> Optional[Path]:
    ckpts = list_checkpoints(out_dir)
    return ckpts[-1] if ckpts else None


def remove_stale_temps(out_dir: Path, keep: Optional[Path] = None) -> None:
    """Delete the ``.ckpt-*.tmp`` leftovers of killed saves and prunes (all but ``keep``)."""
    for stale in Path(out_dir).glob(f".{PREFIX}*.tmp"):
        if stale != keep:
            shutil.rmtree(stale, ignore_errors=True)


def _prune(out_dir: Path, keep_last: int) -> None:
    for old in list_checkpoints(out_dir)[:-max(1, keep_last)]:
        aside = out_dir / f".{old.name}.prune.tmp"
        os.replace(old, aside)  # atomic: the checkpoint is gone whole or not at all
        fault_point("checkpoint.mid_prune")
        shutil.rmtree(aside, ignore_errors=True)


def _write_dir(tmp: Path, step: int, model_state: Dict[str, torch.Tensor], optim_state: Dict[str, torch.Tensor],
               rng_state: Dict[str, torch.Tensor], state: Dict[str, Any]) -> None:
    """Every file of a checkpoint into the temporary directory ``tmp``, ``state.json`` last."""
    files = {"model.safetensors": _save_tensors(model_state, tmp / "model.safetensors")}
    fault_point("checkpoint.after_model")
    files["optim.safetensors"] = _save_tensors(optim_state, tmp / "optim.safetensors")
    files["rng.safetensors"] = _save_tensors(rng_state, tmp / "rng.safetensors")
    meta = json_safe({"format": FORMAT, "step": int(step), **state, "files": files})
    meta["digest"] = _state_digest(meta)
    atomic_write_json(tmp / "state.json", meta, indent=1, sort_keys=True)
    fsync_dir(tmp)


def save_checkpoint(out_dir: Path, step: int, model_state: Dict[str, torch.Tensor],
                    optim_state: Dict[str, torch.Tensor], rng_state: Dict[str, torch.Tensor],
                    state: Dict[str, Any], keep_last: int = 3) -> Path:
    """Write checkpoint ``step`` atomically and delete all but the newest ``keep_last``.

    Args:
        out_dir: run directory.
        step: optimiser steps done.
        model_state: the student's state dict.
        optim_state: the optimiser's named tensors (``DecayToInitAdam.named_state``).
        rng_state: RNG state tensors.
        state: JSON-serialisable metadata (step counts, stream positions, config).
        keep_last: checkpoints to keep (>= 1).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / checkpoint_name(step)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=out_dir))
    try:
        _write_dir(tmp, step, model_state, optim_state, rng_state, state)
        fault_point("checkpoint.before_rename")
        if final.exists():  # re-saving the same step (e.g. the final one)
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fault_point("checkpoint.after_rename")
    _prune(out_dir, keep_last)
    remove_stale_temps(out_dir)
    return final


@dataclass
class Checkpoint:
    """A loaded checkpoint: tensors and metadata."""

    path: Path
    model: Dict[str, torch.Tensor]
    optim: Dict[str, torch.Tensor]
    rng: Dict[str, torch.Tensor]
    state: Dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state["step"])


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint directory, or a run directory (then its newest checkpoint, unverified)."""
    path = Path(path)
    if (path / "state.json").is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise FileNotFoundError(f"no checkpoint at {path} (expected a ckpt-* directory or a run directory)")
    return latest


def _read_state(path: Path) -> Dict[str, Any]:
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptCheckpoint(f"{path}/state.json is not valid JSON: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else None
        raise ValueError(f"{path}: not a fastalign distill checkpoint (format {found!r})")
    if "digest" in state and state["digest"] != _state_digest(state):
        raise CorruptCheckpoint(f"{path}/state.json does not match its digest (the file was changed or damaged)")
    return state


def _verify_file(path: Path, name: str, state: Dict[str, Any]) -> None:
    """Size, then digest, of ``path/name`` against ``state.json`` (no-op for an undigested checkpoint)."""
    files = state.get("files")
    if files is None:
        return
    record, f = files.get(name), path / name
    if record is None:
        raise CorruptCheckpoint(f"{path}: state.json has no digest for {name}")
    if not f.is_file():
        raise CorruptCheckpoint(f"{f}: file missing")
    size = f.stat().st_size
    if size != record.get("bytes"):
        raise CorruptCheckpoint(f"{f}: {size} bytes, state.json says {record.get('bytes')} (truncated or replaced)")
    if file_checksum(f) != record.get(HASH_NAME):
        raise CorruptCheckpoint(f"{f}: {HASH_NAME} digest does not match state.json (the file is damaged)")


def _load_verified(path: Path, name: str, state: Dict[str, Any], finite: bool) -> Dict[str, torch.Tensor]:
    _verify_file(path, name, state)
    tensors = _load_tensors(path / name)
    if finite:
        _check_finite(tensors, path / name)
    return tensors


def read_checkpoint(path: Path, weights_only: bool = False) -> Checkpoint:
    """Load and verify one checkpoint directory; ``CorruptCheckpoint`` says what is wrong."""
    path = Path(path)
    state = _read_state(path)
    if "files" not in state:
        log.warning("checkpoint %s carries no digest (written before checkpoints were checksummed): "
                    "its files are loaded unverified", path)
    model = _load_verified(path, "model.safetensors", state, finite=True)
    if weights_only:
        return Checkpoint(path, model, {}, {}, state)
    return Checkpoint(path, model, _load_verified(path, "optim.safetensors", state, finite=True),
                      _load_verified(path, "rng.safetensors", state, finite=False), state)


def _newest_intact(out_dir: Path, weights_only: bool) -> Tuple[Optional[Checkpoint], List[Tuple[Path, str]]]:
    """The newest checkpoint that verifies, and the newer ones that did not (with why)."""
    bad: List[Tuple[Path, str]] = []
    for path in reversed(list_checkpoints(out_dir)):
        try:
            return read_checkpoint(path, weights_only), bad
        except CorruptCheckpoint as exc:
            bad.append((path, str(exc)))
    return None, bad


def _set_aside(path: Path) -> Path:
    """Rename a corrupt checkpoint out of ``ckpt-*`` (kept for inspection, never loaded again)."""
    target, k = path.with_name(CORRUPT_PREFIX + path.name), 1
    while target.exists():
        target, k = path.with_name(f"{CORRUPT_PREFIX}{path.name}.{k}"), k + 1
    os.replace(path, target)
    fsync_dir(path.parent)
    return target


def _none_intact(out_dir: Path, bad: List[Tuple[Path, str]]) -> CorruptCheckpoint:
    reasons = "; ".join(why for _, why in bad)
    return CorruptCheckpoint(f"no intact checkpoint in {out_dir}: {reasons}. Nothing was moved; to start over, "
                             f"move the ckpt-* directories elsewhere")


def resume_checkpoint(out_dir: Path) -> Optional[Checkpoint]:
    """The newest intact checkpoint of a run directory, or None if it has none.

    Corrupt newer checkpoints are logged and set aside (``corrupt-ckpt-*``); if
    every checkpoint is corrupt, ``CorruptCheckpoint`` is raised and nothing moves.
    """
    ckpt, bad = _newest_intact(Path(out_dir), weights_only=False)
    if ckpt is None and bad:
        raise _none_intact(Path(out_dir), bad)
    for path, why in bad:
        aside = _set_aside(path)
        log.warning("corrupt checkpoint set aside as %s: %s; resuming from %s", aside.name, why, ckpt.path)
    return ckpt


def load_checkpoint(path: Path, weights_only: bool = False) -> Checkpoint:
    """Load a verified checkpoint: a checkpoint directory (``CorruptCheckpoint`` if it is
    damaged), or a run directory (its newest intact checkpoint, with a warning naming any
    damaged newer one; read-only, nothing is set aside). No unpickling."""
    path = Path(path)
    if (path / "state.json").is_file():
        return read_checkpoint(path, weights_only)
    ckpt, bad = _newest_intact(path, weights_only)
    if ckpt is None:
        if bad:
            raise _none_intact(path, bad)
        raise FileNotFoundError(f"no checkpoint at {path} (expected a ckpt-* directory or a run directory)")
    for _, why in bad:
        log.warning("skipping corrupt checkpoint: %s; using %s", why, ckpt.path)
    return ckpt


def load_model_state(model: nn.Module, tensors: Dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Copy ``tensors`` into ``model``; ``ValueError`` names the first mismatch."""
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise ValueError(f"{source} does not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for key, value in own.items():
        if tuple(tensors[key].shape) != tuple(value.shape):
            raise ValueError(f"{source} does not fit this model: {key} has shape {tuple(tensors[key].shape)} "
                             f"in the checkpoint but {tuple(value.shape)} in the model")
    load_full_state(model, tensors)
