"""Accuracy, levels, human uncertainty and calibration against numpy references."""

import math

import numpy as np
import pytest
import scipy.stats as st
import torch

from fastalign.eval import (
    LEVELS,
    accuracy_by_level,
    aggregate_triplets,
    expected_calibration_error,
    human_uncertainty,
    mean_entropy,
    nll,
    noise_ceiling_normalized,
    plot_reliability,
    reliability,
    triplet_accuracy,
    triplet_calibration,
    triplet_levels,
)


def sims_np(emb, t, similarity="dot"):
    e = np.asarray(emb, dtype=np.float64)
    if similarity == "cosine":
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-8)
    a, b, c = e[t[:, 0]], e[t[:, 1]], e[t[:, 2]]
    return np.stack([(a * b).sum(1), (a * c).sum(1), (b * c).sum(1)], 1)


def probs_np(emb, t, temperature=1.0, similarity="dot"):
    z = sims_np(emb, t, similarity) / temperature
    z = z - z.max(1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(1, keepdims=True)


def random_problem(n=30, d=5, b=400, seed=0):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, d))
    t = np.stack([rng.choice(n, 3, replace=False) for _ in range(b)])
    return emb, t


# ------------------------------------------------------------------ accuracy


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_accuracy_vs_numpy(similarity):
    emb, t = random_problem()
    s = sims_np(emb, t, similarity)
    expected = np.mean(s[:, 0] > np.maximum(s[:, 1], s[:, 2]))
    assert triplet_accuracy(emb, t, similarity=similarity) == pytest.approx(expected)
    assert triplet_accuracy(torch.tensor(emb, dtype=torch.float32), torch.tensor(t), similarity=similarity) == \
        pytest.approx(expected)


def test_accuracy_ties_are_wrong():
    emb = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    t = np.array([[0, 1, 2], [0, 1, 3]])  # first row: all similarities equal
    assert triplet_accuracy(emb, t) == 0.5


def test_noise_ceiling_normalized():
    assert noise_ceiling_normalized(1 / 3) == pytest.approx(0.0)
    assert noise_ceiling_normalized(0.67) == pytest.approx(1.0)
    assert noise_ceiling_normalized(0.5, ceiling=2 / 3) == pytest.approx(0.5)
    assert math.isnan(noise_ceiling_normalized(float("nan")))
    with pytest.raises(ValueError, match="ceiling"):
        noise_ceiling_normalized(0.5, ceiling=0.3)


def test_accuracy_bad_input():
    with pytest.raises(ValueError, match="outside"):
        triplet_accuracy(np.ones((3, 2)), np.array([[0, 1, 3]]))
    with pytest.raises(TypeError, match="integer"):
        triplet_accuracy(np.ones((3, 2)), np.array([[0.0, 1.0, 2.0]]))


# -------------------------------------------------------------------- levels

# Objects: 0, 1, 2 animals; 3 food; 4 food + plant; 5 plant; 6 nothing; 7 animal + food.
CATS = np.array([
    [1, 0, 0], [1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1], [0, 0, 0], [1, 1, 0],
], dtype=np.uint8)


def test_levels_hand_built():
    t = np.array([
        [0, 1, 2],  # all animals -> fine
        [2, 0, 1],  # same set, other order -> fine
        [0, 1, 3],  # one pair shares -> class boundary
        [0, 3, 5],  # nothing shared -> coarse
        [3, 4, 5],  # 3-4 food, 4-5 plant, 3-5 nothing -> mixed
        [0, 7, 3],  # 0-7 animal, 7-3 food, 0-3 nothing -> mixed
        [0, 1, 6],  # uncategorised 6 -> class boundary (distinct) / unlabelled (exclude)
        [3, 4, 7],  # all share food -> fine
    ])
    names = [LEVELS[i] for i in triplet_levels(t, CATS).tolist()]
    assert names == ["fine", "fine", "class_boundary", "coarse", "mixed", "mixed", "class_boundary", "fine"]
    excl = [LEVELS[i] for i in triplet_levels(t, CATS, uncategorized="exclude").tolist()]
    assert excl == names[:6] + ["unlabelled", "fine"]
    with pytest.raises(ValueError, match="uncategorized"):
        triplet_levels(t, CATS, uncategorized="drop")
    with pytest.raises(ValueError, match="outside"):
        triplet_levels(np.array([[0, 1, 8]]), CATS)


def test_accuracy_by_level_vs_numpy():
    emb, t = random_problem(n=8, b=300, seed=1)
    codes = triplet_levels(t, CATS).numpy()
    res = accuracy_by_level(emb, t, codes, names=LEVELS)
    s = sims_np(emb, t)
    correct = s[:, 0] > np.maximum(s[:, 1], s[:, 2])
    assert sum(n for _, n in res.values()) == len(t)
    for code in np.unique(codes):
        acc, n = res[LEVELS[code]]
        assert n == int((codes == code).sum())
        assert acc == pytest.approx(correct[codes == code].mean())
    # A Levels-style file with string labels takes the same path.
    labels = np.array([LEVELS[c] for c in codes])
    res_str = accuracy_by_level(emb, t, labels)
    assert res_str.keys() == {LEVELS[c] for c in np.unique(codes)}
    for k, v in res_str.items():
        assert v == pytest.approx(res[k])
    with pytest.raises(ValueError, match="entries"):
        accuracy_by_level(emb, t, codes[:-1])


def test_levels_on_bundled_things_partition_all_triplets():
    from fastalign.datasets.things import load_things

    d = load_things()
    t = d.triplets["test_10_ID_smallsample"]
    codes = triplet_levels(t, d.categories)
    counts = torch.bincount(codes, minlength=len(LEVELS))
    assert int(counts.sum()) == len(t) and int(counts[LEVELS.index("unlabelled")]) == 0
    assert all(int(counts[LEVELS.index(k)]) > 0 for k in ("fine", "class_boundary", "coarse"))


# --------------------------------------------------------------- uncertainty


def test_aggregate_hand_built_repeats():
    t = np.array([
        [0, 1, 2],  # odd 2
        [1, 0, 2],  # odd 2 again, other order
        [2, 1, 0],  # odd 0
        [5, 4, 3],  # odd 3 (single response)
        [2, 0, 1],  # odd 1
    ])
    agg = aggregate_triplets(t)
    rows = agg.triplets.tolist()
    assert sorted(rows) == [[0, 1, 2], [3, 4, 5]]
    i = rows.index([0, 1, 2])
    # pair order of sorted (0, 1, 2): [s01, s02, s12] = odd 2, odd 1, odd 0
    assert agg.counts[i].tolist() == [2, 1, 1]
    assert agg.counts[rows.index([3, 4, 5])].tolist() == [0, 0, 1]
    assert torch.allclose(agg.distribution[i], torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64))
    # the same responses given through odd= positions
    agg2 = aggregate_triplets(np.array([[2, 0, 1], [0, 2, 1], [1, 2, 0]]), odd=np.array([0, 2, 2]))
    assert agg2.counts.tolist() == [[1, 1, 1]]
    with pytest.raises(ValueError, match="repeats an object"):
        aggregate_triplets(np.array([[0, 0, 1]]))


def test_human_uncertainty_vs_numpy():
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(12, 4))
    sets = np.stack([rng.choice(12, 3, replace=False) for _ in range(40)])
    rows = []
    for s in sets:
        for _ in range(int(rng.integers(1, 6))):
            rows.append(rng.permutation(s))
    t = np.array(rows)
    temperature = 0.7
    out = human_uncertainty(emb, t, temperature=temperature)
    # independent numpy reference with Python dict grouping
    groups = {}
    for r in t:
        groups.setdefault(tuple(sorted(r)), []).append(r[2])
    keys = [k for k, v in groups.items() if len(v) >= 2]
    ceil, kl, hm, hh, maj_hits, maj_n = [], [], [], [], 0, 0
    for k in keys:
        a, b, c = k
        cnt = np.array([groups[k].count(c), groups[k].count(b), groups[k].count(a)], float)  # pair order
        p = cnt / cnt.sum()
        q = probs_np(emb, np.array([k]), temperature)[0]
        ceil.append(cnt.max() / cnt.sum())
        kl.append(sum(pi * np.log(pi / qi) for pi, qi in zip(p, q) if pi > 0))
        hh.append(st.entropy(p))
        hm.append(st.entropy(q))
        if (cnt == cnt.max()).sum() == 1:
            maj_n += 1
            s = sims_np(emb, np.array([k]))[0]
            j = int(cnt.argmax())
            maj_hits += int(s[j] > np.delete(s, j).max())
    assert out["n_sets"] == len(keys)
    assert out["noise_ceiling"] == pytest.approx(np.mean(ceil))
    assert out["kl_human_model"] == pytest.approx(np.mean(kl), rel=1e-6)
    assert out["n_majority"] == maj_n
    assert out["model_accuracy_vs_majority"] == pytest.approx(maj_hits / maj_n)
    assert out["entropy_spearman"] == pytest.approx(st.spearmanr(hm, hh)[0], abs=1e-6)
    assert out["human_entropy"] == pytest.approx(np.mean(hh))


def test_leave_one_out_ceiling_hand_built():
    # counts [2, 1, 1]: the two pair-0 responses see others [1, 1, 1] (3-way tie, 1/3 each);
    # the other two see a pair-0 majority they did not choose: (2/3) / 4 = 1/6.
    # counts [2, 0, 0]: each response matches the other: 1.  [1, 1, 0]: never: 0.
    t = np.array([[0, 1, 2], [0, 1, 2], [0, 2, 1], [1, 2, 0],
                  [3, 4, 5], [3, 4, 5],
                  [6, 7, 8], [6, 8, 7]])
    emb = np.random.default_rng(0).normal(size=(9, 2))
    out = human_uncertainty(emb, t)
    assert out["n_sets"] == 3
    assert out["noise_ceiling_loo"] == pytest.approx((1 / 6 + 1 + 0) / 3)
    assert out["noise_ceiling"] == pytest.approx((2 / 4 + 1 + 1 / 2) / 3)


def test_human_uncertainty_without_repeats():
    emb, t = random_problem(b=20)
    out = human_uncertainty(emb, t)
    assert out["n_sets"] == 0 and out["noise_ceiling"] is None
    with pytest.raises(ValueError, match="min_repeats"):
        human_uncertainty(emb, t, min_repeats=1)


# --------------------------------------------------------------- calibration


def ece_loop(q, choice, n_bins):
    """Plain-loop ECE: equal-width bins (lo, hi] over max prob, first bin closed."""
    conf = q.max(1)
    correct = np.array([q[i, c] > np.delete(q[i], c).max() for i, c in enumerate(choice)], float)
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        m = (conf > lo) & (conf <= hi) if b else (conf <= hi)
        if m.any():
            total += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return total


def test_calibration_metrics_vs_numpy():
    rng = np.random.default_rng(3)
    q = rng.dirichlet([1.0, 1.0, 1.0], size=500)
    choice = rng.integers(0, 3, 500)
    assert nll(q, choice) == pytest.approx(-np.mean(np.log(q[np.arange(500), choice])))
    assert mean_entropy(q) == pytest.approx(np.mean(st.entropy(q, axis=1)))
    for bins in (1, 10, 15):
        assert expected_calibration_error(q, choice, bins) == pytest.approx(ece_loop(q, choice, bins), abs=1e-12)
    rel = reliability(q, choice, 15)
    assert sum(rel.count) == 500 and len(rel.edges) == 16
    # soft targets: NLL is the cross-entropy
    p = rng.dirichlet([2.0, 2.0, 2.0], size=500)
    assert nll(q, p) == pytest.approx(-np.mean((p * np.log(q)).sum(1)))
    with pytest.raises(ValueError, match="pair indices"):
        nll(q, np.full(500, 3))
    with pytest.raises(ValueError, match="n_bins"):
        reliability(q, choice, 0)


def test_triplet_calibration_uses_model_probs():
    emb, t = random_problem(seed=4)
    q = probs_np(emb, t, temperature=2.0)
    got = triplet_calibration(emb, t, temperature=2.0)
    assert got["nll"] == pytest.approx(-np.mean(np.log(q[:, 0])), rel=1e-6)
    assert got["ece"] == pytest.approx(ece_loop(q, np.zeros(len(t), int), 15), abs=1e-6)
    assert got["n_bins"] == 15


def test_plot_reliability_writes_png(tmp_path):
    rng = np.random.default_rng(5)
    q = rng.dirichlet([1.0, 1.0, 1.0], size=200)
    c = rng.integers(0, 3, 200)
    path = plot_reliability(reliability(q, c), reliability(q ** 2 / (q ** 2).sum(1, keepdims=True), c),
                            tmp_path / "rel.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name != "rel.png"]  # no temp file left
