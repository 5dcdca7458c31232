"""Every input of a run, resolved and cross-checked once, before any stage starts.

Each spec (``things:KEY`` or a file) goes through ``fastalign.io.resolve``; an
error names the config key that holds the spec.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, List, Optional, Tuple, TypeVar

import numpy as np

from ..datasets.levels import LevelsData, load_levels, match_images
from ..io import check_triplets_fit, read_file_names
from ..io.features import split_key
from ..io.rdm import HumanRDMs, read_human_rdm, read_rdm_items, split_rdm_spec
from ..io.resolve import feature_path, resolve_categories, resolve_features, resolve_triplets, rows_mismatch
from .config import RunConfig, RunDataConfig
from .stages import digest_files

T = TypeVar("T")


def _for_key(key: str, resolve: Callable[[str], T], spec: str) -> T:
    """``resolve(spec)``, with the config key in front of the resolver's message."""
    try:
        return resolve(spec)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{key}: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None


def _categories(spec: str) -> Tuple[np.ndarray, List[str]]:
    cats, names = _for_key("data.categories", resolve_categories, spec)
    return cats, list(names or [f"category {i}" for i in range(cats.shape[1])])


def _file_names(d: RunDataConfig, images: bool) -> Tuple[Optional[Path], List[str]]:
    """``data.file_names``: one name per object, in object order (thingsvision's
    ``file_names.txt``). An image student reads these images under
    ``data.student_images``, and every one of them must exist."""
    if images and (not d.student_images or not d.file_names):
        raise ValueError("an image student (student.student.kind timm, open_clip or module) needs "
                         "data.student_images (a folder) and data.file_names (one image per object, in object order)")
    if not images and d.student_images:
        raise ValueError("data.student_images is read by an image student only: set student.student.kind to timm, "
                         "open_clip or module")
    if not d.file_names:
        return None, []
    names = _for_key("data.file_names", read_file_names, d.file_names)
    if images:
        root = Path(d.student_images)
        if not root.is_dir():
            raise FileNotFoundError(f"data.student_images {root} is not a folder")
        missing = [n for n in names if not (root / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} of {len(names)} images in {d.file_names} are missing under "
                                    f"{root}, e.g. {missing[:3]}")
    return Path(d.file_names), names


def _digest_images(listing: Path, root: Path, names: List[str]) -> str:
    """The list file's bytes and every image's size and mtime (hashing the
    pixels of a million images would cost more than the stage it guards)."""
    h = hashlib.sha256(digest_files([listing]).encode())
    for name in names:
        st = (root / name).stat()
        h.update(f"{name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


def _loadable(spec: str, path: Path) -> str:
    """What later stages load: the resolved file, with the array key of a ``FILE.npz:KEY`` spec."""
    key = split_key(spec)[1]
    return str(path) if key is None else f"{path}:{key}"


class Inputs:
    """Every input of the run, loaded and cross-checked once, before any long work."""

    def __init__(self, cfg: RunConfig):
        d = cfg.data
        self._cfg_data = d
        self.teacher_path = _for_key("data.teacher_features", feature_path, d.teacher_features)
        self.teacher_source = _loadable(d.teacher_features, self.teacher_path)
        self.teacher = _for_key("data.teacher_features", resolve_features, d.teacher_features)
        self.images = cfg.student.student.kind != "features"
        self.file_names_path, self.file_names = _file_names(d, self.images)
        self.image_root: Optional[Path] = Path(d.student_images) if self.images else None
        if self.images:
            self.student_path, self.student_source, self.student = None, None, None
        else:
            self.student_path = _for_key("data.student_features", feature_path, d.student_features)
            self.student_source = _loadable(d.student_features, self.student_path)
            self.student = _for_key("data.student_features", resolve_features, d.student_features)
        self.human = (_for_key("data.human_embedding", resolve_features, d.human_embedding)
                      if d.human_embedding else None)
        self.triplets = _for_key("data.human_triplets", resolve_triplets, d.human_triplets)
        self.categories, self.category_names = _categories(d.categories) if d.categories else (None, [])
        self.n = self.teacher.shape[0]
        self._check(d)
        self.human_rdms, self.human_rdm_items = self._measured_rdms(d)
        self.levels_data = self._levels(d)

    def _check(self, d: RunDataConfig) -> None:
        n = self.n
        teacher = ("data.teacher_features", d.teacher_features, n)
        if self.file_names_path is not None and len(self.file_names) != n:
            raise ValueError(rows_mismatch(("data.file_names", d.file_names, len(self.file_names)), teacher))
        for key, spec, arr in [("data.student_features", d.student_features, self.student),
                               ("data.human_embedding", d.human_embedding, self.human),
                               ("data.categories", d.categories, self.categories)]:
            if arr is not None and arr.shape[0] != n:
                raise ValueError(rows_mismatch((key, spec, arr.shape[0]), teacher))
        check_triplets_fit(self.triplets, n, "human triplets")
        if not 0.0 < d.heldout_fraction < 1.0:
            raise ValueError(f"data.heldout_fraction must be in (0, 1), got {d.heldout_fraction}")
        if len(self.triplets) < 100:
            raise ValueError(f"need at least 100 human triplets, got {len(self.triplets)}")

    def _measured_rdms(self, d: RunDataConfig) -> Tuple[List[HumanRDMs], List[Optional[np.ndarray]]]:
        """``data.human_rdms`` and their row maps, read and checked before any stage."""
        rdms = [_for_key("data.human_rdms", read_human_rdm, spec) for spec in d.human_rdms]
        maps = list(d.human_rdm_items)
        if len(maps) == 1 and len(rdms) > 1:
            maps = maps * len(rdms)
        if maps and len(maps) != len(rdms):
            raise ValueError(f"data.human_rdm_items has {len(maps)} entries for {len(rdms)} data.human_rdms "
                             "(give one per RDM, or one for all)")
        items: List[Optional[np.ndarray]] = []
        for h, spec in zip(rdms, maps or [""] * len(rdms)):
            if not spec:
                if h.n_stimuli != self.n:
                    raise ValueError(f"data.human_rdms: {h.source} has {h.n_stimuli} stimuli but there are "
                                     f"{self.n} objects; map its rows with data.human_rdm_items")
                items.append(None)
                continue
            items.append(_for_key("data.human_rdm_items",
                                  lambda s: read_rdm_items(s, h.n_stimuli, self.n, self.file_names or None), spec))
        return rdms, items

    def _levels(self, d: RunDataConfig) -> Optional[LevelsData]:
        """``data.levels_data``, with every trial image matched to an object (or allowed missing)."""
        if not d.levels_data:
            return None
        if not self.file_names:
            raise ValueError("data.levels_data needs data.file_names: Levels images are matched to objects by name")
        data = _for_key("data.levels_data", load_levels, d.levels_data)
        _, missing = match_images(data.images, self.file_names)
        if missing and not d.allow_missing:
            raise ValueError(f"data.levels_data: {len(missing)} images have no object in data.file_names, e.g. "
                             f"{missing[:3]}; set data.allow_missing = true to score the rest")
        return data

    def measured_digest(self) -> str:
        """Content of the measured human data the evaluation reads (RDMs, row maps, Levels file)."""
        d = self._cfg_data
        paths = [Path(str(split_rdm_spec(s)[0])) for s in d.human_rdms]
        paths += [Path(s) for s in d.human_rdm_items if s] + ([Path(d.levels_data)] if d.levels_data else [])
        return digest_files(paths) if paths else ""

    def student_digest(self) -> str:
        """What the student reads besides the triplets: its features or images."""
        if self.images:
            return _digest_images(self.file_names_path, self.image_root, self.file_names)
        return digest_files([self.student_path])

    def digest(self) -> str:
        return (digest_files([self.teacher_path]) + f":{self.student_digest()}:{len(self.triplets)}:"
                f"{int(self.triplets.sum())}")
