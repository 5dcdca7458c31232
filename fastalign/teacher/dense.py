"""Dense soft targets: a human similarity model labels triplets sampled over all N objects.

AligNet's teacher is fitted to the choice distributions of a human similarity
model (SPoSE, VICE), not only to the few human triplets: ``sample_triplets``
draws M object sets (uniformly, or stratified by category level) and
``embedding_targets`` labels each with ``softmax(dot / T_h)`` of the embedding.
Object sets of held-out human triplets are never drawn, so no evaluation set
leaks into the fit.

Rows are sorted object ids ``i < j < k``; targets are in pair order
``[p01, p02, p12]`` of the row (``p01`` = P(object k is the odd one out)).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from ..common.category_levels import CLASS_BOUNDARY, COARSE, FINE, LEVELS, triplet_levels
from ..common.seeds import derive_rng
from ..io.resolve import is_bundled, resolve_categories, resolve_features

__all__ = ["DENSE_SOURCES", "STRATA", "DenseOptions", "DenseTargets", "check_embedding", "dense_targets",
           "embedding_targets", "max_triplets", "resolve_embedding", "sample_triplets", "set_keys"]

# Bare names that --soft-targets has always taken for the bundled SPoSE-49 embedding.
DENSE_SOURCES = {"spose49": "things:spose49", "things:spose49": "things:spose49", "vice": "things:vice",
                 "things:vice": "things:vice"}
STRATA = ("fine", "class_boundary", "coarse")  # the levels a stratified draw fills, in this order
_CHUNK = 1 << 18  # rows per float64 chunk of the target computation (bounds the (chunk, 3, d) gathers)


@dataclass(frozen=True)
class DenseOptions:
    """How the dense soft targets are drawn and labelled.

    Attributes:
        num: M, the number of sampled triplets (train and validation together), >= 1.
        temperature: T_h of ``softmax(dot / T_h)``; 1 = as the embedding was trained.
        val_fraction: share of the M triplets held out to early-stop the fit, in (0, 1).
        proportions: with a category matrix, the shares of (fine, class_boundary, coarse) triplets.
        seed: the draw is a function of this seed alone.
    """

    num: int = 1_000_000
    temperature: float = 1.0
    val_fraction: float = 0.05
    proportions: Tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)
    seed: int = 0

    def validate(self, n: int, name: str = "--soft-triplets") -> None:
        """Raise ValueError (one line) for an option that cannot work with N = ``n`` objects.

        Args:
            n: number of objects.
            name: how the caller spells the count in its message (a CLI flag or a config key).
        """
        top = max_triplets(n)
        if not (1 <= int(self.num) <= top):
            raise ValueError(f"{name} must be in [1, {top}] (the distinct triplets of {n} objects), got {self.num}")
        if not (self.temperature > 0 and np.isfinite(self.temperature)):
            raise ValueError(f"the soft-target temperature must be finite and > 0, got {self.temperature!r}")
        if not (0.0 < self.val_fraction < 1.0):
            raise ValueError(f"the soft-target val_fraction must be in (0, 1), got {self.val_fraction!r}")
        p = np.asarray(self.proportions, dtype=np.float64)
        if p.shape != (3,) or (p < 0).any() or not np.isclose(p.sum(), 1.0):
            raise ValueError(f"strata proportions must be 3 non-negative shares summing to 1, got {self.proportions}")


@dataclass
class DenseTargets:
    """Sampled triplets and their soft targets.

    Attributes:
        source: what labelled them (``embedding:things:spose49``, ...).
        train, train_targets: (M_train, 3) sorted triplets and (M_train, 3) float64 targets.
        val, val_targets: the held-out part of the draw (early stopping of the fit).
        info: counts worth reporting (per level, sets excluded, T_h).
    """

    source: str
    train: np.ndarray
    train_targets: np.ndarray
    val: np.ndarray
    val_targets: np.ndarray
    info: Dict[str, Any] = field(default_factory=dict)

    def digest_parts(self) -> Dict[str, Any]:
        """What a cache key needs: the source, the counts and a content hash of the targets."""
        h = hashlib.sha256()
        for a in (self.train, self.train_targets, self.val, self.val_targets):
            h.update(np.ascontiguousarray(a).tobytes())
        return {"source": self.source, "n": int(len(self.train) + len(self.val)), "sha256": h.hexdigest()}


def max_triplets(n: int) -> int:
    """C(n, 3): the number of distinct object sets of ``n`` objects."""
    return n * (n - 1) * (n - 2) // 6


def set_keys(triplets: np.ndarray, n: int) -> np.ndarray:
    """One int64 key per object set (order within the row ignored): ``i n^2 + j n + k`` of the sorted row."""
    if n >= 2_000_000:
        raise ValueError(f"dense targets support at most 2,000,000 objects (int64 set keys), got {n}")
    s = np.sort(np.asarray(triplets, dtype=np.int64), axis=1)
    return (s[:, 0] * n + s[:, 1]) * n + s[:, 2]


def _from_keys(keys: np.ndarray, n: int) -> np.ndarray:
    return np.stack([keys // (n * n), (keys // n) % n, keys % n], 1)


def _all_sets(n: int) -> np.ndarray:
    """Every sorted triplet of ``n`` objects (only used when M is a large share of C(n, 3), i.e. small n)."""
    a, b, c = np.meshgrid(np.arange(n), np.arange(n), np.arange(n), indexing="ij")
    keep = (a < b) & (b < c)
    return np.stack([a[keep], b[keep], c[keep]], 1).astype(np.int64)


def _fill(draw, count: int, n: int, taken: np.ndarray, what: str, rng: np.random.Generator,
          max_rounds: int = 200) -> np.ndarray:
    """Keys of ``count`` new object sets from ``draw(size) -> (size, 3)`` candidates, none in ``taken``."""
    got = np.empty(0, dtype=np.int64)
    for _ in range(max_rounds):
        need = count - len(got)
        if need <= 0:
            break
        cand = draw(max(2 * need, 1024))
        cand = cand[(cand[:, 0] != cand[:, 1]) & (cand[:, 0] != cand[:, 2]) & (cand[:, 1] != cand[:, 2])]
        keys = np.unique(set_keys(cand, n))
        keys = keys[~np.isin(keys, taken) & ~np.isin(keys, got)]
        # A random subset, not the smallest keys: np.unique sorted them.
        got = np.concatenate([got, keys[rng.permutation(len(keys))[:need]]])
    if len(got) < count:
        raise ValueError(f"could only draw {len(got)} of {count} {what} triplets not already taken")
    return got


def _uniform_draw(n: int, rng: np.random.Generator):
    return lambda size: rng.integers(0, n, size=(size, 3))


def _level_draw(level: int, cats: np.ndarray, rng: np.random.Generator):
    """Candidates for one level: proposals likely to be of it, kept when ``triplet_levels`` agrees."""
    n, k = cats.shape
    members = [np.flatnonzero(cats[:, c]) for c in range(k)]
    sizes = np.array([len(m) for m in members], dtype=np.float64)
    need = 3 if level == FINE else 2
    weight = sizes * (sizes - 1) * (sizes - 2) if level == FINE else sizes * (sizes - 1)
    if level != COARSE and weight.sum() == 0:
        raise ValueError(f"the category matrix has no category with {need} objects: no {LEVELS[level]} triplets")
    prob = weight / weight.sum() if weight.sum() > 0 else None

    def draw(size: int) -> np.ndarray:
        if level == COARSE:
            t = rng.integers(0, n, size=(size, 3))
        else:
            cs = rng.choice(k, size=size, p=prob)
            t = rng.integers(0, n, size=(size, 3))
            for c in np.unique(cs):
                rows = np.flatnonzero(cs == c)
                t[rows, :need] = members[c][rng.integers(0, len(members[c]), size=(len(rows), need))]
        ok = (t[:, 0] != t[:, 1]) & (t[:, 0] != t[:, 2]) & (t[:, 1] != t[:, 2])
        t = t[ok]
        return t[triplet_levels(t, cats).numpy() == level] if len(t) else t

    return draw


def _check_categories(categories: Any, n: int) -> np.ndarray:
    cats = np.asarray(categories)
    if cats.ndim != 2 or cats.shape[0] != n or cats.shape[1] < 1:
        raise ValueError(f"the strata category matrix must have shape ({n}, K) for {n} objects, got {cats.shape}")
    return cats != 0


def sample_triplets(n: int, num: int, seed: int = 0, categories: Any = None,
                    proportions: Sequence[float] = (1 / 3, 1 / 3, 1 / 3),
                    exclude: Optional[np.ndarray] = None) -> Tuple[np.ndarray, Dict[str, int]]:
    """Draw ``num`` distinct object sets of ``n`` objects, none repeating an object, none in ``exclude``.

    Args:
        n: number of objects N.
        num: number of triplets, in [1, C(n, 3) - excluded].
        seed: the draw is reproducible from it.
        categories: optional (N, K) 0/1 matrix; then ``proportions`` of the rows are fine
            (all three share a category), class-boundary (exactly one pair shares) and coarse (none).
        proportions: the (fine, class_boundary, coarse) shares of a stratified draw.
        exclude: optional (k, 3) triplets whose object sets must not be drawn (held-out sets).

    Returns (triplets (num, 3) int64 with sorted rows, in random order; count per level drawn).
    """
    top = max_triplets(n)
    if not (1 <= num <= top):
        raise ValueError(f"--soft-triplets must be in [1, {top}] (the distinct triplets of {n} objects), got {num}")
    rng = derive_rng(seed, 0x7D3)
    taken = np.unique(set_keys(exclude, n)) if exclude is not None and len(exclude) else np.empty(0, np.int64)
    if categories is None:
        if num > top // 4 and n <= 256:  # a dense share of few objects: enumerate rather than reject
            keys = np.setdiff1d(set_keys(_all_sets(n), n), taken)
            if num > len(keys):
                raise ValueError(f"only {len(keys)} object sets are left after excluding held-out sets, asked {num}")
            keys = keys[rng.permutation(len(keys))[:num]]
        else:
            keys = _fill(_uniform_draw(n, rng), num, n, taken, "uniform", rng)
        counts = {"uniform": int(num)}
    else:
        cats = _check_categories(categories, n)
        per = np.floor(np.asarray(proportions, dtype=np.float64) * num).astype(int)
        per[-1] = num - per[:-1].sum()
        parts, counts = [], {}
        for level, name, count in zip((FINE, CLASS_BOUNDARY, COARSE), STRATA, per):
            got = _fill(_level_draw(level, cats, rng), int(count), n, np.concatenate([taken, *parts]), name, rng)
            parts.append(got)
            counts[name] = int(count)
        keys = np.concatenate(parts)
        keys = keys[rng.permutation(len(keys))]
    return _from_keys(keys, n), counts


def check_embedding(embedding: Any, n: int, name: str) -> np.ndarray:
    """The (N, d) float64 embedding, or a one-line ValueError (row count, finiteness)."""
    e = np.asarray(embedding, dtype=np.float64)
    if e.ndim != 2 or e.shape[1] < 1:
        raise ValueError(f"similarity embedding {name} must be a 2-D (N, d) array, got shape {e.shape}")
    if e.shape[0] != n:
        raise ValueError(f"similarity embedding {name} has {e.shape[0]} rows but the features have {n}; "
                         "they must list the same objects in the same order")
    if not np.isfinite(e).all():
        raise ValueError(f"similarity embedding {name} has NaN or Inf")
    return e


def embedding_targets(embedding: np.ndarray, triplets: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``softmax([e_i.e_j, e_i.e_k, e_j.e_k] / T_h)`` per row, float64 (M, 3).

    Computed in float64 chunk by chunk (a (chunk, 3, d) gather at a time), so the labels are
    those of the embedding itself, not of a float32 rounding of it.
    """
    e = np.asarray(embedding, dtype=np.float64)
    t = np.asarray(triplets, dtype=np.int64)
    out = np.empty((len(t), 3), dtype=np.float64)
    for s in range(0, len(t), _CHUNK):
        a, b, c = e[t[s:s + _CHUNK, 0]], e[t[s:s + _CHUNK, 1]], e[t[s:s + _CHUNK, 2]]
        logits = np.stack([(a * b).sum(1), (a * c).sum(1), (b * c).sum(1)], 1) / temperature
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        out[s:s + _CHUNK] = p / p.sum(1, keepdims=True)
    return out


def resolve_embedding(spec: str, n: int) -> Tuple[str, np.ndarray]:
    """(canonical name, checked embedding) for ``spose49``, ``vice``, ``things:KEY`` or a ``.npy`` file."""
    canon = DENSE_SOURCES.get(str(spec), str(spec))
    if not is_bundled(canon) and not Path(canon).is_file():
        raise ValueError(f"soft targets {spec!r}: not a known source (spose49, vice, repeats, things:KEY) "
                         "nor an existing file")
    try:
        emb = resolve_features(canon)
    except (ValueError, FileNotFoundError) as exc:
        raise ValueError(f"soft targets {spec!r}: {exc}") from None
    return canon, check_embedding(emb, n, canon)


def _strata_matrix(strata: Any, n: int) -> Tuple[Optional[np.ndarray], Optional[str]]:
    if strata is None or (isinstance(strata, str) and not strata):
        return None, None
    if isinstance(strata, str):
        cats, _ = resolve_categories(strata)
        return _check_categories(cats, n), strata
    return _check_categories(strata, n), "array"


def dense_targets(spec: Any, n: int, options: DenseOptions = DenseOptions(), strata: Any = None,
                  exclude: Optional[np.ndarray] = None) -> DenseTargets:
    """Sample ``options.num`` triplets and label them with a human similarity embedding.

    Args:
        spec: the embedding: ``spose49`` / ``things:spose49``, ``vice`` / ``things:vice``, another
            ``things:KEY``, a features file, or an (N, d) array.
        n: N, the number of feature rows (the embedding must have as many).
        options: count, T_h, validation share, strata proportions, seed.
        strata: optional category matrix (``things``, a file, or an (N, K) array) for a stratified draw.
        exclude: triplets whose object sets are never drawn (the held-out human triplets).
    """
    options.validate(n)
    if isinstance(spec, str):
        name, emb = resolve_embedding(spec, n)
    else:
        name, emb = "array", check_embedding(spec, n, "array")
    cats, strata_name = _strata_matrix(strata, n)
    trip, counts = sample_triplets(n, int(options.num), options.seed, cats, options.proportions, exclude)
    targets = embedding_targets(emb, trip, options.temperature)
    n_val = min(len(trip) - 1, max(1, int(round(options.val_fraction * len(trip))))) if len(trip) > 1 else 0
    info = {"num": int(len(trip)), "n_train": int(len(trip) - n_val), "n_val": int(n_val),
            "temperature": float(options.temperature), "strata": strata_name, "levels": counts,
            "excluded_sets": 0 if exclude is None else int(len(np.unique(set_keys(exclude, n)))),
            "seed": int(options.seed)}
    # The draw is already in random order, so its tail is a random validation set.
    return DenseTargets(f"embedding:{name}", trip[n_val:], targets[n_val:], trip[:n_val], targets[:n_val], info)
