"""Distillation configuration: dataclasses, filled from TOML and ``--set key=value``.

Every field has a default; a TOML file and command-line overrides change
only what they name. An unknown key or a value of the wrong type raises
``ValueError`` naming the dotted key (``optim.lr``), never a traceback deep in
the loop.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from ..config import apply_overrides, build_dataclass, parse_override, read_toml  # noqa: F401  (re-exported)


@dataclass
class StudentConfig:
    """What to train.

    Attributes:
        kind: "features" (``FeatureStudent``: frozen feature rows + trainable head),
            "timm" or "open_clip" (image backbones, when installed), or "module"
            (``module`` names a factory ``"pkg.mod:fn"`` returning an ``nn.Module``).
        features: for "features": an ``.npy`` path or ``"things:<name>"`` for the
            bundled THINGS features (``things:word2vec``).
        head: "linear", "mlp" or "none" (AligNet: a new Linear(D, 1024)).
        head_dim: output width of the head; 0 keeps the backbone width D.
        hidden_dim: hidden width of the "mlp" head.
        head_init: "random" (PyTorch default init) or "identity" (rectangular
            identity weight, zero bias: training starts at the backbone's features).
        dropout: dropout before the head (0 = off).
        model_name: timm / open_clip architecture name.
        model_kwargs: extra keyword arguments of the model factory
            (``timm.create_model``, ``open_clip.create_model`` or the "module"
            factory), e.g. ``{drop_path_rate = 0.1, img_size = 160}``.
        weights: local path of pretrained weights (never downloaded): a
            ``.safetensors`` or ``torch.save`` state dict, loaded by the model
            library itself (timm drops the classifier and resizes position
            embeddings; nothing is unpickled).
        pooling: "cls", "avg" or "map" (attention pooling) for timm / open_clip.
        module: ``"pkg.mod:factory"`` for kind "module".
    """

    kind: str = "features"
    features: str = ""
    head: str = "linear"
    head_dim: int = 1024
    hidden_dim: int = 1024
    head_init: str = "random"
    dropout: float = 0.0
    model_name: str = ""
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    weights: str = ""
    pooling: str = "avg"
    module: str = ""


@dataclass
class DataConfig:
    """Where the triplets and the items come from.

    Attributes:
        source: "store" (a triplet store written by ``make-triplets``) or "dense"
            (triplet-dense sampling: ``dense_items`` items per step and
            ``train.batch_triplets`` triplets among them, labelled on the fly
            by the teacher embeddings).
        store: triplet store path (source "store").
        val_store: held-out triplet store (the validation split); "" uses
            ``<store>/val`` when ``make-triplets`` wrote one there.
        teacher_embeddings: (N, Dt) ``.npy`` of teacher embeddings (source "dense"),
            e.g. the transformed teacher features.
        teacher_similarity: "dot" or "cosine" for labelling dense triplets.
        dense_items: distinct items embedded per step and rank in dense mode;
            the step's ``train.batch_triplets`` triplets are drawn among them.
        items: "features" (rows of the student's feature matrix) or "images".
        image_root: directory the image ``file_names`` are relative to.
        file_names: text file, one image path per line; "" uses the store
            manifest's ``file_names``.
        image_size: side of the square crop fed to the student; 0 uses the
            model's own input size (224 when it states none).
        mean, std: per-channel normalisation; empty uses the model's own.
        num_workers: DataLoader workers (image decoding).
        shuffle: shuffle the store each epoch.
    """

    source: str = "store"
    store: str = ""
    val_store: str = ""
    teacher_embeddings: str = ""
    teacher_similarity: str = "dot"
    dense_items: int = 512
    items: str = "features"
    image_root: str = ""
    file_names: str = ""
    image_size: int = 0
    mean: List[float] = field(default_factory=list)
    std: List[float] = field(default_factory=list)
    num_workers: int = 0
    shuffle: bool = True


@dataclass
class LossConfig:
    """The objective.

    Attributes:
        divergence: "jsd" (AligNet) or "kl".
        temperature: student softmax temperature (AligNet: 100).
        teacher_temperature: temperature turning teacher similarities into
            probabilities; unset uses the store manifest's ``temperature`` (else 1).
        similarity: "dot" (AligNet) or "cosine".
        human_triplets: hard human triplets mixed in: ``.txt`` path (THINGS
            format, column 2 the odd one out) or ``"things:<split>"``; "" = none.
        human_weight: weight of the hard human loss.
        human_batch: human triplets drawn per step.
        human_temperature: temperature of the hard loss.
        backend: triplet op backend (None = auto).
    """

    divergence: str = "jsd"
    temperature: float = 100.0
    teacher_temperature: Optional[float] = None
    similarity: str = "dot"
    human_triplets: str = ""
    human_weight: float = 0.0
    human_batch: int = 0
    human_temperature: float = 1.0
    backend: Optional[str] = None


@dataclass
class OptimConfig:
    """Adam with decay toward the initial weights, warmup then cosine.

    Attributes:
        lr: peak learning rate (AligNet: 3e-5).
        betas: Adam betas.
        eps: Adam epsilon.
        weight_decay: decay-to-init strength ``wd`` in
            ``theta <- theta - lr * (adam_update + wd * (theta - theta0))``.
        warmup_steps: linear warmup from 0 to ``lr``; 10 % of the default ``train.steps`` (a
            warmup as long as the run never reaches ``lr``: ``validate`` warns).
        min_lr_ratio: the cosine ends at ``lr * min_lr_ratio``.
        clip_grad_norm: global gradient-norm clip; 0 disables.
    """

    lr: float = 3e-5
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 1.0
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0
    clip_grad_norm: float = 1.0


@dataclass
class TrainConfig:
    """The loop.

    Attributes:
        steps: optimiser steps in total (AligNet: 100k).
        batch_triplets: triplets per step over all ranks (AligNet: 512).
        micro_batch: items embedded per forward; bounds activation memory.
        step_mode: "two_pass" (gradient caching) or "single" (one autograd pass;
            only sensible for cheap students such as ``FeatureStudent``).
        amp: "none" or "bf16" autocast.
        activation_checkpointing: recompute activations in backward.
        seed: seeds the initialisation, the data order and dropout.
        device: "auto", "cpu" or "cuda".
        distributed: "auto" (DDP when launched by torchrun), "ddp", "fsdp" (shard
            parameters, gradients and optimiser state over the ranks; see
            ``distill.parallel``) or "none".
        out_dir: checkpoints, metrics, curves and the report go here.
        log_every, eval_every, ckpt_every: periods in steps (0 disables eval).
        keep_last: checkpoints kept.
        progress: show a tqdm bar (when installed).
        resume: continue from the newest checkpoint in ``out_dir``.
    """

    steps: int = 1000
    batch_triplets: int = 512
    micro_batch: int = 128
    step_mode: str = "two_pass"
    amp: str = "none"
    activation_checkpointing: bool = False
    seed: int = 0
    device: str = "auto"
    distributed: str = "auto"
    out_dir: str = "distill-out"
    log_every: int = 10
    eval_every: int = 0
    ckpt_every: int = 500
    keep_last: int = 3
    progress: bool = True
    resume: bool = True


@dataclass
class EvalConfig:
    """Periodic evaluation.

    Attributes:
        human_triplets: human triplets to score accuracy on (path or
            ``"things:test_10"``); "" = none.
        val_batches: batches of ``data.val_store`` (or of held-out dense
            triplets) to evaluate.
        batch: triplets per evaluation batch.
    """

    human_triplets: str = ""
    val_batches: int = 8
    batch: int = 4096


@dataclass
class DistillConfig:
    """All settings of one distillation run (see the section classes)."""

    student: StudentConfig = field(default_factory=StudentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, prefix: str = "") -> "DistillConfig":
        """Check option values; raise ``ValueError`` naming the key.

        ``prefix`` is where this config sits in a larger one (``"student."`` in
        ``fastalign run``'s): messages then name the key the user wrote.
        """
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                self._check()
        except ValueError as exc:
            raise ValueError(f"{prefix}{exc}") from None
        for w in caught:
            warnings.warn(f"{prefix}{w.message}", w.category, stacklevel=2)
        return self

    def _check(self) -> None:
        # Every message starts with the key it is about, so validate can prefix it.
        _choice("student.kind", self.student.kind, ("features", "timm", "open_clip", "module"))
        _choice("student.head", self.student.head, ("linear", "mlp", "none"))
        _choice("student.head_init", self.student.head_init, ("random", "identity"))
        _choice("student.pooling", self.student.pooling, ("cls", "avg", "map"))
        _choice("data.source", self.data.source, ("store", "dense"))
        _choice("data.items", self.data.items, ("features", "images"))
        _choice("data.teacher_similarity", self.data.teacher_similarity, ("dot", "cosine"))
        _choice("loss.divergence", self.loss.divergence, ("kl", "jsd"))
        _choice("loss.similarity", self.loss.similarity, ("dot", "cosine"))
        _choice("train.step_mode", self.train.step_mode, ("two_pass", "single"))
        _choice("train.amp", self.train.amp, ("none", "bf16"))
        _choice("train.device", self.train.device, ("auto", "cpu", "cuda"))
        _choice("train.distributed", self.train.distributed, ("auto", "ddp", "fsdp", "none"))
        for key, value in (("loss.temperature", self.loss.temperature), ("optim.eps", self.optim.eps),
                           ("loss.human_temperature", self.loss.human_temperature)):
            _positive(key, value)
        if self.loss.teacher_temperature is not None:
            _positive("loss.teacher_temperature", self.loss.teacher_temperature)
        for key, value in (("train.steps", self.train.steps), ("train.batch_triplets", self.train.batch_triplets),
                           ("train.micro_batch", self.train.micro_batch), ("train.log_every", self.train.log_every),
                           ("train.ckpt_every", self.train.ckpt_every), ("train.keep_last", self.train.keep_last),
                           ("data.dense_items", self.data.dense_items), ("eval.batch", self.eval.batch)):
            _positive(key, value)
        for key, value in (("optim.lr", self.optim.lr), ("optim.weight_decay", self.optim.weight_decay),
                           ("optim.warmup_steps", self.optim.warmup_steps),
                           ("optim.clip_grad_norm", self.optim.clip_grad_norm),
                           ("loss.human_weight", self.loss.human_weight), ("loss.human_batch", self.loss.human_batch),
                           ("train.eval_every", self.train.eval_every), ("eval.val_batches", self.eval.val_batches),
                           ("student.dropout", self.student.dropout), ("student.head_dim", self.student.head_dim),
                           ("data.num_workers", self.data.num_workers),
                           ("data.image_size", self.data.image_size)):
            if value < 0:
                raise ValueError(f"{key} must be >= 0, got {value!r}")
        if self.optim.warmup_steps >= self.train.steps:
            warnings.warn(f"optim.warmup_steps = {self.optim.warmup_steps} >= train.steps = {self.train.steps}: the "
                          "whole run is warm-up and the learning rate never reaches optim.lr", stacklevel=1)
        if not 0.0 <= self.optim.min_lr_ratio <= 1.0:
            raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {self.optim.min_lr_ratio!r}")
        if len(self.optim.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.optim.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.optim.betas!r}")
        if self.student.dropout >= 1.0:
            raise ValueError(f"student.dropout must be < 1, got {self.student.dropout!r}")
        if self.train.distributed == "fsdp" and self.train.step_mode != "two_pass":
            raise ValueError("train.distributed 'fsdp' needs train.step_mode 'two_pass' (its micro-batches run in "
                             "lockstep over the ranks)")
        if self.data.source == "dense" and self.data.dense_items < 3:
            raise ValueError("data.dense_items must be >= 3 (a triplet needs three distinct items)")
        if self.loss.human_weight > 0 and (not self.loss.human_triplets or self.loss.human_batch == 0):
            raise ValueError("loss.human_weight > 0 needs loss.human_triplets and loss.human_batch > 0")
        if len(self.data.mean) not in (0, 3) or len(self.data.std) not in (0, 3):
            raise ValueError("data.mean and data.std must be empty or have 3 entries")


def _choice(key: str, value: str, options: Sequence[str]) -> None:
    if value not in options:
        raise ValueError(f"{key} must be one of {', '.join(map(repr, options))}, got {value!r}")


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{key} must be > 0, got {value!r}")


def to_toml(cfg: DistillConfig) -> str:
    """``cfg`` as a TOML file that ``load_config`` reads back to an equal config.

    TOML has no null, so an unset optional key is written as a comment.
    """
    lines: List[str] = []
    for section in dataclasses.fields(cfg):
        lines.append(f"[{section.name}]")
        for f in dataclasses.fields(getattr(cfg, section.name)):
            value = getattr(getattr(cfg, section.name), f.name)
            lines.append(f"# {f.name} = (unset)" if value is None else f"{f.name} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML")


def config_from_dict(data: Mapping[str, Any]) -> DistillConfig:
    """Build and validate a ``DistillConfig`` from nested dicts (TOML layout)."""
    return build_dataclass(DistillConfig, data).validate()


def load_config(path: Optional[Union[str, Path]] = None, overrides: Sequence[str] = ()) -> DistillConfig:
    """Read a TOML file (optional), apply ``--set`` overrides, validate."""
    data = read_toml(path) if path is not None else {}
    return config_from_dict(apply_overrides(data, overrides))
