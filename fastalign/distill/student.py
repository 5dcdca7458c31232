"""Students: a backbone mapping a batch of inputs to (n, D) features, plus an
optional triplet head (AligNet: a new ``Linear(D, 1024)``, no normalisation).

- ``Student(backbone, head)`` wraps any ``nn.Module``;
- ``FeatureStudent(features, ...)``: frozen precomputed feature rows looked up
  by item index, with a trainable head (the cheap CPU student);
- ``timm_backbone`` / ``open_clip_backbone``: optional adapters (only when the
  package is installed). Weights come from a local file, never a download.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.checkpoint import checkpoint_sequential

from ..io.resolve import resolve_features
from .config import StudentConfig


class Student(nn.Module):
    """``head(backbone(x))``; ``head`` may be ``None`` (identity)."""

    def __init__(self, backbone: nn.Module, head: Optional[nn.Module] = None):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        if feats.dim() != 2:
            raise ValueError(f"the student backbone must return (n, D) features, got shape {tuple(feats.shape)}")
        return feats if self.head is None else self.head(feats)


class FeatureLookup(nn.Module):
    """Frozen feature rows: ``forward(idx) = features[idx]``.

    The matrix is a non-persistent buffer: it is not saved in checkpoints
    (``fastalign embed --features`` supplies it again), so a checkpoint holds
    only what was trained.
    """

    def __init__(self, features: torch.Tensor):
        super().__init__()
        if features.dim() != 2:
            raise ValueError(f"features must be 2-D (N, D), got shape {tuple(features.shape)}")
        self.register_buffer("features", features.detach().float().contiguous(), persistent=False)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def num_items(self) -> int:
        return int(self.features.shape[0])

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"FeatureStudent expects int64 item indices, got {idx.dtype}")
        return self.features.index_select(0, idx.to(self.features.device).long())


def feature_lookup(model: nn.Module) -> Optional[FeatureLookup]:
    """The frozen feature rows of a ``FeatureStudent`` (its backbone), or None for any other model."""
    backbone = getattr(model, "backbone", None)  # any nn.Module may be a student; only Student has one
    return backbone if isinstance(backbone, FeatureLookup) else None


class ResidualMLP(nn.Module):
    """``x E + MLP(x)``: a fixed rectangular identity ``E`` plus a GELU MLP whose last layer starts at zero.

    It starts exactly at the raw features (as the identity linear head does), and decay-to-init
    pulls the last layer back to zero, i.e. the head back toward the raw features, while the MLP
    can still bend the representation where a linear map cannot.

    Args:
        in_dim, out_dim: backbone and output widths (the skip truncates or zero-pads).
        hidden_dim: hidden width of the MLP.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))
        with torch.no_grad():
            self.mlp[2].weight.zero_()
            self.mlp[2].bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = min(self.in_dim, self.out_dim)
        skip = x[:, :k] if k == self.out_dim else nn.functional.pad(x[:, :k], (0, self.out_dim - k))
        return skip + self.mlp(x)


def make_head(kind: str, in_dim: int, out_dim: int = 0, hidden_dim: int = 1024, init: str = "random",
              dropout: float = 0.0) -> Optional[nn.Module]:
    """Build a triplet head.

    Args:
        kind: "linear", "mlp" or "none".
        in_dim: backbone width D.
        out_dim: head output width; 0 keeps D.
        hidden_dim: hidden width of the MLP.
        init: "random" or "identity" (linear: rectangular identity, zero bias; mlp: ``ResidualMLP``,
            the identity plus an MLP whose last layer starts at zero).
        dropout: dropout probability applied to the backbone features first.
    """
    out_dim = out_dim or in_dim
    layers = [nn.Dropout(dropout)] if dropout > 0 else []
    if kind == "none":
        return nn.Sequential(*layers) if layers else None
    if kind == "linear":
        lin = nn.Linear(in_dim, out_dim)
        if init == "identity":
            with torch.no_grad():
                lin.weight.copy_(torch.eye(out_dim, in_dim))
                lin.bias.zero_()
        layers.append(lin)
    elif kind == "mlp" and init == "identity":
        layers.append(ResidualMLP(in_dim, out_dim, hidden_dim))
    elif kind == "mlp":
        layers += [nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim)]
    else:
        raise ValueError(f"student.head must be 'linear', 'mlp' or 'none', got {kind!r}")
    return nn.Sequential(*layers)


def load_feature_matrix(spec: str) -> np.ndarray:
    """An (N, D) floating-point feature matrix from a file or ``"things:<name>"`` (``fastalign.io.resolve``)."""
    if not spec:
        raise ValueError("student.features is empty: give a features file or things:<name>")
    arr = np.asarray(resolve_features(spec))
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{spec}: expected a non-empty (N, D) feature matrix, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{spec}: expected floating-point features, got {arr.dtype}")
    return arr


def FeatureStudent(features: Union[np.ndarray, torch.Tensor], head: str = "linear", out_dim: int = 0,
                   hidden_dim: int = 1024, init: str = "random", dropout: float = 0.0) -> Student:
    """Frozen precomputed features with a trainable head.

    Args:
        features: (N, D) feature matrix; the student's input is an int64 tensor
            of item indices.
        head, out_dim, hidden_dim, init, dropout: see ``make_head``.
    """
    feats = features if isinstance(features, torch.Tensor) else torch.from_numpy(np.array(features, copy=True))
    lookup = FeatureLookup(feats)
    return Student(lookup, make_head(head, lookup.dim, out_dim, hidden_dim, init, dropout))


def _local_weights(weights: str) -> str:
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"student weights not found: {path} (weights are never downloaded)")
    return str(path)


def _load_local_weights(module: nn.Module, weights: str) -> None:
    """Load a local ``.safetensors`` or ``torch.save`` state dict (weights only)."""
    path = Path(_local_weights(weights))
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
    missing, unexpected = module.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"{path}: weights do not match the model: unexpected keys {unexpected[:5]}")
    trainable_missing = [k for k in missing if not k.startswith(("head", "fc", "classifier"))]
    if trainable_missing:
        raise ValueError(f"{path}: weights do not match the model: missing keys {trainable_missing[:5]}")


# Modules that a timm pooling / head configuration adds fresh (not in a
# classification checkpoint): their weights may be missing from the file.
_TIMM_NEW_MODULES = ("fc_norm", "attn_pool", "head", "head_drop", "global_pool")


def _load_timm_weights(model: nn.Module, weights: str) -> None:
    """Load a local checkpoint into a timm model, strictly.

    timm's own pretrained path only warns about keys that do not fit (a
    checkpoint of another architecture would load nothing, silently). This
    applies the same adaptations (the model family's ``checkpoint_filter_fn``
    resamples position embeddings for another ``img_size``), drops the
    classifier, then refuses any other key that does not fit.
    """
    from timm.models import load_state_dict  # optional: only a timm student gets here

    path = _local_weights(weights)
    state = load_state_dict(path, weights_only=True)
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, model)
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier", "head")
    classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    modules = dict(model.named_modules())

    def removed(key: str) -> bool:  # the classifier, or a part this configuration replaced by Identity
        owner = key.rsplit(".", 1)[0]
        return owner.startswith(classifier) or isinstance(modules.get(owner), nn.Identity)

    state = {k: v for k, v in state.items() if not removed(k)}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ValueError(f"{path}: weights do not fit the model: {exc}") from None
    missing = [k for k in missing if not k.startswith(_TIMM_NEW_MODULES)]
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not fit the model: missing {missing[:4]}, unexpected {unexpected[:4]}")


def timm_backbone(model_name: str, weights: str = "", pooling: str = "avg",
                  model_kwargs: Optional[Dict[str, Any]] = None) -> Tuple[nn.Module, int]:
    """A timm model without classifier; returns ``(module, D)``. Needs ``timm``.

    Args:
        model_name: timm architecture (``vit_base_patch16_224``).
        weights: local ``.safetensors`` / ``torch.save`` file (see
            ``_load_timm_weights``); "" keeps the random initialisation.
        pooling: "cls", "avg" or "map" (timm's ``global_pool``). A pooling
            module the checkpoint lacks (a ViT's ``fc_norm`` for "avg", its
            ``attn_pool`` for "map") starts fresh, as the head does.
        model_kwargs: more ``timm.create_model`` arguments (``img_size``, ``drop_path_rate``).
    """
    try:
        import timm  # optional extra: only a timm student needs it
    except ImportError:
        raise ValueError("student.kind 'timm' needs the timm package (pip install timm)") from None
    pool = {"cls": "token", "avg": "avg", "map": "map"}[pooling]
    try:
        model = timm.create_model(model_name, pretrained=False, num_classes=0, global_pool=pool,
                                  **(model_kwargs or {}))
    except (RuntimeError, ValueError, TypeError, AssertionError, KeyError) as exc:
        raise ValueError(f"timm cannot build student {model_name!r} (pooling {pooling!r}): {exc}") from None
    if weights:
        _load_timm_weights(model, weights)
    return model, int(model.num_features)


def open_clip_backbone(model_name: str, weights: str = "", pooling: str = "cls",
                       model_kwargs: Optional[Dict[str, Any]] = None) -> Tuple[nn.Module, int]:
    """The image tower of an open_clip model; returns ``(module, D)``. Needs ``open_clip``.

    Args:
        model_name: open_clip architecture (``ViT-B-32``).
        weights: local file of the whole CLIP model's weights, loaded by
            open_clip (``pretrained=<path>``, weights only); "" keeps the
            random initialisation.
        pooling: "cls" or "avg" for a ViT tower; "map" for a tower built with
            an attention pool (ResNet towers always pool by attention).
        model_kwargs: more ``open_clip.create_model`` arguments (``force_image_size``).
    """
    try:
        import open_clip  # optional extra: only an open_clip student needs it
    except ImportError:
        raise ValueError("student.kind 'open_clip' needs the open_clip_torch package") from None
    try:
        model = open_clip.create_model(model_name, pretrained=_local_weights(weights) if weights else None,
                                       **(model_kwargs or {}))
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"open_clip cannot build student {model_name!r} (weights {weights or 'none'!r}): "
                         f"{exc}") from None
    visual = model.visual
    if hasattr(visual, "pool_type"):  # a ViT tower
        if pooling == "map":
            # open_clip builds its attention pool from the model config, not per call.
            if getattr(visual, "attn_pool", None) is None:
                raise ValueError(f"open_clip model {model_name!r} has no attention pool: use pooling 'cls' or 'avg'")
        else:
            visual.pool_type = {"cls": "tok", "avg": "avg"}[pooling]
    elif pooling != "map":
        raise ValueError(f"open_clip model {model_name!r} pools by attention: use student.pooling 'map'")
    dim = int(getattr(visual, "output_dim", 0) or getattr(model, "embed_dim", 0))
    return visual, dim


def image_preprocess(cfg: StudentConfig, model: nn.Module) -> Tuple[int, Tuple[float, ...], Tuple[float, ...]]:
    """The model's own (size, mean, std), falling back to ImageNet statistics."""
    size, mean, std = 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    backbone = getattr(model, "backbone", model)
    if cfg.kind == "timm":
        dc = getattr(backbone, "pretrained_cfg", None) or {}
        size = int(dc.get("input_size", (3, size))[-1])
        mean, std = tuple(dc.get("mean", mean)), tuple(dc.get("std", std))
        # ``img_size=...`` changes the model, not its pretrained_cfg.
        built = getattr(getattr(backbone, "patch_embed", None), "img_size", None)
        if built is not None:
            size = int(built[0] if isinstance(built, (tuple, list)) else built)
    elif cfg.kind == "open_clip":
        pc = getattr(backbone, "preprocess_cfg", None) or {}
        size = pc.get("size", getattr(backbone, "image_size", size))
        size = int(size[0] if isinstance(size, (tuple, list)) else size)
        mean, std = tuple(pc.get("mean", mean)), tuple(pc.get("std", std))
    return size, mean, std


def _import_factory(spec: str):
    if ":" not in spec:
        raise ValueError(f"student.module must look like 'package.module:factory', got {spec!r}")
    mod, name = spec.split(":", 1)
    try:
        factory = getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"student.module {spec!r} cannot be imported: {exc}") from None
    return factory


def build_student(cfg: StudentConfig, features: Optional[np.ndarray] = None) -> Student:
    """Build the student a config describes (``features`` overrides ``cfg.features``)."""
    if cfg.kind == "features":
        feats = features if features is not None else load_feature_matrix(cfg.features)
        return FeatureStudent(feats, cfg.head, cfg.head_dim, cfg.hidden_dim, cfg.head_init, cfg.dropout)
    if cfg.kind == "module":
        backbone = _import_factory(cfg.module)(**cfg.model_kwargs)
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"student.module {cfg.module!r} must return an nn.Module")
        if cfg.weights:
            _load_local_weights(backbone, cfg.weights)
        if cfg.head == "none" and cfg.dropout == 0:
            return Student(backbone, None)
        dim = getattr(backbone, "out_dim", None)
        if dim is None:
            raise ValueError("a 'module' student with a head needs the module to expose out_dim (its width D)")
        return Student(backbone, make_head(cfg.head, int(dim), cfg.head_dim, cfg.hidden_dim, cfg.head_init,
                                           cfg.dropout))
    if cfg.kind == "timm":
        backbone, dim = timm_backbone(cfg.model_name, cfg.weights, cfg.pooling, cfg.model_kwargs)
    else:
        backbone, dim = open_clip_backbone(cfg.model_name, cfg.weights, cfg.pooling, cfg.model_kwargs)
    return Student(backbone, make_head(cfg.head, dim, cfg.head_dim, cfg.hidden_dim, cfg.head_init, cfg.dropout))


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute activations in backward: timm's own switch, or per child of a
    ``Sequential`` backbone. Raises ``ValueError`` when neither applies."""
    backbone = getattr(model, "backbone", model)
    if hasattr(backbone, "set_grad_checkpointing"):
        backbone.set_grad_checkpointing(True)
        return
    if isinstance(backbone, nn.Sequential) and len(backbone) > 1:
        segments = max(1, int(len(backbone) ** 0.5))
        seq = backbone

        def forward(x, _seq=seq, _segments=segments):
            if torch.is_grad_enabled():
                return checkpoint_sequential(_seq, _segments, x, use_reentrant=False)
            return nn.Sequential.forward(_seq, x)

        seq.forward = forward  # instance attribute: only this module changes
        return
    if isinstance(backbone, FeatureLookup):
        return  # nothing to recompute: the features are a lookup
    raise ValueError("train.activation_checkpointing needs a timm backbone or an nn.Sequential backbone")
