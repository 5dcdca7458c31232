"""Scoring a representation on the Levels dataset (``fastalign.datasets.levels``).

Catch trials and trials without a response are counted and never scored. Images
are matched to feature rows by file stem; a trial with an unmatched image is
dropped only when ``allow_missing`` is set, else it is an error. Trials of the
same three images (in any order) are one *unique triplet*.

Two scorings, both per level (``fine``, ``class_boundary``, ``coarse``) and overall:

- ``majority`` (the authors', ``stats_eval.ipynb``): a unique triplet needs at least
  ``min_responses`` (4) responses; more than ``max_responses`` (5) are subsampled
  to 5 at random; from those, 4 are drawn at random and their majority is the
  human answer (the notebook draws the 4 so that every triplet has the same
  number of votes). The model is right when its odd one out is the majority's.
  A majority tie (2-2) is scored by ``ties``: ``"half"`` (default) gives credit
  1/k when the model picks one of the k tied answers, as the notebook's
  leave-one-out ceiling credits a held-out answer in a tie; ``"exclude"`` leaves
  tied triplets out; ``"wrong"`` scores them 0. The notebook draws without a seed;
  here draw ``i`` of ``n_seeds`` uses ``derive_rng(seed, stream, i)`` and the
  report gives the mean, SD, min and max over draws and every draw's value.
- ``per_trial``: every scored trial on its own: the model is right when its odd
  one out is that participant's choice. No subsampling, so no spread.

A tie in the *model's* similarities (two pairs equally most similar) is wrong, as
everywhere in fastalign.

Human references per level, from the same draws as ``majority``:

- ``noise_ceiling``: the notebook's leave-one-out ceiling on the (up to 5)
  responses: each response is held out and scored against the majority of the
  others (credit 1/k in a k-way tie), averaged per triplet, then over triplets.
  It is the ceiling of both scorings, since it scores one person's answer.
- ``human_agreement``: the share of the 4 drawn responses that agree with their
  majority (the notebook's "vanilla" ceiling: the top of the response distribution).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..common.jsonsafe import finite_or_none
from ..common.seeds import derive_rng
from ..common.tensors import as_emb
from ..datasets.levels import LEVEL_NAMES, LevelsData, match_images
from ..ops import triplet_similarities

__all__ = ["LEVELS_DATASET_NAME", "LevelsOptions", "levels_report"]

LEVELS_DATASET_NAME = "Levels dataset (AligNet human odd-one-out triplets)"
TIES = ("half", "exclude", "wrong")
_STREAM = 0x4C45_564C  # names the response subsampling's random stream ("LEVL")
# Position of the odd one out when pair p of [s01, s02, s12] is the most similar.
_ODD_OF_PAIR = np.array([2, 1, 0])


@dataclass(frozen=True)
class LevelsOptions:
    """Options of ``levels_report``.

    Attributes:
        min_responses: responses a unique triplet needs for majority scoring (the authors' 4).
        max_responses: responses kept per triplet before the 4 are drawn (the authors' 5).
        n_seeds: random draws of the subsampling; the report gives their spread.
        seed: base seed of the draws.
        ties: majority-tie rule, one of ``TIES``.
        allow_missing: drop trials whose images have no feature row (else an error).
    """

    min_responses: int = 4
    max_responses: int = 5
    n_seeds: int = 10
    seed: int = 0
    ties: str = "half"
    allow_missing: bool = False

    def check(self) -> None:
        if self.min_responses < 2 or self.max_responses < self.min_responses:
            raise ValueError(f"need 2 <= min_responses <= max_responses, got {self.min_responses}, "
                             f"{self.max_responses}")
        if self.n_seeds < 1:
            raise ValueError(f"n_seeds must be >= 1, got {self.n_seeds}")
        if self.ties not in TIES:
            raise ValueError(f"ties must be one of {list(TIES)}, got {self.ties!r}")


@dataclass(frozen=True)
class _Scored:
    """The trials that are scored: unique triplet id, chosen position in the sorted triplet, level."""

    triplets: np.ndarray  # (U, 3) feature rows, sorted
    level: np.ndarray  # (U,) level code into LEVEL_NAMES
    group: np.ndarray  # (T,) unique-triplet id of each scored trial
    choice: np.ndarray  # (T,) chosen position within the sorted triplet
    counts: Dict[str, int]


def _select(data: LevelsData, file_names: Sequence[str], allow_missing: bool) -> _Scored:
    """Drop catch and no-response trials (and, if allowed, unmatched ones); group by unique triplet."""
    rows, missing = match_images(data.images, file_names)
    usable = ~data.catch & (data.chosen >= 0)
    unmatched = usable & (rows < 0).any(1)
    if unmatched.any() and not allow_missing:
        raise ValueError(f"{data.source}: {len(missing)} images have no feature row (matched by file stem in "
                         f"--file-names), e.g. {', '.join(missing[:3])}; {int(unmatched.sum())} trials use them. "
                         "Pass --allow-missing to score the rest")
    keep = usable & ~unmatched
    r = rows[keep]
    order = np.argsort(r, axis=1, kind="stable")
    sorted_rows = np.take_along_axis(r, order, 1)
    choice = np.argmax(order == data.chosen[keep][:, None], axis=1)
    uniq, group = np.unique(sorted_rows, axis=0, return_inverse=True)
    code = {name: i for i, name in enumerate(LEVEL_NAMES)}
    lv = np.asarray([code[x] for x in data.level[keep]], dtype=np.int64)
    level = np.zeros(len(uniq), dtype=np.int64)
    level[group.reshape(-1)] = lv
    counts = {"participants": int(np.unique(data.participant).size), "trials": data.n_trials,
              "catch_trials": int(data.catch.sum()), "no_response": int((~data.catch & (data.chosen < 0)).sum()),
              "images": int(np.unique(data.images.reshape(-1)).size), "missing_images": len(missing),
              "trials_with_missing_images": int(unmatched.sum()), "trials_scored": int(keep.sum()),
              "unique_triplets": int(len(uniq))}
    return _Scored(uniq, level, group.reshape(-1), choice, counts)


def _model_odd(emb: torch.Tensor, triplets: np.ndarray, similarity: str, backend: Optional[str]) -> np.ndarray:
    """The model's odd-one-out position per triplet; -1 where two pairs tie for most similar."""
    t = torch.as_tensor(triplets, dtype=torch.long, device=emb.device)
    s = triplet_similarities(emb, t, similarity=similarity, backend=backend).double().cpu().numpy()
    best = s.max(1, keepdims=True)
    odd = _ODD_OF_PAIR[s.argmax(1)]
    return np.where((s == best).sum(1) > 1, -1, odd)


def _draw(group: np.ndarray, k: int, rng: np.random.Generator, among: np.ndarray) -> np.ndarray:
    """Keep at most ``k`` random trials of each group, among the trials where ``among`` is True."""
    key = rng.random(group.size)
    idx = np.flatnonzero(among)
    idx = idx[np.lexsort((key[idx], group[idx]))]  # by group, random order within it
    g = group[idx]
    start = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1]
    rank = np.arange(g.size) - np.repeat(start, np.diff(np.r_[start, g.size]))
    out = np.zeros(group.size, dtype=bool)
    out[idx[rank < k]] = True
    return out


def _counts(group: np.ndarray, choice: np.ndarray, mask: np.ndarray, n_groups: int) -> np.ndarray:
    return np.bincount(group[mask] * 3 + choice[mask], minlength=3 * n_groups).reshape(n_groups, 3)


def _loo_credit(group: np.ndarray, choice: np.ndarray, mask: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per group, the mean leave-one-out credit of its responses (NaN for groups with none)."""
    g, c = group[mask], choice[mask]
    rest = counts[g].copy()
    rest[np.arange(g.size), c] -= 1
    top = rest == rest.max(1, keepdims=True)
    credit = top[np.arange(g.size), c] / top.sum(1)
    total = np.bincount(g, weights=credit, minlength=counts.shape[0])
    n = np.bincount(g, minlength=counts.shape[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / n


def _one_draw(sc: _Scored, odd: np.ndarray, opts: LevelsOptions, rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """One subsampling draw: per-triplet model score, ceiling and agreement (NaN = not scored)."""
    u = len(sc.triplets)
    n_resp = np.bincount(sc.group, minlength=u)
    eligible = n_resp[sc.group] >= opts.min_responses
    five = _draw(sc.group, opts.max_responses, rng, eligible)
    four = _draw(sc.group, opts.min_responses, rng, five)
    c5, c4 = _counts(sc.group, sc.choice, five, u), _counts(sc.group, sc.choice, four, u)
    scored = n_resp >= opts.min_responses
    top = c4 == c4.max(1, keepdims=True)
    n_top = top.sum(1)
    hit = np.where(odd >= 0, top[np.arange(u), np.maximum(odd, 0)], False)
    score = np.where(n_top > 1, hit / n_top, hit.astype(np.float64))
    if opts.ties == "wrong":
        score = np.where(n_top > 1, 0.0, score)
    tie_out = (n_top > 1) if opts.ties == "exclude" else np.zeros(u, dtype=bool)
    nan = np.full(u, np.nan)
    return {"score": np.where(scored & ~tie_out, score, nan),
            "tie": np.where(scored, (n_top > 1).astype(np.float64), nan),
            "ceiling": np.where(scored, _loo_credit(sc.group, sc.choice, five, c5), nan),
            "agreement": np.where(scored, c4.max(1) / opts.min_responses, nan)}


def _spread(values: List[float]) -> Dict[str, Any]:
    v = np.asarray(values, dtype=np.float64)
    ok = v[np.isfinite(v)]
    if ok.size == 0:
        return {"mean": None, "std": None, "min": None, "max": None, "per_seed": [None] * v.size}
    return {"mean": float(ok.mean()), "std": float(ok.std(ddof=1)) if ok.size > 1 else 0.0,
            "min": float(ok.min()), "max": float(ok.max()), "per_seed": [finite_or_none(x) for x in v]}


def _level_masks(level: np.ndarray) -> List[Tuple[str, np.ndarray]]:
    return [(name, level == i) for i, name in enumerate(LEVEL_NAMES)] + [("all", np.ones(level.size, dtype=bool))]


def _majority(sc: _Scored, odd: np.ndarray, opts: LevelsOptions) -> Dict[str, Any]:
    draws = [_one_draw(sc, odd, opts, derive_rng(opts.seed, _STREAM, i)) for i in range(opts.n_seeds)]
    out: Dict[str, Any] = {}
    for name, m in _level_masks(sc.level):
        entry: Dict[str, Any] = {}
        for key, label in (("score", "accuracy"), ("ceiling", "noise_ceiling"),
                           ("agreement", "human_agreement"), ("tie", "tie_rate")):
            entry[label] = _spread([np.nanmean(d[key][m]) if np.isfinite(d[key][m]).any() else np.nan
                                    for d in draws])
        entry["n_triplets"] = int(np.isfinite(draws[0]["ceiling"][m]).sum())
        entry["n_triplets_scored"] = _spread([float(np.isfinite(d["score"][m]).sum()) for d in draws])["mean"]
        out[name] = entry
    return out


def _per_trial(sc: _Scored, odd: np.ndarray) -> Dict[str, Any]:
    right = (odd[sc.group] == sc.choice).astype(np.float64)
    lv = sc.level[sc.group]
    out = {}
    for name, m in _level_masks(lv):
        out[name] = {"accuracy": finite_or_none(float(right[m].mean())) if m.any() else None, "n": int(m.sum())}
    return out


def levels_report(
    emb: Any,
    data: LevelsData,
    file_names: Sequence[str],
    similarity: str = "dot",
    options: Optional[LevelsOptions] = None,
    backend: Optional[str] = None,
) -> Dict[str, Any]:
    """Score a representation on the Levels dataset: a JSON-serialisable dict.

    Args:
        emb: (N, D) features, row i the image ``file_names[i]``.
        data: the trials (``fastalign.datasets.levels.load_levels``).
        file_names: N image names; matched to the trials' images by file stem.
        similarity: ``"dot"`` or ``"cosine"``.
        options: ``LevelsOptions``.
        backend: kernel backend for the triplet similarities.

    Returns ``{"name", "source", "counts", "options", "per_trial": {level: {"accuracy", "n"}},
    "majority": {level: {"accuracy", "noise_ceiling", "human_agreement", "tie_rate": spread,
    "n_triplets", "n_triplets_scored"}}}``, levels ``fine``, ``class_boundary``, ``coarse``
    and ``all``; a spread is ``{"mean", "std", "min", "max", "per_seed"}`` over the draws.
    """
    opts = options or LevelsOptions()
    opts.check()
    e = as_emb(emb)
    if len(file_names) != e.shape[0]:
        raise ValueError(f"{len(file_names)} file names for {e.shape[0]} feature rows")
    sc = _select(data, file_names, opts.allow_missing)
    if len(sc.triplets) == 0:
        raise ValueError(f"{data.source}: no trial left to score")
    odd = _model_odd(e, sc.triplets, similarity, backend)
    counts = dict(sc.counts)
    counts["model_ties"] = int((odd < 0).sum())
    return {"name": LEVELS_DATASET_NAME, "source": data.source, "similarity": similarity, "counts": counts,
            "options": asdict(opts), "per_trial": _per_trial(sc, odd), "majority": _majority(sc, odd, opts)}
