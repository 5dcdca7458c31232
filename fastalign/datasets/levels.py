"""The Levels dataset (AligNet's human odd-one-out triplets on ImageNet images at three levels).

The authors release it as a pickle (``levels.pkl``): a dict ``participant -> list of
trial dicts``. Field names and their meaning follow the public code that reads it
(``candemircan/metalign``, ``metalign/data.py``; the authors' analysis notebook,
``Frieda-Josefine/HumanEval_experiment``, ``analysis/stats_eval.ipynb``):

- ``image1Path``, ``image2Path``, ``image3Path``: the three images (file names or
  paths; an image is identified by its file stem, the name before the first dot);
- ``selected_image``: the image chosen as the odd one out; ``"No image selected"``,
  an empty string or None is a trial without a response (counted, not scored);
- ``exp_trial_type``: ``"exp_trial"`` or ``"catch_trial"`` (attention checks,
  counted and never scored);
- ``triplet_type`` (optional): ``"within_class"`` (level ``fine``: one ImageNet
  class), ``"class_border"`` (``class_boundary``: two classes) or
  ``"between_class"`` (``coarse``: three classes). When absent it is derived as the
  notebook does, from the number of distinct WordNet ids (the stem before ``_``);
- ``rt`` (optional): response time in ms.

Any other field is refused, so a file of another layout fails loudly instead of
being half-read. Participant exclusion: the notebook's final exclusion list is
empty; ``exclude`` in ``load_levels`` drops participants if wanted.

Loading never runs ``pickle.load`` plainly: a pickle can name any importable
callable and have the unpickler call it (``__reduce__``), so a crafted file would
run code on load. ``PlainDataUnpickler`` resolves no global except a few
container constructors; anything else stops the load with an error before it
is called.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Sequence, Tuple

import numpy as np

__all__ = [
    "LEVEL_NAMES",
    "TRIPLET_TYPES",
    "LevelsData",
    "PlainDataUnpickler",
    "image_stem",
    "load_levels",
    "load_plain_pickle",
    "match_images",
    "parse_levels",
]

TRIPLET_TYPES = {"within_class": "fine", "class_border": "class_boundary", "between_class": "coarse"}
LEVEL_NAMES = ("fine", "class_boundary", "coarse")
TRIAL_TYPES = ("exp_trial", "catch_trial")
REQUIRED_FIELDS = ("image1Path", "image2Path", "image3Path", "selected_image", "exp_trial_type")
OPTIONAL_FIELDS = ("triplet_type", "rt")
NO_RESPONSE = ("", "No image selected")
_BY_CLASS_COUNT = {1: "within_class", 2: "class_border", 3: "between_class"}

# Plain containers whose pickled form calls a constructor (defaultdict(list) is what the
# notebook builds). Calling these on plain data cannot run anything else. Protocols 0-2
# name the builtins module by its Python 2 name.
_CONTAINERS = ("list", "dict", "set", "frozenset", "tuple")
_SAFE_GLOBALS = {("collections", "defaultdict"), ("collections", "OrderedDict")} | {
    (module, name) for module in ("builtins", "__builtin__") for name in _CONTAINERS}


class PlainDataUnpickler(pickle.Unpickler):
    """Unpickles plain data only: dicts, lists, tuples, sets, strings, bytes, numbers, bools, None.

    Those are pickle opcodes and need no global; ``find_class`` is what any object
    or callable needs, so refusing it there refuses all code before it runs.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: the file may hold only plain data "
                                     "(dicts, lists, strings, numbers)")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused a persistent id: the file may hold only plain data")


def load_plain_pickle(path: str) -> Any:
    """Load a pickle that holds only plain data (see ``PlainDataUnpickler``).

    Args:
        path: the ``.pkl`` file.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: Levels file not found")
    try:
        return PlainDataUnpickler(io.BytesIO(p.read_bytes())).load()
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{p}: {exc}") from None
    except (EOFError, IndexError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{p}: not a readable pickle ({type(exc).__name__}: {exc})") from None


def image_stem(path: str) -> str:
    """An image's identity: its file name up to the first dot (``a/n01_5.JPEG`` -> ``n01_5``)."""
    return str(path).replace("\\", "/").split("/")[-1].split(".")[0]


@dataclass(frozen=True)
class LevelsData:
    """Trials of the Levels dataset, one row per trial.

    Attributes:
        participant: (T,) participant ids (as strings).
        images: (T, 3) image stems, in the trial's image1/2/3 order.
        chosen: (T,) position 0-2 of the chosen odd one out; -1 for no response.
        level: (T,) ``fine`` / ``class_boundary`` / ``coarse``; ``catch`` for catch trials.
        catch: (T,) True for catch trials.
        rt: (T,) response time in ms (NaN where absent).
        source: the file it came from.
    """

    participant: np.ndarray
    images: np.ndarray
    chosen: np.ndarray
    level: np.ndarray
    catch: np.ndarray
    rt: np.ndarray
    source: str

    @property
    def n_trials(self) -> int:
        return int(self.chosen.shape[0])


def _check_fields(trial: Any, where: str) -> None:
    if not isinstance(trial, dict):
        raise ValueError(f"{where}: a trial must be a dict, got {type(trial).__name__}")
    unknown = sorted(str(k) for k in trial if k not in REQUIRED_FIELDS + OPTIONAL_FIELDS)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}; a Levels trial has "
                         f"{', '.join(REQUIRED_FIELDS)} and optionally {', '.join(OPTIONAL_FIELDS)}")
    missing = [k for k in REQUIRED_FIELDS if k not in trial]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")


def _level(trial: Dict[str, Any], stems: Sequence[str], where: str) -> str:
    kind = trial.get("triplet_type")
    if kind is None:
        if not all("_" in s for s in stems):
            raise ValueError(f"{where}: no triplet_type, and the image names carry no WordNet id to derive it")
        kind = _BY_CLASS_COUNT[len({s.split("_")[0] for s in stems})]
    if kind not in TRIPLET_TYPES:
        raise ValueError(f"{where}: unknown triplet_type {kind!r}; expected one of {', '.join(TRIPLET_TYPES)}")
    return TRIPLET_TYPES[kind]


def _trial(trial: Any, where: str) -> Tuple[List[str], int, str, bool, float]:
    """One trial as (stems, chosen position or -1, level, catch, rt); errors name ``where``."""
    _check_fields(trial, where)
    paths = [trial[f"image{i}Path"] for i in (1, 2, 3)]
    if not all(isinstance(p, str) and p for p in paths):
        raise ValueError(f"{where}: image1Path, image2Path and image3Path must be non-empty strings")
    stems = [image_stem(p) for p in paths]
    kind = trial["exp_trial_type"]
    if kind not in TRIAL_TYPES:
        raise ValueError(f"{where}: unknown exp_trial_type {kind!r}; expected one of {', '.join(TRIAL_TYPES)}")
    sel = trial["selected_image"]
    if sel is not None and not isinstance(sel, str):
        raise ValueError(f"{where}: selected_image must be a string, got {type(sel).__name__}")
    chosen = -1
    if sel is not None and sel not in NO_RESPONSE:
        if image_stem(sel) not in stems:
            raise ValueError(f"{where}: selected_image {sel!r} is not one of the trial's three images")
        chosen = stems.index(image_stem(sel))
    rt = trial.get("rt")
    if rt is not None and (isinstance(rt, bool) or not isinstance(rt, (int, float))):
        raise ValueError(f"{where}: rt must be a number, got {type(rt).__name__}")
    catch = kind == "catch_trial"
    level = "catch" if catch else _level(trial, stems, where)
    return stems, chosen, level, catch, float("nan") if rt is None else float(rt)


def parse_levels(obj: Any, source: str = "<levels>", exclude: Iterable[Any] = ()) -> LevelsData:
    """Check the released structure and flatten it into ``LevelsData``.

    Args:
        obj: dict participant -> list of trial dicts (the unpickled file).
        source: names the file in errors.
        exclude: participant ids to leave out (compared as strings).
    """
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: a Levels file holds a dict participant -> list of trials, "
                         f"got {type(obj).__name__}")
    skip = {str(e) for e in exclude}
    rows: List[Tuple[str, List[str], int, str, bool, float]] = []
    for pid, trials in obj.items():
        if str(pid) in skip:
            continue
        if not isinstance(trials, (list, tuple)):
            raise ValueError(f"{source}: participant {pid!r}: trials must be a list, got {type(trials).__name__}")
        for i, trial in enumerate(trials):
            rows.append((str(pid), *_trial(trial, f"{source}: participant {pid!r}, trial {i}")))
    if not rows:
        raise ValueError(f"{source}: no trials")
    pid, stems, chosen, level, catch, rt = zip(*rows)
    return LevelsData(np.asarray(pid), np.asarray(stems, dtype=object), np.asarray(chosen, dtype=np.int64),
                      np.asarray(level), np.asarray(catch, dtype=bool), np.asarray(rt, dtype=np.float64), source)


def load_levels(path: str, exclude: Iterable[Any] = ()) -> LevelsData:
    """Load the authors' Levels pickle with the restricted unpickler and check every trial.

    Args:
        path: the ``levels.pkl`` file.
        exclude: participant ids to leave out.
    """
    return parse_levels(load_plain_pickle(path), str(path), exclude)


def match_images(images: np.ndarray, file_names: Sequence[str]) -> Tuple[np.ndarray, List[str]]:
    """Feature row of every trial image, matched by file stem.

    Args:
        images: (T, 3) image stems (``LevelsData.images``).
        file_names: the feature rows' file names (paths allowed); their stems must be unique.

    Returns ``(rows, missing)``: (T, 3) int64 rows (-1 where the image has no
    feature row) and the sorted stems that have none.
    """
    index: Dict[str, int] = {}
    for i, name in enumerate(file_names):
        stem = image_stem(name)
        if stem in index:
            raise ValueError(f"file names {file_names[index[stem]]!r} and {name!r} share the stem {stem!r}: "
                             "Levels images are matched by stem, so stems must be unique")
        index[stem] = i
    flat = images.reshape(-1)
    rows = np.fromiter((index.get(s, -1) for s in flat), dtype=np.int64, count=flat.size).reshape(images.shape)
    missing = sorted({s for s, r in zip(flat, rows.reshape(-1)) if r < 0})
    return rows, missing
