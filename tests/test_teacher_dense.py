"""Dense soft targets and the dense teacher fit: labels, sampling, recovery, grid extension, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from fastalign.cli.main import main
from fastalign.common.category_levels import CLASS_BOUNDARY, COARSE, FINE, triplet_levels
from fastalign.ops import triplet_distill_loss
from fastalign.teacher import (
    DenseOptions,
    PairKL,
    dense_targets,
    embedding_targets,
    fit_dense,
    next_lambda,
    pair_kl,
    sample_triplets,
)
from fastalign.teacher import dense_fit as dense_fit_module
from fastalign.teacher.dense import max_triplets, set_keys


def _problem(n=50, d=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    a = rng.standard_normal((d, d)) * 0.6
    return x, a, x @ a


def test_labels_equal_a_float64_recomputation():
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((30, 5)) * 2
    trip, _ = sample_triplets(30, 500, seed=3)
    for temp in (1.0, 0.37):
        got = embedding_targets(emb, trip, temperature=temp)
        for row, p in zip(trip, got):
            i, j, k = (emb[v].astype(np.float64) for v in row)
            s = np.array([i @ j, i @ k, j @ k]) / temp
            want = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
            np.testing.assert_allclose(p, want, rtol=1e-12, atol=1e-15)
    assert got.dtype == np.float64


def test_sampled_triplets_are_distinct_reproducible_and_skip_excluded_sets():
    n = 40
    held = np.array([[0, 1, 2], [5, 4, 3], [9, 7, 8]])
    a, counts = sample_triplets(n, 3000, seed=5, exclude=held)
    b, _ = sample_triplets(n, 3000, seed=5, exclude=held)
    c, _ = sample_triplets(n, 3000, seed=6, exclude=held)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert counts == {"uniform": 3000}
    assert ((a[:, 0] != a[:, 1]) & (a[:, 0] != a[:, 2]) & (a[:, 1] != a[:, 2])).all()
    keys = set_keys(a, n)
    assert len(np.unique(keys)) == len(a)
    assert not np.isin(keys, set_keys(held, n)).any()
    # Asking for every set there is (minus the excluded) enumerates them all.
    full, _ = sample_triplets(12, max_triplets(12) - 1, seed=0, exclude=np.array([[0, 1, 2]]))
    assert len(np.unique(set_keys(full, 12))) == max_triplets(12) - 1


def test_strata_follow_the_proportions():
    rng = np.random.default_rng(2)
    n, k = 90, 6
    cats = np.zeros((n, k), dtype=np.uint8)
    cats[np.arange(n), rng.integers(0, k, n)] = 1
    cats[:10] = 0  # some objects in no category
    trip, counts = sample_triplets(n, 2000, seed=1, categories=cats, proportions=(0.5, 0.2, 0.3))
    levels = triplet_levels(trip, cats).numpy()
    assert counts == {"fine": 1000, "class_boundary": 400, "coarse": 600}
    assert [(levels == lv).sum() for lv in (FINE, CLASS_BOUNDARY, COARSE)] == [1000, 400, 600]
    again, _ = sample_triplets(n, 2000, seed=1, categories=cats, proportions=(0.5, 0.2, 0.3))
    np.testing.assert_array_equal(trip, again)


def test_pair_kl_equals_the_fused_kl():
    x, _, emb = _problem(n=25)
    trip, _ = sample_triplets(25, 800, seed=0)
    p = torch.from_numpy(embedding_targets(emb, trip))
    t = torch.from_numpy(trip)
    z1 = torch.tensor(x, requires_grad=True)
    z2 = torch.tensor(x, requires_grad=True)
    a = pair_kl(z1, PairKL.build(t, p, 25, torch.float64))
    b = triplet_distill_loss(z2, t, target_probs=p, divergence="kl")
    a.backward()
    b.backward()
    assert math.isclose(float(a.detach()), float(b.detach()), rel_tol=1e-10)
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-8, atol=1e-12)


def test_fit_recovers_a_known_linear_map():
    x, a, emb = _problem(n=60, d=6)
    targets = dense_targets(emb, 60, DenseOptions(num=15000, seed=1))
    rng = np.random.default_rng(0)
    human = np.stack([rng.permutation(60)[:3] for _ in range(400)])
    model, report = fit_dense(x, targets, human, lambdas=(1e-4,), max_extensions=0, max_iter=60,
                              patience=20, progress=False, bias=False)
    z = model.transform(x.astype(np.float32)).astype(np.float64)
    got, want = z @ z.T, emb @ emb.T
    off = ~np.eye(60, dtype=bool)
    assert np.corrcoef(got[off], want[off])[0, 1] > 0.995
    assert report.candidates[0].val_kl < 0.01
    assert report.loss == "kl (pairs)" and report.calibration["n"] == 40


def _fake_score(best_log10):
    """A stand-in for one fit: human NLL a parabola in log10(lambda) with its minimum at ``best_log10``."""
    def score(lam, data, fit_cfg, start, human_val, bar, extension):
        nll = 1.0 + (math.log10(lam) - best_log10) ** 2 if lam > 0 else 1.0 + (12 + best_log10) ** 2
        cand = dense_fit_module.DenseCandidate(lam, 0.1, nll, 0.5, 1, 0.0, extension)
        return cand, start.stats
    return score


@pytest.mark.parametrize("best, grid, extended", [
    (-3.0, (1e-4, 1e-3, 1e-2), []),                      # inside: no extension
    (-6.0, (1e-4, 1e-3, 1e-2), [1e-5, 1e-6]),            # below: twice down (the cap)
    (-1.7, (1e-4, 1e-3, 1e-2), [1e-1]),                  # above: once up, then bracketed
    (-1.3, (1e-4, 1e-3, 1e-2), [1e-1, 1.0]),             # the new edge is best: up again
    (-4.3, (1e-4, 1e-3, 1e-2), [1e-5]),                  # one step down brackets it
])
def test_grid_extends_only_at_an_edge(monkeypatch, best, grid, extended):
    monkeypatch.setattr(dense_fit_module, "_score", _fake_score(best))
    x, _, emb = _problem(n=20)
    targets = dense_targets(emb, 20, DenseOptions(num=200, seed=0))
    human = np.stack([np.random.default_rng(i).permutation(20)[:3] for i in range(50)])
    _, report = fit_dense(x, targets, human, lambdas=grid, max_extensions=2, progress=False)
    got = [c.lam for c in report.candidates if c.extension]
    assert sorted(got) == pytest.approx(sorted(extended))
    assert len(report.extensions) == len(extended)
    assert report.bracketed == (best != -6.0)


def test_next_lambda():
    assert next_lambda([1e-3, 1e-2, 1e-1], 1, 10) is None
    assert next_lambda([1e-3, 1e-2, 1e-1], 0, 10) == pytest.approx(1e-4)
    assert next_lambda([1e-3, 1e-2, 1e-1], 2, 10) == pytest.approx(1.0)
    assert next_lambda([0.0, 1e-2], 0, 10) is None  # nothing below lambda = 0


def test_bad_input_one_line_errors():
    x, _, emb = _problem(n=20)
    with pytest.raises(ValueError, match="has 19 rows but the features have 20"):
        dense_targets(emb[:19], 20, DenseOptions(num=10))
    bad = emb.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        dense_targets(bad, 20, DenseOptions(num=10))
    for num in (0, max_triplets(20) + 1):
        with pytest.raises(ValueError, match=r"--soft-triplets must be in \[1, 1140\]"):
            dense_targets(emb, 20, DenseOptions(num=num))
    with pytest.raises(ValueError, match=r"must have shape \(20, K\)"):
        dense_targets(emb, 20, DenseOptions(num=10), strata=np.ones((19, 3)))
    with pytest.raises(ValueError, match="not a known source"):
        dense_targets("nonsense-source", 20, DenseOptions(num=10))


def _cli_data(tmp_path, n=30):
    x, _, emb = _problem(n=n)
    rng = np.random.default_rng(0)
    trip = np.stack([rng.permutation(n)[:3] for _ in range(300)])
    np.save(tmp_path / "x.npy", x.astype(np.float32))
    np.save(tmp_path / "emb.npy", emb)
    np.savetxt(tmp_path / "t.txt", trip, fmt="%d")
    return x, emb


@pytest.mark.parametrize("extra, message", [
    (["--soft-targets", "EMB", "--soft-triplets", "0"], "--soft-triplets must be in"),
    (["--soft-targets", "EMB", "--soft-triplets", "999999"], "--soft-triplets must be in"),
    (["--soft-targets", "SHORT", "--soft-triplets", "100"], "rows but the features have 30"),
    (["--soft-targets", "what-is-this", "--soft-triplets", "100"], "not a known source"),
    (["--soft-targets", "EMB", "--soft-triplets", "100", "--soft-strata", "CATS"], "category matrix"),
])
def test_cli_bad_input_writes_nothing(tmp_path, capsys, extra, message):
    _, emb = _cli_data(tmp_path)
    np.save(tmp_path / "short.npy", emb[:29])
    np.save(tmp_path / "cats.npy", np.ones((29, 2), dtype=np.uint8))
    subs = {"EMB": str(tmp_path / "emb.npy"), "SHORT": str(tmp_path / "short.npy"), "CATS": str(tmp_path / "cats.npy")}
    out = tmp_path / "out"
    code = main(["fit-teacher", "--features", str(tmp_path / "x.npy"), "--triplets", str(tmp_path / "t.txt"),
                 "--quiet", "--out", str(out), *[subs.get(a, a) for a in extra]])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_dense_fit_reports_selection_and_calibration(tmp_path, capsys):
    _cli_data(tmp_path)
    out = tmp_path / "out"
    code = main(["fit-teacher", "--features", str(tmp_path / "x.npy"), "--triplets", str(tmp_path / "t.txt"),
                 "--soft-targets", str(tmp_path / "emb.npy"), "--soft-triplets", "3000", "--lambdas", "0.1",
                 "--dense-lambdas", "1e-3", "1e-2", "--max-iter", "20", "--calibrate", "--quiet", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    fit = report["soft_targets"]["fit"]
    assert "NLL" in fit["selection"] and fit["calibration"]["temperature"] > 0
    assert report["soft_targets"]["info"]["num"] == 3000
    assert "teacher (soft targets)" in report["metrics"]
