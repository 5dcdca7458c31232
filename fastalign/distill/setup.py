"""Everything a distillation run needs, built once before the first step.

``setup`` runs three parts in order, each checking what it builds:

1. ``open_sources``: the training (and validation) triplets, from the config or given;
2. ``resolve_items``: what an item index means (a feature row or an image) and
   that the sources, the student and the human triplets agree on the item count;
3. ``build_optimizer``: the (DDP/FSDP) wrapped student, decay-to-init Adam and
   the step options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..io import read_file_names
from ..io.resolve import resolve_triplets
from ..triplets import TripletStore
from .config import DistillConfig
from .data import ImageItems, StreamSpec
from .optim import DecayToInitAdam, trainable_parameters
from .parallel import DistInfo, init_distributed, wrap_model
from .sampler import DenseTripletSampler
from .source import TripletSource, teacher_temperature
from .step import StepOptions
from .student import (
    build_student,
    enable_activation_checkpointing,
    feature_lookup,
    image_preprocess,
    load_feature_matrix,
)

Source = Union[TripletSource, DenseTripletSampler]


@dataclass
class Run:
    """Everything the loop needs, built once by ``setup``."""

    cfg: DistillConfig
    dist: DistInfo
    device: torch.device
    model: nn.Module  # what the step runs: DDP-wrapped, or the student itself (FSDP shards it in place)
    student: nn.Module  # unwrapped
    optimizer: DecayToInitAdam
    names: Dict[nn.Parameter, str]
    spec: StreamSpec
    train_source: Source
    val_source: Optional[TripletSource]
    num_items: int
    human_eval: Optional[torch.Tensor]
    images: Optional[ImageItems]
    opts: StepOptions
    out_dir: Path
    step: int = 0
    position: Dict[str, int] = field(default_factory=lambda: {"step": 0, "epoch": 0, "batch": 0})

    @property
    def dense(self) -> bool:
        """Triplets are labelled on the fly (``DenseTripletSampler``), not read from a source."""
        return isinstance(self.train_source, DenseTripletSampler)


def _device(cfg: DistillConfig, dist_info: DistInfo) -> torch.device:
    kind = cfg.train.device
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("train.device is 'cuda' but no CUDA device is available")
        torch.cuda.set_device(dist_info.local_rank)
        return torch.device("cuda", dist_info.local_rank)
    return torch.device("cpu")


def resolve_teacher_temperature(cfg: DistillConfig, source: Source) -> float:
    """``loss.teacher_temperature``, else the temperature the source was labelled at, else 1."""
    if cfg.loss.teacher_temperature is not None:
        return float(cfg.loss.teacher_temperature)
    if isinstance(source, DenseTripletSampler):
        return 1.0
    found = teacher_temperature(source)
    return found if found is not None else 1.0


def _open_store(path: str) -> TripletStore:
    if not path:
        raise ValueError("data.source 'store' needs data.store (a triplet store path)")
    return TripletStore.open(path)


def open_sources(cfg: DistillConfig, local_batch: int, train_source: Optional[Source],
                 val_source: Optional[TripletSource]) -> Tuple[Source, Optional[TripletSource]]:
    """The training and validation triplets: those given, else what ``cfg.data`` names."""
    if train_source is not None:
        return train_source, val_source
    d = cfg.data
    if d.source == "dense":
        if not d.teacher_embeddings:
            raise ValueError("data.source 'dense' needs data.teacher_embeddings (an .npy of teacher embeddings)")
        teacher = load_feature_matrix(d.teacher_embeddings)
        return DenseTripletSampler(teacher, d.dense_items, local_batch, d.teacher_similarity,
                                   backend=cfg.loss.backend), val_source
    train = _open_store(d.store)
    if val_source is None and d.val_store:
        val_source = _open_store(d.val_store)
    elif val_source is None and (Path(d.store) / "val" / "manifest.json").is_file():
        val_source = _open_store(str(Path(d.store) / "val"))  # make-triplets' validation split
    return train, val_source


def _image_items(cfg: DistillConfig, student: nn.Module, source: Source) -> ImageItems:
    if feature_lookup(student) is not None:
        raise ValueError("data.items 'images' needs an image student (student.kind timm, open_clip or module)")
    if cfg.data.file_names:
        names = read_file_names(cfg.data.file_names)
    else:
        names = None if isinstance(source, DenseTripletSampler) else source.item_names
        if not names:
            raise ValueError("data.items 'images' needs data.file_names or a store manifest with file_names")
    size, mean, std = image_preprocess(cfg.student, student)
    return ImageItems(cfg.data.image_root, names, cfg.data.image_size or size, cfg.data.mean or mean,
                      cfg.data.std or std)


def _human(key: str, spec: str, num_items: int) -> torch.Tensor:
    rows = torch.as_tensor(resolve_triplets(spec), dtype=torch.int64)
    if rows.numel() and int(rows.max()) >= num_items:
        raise ValueError(f"{key} index {int(rows.max())} is out of range for {num_items} items")
    return rows


def resolve_items(cfg: DistillConfig, student: nn.Module, source: Source
                  ) -> Tuple[int, Optional[ImageItems], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """``(num_items, images, human, human_eval)``: the item count every part agrees on,
    the images when items are images, the hard human triplets to mix in and to score."""
    src_items = source.num_teacher_items if isinstance(source, DenseTripletSampler) else int(source.num_items)
    images = _image_items(cfg, student, source) if cfg.data.items == "images" else None
    lookup = feature_lookup(student)
    own = len(images) if images is not None else (lookup.num_items if lookup is not None else None)
    if own is not None and own != src_items:
        what = "image list" if images is not None else "feature matrix"
        raise ValueError(f"the triplet source has {src_items} items but the {what} has {own}")
    num_items = own if own is not None else src_items
    human = _human("loss.human_triplets", cfg.loss.human_triplets, num_items) if cfg.loss.human_weight > 0 else None
    human_eval = _human("eval.human_triplets", cfg.eval.human_triplets, num_items) if cfg.eval.human_triplets \
        else None
    return num_items, images, human, human_eval


def build_optimizer(cfg: DistillConfig, student: nn.Module, dist_info: DistInfo, device: torch.device
                    ) -> Tuple[nn.Module, DecayToInitAdam, Dict[nn.Parameter, str]]:
    """``(model, optimizer, names)``: the student wrapped for the ranks, its optimiser, parameter names."""
    if cfg.train.activation_checkpointing:
        enable_activation_checkpointing(student)
    student.train()
    if not trainable_parameters(student):
        raise ValueError("the student has no trainable parameters")
    # FSDP replaces the parameters with sharded ones: the optimiser (and its
    # theta0) must see the parameters the step will update.
    model = wrap_model(student, dist_info, device, bf16=cfg.train.amp == "bf16")
    named = trainable_parameters(student)
    o = cfg.optim
    optimizer = DecayToInitAdam([p for _, p in named], lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                weight_decay=o.weight_decay)
    return model, optimizer, {p: n for n, p in named}


def step_options(cfg: DistillConfig, source: Source) -> StepOptions:
    loss = cfg.loss
    return StepOptions(micro_batch=cfg.train.micro_batch, divergence=loss.divergence, temperature=loss.temperature,
                       teacher_temperature=resolve_teacher_temperature(cfg, source), similarity=loss.similarity,
                       human_weight=loss.human_weight, human_temperature=loss.human_temperature,
                       amp=cfg.train.amp == "bf16", backend=loss.backend)


def setup(cfg: DistillConfig, student: Optional[nn.Module] = None, train_source: Optional[Source] = None,
          val_source: Optional[TripletSource] = None, features: Optional[np.ndarray] = None) -> Run:
    """Validate ``cfg``, join the ranks, and build the run (see the module docstring)."""
    cfg.validate()
    kind = cfg.train.device if cfg.train.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dist_info = init_distributed(cfg.train.distributed, kind)
    device = _device(cfg, dist_info)
    if cfg.train.batch_triplets % dist_info.world:
        raise ValueError(f"train.batch_triplets ({cfg.train.batch_triplets}) must be divisible by the number "
                         f"of ranks ({dist_info.world})")
    local_batch = cfg.train.batch_triplets // dist_info.world
    torch.manual_seed(cfg.train.seed)  # identical initialisation on every rank
    student = (student if student is not None else build_student(cfg.student, features)).to(device)
    train_source, val_source = open_sources(cfg, local_batch, train_source, val_source)
    num_items, images, human, human_eval = resolve_items(cfg, student, train_source)
    model, optimizer, names = build_optimizer(cfg, student, dist_info, device)
    spec = StreamSpec(train_source, local_batch, cfg.train.seed, cfg.data.shuffle, dist_info.rank,
                      dist_info.world, human, cfg.loss.human_batch, images)
    return Run(cfg, dist_info, device, model, student, optimizer, names, spec, train_source, val_source,
               num_items, human_eval, images, step_options(cfg, train_source), Path(cfg.train.out_dir))
