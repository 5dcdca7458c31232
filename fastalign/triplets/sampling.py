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

Reproducibility: ``sample_chunk`` draws only from the generator it is given.
``fastalign.triplets.generate`` gives chunk ``c`` of shard ``h`` of split ``s``
the generator of ``SeedSequence([seed, s, h, c])``, so a chunk's triplets do
not depend on which process generates it or in which order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..common.seeds import derive_rng

STRATEGIES = ("random", "between_class", "within_class", "class_border", "cluster_border")
WEIGHTINGS = ("size", "uniform")


def parse_strategy(spec: str) -> List[Tuple[str, float]]:
    """Parse ``"cluster_border"`` or ``"cluster_border:0.8,random:0.2"`` into normalised (name, weight) pairs."""
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
    total = sum(out.values())
    return [(k, v / total) for k, v in out.items()]


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


class TripletSampler:
    """Draw triplets by strategy, restricted to an item subset.

    Args:
        num_items: N, the number of items (rows of the embeddings).
        classes: optional (N,) int class label per item (negative = none).
        clusters: optional (N,) int cluster label per item (negative = none).
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
