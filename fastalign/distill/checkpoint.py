"""Checkpoints: one directory per step, written atomically, no pickles.

Layout of ``<out_dir>/ckpt-00001000/``:

- ``model.safetensors``: the student's state dict (trainable weights and
  persistent buffers; a ``FeatureStudent``'s feature matrix is not included);
- ``optim.safetensors``: ``theta0.<name>``, ``exp_avg.<name>``, ``exp_avg_sq.<name>``;
- ``rng.safetensors``: CPU (and CUDA) RNG states of every rank;
- ``state.json``: step, optimiser step counts, data-stream position of every
  rank, the config, the parameter shapes. Written last: a directory without
  it is incomplete and ignored.

The directory is built under a temporary name, every file fsynced, then
renamed into place and the parent fsynced, so a kill at any moment leaves
either the old set of checkpoints or the new one. Loading uses safetensors
and ``json`` only; nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..io.atomic import fsync_dir
from .parallel import load_full_state

FORMAT = "fastalign-distill-checkpoint/1"
PREFIX = "ckpt-"


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _save_tensors(tensors: Dict[str, torch.Tensor], path: Path) -> None:
    # safetensors refuses shared or strided storage: give it compact copies.
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(path))
    _fsync_file(path)


def _load_tensors(path: Path) -> Dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file missing: {path}")
    return load_file(str(path))


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
        _save_tensors(model_state, tmp / "model.safetensors")
        _save_tensors(optim_state, tmp / "optim.safetensors")
        _save_tensors(rng_state, tmp / "rng.safetensors")
        meta = {"format": FORMAT, "step": int(step), **state}
        with open(tmp / "state.json", "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(tmp)
        if final.exists():  # re-saving the same step (e.g. the final one)
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(out_dir)[:-max(1, keep_last)]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in out_dir.glob(f".{PREFIX}*.tmp"):  # leftovers of a killed save
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
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
    """A checkpoint directory, or a run directory (then its newest checkpoint)."""
    path = Path(path)
    if (path / "state.json").is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise FileNotFoundError(f"no checkpoint at {path} (expected a ckpt-* directory or a run directory)")
    return latest


def load_checkpoint(path: Path, weights_only: bool = False) -> Checkpoint:
    """Load a checkpoint directory (or a run directory's newest); no unpickling."""
    path = resolve_checkpoint(path)
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}/state.json is not valid JSON: {exc}") from None
    if state.get("format") != FORMAT:
        raise ValueError(f"{path}: not a fastalign distill checkpoint (format {state.get('format')!r})")
    model = _load_tensors(path / "model.safetensors")
    if weights_only:
        return Checkpoint(path, model, {}, {}, state)
    return Checkpoint(path, model, _load_tensors(path / "optim.safetensors"),
                      _load_tensors(path / "rng.safetensors"), state)


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
