"""Export a trained student's embeddings (``fastalign embed``).

``export_embeddings`` writes ``E.npy`` and beside it the sidecar ``E.npy.json``:
the student's training similarity and temperature, so that ``fastalign evaluate``
scores the embeddings' probabilities at the temperature they were trained at
(at T = 1 a student trained at T = 100 reports a NLL of 6.9 instead of 1.05).
The sidecar records the ``.npy``'s checksum: one that describes another file
(the ``.npy`` was rewritten since) is not trusted.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..io.atomic import HASH_NAME, atomic_save_npy, atomic_write_json, file_checksum, read_json
from .checkpoint import Checkpoint, load_checkpoint, load_model_state
from .config import DistillConfig, config_from_dict
from .data import ImageItems
from .evaluation import embed_items
from .student import build_student, feature_lookup, image_preprocess, load_feature_matrix


def embed_checkpoint(checkpoint: Union[str, Path], *, features: Optional[str] = None,
                     image_root: Optional[str] = None, file_names: Optional[List[str]] = None,
                     micro_batch: int = 256, device: str = "cpu") -> Tuple[np.ndarray, np.ndarray]:
    """Embed items with the student of a checkpoint.

    Args:
        checkpoint: a checkpoint directory, or a run directory (its newest checkpoint).
        features: for a "features" student, the (N, D) ``.npy`` (or ``things:<name>``)
            to map through the trained head; default: the training features.
        image_root, file_names: for an image student, the images to embed.
        micro_batch: items per forward.
        device: "cpu" or "cuda".

    Returns:
        ``(emb, ok)``: float32 (N, D') embeddings (zero rows for images that
        failed to load) and the (N,) bool mask of rows that loaded.
    """
    emb, ok, _, _ = _embed(checkpoint, features, image_root, file_names, micro_batch, device)
    return emb, ok


SIDECAR_FORMAT = "fastalign-embeddings/1"


def sidecar_path(embeddings: Union[str, Path]) -> Path:
    """``E.npy`` -> ``E.npy.json``: where ``export_embeddings`` records how ``E.npy`` is scored."""
    return Path(str(embeddings) + ".json")


def export_embeddings(checkpoint: Union[str, Path], out: Union[str, Path], *, features: Optional[str] = None,
                      image_root: Optional[str] = None, file_names: Optional[List[str]] = None,
                      micro_batch: int = 256, device: str = "cpu") -> Tuple[np.ndarray, np.ndarray, Dict[str, Any]]:
    """Embed items as ``embed_checkpoint`` does and write ``out`` (.npy) and its sidecar, both atomically.

    Returns:
        ``(emb, ok, info)``: as ``embed_checkpoint``, and the sidecar's content.
    """
    if Path(out).suffix.lower() != ".npy":
        # np.save to another name would write .npy bytes under a name that promises another format.
        raise ValueError(f"{out}: embeddings are written as a NumPy .npy file; give a file name ending in .npy")
    emb, ok, ckpt, cfg = _embed(checkpoint, features, image_root, file_names, micro_batch, device)
    # The array first: a kill between the two writes leaves an old sidecar whose checksum no longer matches.
    atomic_save_npy(out, emb)
    info = {"format": SIDECAR_FORMAT, "checkpoint": str(Path(ckpt.path).resolve()), "step": ckpt.step,
            "similarity": cfg.loss.similarity, "temperature": float(cfg.loss.temperature),
            "shape": list(emb.shape), "dtype": str(emb.dtype), HASH_NAME: file_checksum(out)}
    atomic_write_json(sidecar_path(out), info)
    return emb, ok, info


def read_sidecar(embeddings: Union[str, Path]) -> Tuple[Optional[Dict[str, Any]], str]:
    """The sidecar of ``embeddings`` if there is one that describes this very file.

    Returns:
        ``(info, note)``: the sidecar's content (None when absent or not to be trusted) and, when
        one exists but is not used, why (else "").
    """
    path = sidecar_path(embeddings)
    if not path.is_file():
        return None, ""
    try:
        info = read_json(path)
    except ValueError as exc:
        return None, f"ignoring {path}: {exc}"
    if not isinstance(info, dict) or info.get("format") != SIDECAR_FORMAT:
        return None, f"ignoring {path}: not a {SIDECAR_FORMAT} sidecar"
    temperature = info.get("temperature")
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0:
        return None, f"ignoring {path}: temperature {temperature!r} is not a positive number"
    if info.get("similarity") not in ("dot", "cosine"):
        return None, f"ignoring {path}: similarity {info.get('similarity')!r} is neither dot nor cosine"
    if info.get(HASH_NAME) != file_checksum(embeddings):
        return None, f"ignoring {path}: it describes another version of {Path(embeddings).name} (checksum differs)"
    return info, ""


def _embed(checkpoint, features, image_root, file_names, micro_batch,
           device) -> Tuple[np.ndarray, np.ndarray, Checkpoint, DistillConfig]:
    """``embed_checkpoint``'s ``(emb, ok)``, and the checkpoint and config they came from."""
    ckpt = load_checkpoint(Path(checkpoint), weights_only=True)
    cfg = config_from_dict(ckpt.state["config"])
    feats = None
    if cfg.student.kind == "features":
        if file_names is not None:
            raise ValueError("this checkpoint's student reads features, not images: pass --features")
        feats = load_feature_matrix(features or cfg.student.features)
    elif features is not None:
        raise ValueError(f"this checkpoint's student is a {cfg.student.kind!r} image model: pass --images")
    # The checkpoint holds every weight: the pretrained file need not exist any more.
    student = build_student(dataclasses.replace(cfg.student, weights=""), feats)
    load_model_state(student, ckpt.model, f"checkpoint {ckpt.path}")
    emb, ok = embed_student(student, cfg, image_root=image_root, file_names=file_names, micro_batch=micro_batch,
                            device=device)
    return emb, ok, ckpt, cfg


def embed_student(student: nn.Module, cfg: DistillConfig, *, image_root: Optional[str] = None,
                  file_names: Optional[List[str]] = None, micro_batch: int = 256,
                  device: str = "cpu") -> Tuple[np.ndarray, np.ndarray]:
    """Embed every item with ``student`` (eval mode, no autograd).

    Args:
        student: a ``FeatureStudent`` (embeds all its feature rows) or an image
            model (embeds ``file_names``, preprocessed as ``cfg`` says).
        cfg: the distillation config the student was built from.
        image_root, file_names, micro_batch, device: as in ``embed_checkpoint``.

    Returns:
        ``(emb, ok)`` as in ``embed_checkpoint``.
    """
    student.to(torch.device(device))
    lookup = feature_lookup(student)
    if lookup is not None:
        items = torch.arange(lookup.num_items)
        images = None
    else:
        if not file_names:
            raise ValueError("give the images to embed (--images ROOT --file-names LIST)")
        size, mean, std = image_preprocess(cfg.student, student)
        images = ImageItems(image_root or "", file_names, cfg.data.image_size or size,
                            cfg.data.mean or mean, cfg.data.std or std)
        items = torch.arange(len(file_names))
    emb, ok = embed_items(student, items, micro_batch, images, amp=cfg.train.amp == "bf16")
    return emb.cpu().numpy().astype(np.float32), ok.numpy()
