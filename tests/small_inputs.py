"""Tiny CLI inputs shared by the command-line tests: features, teacher embeddings, human triplets
and a distill config over them (a dense-teacher student of a few steps)."""

from pathlib import Path

import numpy as np


def write_small_inputs(root: Path, steps: int, progress: bool = True) -> Path:
    """Write ``feats.npy`` (30 x 6), ``teacher.npy`` (30 x 4), ``human.txt`` (300 triplets) and
    ``distill.toml`` (``steps`` steps) into ``root``; returns ``root``."""
    rng = np.random.default_rng(0)
    np.save(root / "feats.npy", rng.normal(size=(30, 6)).astype(np.float32))
    np.save(root / "teacher.npy", rng.normal(size=(30, 4)).astype(np.float32))
    np.savetxt(root / "human.txt", np.stack([rng.choice(30, 3, replace=False) for _ in range(300)]), fmt="%d")
    (root / "distill.toml").write_text(f"""
[student]
features = "{root / 'feats.npy'}"
head_dim = 3
[data]
source = "dense"
teacher_embeddings = "{root / 'teacher.npy'}"
dense_items = 10
[optim]
warmup_steps = 1
[train]
steps = {steps}
batch_triplets = 16
micro_batch = 8
""" + ("" if progress else "progress = false\n"))
    return root
