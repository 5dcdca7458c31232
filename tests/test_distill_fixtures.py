"""Shared helpers of the distill tests (small students, synthetic triplets, a
runner for subprocess and multi-process tests). Holds no tests itself."""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch
from torch import nn

from fastalign.distill import ArrayTripletSource, config_from_dict


class TinyCNN(nn.Module):
    """A small CNN with BatchNorm and dropout: (n, 3, 8, 8) -> (n, out_dim)."""

    def __init__(self, out_dim: int = 6, dropout: float = 0.3, sleep: float = 0.0):
        super().__init__()
        self.out_dim = out_dim
        self.sleep = sleep
        self.net = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(dropout),
            nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Dropout(dropout), nn.Linear(16, out_dim),
        )

    def forward(self, x):
        if self.sleep:
            time.sleep(self.sleep)  # makes a subprocess run long enough to be killed mid-way
        return self.net(x)


class TinyViT(nn.Module):
    """A one-block transformer with dropout on (n, 3, 8, 8) patches of 4x4."""

    def __init__(self, dim: int = 8, dropout: float = 0.2):
        super().__init__()
        self.out_dim = dim
        self.embed = nn.Conv2d(3, dim, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.block = nn.TransformerEncoderLayer(dim, 2, 16, dropout=dropout, batch_first=True)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1)
        return self.block(t)[:, 0]


class IndexedImages(nn.Module):
    """Wrap an image model so its inputs are item indices into a fixed image tensor
    (lets the loop drive an image student without image files)."""

    def __init__(self, images: torch.Tensor, model: nn.Module):
        super().__init__()
        self.register_buffer("images", images, persistent=False)
        self.model = model
        self.out_dim = model.out_dim

    def forward(self, idx):
        return self.model(self.images[idx])


class BlockStudent(nn.Module):
    """Frozen feature rows through a ``ModuleList`` of blocks, then a head: the
    layout FSDP shards block by block. Deterministic (no dropout)."""

    def __init__(self, features: np.ndarray, widths=(6, 5), out_dim: int = 4):
        super().__init__()
        self.register_buffer("features", torch.as_tensor(features), persistent=False)
        dims = (features.shape[1],) + tuple(widths)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(a, b), nn.Tanh()) for a, b in zip(dims, dims[1:]))
        self.head = nn.Linear(dims[-1], out_dim)

    def forward(self, idx):
        x = self.features[idx]
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def synthetic_source(n_items: int = 40, n_triplets: int = 600, dim: int = 5, seed: int = 0) -> ArrayTripletSource:
    """Random distinct-item triplets labelled by a random teacher embedding."""
    gen = np.random.default_rng(seed)
    teacher = gen.normal(size=(n_items, dim))
    rows = []
    while len(rows) < n_triplets:
        t = gen.choice(n_items, 3, replace=False)
        rows.append(t)
    trip = np.array(rows, dtype=np.int64)
    sims = np.stack([(teacher[trip[:, a]] * teacher[trip[:, b]]).sum(1) for a, b in ((0, 1), (0, 2), (1, 2))], 1)
    return ArrayTripletSource(trip, sims.astype(np.float32), num_items=n_items, manifest={"temperature": 1.0})


def write_images(root, n, corrupt=(), missing=()):
    """``n`` small PNGs ``img<i>.png`` under ``root`` (some corrupt or missing); returns their names."""
    from PIL import Image

    names = []
    for i in range(n):
        name = f"img{i}.png"
        names.append(name)
        if i in missing:
            continue
        if i in corrupt:
            (root / name).write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
            continue
        arr = (np.random.default_rng(i).random((10, 14, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(root / name)
    return names


def base_config(out_dir: str, **train) -> dict:
    cfg = {
        "student": {"kind": "features", "head": "linear", "head_dim": 4},
        "loss": {"divergence": "jsd", "temperature": 1.0},
        "optim": {"lr": 1e-2, "warmup_steps": 2, "weight_decay": 0.1},
        "train": {"steps": 6, "batch_triplets": 32, "micro_batch": 8, "out_dir": out_dir, "log_every": 1,
                  "ckpt_every": 2, "keep_last": 2, "progress": False, "seed": 3},
    }
    cfg["train"].update(train)
    return cfg


def feature_matrix(n_items: int = 40, dim: int = 7, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n_items, dim)).astype(np.float32)


def run_image_student(out_dir: str, steps: int, sleep: float) -> None:
    """Entry point of the kill/resume subprocess: a dropout CNN student on fixed images."""
    from fastalign.distill import distill

    torch.manual_seed(0)
    images = torch.randn(40, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    student = IndexedImages(images, TinyCNN(sleep=sleep))
    cfg = config_from_dict(base_config(out_dir, steps=steps, ckpt_every=3, keep_last=2))
    distill(cfg, student=student, train_source=synthetic_source())


def run_ddp_rank(rank: int, world: int, port: int, out_dir: str) -> None:
    """Entry point of one DDP rank (gloo, CPU)."""
    from fastalign.distill import distill

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    cfg = config_from_dict(base_config(out_dir, steps=4, ckpt_every=4, distributed="ddp", device="cpu"))
    distill(cfg, train_source=synthetic_source(), features=feature_matrix())


def run_sharded_rank(rank: int, world: int, port: int, out_dir: str, mode: str, steps: int = 4) -> None:
    """Entry point of one rank (gloo, CPU) training a ``BlockStudent`` with
    ``train.distributed = mode``; ``world = 1`` runs a single process."""
    from fastalign.distill import distill

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    student = BlockStudent(feature_matrix())
    cfg = config_from_dict(base_config(out_dir, steps=steps, ckpt_every=2, keep_last=3, distributed=mode,
                                       device="cpu", eval_every=2))
    # Evaluation runs a forward on every rank when the student is sharded.
    distill(cfg, student=student, train_source=synthetic_source(), val_source=synthetic_source(seed=5))


if __name__ == "__main__":
    run_image_student(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
