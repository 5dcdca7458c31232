"""Export a trained student's embeddings (``fastalign embed``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from .checkpoint import load_checkpoint, load_model_state
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
    return embed_student(student, cfg, image_root=image_root, file_names=file_names, micro_batch=micro_batch,
                         device=device)


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
