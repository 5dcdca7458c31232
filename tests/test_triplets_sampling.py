"""Sampling strategies: invariants over many seeds, exact distributions, subsets, reproducibility, errors."""

import itertools

import numpy as np
import pytest
from scipy import stats

from fastalign.triplets.sampling import (
    CATEGORY_STRATEGIES,
    STRATEGIES,
    TripletSampler,
    _distinct3_n,
    chunk_rng,
    parse_strategy,
    sample_chunk,
    split_counts,
)

N = 400


def make_labels(seed):
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, 12, N)
    classes[:5] = 50  # a label with 5 items
    classes[5] = 51  # a singleton: too few for a pair or a within-class triple
    classes[6:8] = 52  # a pair: too few for within_class
    classes[8] = -1  # unlabelled
    clusters = rng.integers(0, 30, N)
    clusters[9] = 99  # singleton cluster
    return classes, clusters


def check_invariants(trip, strategy, classes, clusters, items):
    assert trip.dtype == np.int64 and trip.shape[1] == 3
    # distinct items within a triplet
    assert ((trip[:, 0] != trip[:, 1]) & (trip[:, 0] != trip[:, 2]) & (trip[:, 1] != trip[:, 2])).all()
    # subset restriction
    assert np.isin(trip, items).all()
    if strategy == "random":
        return
    lab = (clusters if strategy == "cluster_border" else classes)[trip]
    assert (lab >= 0).all(), "an unlabelled item was used by a label strategy"
    if strategy == "within_class":
        assert ((lab[:, 0] == lab[:, 1]) & (lab[:, 1] == lab[:, 2])).all()
    elif strategy == "between_class":
        assert ((lab[:, 0] != lab[:, 1]) & (lab[:, 0] != lab[:, 2]) & (lab[:, 1] != lab[:, 2])).all()
    else:
        assert ((lab[:, 0] == lab[:, 1]) & (lab[:, 2] != lab[:, 0])).all()


@pytest.mark.parametrize("weighting", ["size", "uniform"])
@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s not in CATEGORY_STRATEGIES])  # categories: test_triplets_categories
def test_strategy_invariants_over_many_seeds(strategy, weighting):
    for seed in range(25):
        classes, clusters = make_labels(seed)
        rng = np.random.default_rng(seed)
        items = np.sort(rng.choice(N, size=int(rng.integers(60, N)), replace=False)) if seed % 2 else np.arange(N)
        s = TripletSampler(N, classes=classes, clusters=clusters, items=items, weighting=weighting)
        trip = s.sample(strategy, 2000, chunk_rng(seed, 0, 0))
        check_invariants(trip, strategy, classes, clusters, items)


def test_distinct3_is_uniform_over_ordered_triples():
    n = 5
    a, b, c = _distinct3_n(np.random.default_rng(0), n, 60_000)
    codes = a * n * n + b * n + c
    perms = [p[0] * n * n + p[1] * n + p[2] for p in itertools.permutations(range(n), 3)]
    counts = np.array([(codes == p).sum() for p in perms])
    assert counts.sum() == 60_000  # nothing outside the 60 valid ordered triples
    assert stats.chisquare(counts).pvalue > 1e-3


def test_size_weighting_picks_pairs_proportional_to_label_size_and_odd_uniformly():
    classes = np.repeat([0, 1, 2], [2, 4, 10])  # 16 items
    s = TripletSampler(len(classes), classes=classes)
    trip = s.sample("class_border", 80_000, np.random.default_rng(1))
    pair_lab = classes[trip[:, 0]]
    counts = np.bincount(pair_lab, minlength=3)
    assert stats.chisquare(counts, f_exp=80_000 * np.array([2, 4, 10]) / 16).pvalue > 1e-3
    # given the pair label A, the odd item is uniform over the items outside A
    sel = pair_lab == 2
    odd = trip[sel, 2]
    counts = np.bincount(odd, minlength=16)[:6]
    assert stats.chisquare(counts).pvalue > 1e-3


def test_uniform_weighting_picks_labels_uniformly():
    classes = np.repeat([0, 1, 2, 3], [3, 3, 30, 300])
    s = TripletSampler(len(classes), classes=classes, weighting="uniform")
    trip = s.sample("within_class", 40_000, np.random.default_rng(2))
    counts = np.bincount(classes[trip[:, 0]], minlength=4)
    assert stats.chisquare(counts).pvalue > 1e-3


def test_between_class_size_weighting_distribution():
    # with size weighting the first item is uniform over all labelled items
    classes = np.repeat([0, 1, 2, 3], [1, 2, 3, 4])
    s = TripletSampler(len(classes), classes=classes)
    trip = s.sample("between_class", 50_000, np.random.default_rng(3))
    counts = np.bincount(trip[:, 0], minlength=10)
    assert stats.chisquare(counts).pvalue > 1e-3


def test_small_labels_skipped_and_reported():
    classes, clusters = make_labels(0)
    s = TripletSampler(N, classes=classes, clusters=clusters)
    rep = s.report()
    assert rep["class_border"]["skipped_labels"] >= 1 and 51 in rep["class_border"]["skipped_examples"]
    assert 52 in rep["within_class"]["skipped_examples"] and 51 in rep["within_class"]["skipped_examples"]
    assert 99 in rep["cluster_border"]["skipped_examples"]
    trip = s.sample("within_class", 20_000, np.random.default_rng(0))
    assert not np.isin(classes[trip], [51, 52]).any()
    trip = s.sample("class_border", 20_000, np.random.default_rng(0))
    assert not np.isin(classes[trip[:, :2]], [51]).any()
    assert np.isin(classes[trip[:, 2]], [51]).any()  # a singleton may still be the odd one out


def test_reproducible_per_chunk_and_independent_of_order():
    classes, clusters = make_labels(1)
    s = TripletSampler(N, classes=classes, clusters=clusters)
    mix = parse_strategy("cluster_border:0.7,random:0.2,between_class:0.1")
    a = [sample_chunk(s, mix, 1000, chunk_rng(5, 0, c))[0] for c in range(4)]
    b = [sample_chunk(s, mix, 1000, chunk_rng(5, 0, c))[0] for c in reversed(range(4))][::-1]
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    assert not np.array_equal(a[0], a[1])
    assert not np.array_equal(a[0], sample_chunk(s, mix, 1000, chunk_rng(6, 0, 0))[0])


def test_mix_counts_and_parse():
    mix = parse_strategy("cluster_border:0.8, random:0.2")
    assert mix == [("cluster_border", pytest.approx(0.8)), ("random", pytest.approx(0.2))]
    assert parse_strategy("random") == [("random", 1.0)]
    for n in (0, 1, 7, 1001):
        c = split_counts(n, parse_strategy("random:1,within_class:1,between_class:1"))
        assert sum(c) == n and max(c) - min(c) <= 1
    classes, clusters = make_labels(2)
    s = TripletSampler(N, classes=classes, clusters=clusters)
    trip, counts = sample_chunk(s, mix, 1000, chunk_rng(0, 0, 0))
    assert counts == {"cluster_border": 800, "random": 200} and trip.shape == (1000, 3)


@pytest.mark.parametrize("spec", ["nope", "random:0", "random:-1", "random:x", "random,random", ""])
def test_parse_strategy_errors(spec):
    with pytest.raises(ValueError):
        parse_strategy(spec)


def test_bad_input_errors():
    classes, clusters = make_labels(0)
    with pytest.raises(ValueError, match="one label per item"):
        TripletSampler(N, classes=classes[:-1])
    with pytest.raises(ValueError, match="one label per item"):
        TripletSampler(N, clusters=np.zeros(N + 1, np.int64))
    with pytest.raises(TypeError, match="integers"):
        TripletSampler(N, classes=classes.astype(float))
    s = TripletSampler(N, classes=classes)
    with pytest.raises(ValueError, match="non-negative"):
        s.sample("random", -1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown strategy"):
        s.sample("bogus", 5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="cluster labels"):
        s.sample("cluster_border", 5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="items must be in"):
        TripletSampler(N, items=np.array([0, N]))
    with pytest.raises(ValueError, match="repeat"):
        TripletSampler(N, items=np.array([1, 1, 2]))
    with pytest.raises(ValueError, match="at least 3 items"):
        TripletSampler(N, items=np.array([1, 2])).sample("random", 1, np.random.default_rng(0))
    one = TripletSampler(10, classes=np.zeros(10, np.int64))
    with pytest.raises(ValueError, match="at least 2 labels"):
        one.sample("class_border", 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least 3 labels"):
        one.sample("between_class", 1, np.random.default_rng(0))
    singletons = TripletSampler(10, classes=np.arange(10))
    with pytest.raises(ValueError, match="at least 3 items"):
        singletons.sample("within_class", 1, np.random.default_rng(0))
    assert s.sample("random", 0, np.random.default_rng(0)).shape == (0, 3)


def test_chunk_rng_is_the_seed_sequence_stream_of_earlier_stores():
    """``chunk_rng`` (now ``derive_rng``) must draw what ``Generator(PCG64(SeedSequence(...)))`` drew,
    or stores generated before would not resume into the same bytes."""
    for key in [(0, 0, 0), (5, 1, 3), (2**40, 2, 7)]:
        old = np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(key))))
        assert np.array_equal(chunk_rng(*key).integers(0, 1 << 30, 64), old.integers(0, 1 << 30, 64))
