"""Category strategies over a multi-label matrix (within_category, between_category, category_border),
their wiring into make-triplets (options, meta, fingerprint, CLI) and the cluster_border target."""

import json
from dataclasses import replace

import numpy as np
import pytest
from test_triplets_io import cli

from fastalign.triplets import TripletStore
from fastalign.triplets.generate import GenerateOptions, generate
from fastalign.triplets.options import check_options
from fastalign.triplets.sampling import CATEGORY_STRATEGIES, CategorySets, TripletSampler, chunk_rng, sample_chunk

N, K = 300, 9


def make_matrix(seed):
    """A random multi-label matrix: about a third of objects uncategorised, many in 2-4 categories."""
    rng = np.random.default_rng(seed)
    m = (rng.random((N, K)) < 0.15).astype(np.uint8)
    m[rng.random(N) < 0.3] = 0
    m[:6] = 0
    m[:6, 0] = 1  # six objects in exactly one category
    m[6:10, :4] = 1  # four objects in four categories
    m[10:12] = 0  # uncategorised
    return m


def shares(m, a, b):
    return (m[a].astype(bool) & m[b].astype(bool)).any(axis=1)


def check_structure(trip, strategy, m, items):
    """Every row: the definition of its strategy, distinct objects, only categorised objects of the subset."""
    assert trip.dtype == np.int64 and trip.shape[1] == 3
    assert ((trip[:, 0] != trip[:, 1]) & (trip[:, 0] != trip[:, 2]) & (trip[:, 1] != trip[:, 2])).all()
    assert np.isin(trip, items).all()
    assert m[trip].any(axis=2).all(), "an uncategorised object was used"
    s01, s02, s12 = shares(m, trip[:, 0], trip[:, 1]), shares(m, trip[:, 0], trip[:, 2]), shares(m, trip[:, 1], trip[:, 2])
    if strategy == "within_category":
        common = m[trip[:, 0]] & m[trip[:, 1]] & m[trip[:, 2]]
        assert common.any(axis=1).all()
    elif strategy == "between_category":
        assert not (s01 | s02 | s12).any()
    else:
        assert s01.all() and not (s02 | s12).any()


@pytest.mark.parametrize("weighting", ["size", "uniform"])
@pytest.mark.parametrize("strategy", CATEGORY_STRATEGIES)
def test_every_row_has_its_strategys_structure(strategy, weighting):
    multi = 0
    for seed in range(12):
        m = make_matrix(seed)
        rng = np.random.default_rng(seed)
        items = np.sort(rng.choice(N, size=200, replace=False)) if seed % 2 else np.arange(N)
        s = TripletSampler(N, categories=m, items=items, weighting=weighting)
        trip = s.sample(strategy, 3000, chunk_rng(seed, 0, 0))
        check_structure(trip, strategy, m, items)
        multi += int((m[trip].sum(axis=2) > 1).any(axis=1).sum())
    assert multi > 0, "objects in several categories never appeared"


def test_multi_category_objects_pair_through_any_category():
    """An object in four categories pairs (category_border) with members of each of them."""
    m = make_matrix(0)
    trip = TripletSampler(N, categories=m).sample("category_border", 20000, np.random.default_rng(1))
    partners = trip[trip[:, 0] == 7, 1]
    assert {k for k in range(4) if m[partners, k].any()} == {0, 1, 2, 3}


def test_mix_proportions_and_reproducibility():
    m = make_matrix(3)
    classes = np.random.default_rng(0).integers(0, 5, N)
    s = TripletSampler(N, classes=classes, categories=CategorySets(m))
    mix = [("category_border", 0.5), ("random", 0.3), ("within_category", 0.2)]
    trip, counts = sample_chunk(s, mix, 1000, chunk_rng(0, 0, 0))
    assert counts == {"category_border": 500, "random": 300, "within_category": 200} and trip.shape == (1000, 3)
    again, _ = sample_chunk(TripletSampler(N, classes=classes, categories=m), mix, 1000, chunk_rng(0, 0, 0))
    assert np.array_equal(trip, again)
    other, _ = sample_chunk(s, mix, 1000, chunk_rng(1, 0, 0))
    assert not np.array_equal(trip, other)
    for name in ("between_category", "category_border"):
        a = s.sample(name, 500, np.random.default_rng(5))
        assert np.array_equal(a, s.sample(name, 500, np.random.default_rng(5)))
    rep = s.report(["within_category", "random"])
    assert rep["within_category"]["items"] == int(m.any(axis=1).sum()) and rep["within_category"]["role"] == "triple"


def test_impossible_matrices_and_bad_input_are_refused():
    rng = np.random.default_rng(0)
    one = np.zeros((20, 3), np.uint8)
    one[:, 0] = 1
    with pytest.raises(ValueError, match="between_category needs at least 3 categories with objects, the subset has 1"):
        TripletSampler(20, categories=one).sample("between_category", 5, rng)
    with pytest.raises(ValueError, match="category_border needs .* at least 2 categories"):
        TripletSampler(20, categories=one).sample("category_border", 5, rng)
    # every object in category 0 (plus others): nothing ever shares no category with anything
    hub = one.copy()
    hub[:7, 1] = hub[7:14, 2] = 1
    for name in ("between_category", "category_border"):
        with pytest.raises(ValueError, match=f"{name}: no valid triplet found"):
            TripletSampler(20, categories=hub).sample(name, 5, rng)
    pairs = np.kron(np.eye(10, dtype=np.uint8), np.ones((2, 1), np.uint8))  # 10 categories of 2 objects
    with pytest.raises(ValueError, match="within_category needs a category with at least 3 objects"):
        TripletSampler(20, categories=pairs).sample("within_category", 5, rng)
    assert TripletSampler(20, categories=pairs).sample("category_border", 50, rng).shape == (50, 3)
    with pytest.raises(ValueError, match="one row per item: expected 20 rows, got 19"):
        TripletSampler(20, categories=pairs[:19])
    with pytest.raises(ValueError, match="only 0 and 1"):
        TripletSampler(20, categories=pairs * 2)
    with pytest.raises(ValueError, match=r"needs a category matrix \(--categories"):
        TripletSampler(20, classes=np.zeros(20, np.int64)).sample("within_category", 5, rng)
    with pytest.raises(ValueError, match=r"needs a category matrix \(--categories"):
        check_options(GenerateOptions(embeddings="x", out="y", num=1, strategy="category_border:0.5,random:0.5"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cat")
    rng = np.random.default_rng(0)
    np.save(d / "emb.npy", rng.normal(size=(N, 8)).astype(np.float32))
    np.save(d / "cats.npy", make_matrix(1))
    return d


def small(files, out, **kw):
    base = dict(embeddings=str(files / "emb.npy"), categories=str(files / "cats.npy"), out=str(out), num=300,
                strategy="category_border:0.5,between_category:0.25,random:0.25", shard_size=100, chunk_size=100,
                val_num=60, val_fraction=0.3, progress=False, histogram=False)
    return GenerateOptions(**dict(base, **kw))


def test_generate_records_categories_and_resume_hashes_their_content(files, tmp_path):
    from fastalign.io.atomic import file_checksum

    o = small(files, tmp_path / "s")
    summary = generate(o)
    meta = TripletStore.open(tmp_path / "s").meta
    assert meta["strategy"] == [["category_border", 0.5], ["between_category", 0.25], ["random", 0.25]]
    assert meta["options"]["categories"] == str(files / "cats.npy")
    assert meta["categories"]["shape"] == [N, K] and meta["inputs"]["categories"] == file_checksum(files / "cats.npy")
    assert summary.splits[0].strategy_counts == {"category_border": 150, "between_category": 75, "random": 75}
    saved = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert saved["splits"][1]["skipped"]["between_category"]["role"] == "single"
    np.save(files / "cats.npy", make_matrix(2))  # same path, same shape, other content
    try:
        with pytest.raises(ValueError, match=r"cannot resume: categories: the content of \S*cats.npy changed"):
            generate(replace(o, resume=True))
    finally:
        np.save(files / "cats.npy", make_matrix(1))


def test_generate_refuses_a_matrix_of_other_rows(files, tmp_path):
    np.save(tmp_path / "short.npy", make_matrix(1)[:-1])
    with pytest.raises(ValueError, match=f"the category matrix has {N - 1} rows but there are {N} objects"):
        generate(small(files, tmp_path / "s", categories=str(tmp_path / "short.npy")))


def test_cli_within_category_on_bundled_things(tmp_path, capsys):
    from fastalign.io.resolve import resolve_categories

    out = tmp_path / "things"
    assert cli(["make-triplets", "--embeddings", "things:clip", "--categories", "things", "--strategy",
                "within_category", "--num", "120", "--shard-size", "60", "--chunk-size", "60", "--out", str(out),
                "--quiet", "--no-histogram"]) == 0, capsys.readouterr().err
    st = TripletStore.open(out)
    assert len(st) == 120 and st.num_items == 1854
    m = resolve_categories("things")[0].astype(bool)
    trip = st.indices[:].astype(np.int64)  # the teacher reorders rows; within_category is order-free
    assert (m[trip[:, 0]] & m[trip[:, 1]] & m[trip[:, 2]]).any(axis=1).all()
    assert cli(["make-triplets", "--embeddings", "things:clip", "--strategy", "between_category", "--num", "10",
                "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    assert "--categories" in capsys.readouterr().err


def test_cluster_border_recovers_a_separated_mixture(tmp_path):
    """Issue 12's target at a test's size: the pair in one true cluster, the odd one in another."""
    rng = np.random.default_rng(0)
    k, n, d = 12, 2400, 16
    truth = rng.integers(0, k, n)
    x = (rng.normal(size=(k, d)) * 4.0)[truth] + rng.normal(size=(n, d))
    np.save(tmp_path / "mix.npy", x.astype(np.float32))
    generate(GenerateOptions(embeddings=str(tmp_path / "mix.npy"), out=str(tmp_path / "s"), num=4000,
                             strategy="cluster_border", clusters=k, progress=False, histogram=False), say=lambda s: None)
    lab = truth[TripletStore.open(tmp_path / "s").indices[:].astype(np.int64)]
    same = (lab[:, 0] == lab[:, 1]).astype(int) + (lab[:, 0] == lab[:, 2]) + (lab[:, 1] == lab[:, 2])
    assert (same == 1).mean() >= 0.99


def test_bundled_categories_hash_their_bundled_file():
    import torch

    from fastalign.datasets.things import ROOT
    from fastalign.io.atomic import file_checksum
    from fastalign.triplets.fingerprint import run_fingerprint

    o = GenerateOptions(embeddings="things:clip", out="unused", num=1, categories="things", strategy="within_category")
    rec = run_fingerprint(o, torch.device("cpu"))["inputs"]["categories"]
    assert rec["file"] == str(ROOT / "concepts/category_mat_manual.tsv")
    assert rec["blake2b"] == file_checksum(ROOT / "concepts/category_mat_manual.tsv")
