"""Vectorised triplet sampling strategies over per-item labels (classes or clusters).

Strategies (AligNet's default is ``cluster_border``):

- ``random``:         three distinct items;
- ``between_class``:  three items with three different class labels;
- ``within_class``:   three distinct items sharing one class label;
- ``class_border``:   two distinct items sharing a class label plus one item of another class
                      (that one is placed last: the odd one out *by construction*; the
                      teacher's labelling reorders rows afterwards anyway);
- ``cluster_border``: ``class_border`` over k-means cluster labels.

Everything is numpy array arithmetic: no Python loop per triplet. Distinct
draws use the "skip" trick: draw ``r`` uniformly from the ``n - m`` allowed
positions and shift it past each of the ``m`` excluded positions (or ranges of
a label's members, which are contiguous after sorting items by label), so each
draw is exact and needs no rejection loop.

Label weighting ("size", the default): a label is picked with probability
proportional to its number of items, i.e. an item is picked uniformly and its
label used; "uniform" picks labels uniformly. Items with a negative label have
no label: the label strategies never use them, ``random`` does. Labels with too
few items for a role (2 for a pair, 3 for ``within_class``) are skipped for
that role and listed in ``TripletSampler.report()``.

Category strategies (THINGS-style, over a **multi-label** (N, K) 0/1 category matrix, in
which an object may belong to several categories or to none; ``--categories FILE|things``):

- ``within_category``:  all three objects share at least one category;
- ``between_category``: no two of the three objects share a category;
- ``category_border``:  objects 0 and 1 share at least one category and object 2 (the odd one
                        out, last) shares no category with object 0 nor with object 1.

Uncategorised objects (an all-zero row) are **excluded** from all three: a missing row in a
category matrix means "not annotated", not "in a category of its own" (THINGS leaves about
half its objects outside its 27 categories, and many of those share an unlisted one, e.g. two
tools), so using them as "shares no category" would put pairs of one unlisted category across a
between or border triplet. This mirrors the label strategies, which never use unlabelled items.
No repeated object: every used object is in some category, so "shares no category" implies
"different object", and the pairs are drawn distinct.

Objects in several categories: ``within_category`` picks a category (by size, or uniformly
with ``weighting="uniform"``; categories with fewer than 3 objects skipped) and three distinct
members of it, so a triplet sharing several categories can be drawn through each of them;
``category_border`` picks its pair the same way (categories with >= 2 objects). The objects
that must share nothing (``between_category``'s objects 1 and 2, ``category_border``'s object 2)
are drawn uniformly from the categorised objects (``weighting="uniform"``: a category uniformly,
then a member) and rejected while they share *any* category with the others, so an object in
several categories is compatible with fewer others. ``between_category``'s object 0 is drawn the
same way. Rejection is vectorised: each round redraws only the rows still rejected, with a
growing number of candidates per row; every ``_RESTART_EVERY`` rounds a rejected row also
redraws its fixed part (a pair no object is compatible with never ends otherwise); after
``_MAX_ROUNDS`` rounds sampling stops with a ValueError. ``check`` first refuses the impossible
cases with a clear message (fewer than 3 categories for ``between_category``, ...) and then
probes for one valid triplet, which catches a matrix where, say, one category holds every
object. Category sharing is tested on per-object bitsets ((N, ceil(K / 64)) uint64: 128 MB at
N = 1e6, K = 1000, shared by the train and validation samplers), never a dense N x N table.

Reproducibility: ``sample_chunk`` draws only from the generator it is given.
``fastalign.triplets.generate`` gives chunk ``c`` of shard ``h`` of split ``s``
the generator of ``SeedSequence([seed, s, h, c])``, so a chunk's triplets do
not depend on which process generates it or in which order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..common.seeds import derive_rng

CATEGORY_STRATEGIES = ("within_category", "between_category", "category_border")
STRATEGIES = ("random", "between_class", "within_class", "class_border", "cluster_border") + CATEGORY_STRATEGIES
WEIGHTINGS = ("size", "uniform")


def strategy_weights(spec: str) -> Dict[str, float]:
    """The weights of ``"cluster_border"`` or ``"cluster_border:0.8,random:0.2"`` as written (a bare name
    weighs 1); they are relative, ``parse_strategy`` normalises them to shares."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"strategy must be a non-empty string, got {spec!r}")
    out: Dict[str, float] = {}
    for part in spec.split(","):
        part = part.strip()
        name, _, w = part.partition(":")
        name = name.strip()
        if name not in STRATEGIES:
            raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)} (optionally name:weight,...)")
        try:
            weight = float(w) if w else 1.0
        except ValueError:
            raise ValueError(f"strategy weight for {name!r} must be a number, got {w!r}") from None
        if not (weight > 0 and np.isfinite(weight)):
            raise ValueError(f"strategy weight for {name!r} must be finite and > 0, got {w!r}")
        if name in out:
            raise ValueError(f"strategy {name!r} is listed twice")
        out[name] = weight
    return out


def parse_strategy(spec: str) -> List[Tuple[str, float]]:
    """Parse ``"cluster_border"`` or ``"cluster_border:0.8,random:0.2"`` into (name, share) pairs summing to 1."""
    weights = strategy_weights(spec)
    total = sum(weights.values())
    return [(k, v / total) for k, v in weights.items()]


def split_counts(n: int, mix: Sequence[Tuple[str, float]], rotate: int = 0) -> List[int]:
    """Deterministic largest-remainder split of ``n`` rows by the mix weights (sums to n).

    Equal remainders are broken in list order starting at strategy ``rotate % len(mix)``;
    callers pass the chunk id so that rounding does not always favour the first strategy.
    """
    raw = np.array([w for _, w in mix], dtype=np.float64) * n
    base = np.floor(raw).astype(np.int64)
    rest = n - int(base.sum())
    k = len(mix)
    rank_of = (np.arange(k) - rotate) % k
    order = np.lexsort((rank_of, -np.round(raw - base, 12)))
    base[order[:rest]] += 1
    return base.tolist()


def _distinct3(rng: np.random.Generator, n: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three distinct uniform positions in [0, n) per row (``n``: per-row int64 array, all >= 3)."""
    a = rng.integers(0, n)
    b = rng.integers(0, n - 1)
    c = rng.integers(0, n - 2)
    b += b >= a  # b: uniform over [0, n) minus {a}
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    c += c >= lo  # c: uniform over [0, n) minus {lo, hi}, skipping the smaller one first
    c += c >= hi
    return a, b, c


def _distinct3_n(rng: np.random.Generator, n: int, size: int):
    return _distinct3(rng, np.full(size, n, dtype=np.int64))


def _distinct2(rng: np.random.Generator, n: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    a = rng.integers(0, n)
    b = rng.integers(0, n - 1)
    b += b >= a
    return a, b


@dataclass(frozen=True)
class _Groups:
    """Items of one label array, sorted by label: label ``g`` owns ``members[starts[g]: starts[g] + counts[g]]``."""

    label_values: np.ndarray  # (L,) the label value of each group
    members: np.ndarray  # (M,) item ids sorted by label (then by id)
    starts: np.ndarray  # (L,)
    counts: np.ndarray  # (L,)

    @classmethod
    def build(cls, labels: np.ndarray, items: np.ndarray) -> "_Groups":
        lab = labels[items]
        keep = lab >= 0
        it, lab = items[keep], lab[keep]
        order = np.lexsort((it, lab))
        it, lab = it[order], lab[order]
        values, starts, counts = np.unique(lab, return_index=True, return_counts=True)
        return cls(values, it.astype(np.int64), starts.astype(np.int64), counts.astype(np.int64))


# Rejection sampling bounds of the category strategies (see the module docstring).
_MAX_ROUNDS = 200
_RESTART_EVERY = 8
_MAX_TRIES = 64  # candidates per rejected row in one round
_CANDIDATE_BUDGET = 1 << 18  # candidates per round in all: bounds the (m, tries, W) bitset gathers


class CategorySets:
    """A multi-label (N, K) category matrix held as per-object bitsets and per-category member lists.

    Built once per run and shared by the samplers of every split (the bitsets are the big part).
    ``bits[i]``: object ``i``'s categories, bit ``k % 64`` of word ``k // 64``;
    category ``k`` owns ``members[starts[k]: starts[k] + counts[k]]`` (ascending object ids).
    """

    def __init__(self, matrix) -> None:
        if hasattr(matrix, "detach"):
            matrix = matrix.detach().cpu().numpy()
        m = np.asarray(matrix)
        if m.ndim != 2 or m.shape[1] < 1:
            raise ValueError(f"categories must be an (N, K) 0/1 matrix with K >= 1, got shape {m.shape}")
        m = _as_bool_matrix(m)
        self.num_items, self.num_categories = m.shape
        packed = np.packbits(m, axis=1, bitorder="little")  # (N, ceil(K / 8)) bytes, category k = bit k
        pad = (-packed.shape[1]) % 8
        packed = np.pad(packed, ((0, 0), (0, pad)))
        self.bits = np.ascontiguousarray(packed).view("<u8")  # (N, W) little-endian words: bit k % 64 of word k // 64
        rows, cols = np.nonzero(m)  # row-major: ids ascend within each category after a stable sort
        order = np.argsort(cols, kind="stable")
        self.members = rows[order].astype(np.int64)
        self.counts = np.bincount(cols, minlength=self.num_categories).astype(np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)
        self.categorised = self.bits.any(axis=1)  # (N,) bool


def _as_bool_matrix(m: np.ndarray) -> np.ndarray:
    """A 0/1 matrix as bool, refusing other values (min/max for integers: ``np.isin`` sorts, 50x slower)."""
    if m.dtype == bool:
        return m
    if np.issubdtype(m.dtype, np.integer):
        ok = m.size == 0 or (int(m.min()) >= 0 and int(m.max()) <= 1)
        if ok and m.dtype.itemsize == 1:
            return np.ascontiguousarray(m).view(bool)  # 0/1 bytes are valid bools: no copy of N x K
    else:
        ok = bool(((m == 0) | (m == 1)).all())
    if not ok:
        raise ValueError("categories must hold only 0 and 1")
    return m != 0


def _share(bits_a: np.ndarray, bits_b: np.ndarray) -> np.ndarray:
    """Whether two (broadcastable) bitset arrays ``(..., W)`` have a category in common."""
    return (bits_a & bits_b).any(axis=-1)


@dataclass(frozen=True)
class _CategoryGroups:
    """``CategorySets`` restricted to an item subset: members per category and the categorised items."""

    sets: CategorySets
    members: np.ndarray  # (M,) object ids sorted by category; an object appears once per category it is in
    starts: np.ndarray  # (K,)
    counts: np.ndarray  # (K,)
    items: np.ndarray  # (C,) the subset's categorised objects
    nonempty: np.ndarray  # (K',) categories with at least one object of the subset

    @classmethod
    def build(cls, sets: CategorySets, items: np.ndarray) -> "_CategoryGroups":
        inside = np.zeros(sets.num_items, dtype=bool)
        inside[items] = True
        keep = inside[sets.members]
        cat_of = np.repeat(np.arange(sets.num_categories), sets.counts)[keep]
        counts = np.bincount(cat_of, minlength=sets.num_categories).astype(np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        cat_items = items[sets.categorised[items]]
        return cls(sets, sets.members[keep], starts, counts, cat_items, np.flatnonzero(counts > 0))


def _reject(rng: np.random.Generator, n: int, base: Callable[[int], np.ndarray],
            rest: Callable[[int, int], np.ndarray], ok: Callable[[np.ndarray, np.ndarray], np.ndarray],
            what: str) -> np.ndarray:
    """``n`` rows ``[base | rest]`` with ``ok(base, candidates)`` true, by bounded vectorised rejection.

    ``base(m)`` -> (m, j) fixed columns; ``rest(m, t)`` -> (m, t, 3 - j) ``t`` candidates per row;
    ``ok`` -> (m, t) bool. A row keeps its first accepted candidate.
    """
    fixed = base(n)
    out = np.empty((n, 3 - fixed.shape[1]), dtype=np.int64)
    pending = np.arange(n)
    tries = 1
    for r in range(_MAX_ROUNDS):
        if r and r % _RESTART_EVERY == 0:
            fixed[pending] = base(pending.size)  # a fixed part nothing is compatible with would never end
        cand = rest(pending.size, tries)
        good = ok(fixed[pending], cand)
        hit = good.any(axis=1)
        first = good.argmax(axis=1)
        out[pending[hit]] = cand[hit, first[hit]]
        pending = pending[~hit]
        if pending.size == 0:
            return np.concatenate([fixed, out], axis=1)
        tries = int(max(1, min(_MAX_TRIES, 2 * tries, _CANDIDATE_BUDGET // pending.size)))
    raise ValueError(f"{what}: {pending.size} of {n} row(s) found no valid triplet after {_MAX_ROUNDS} rounds of "
                     "rejection sampling: the category matrix leaves (almost) no objects that share no category "
                     "with the others (e.g. one category holding nearly every object)")


class _CategorySampler:
    """The three category strategies over one item subset (see the module docstring)."""

    def __init__(self, groups: _CategoryGroups, weighting: str) -> None:
        self.g = groups
        self.weighting = weighting
        self.bits = groups.sets.bits
        self._cdf: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}

    def _eligible(self, need: int) -> Tuple[np.ndarray, np.ndarray]:
        """(categories with >= need objects, their sampling CDF)."""
        if need not in self._cdf:
            elig = np.flatnonzero(self.g.counts >= need)
            w = self.g.counts[elig].astype(np.float64) if self.weighting == "size" else np.ones(elig.size)
            cdf = np.cumsum(w)
            self._cdf[need] = (elig, cdf / cdf[-1] if cdf.size else cdf)
        return self._cdf[need]

    def _category(self, rng: np.random.Generator, need: int, n: int) -> np.ndarray:
        elig, cdf = self._eligible(need)
        return elig[np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), elig.size - 1)]

    def _any(self, rng: np.random.Generator, shape: Tuple[int, ...]) -> np.ndarray:
        """Categorised objects: uniform ("size"), or a uniform non-empty category then a uniform member."""
        if self.weighting == "size":
            return self.g.items[rng.integers(0, self.g.items.size, size=shape)]
        cat = self.g.nonempty[rng.integers(0, self.g.nonempty.size, size=shape)]
        return self.g.members[self.g.starts[cat] + rng.integers(0, self.g.counts[cat])]

    def _members(self, rng: np.random.Generator, need: int, n: int) -> np.ndarray:
        """(n, need) distinct members of one category per row."""
        cat = self._category(rng, need, n)
        pos = _distinct3(rng, self.g.counts[cat]) if need == 3 else _distinct2(rng, self.g.counts[cat])
        return np.stack([self.g.members[self.g.starts[cat] + p] for p in pos], axis=1)

    def sample(self, strategy: str, n: int, rng: np.random.Generator) -> np.ndarray:
        if strategy == "within_category":
            return self._members(rng, 3, n)
        b = self.bits
        if strategy == "category_border":
            def border_ok(pair, cand):  # the odd one shares nothing with either of the pair
                odd = b[cand[..., 0]]
                return ~_share(b[pair[:, 0]][:, None], odd) & ~_share(b[pair[:, 1]][:, None], odd)
            return _reject(rng, n, lambda m: self._members(rng, 2, m), lambda m, t: self._any(rng, (m, t, 1)),
                           border_ok, strategy)

        def between_ok(first, cand):  # no two of the three share a category
            x, y, z = b[first[:, 0]][:, None], b[cand[..., 0]], b[cand[..., 1]]
            return ~_share(x, y) & ~_share(x, z) & ~_share(y, z)
        return _reject(rng, n, lambda m: self._any(rng, (m, 1)), lambda m, t: self._any(rng, (m, t, 2)),
                       between_ok, strategy)

    def check(self, strategy: str) -> None:
        """Raise ValueError when ``strategy`` cannot produce a triplet on this subset (see the docstring)."""
        counts, k = self.g.counts, int(self.g.nonempty.size)
        if strategy == "within_category" and not (counts >= 3).any():
            raise ValueError("within_category needs a category with at least 3 objects; none has")
        if strategy == "category_border" and (not (counts >= 2).any() or k < 2):
            raise ValueError(f"category_border needs a category with at least 2 objects and at least 2 categories; "
                             f"the subset has {k} non-empty categor{'y' if k == 1 else 'ies'}, the largest with "
                             f"{int(counts.max(initial=0))} objects")
        if strategy == "between_category" and k < 3:
            raise ValueError(f"between_category needs at least 3 categories with objects, the subset has {k}")
        if strategy != "within_category":
            try:  # a fixed generator: the probe is the same on every run and rank
                self.sample(strategy, 1, np.random.default_rng(0))
            except ValueError:
                raise ValueError(f"{strategy}: no valid triplet found in {_MAX_ROUNDS} rounds of rejection sampling: "
                                 "this category matrix seems to have no "
                                 + ("three objects of which no two share a category" if strategy == "between_category"
                                    else "pair sharing a category with an object that shares no category with "
                                         "either") + " (categorised objects only)") from None

    def report(self, strategy: str) -> Dict[str, object]:
        need = {"within_category": 3, "category_border": 2, "between_category": 1}[strategy]
        skipped = self.g.nonempty[self.g.counts[self.g.nonempty] < need]
        return {
            "categories": int(self.g.nonempty.size),
            "items": int(self.g.items.size),
            "role": {3: "triple", 2: "pair", 1: "single"}[need],
            "skipped_labels": int(skipped.size),
            "skipped_examples": skipped[:20].tolist(),
        }


class TripletSampler:
    """Draw triplets by strategy, restricted to an item subset.

    Args:
        num_items: N, the number of items (rows of the embeddings).
        classes: optional (N,) int class label per item (negative = none).
        clusters: optional (N,) int cluster label per item (negative = none).
        categories: optional (N, K) 0/1 multi-label category matrix, or a ``CategorySets`` built
            from one (share it between the samplers of several splits), for the category strategies.
        items: optional item subset (int ids or an (N,) bool mask); all triplets use only these.
        weighting: "size" (labels by item count) or "uniform".
    """

    def __init__(
        self,
        num_items: int,
        classes: Optional[np.ndarray] = None,
        clusters: Optional[np.ndarray] = None,
        items: Optional[np.ndarray] = None,
        weighting: str = "size",
        categories: Optional[Union[np.ndarray, CategorySets]] = None,
    ) -> None:
        if isinstance(num_items, bool) or not isinstance(num_items, (int, np.integer)) or num_items < 1:
            raise ValueError(f"num_items must be a positive int, got {num_items!r}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        self.num_items = int(num_items)
        self.weighting = weighting
        self.items = self._subset(items)
        self.classes = self._labels("classes", classes)
        self.clusters = self._labels("clusters", clusters)
        self._groups = {
            "class": None if self.classes is None else _Groups.build(self.classes, self.items),
            "cluster": None if self.clusters is None else _Groups.build(self.clusters, self.items),
        }
        self._cache: Dict[Tuple[str, int], Tuple[np.ndarray, np.ndarray]] = {}
        self._categories = self._category_sampler(categories)
        self._checked: set = set()  # strategies whose check passed (the category probe is not free)

    # -- validation ----------------------------------------------------------

    def _subset(self, items) -> np.ndarray:
        if items is None:
            return np.arange(self.num_items, dtype=np.int64)
        arr = np.asarray(items)
        if arr.dtype == bool:
            if arr.shape != (self.num_items,):
                raise ValueError(f"item mask must have shape ({self.num_items},), got {arr.shape}")
            return np.flatnonzero(arr).astype(np.int64)
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"items must be a 1-D integer array or (N,) bool mask, got shape {arr.shape} dtype {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() >= self.num_items):
            raise ValueError(f"items must be in [0, {self.num_items}), got range [{arr.min()}, {arr.max()}]")
        uniq = np.unique(arr.astype(np.int64))
        if uniq.size != arr.size:
            raise ValueError("items must not repeat")
        return uniq

    def _labels(self, name: str, labels) -> Optional[np.ndarray]:
        if labels is None:
            return None
        if hasattr(labels, "detach"):
            labels = labels.detach().cpu().numpy()
        arr = np.asarray(labels)
        if arr.ndim != 1 or arr.shape[0] != self.num_items:
            raise ValueError(f"{name} must have one label per item: expected shape ({self.num_items},), got {arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"{name} must be integers, got {arr.dtype}")
        return arr.astype(np.int64)

    def _category_sampler(self, categories) -> Optional[_CategorySampler]:
        if categories is None:
            return None
        sets = categories if isinstance(categories, CategorySets) else CategorySets(categories)
        if sets.num_items != self.num_items:
            raise ValueError(f"categories must have one row per item: expected {self.num_items} rows, "
                             f"got {sets.num_items}")
        return _CategorySampler(_CategoryGroups.build(sets, self.items), self.weighting)

    def _cat(self, strategy: str) -> _CategorySampler:
        if self._categories is None:
            raise ValueError(f"strategy {strategy!r} needs a category matrix (--categories FILE|things)")
        return self._categories

    def _g(self, strategy: str) -> _Groups:
        kind = "cluster" if strategy == "cluster_border" else "class"
        g = self._groups[kind]
        if g is None:
            what = "cluster labels (k-means: --clusters)" if kind == "cluster" else "class labels (--labels)"
            raise ValueError(f"strategy {strategy!r} needs {what}")
        return g

    def _eligible(self, strategy: str, need: int) -> Tuple[np.ndarray, np.ndarray]:
        """(groups with >= need items, their sampling CDF)."""
        key = (strategy, need)
        if key not in self._cache:
            g = self._g(strategy)
            elig = np.flatnonzero(g.counts >= need)
            w = g.counts[elig].astype(np.float64) if self.weighting == "size" else np.ones(elig.size)
            cdf = np.cumsum(w)
            self._cache[key] = (elig, cdf / cdf[-1] if cdf.size else cdf)
        return self._cache[key]

    def _pick(self, rng: np.random.Generator, elig: np.ndarray, cdf: np.ndarray, n: int) -> np.ndarray:
        pos = np.searchsorted(cdf, rng.random(n), side="right")
        return elig[np.minimum(pos, elig.size - 1)]

    # -- reporting -----------------------------------------------------------

    def report(self, strategies: Sequence[str] = STRATEGIES) -> Dict[str, Dict[str, object]]:
        """Per strategy: how many labels (and which, first 20) are skipped for a role, and the labels used."""
        out: Dict[str, Dict[str, object]] = {}
        for s in strategies:
            if s == "random":
                out[s] = {"items": int(self.items.size)}
                continue
            if s in CATEGORY_STRATEGIES:
                if self._categories is not None:
                    out[s] = self._categories.report(s)
                continue
            g = self._groups["cluster" if s == "cluster_border" else "class"]
            if g is None:
                continue
            need = 3 if s == "within_class" else 2 if s in ("class_border", "cluster_border") else 1
            skipped = g.label_values[g.counts < need]
            out[s] = {
                "labels": int(g.label_values.size),
                "items": int(g.members.size),
                "role": {3: "triple", 2: "pair", 1: "single"}[need],
                "skipped_labels": int(skipped.size),
                "skipped_examples": skipped[:20].tolist(),
            }
        return out

    def check(self, strategy: str) -> None:
        """Raise ValueError if ``strategy`` cannot produce a triplet on this subset."""
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
        if strategy in self._checked:
            return
        self._check(strategy)
        self._checked.add(strategy)

    def _check(self, strategy: str) -> None:
        if strategy in CATEGORY_STRATEGIES:
            self._cat(strategy).check(strategy)
            return
        if strategy == "random":
            if self.items.size < 3:
                raise ValueError(f"random needs at least 3 items, the subset has {self.items.size}")
            return
        g = self._g(strategy)
        if strategy == "within_class":
            if not (g.counts >= 3).any():
                raise ValueError("within_class needs a label with at least 3 items; none has")
        elif strategy == "between_class":
            if g.label_values.size < 3:
                raise ValueError(f"between_class needs at least 3 labels, the subset has {g.label_values.size}")
        else:
            if not (g.counts >= 2).any():
                raise ValueError(f"{strategy} needs a label with at least 2 items; none has")
            if g.label_values.size < 2:
                raise ValueError(f"{strategy} needs at least 2 labels, the subset has {g.label_values.size}")

    # -- sampling ------------------------------------------------------------

    def sample(self, strategy: str, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, 3) int64 triplets of one strategy drawn from ``rng``."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"count must be a non-negative int, got {n!r}")
        self.check(strategy)
        n = int(n)
        if n == 0:
            return np.zeros((0, 3), dtype=np.int64)
        if strategy in CATEGORY_STRATEGIES:
            return self._cat(strategy).sample(strategy, n, rng)
        if strategy == "random":
            a, b, c = _distinct3_n(rng, self.items.size, n)
            return np.stack([self.items[a], self.items[b], self.items[c]], axis=1)
        g = self._g(strategy)
        if strategy == "within_class":
            elig, cdf = self._eligible(strategy, 3)
            lab = self._pick(rng, elig, cdf, n)
            a, b, c = _distinct3(rng, g.counts[lab])
            s = g.starts[lab]
            return np.stack([g.members[s + a], g.members[s + b], g.members[s + c]], axis=1)
        if strategy == "between_class":
            return self._between(g, n, rng)
        # class_border / cluster_border: a pair from label A, the odd one from another label.
        elig, cdf = self._eligible(strategy, 2)
        lab = self._pick(rng, elig, cdf, n)
        a, b = _distinct2(rng, g.counts[lab])
        s = g.starts[lab]
        odd = g.members[self._other_pos(g, rng, [lab])]
        return np.stack([g.members[s + a], g.members[s + b], odd], axis=1)

    def _other_pos(self, g: _Groups, rng: np.random.Generator, exclude: List[np.ndarray]) -> np.ndarray:
        """One member position per row whose label is none of the (distinct) groups in ``exclude``."""
        if self.weighting == "size":
            # uniform over the members outside the excluded groups' contiguous ranges
            removed = sum(g.counts[e] for e in exclude)
            r = rng.integers(0, g.members.size - removed)
            return _skip_ranges(r, [g.starts[e] for e in exclude], [g.counts[e] for e in exclude])
        # uniform over the groups outside ``exclude``, then uniform within the group
        r = rng.integers(0, g.label_values.size - len(exclude), size=exclude[0].shape[0])
        r = _skip_ranges(r, exclude, [np.ones_like(e) for e in exclude])
        return g.starts[r] + rng.integers(0, g.counts[r])

    def _group_of(self, g: _Groups) -> np.ndarray:
        key = ("group_of", id(g))
        if key not in self._cache:
            grp = np.repeat(np.arange(g.label_values.size, dtype=np.int64), g.counts)
            self._cache[key] = (grp, grp)
        return self._cache[key][0]

    def _between(self, g: _Groups, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.weighting == "size":
            group_of = self._group_of(g)
            p0 = rng.integers(0, g.members.size, size=n)
            l0 = group_of[p0]
            p1 = self._other_pos(g, rng, [l0])
            p2 = self._other_pos(g, rng, [l0, group_of[p1]])
            return np.stack([g.members[p0], g.members[p1], g.members[p2]], axis=1)
        a, b, c = _distinct3_n(rng, g.label_values.size, n)
        pick = lambda lab: g.members[g.starts[lab] + rng.integers(0, g.counts[lab])]  # noqa: E731
        return np.stack([pick(a), pick(b), pick(c)], axis=1)


def _skip_ranges(r: np.ndarray, starts: List[np.ndarray], counts: List[np.ndarray]) -> np.ndarray:
    """Map ``r`` (a rank among allowed positions) to a position, skipping disjoint excluded ranges.

    Ranges must be processed in ascending order of start, so they are sorted per row first.
    """
    if len(starts) == 1:
        s, c = starts[0], counts[0]
        return r + c * (r >= s)
    s0, s1 = starts
    c0, c1 = counts
    first = s0 <= s1
    lo_s, lo_c = np.where(first, s0, s1), np.where(first, c0, c1)
    hi_s, hi_c = np.where(first, s1, s0), np.where(first, c1, c0)
    r = r + lo_c * (r >= lo_s)
    return r + hi_c * (r >= hi_s)


def chunk_rng(seed: int, stream_id: int, chunk_id: int) -> np.random.Generator:
    """The generator for one chunk: a pure function of (seed, stream, chunk)."""
    return derive_rng(seed, stream_id, chunk_id)


def sample_chunk(
    sampler: TripletSampler, mix: Sequence[Tuple[str, float]], n: int, rng: np.random.Generator, rotate: int = 0
) -> Tuple[np.ndarray, Dict[str, int]]:
    """``n`` triplets of a strategy mix, interleaved in random order.

    Returns ``(triplets (n, 3) int64, {strategy: count})``; the per-strategy
    counts are ``split_counts(n, mix, rotate)``.
    """
    counts = split_counts(n, mix, rotate)
    parts = [sampler.sample(name, c, rng) for (name, _), c in zip(mix, counts)]
    trip = np.concatenate(parts) if parts else np.zeros((0, 3), dtype=np.int64)
    if len(mix) > 1:
        trip = trip[rng.permutation(n)]
    return trip, {name: c for (name, _), c in zip(mix, counts)}
