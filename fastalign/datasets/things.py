"""Loader for the THINGS data bundled with the package (see ``things/README.md``)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parent / "things"

FEATURES = {
    "clip": "model-features/clip-vit-base-p32-embeddings.npy",
    "word2vec": "model-features/word2vec-embeddings.npy",
    "spose49": "embeddings/spose49-embeddings.npy",
    # VICE (variational SPoSE, 42-d), fitted to the 1.46 M THINGS 2020 triplets.
    "vice": "embeddings/vice42-embeddings.npy",
}
TRIPLETS = {
    "test_10": "triplets/test_10.txt",
    "train_90_ID_smallsample": "triplets/train_90_ID_smallsample.txt",
    "test_10_ID_smallsample": "triplets/test_10_ID_smallsample.txt",
}


@dataclass(frozen=True)
class ThingsData:
    """The bundled THINGS data; every row-indexed array is in ``unique_id`` order.

    Attributes:
        unique_id: the 1,854 concept ids.
        names: the concept names (``Word`` column of ``item_names.tsv``).
        category_names: the 27 high-level category names.
        categories: (1854, 27) uint8 membership (an object may be in 0 or several).
        features: ``{"clip": (1854, 512), "word2vec": (1854, 300), "spose49": (1854, 49), "vice": (1854, 42)}``.
        triplets: ``{"test_10": (50000, 3), "train_90_ID_smallsample": (21616, 3), ...}``
            int64, column 2 the odd one out.
        participants: participant id per row for the ``*_ID_smallsample`` files.
    """

    unique_id: List[str]
    names: List[str]
    category_names: List[str]
    categories: np.ndarray
    features: Dict[str, np.ndarray]
    triplets: Dict[str, np.ndarray]
    participants: Dict[str, np.ndarray]

    @property
    def num_objects(self) -> int:
        return len(self.unique_id)


def _read_lines(path: Path) -> List[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _read_triplet_table(path: Path) -> np.ndarray:
    table = np.loadtxt(path, dtype=np.int64, ndmin=2)
    if table.shape[1] not in (3, 4):
        raise ValueError(f"{path}: expected 3 or 4 columns, got {table.shape[1]}")
    return table


@lru_cache(maxsize=1)
def load_things() -> ThingsData:
    """Load the bundled THINGS data (cached; arrays are read-only)."""
    unique_id = _read_lines(ROOT / "concepts/unique_id.txt")
    with open(ROOT / "concepts/item_names.tsv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if [r["uniqueID"] for r in rows] != unique_id:
        raise RuntimeError("bundled item_names.tsv is not in unique_id order")
    names = [r["Word"] for r in rows]
    cat_lines = (ROOT / "concepts/category_mat_manual.tsv").read_text(encoding="utf-8").splitlines()
    category_names = cat_lines[0].split("\t")
    categories = np.array([[int(v) for v in line.split("\t")] for line in cat_lines[1:] if line.strip()], dtype=np.uint8)
    features = {key: np.load(ROOT / rel) for key, rel in FEATURES.items()}
    triplets, participants = {}, {}
    for key, rel in TRIPLETS.items():
        table = _read_triplet_table(ROOT / rel)
        triplets[key] = np.ascontiguousarray(table[:, :3])
        if table.shape[1] == 4:
            participants[key] = np.ascontiguousarray(table[:, 3])
    arrays = [categories, *features.values(), *triplets.values(), *participants.values()]
    for arr in arrays:
        arr.setflags(write=False)
    n = len(unique_id)
    for key, arr in features.items():
        if arr.shape[0] != n:
            raise RuntimeError(f"bundled {key} features have {arr.shape[0]} rows, expected {n}")
    return ThingsData(unique_id, names, category_names, categories, features, triplets, participants)
