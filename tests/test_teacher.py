"""fastalign.teacher: transform math, objective, splits, fitting, calibration, soft targets."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import fastalign
from fastalign.teacher import (
    AffineTransform,
    FitConfig,
    calibrate_temperature,
    choice_distributions,
    expected_calibration_error,
    fit_transform,
    kfold_splits,
    local_loss,
    mean_entropy,
    model_targets,
    regulariser,
    train_val_split,
    uncertainty_metrics,
)


def _rng(seed=0):
    return np.random.default_rng(seed)


def _random_triplets(n, k, rng):
    out = np.stack([rng.choice(n, 3, replace=False) for _ in range(k)])
    return out.astype(np.int64)


# ------------------------------------------------------------------ transform


@pytest.mark.parametrize("per_dim", [False, True])
@pytest.mark.parametrize("dim_out,bias", [(None, True), (3, False), (9, True)])
def test_affine_transform_matches_numpy(per_dim, dim_out, bias):
    rng = _rng(1)
    x = rng.standard_normal((20, 6)) * 2.0 + 0.5
    t = AffineTransform.from_features(x, per_dim=per_dim, dim_out=dim_out, bias=bias).double()
    d_out = dim_out or 6
    w = rng.standard_normal((6, d_out))
    b = rng.standard_normal(d_out)
    with torch.no_grad():
        t.weight.copy_(torch.from_numpy(w))
        if bias:
            t.bias.copy_(torch.from_numpy(b))
    if per_dim:
        mean, std = x.mean(0), x.std(0)
    else:
        mean, std = x.mean(), x.std()
    expected = ((x - mean) / std) @ w + (b if bias else 0.0)
    np.testing.assert_allclose(t(torch.from_numpy(x)).detach().numpy(), expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(t.transform(x), expected, rtol=1e-10, atol=1e-10)


def test_affine_transform_init_and_buffers():
    t = AffineTransform(4, 6)
    np.testing.assert_array_equal(t.weight.detach().numpy(), 1e-3 * np.eye(4, 6, dtype=np.float32))
    np.testing.assert_array_equal(t.bias.detach().numpy(), np.full(6, 1e-3, dtype=np.float32))
    assert AffineTransform(4, bias=False).bias is None
    names = dict(t.named_buffers())
    assert set(names) == {"mean", "std", "temperature", "temperature_calibrated"}
    assert names["temperature_calibrated"].dtype == torch.bool and not t.calibrated
    with pytest.raises(ValueError, match="std"):
        AffineTransform(4, std=0.0)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        AffineTransform(4, mean=np.zeros(3))
    with pytest.raises(ValueError, match="temperature"):
        t.set_temperature(-1.0)


def test_probs_use_calibrated_temperature():
    rng = _rng(2)
    x = torch.from_numpy(rng.standard_normal((10, 4)).astype(np.float32))
    trip = torch.from_numpy(_random_triplets(10, 7, rng))
    t = AffineTransform.from_features(x)
    with torch.no_grad():
        t.weight.copy_(torch.from_numpy(rng.standard_normal((4, 4)).astype(np.float32)))
    t.set_temperature(0.5)
    z = t(x).detach().double().numpy()
    tr = trip.numpy()
    s = np.stack([(z[tr[:, 0]] * z[tr[:, 1]]).sum(1), (z[tr[:, 0]] * z[tr[:, 2]]).sum(1),
                  (z[tr[:, 1]] * z[tr[:, 2]]).sum(1)], 1) / 0.5
    q = np.exp(s - s.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    np.testing.assert_allclose(t.probs(x, trip).detach().numpy(), q, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ objective


@pytest.mark.parametrize("shape", [(5, 5), (5, 3), (3, 5)])
def test_regularisers_match_numpy(shape):
    w = _rng(3).standard_normal(shape)
    k = min(shape)
    c = np.trace(w[:k, :k]) / k
    expected = ((w - c * np.eye(*shape)) ** 2).sum()
    got = regulariser(torch.from_numpy(w), "identity").item()
    assert got == pytest.approx(expected, rel=1e-12)
    assert regulariser(torch.from_numpy(w), "l2").item() == pytest.approx((w ** 2).sum(), rel=1e-12)
    assert regulariser(torch.from_numpy(3.0 * np.eye(4)), "identity").item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="reg must be"):
        regulariser(torch.from_numpy(w), "l1")


def test_local_loss_matches_numpy():
    rng = _rng(4)
    x = rng.standard_normal((7, 5))
    z = rng.standard_normal((7, 3))
    tau = 0.3

    def cos_offdiag(a):
        u = a / np.linalg.norm(a, axis=1, keepdims=True)
        s = u @ u.T / tau
        return np.stack([np.delete(s[i], i) for i in range(len(a))])

    def softmax(s):
        e = np.exp(s - s.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    p = softmax(cos_offdiag(x))
    logq = np.log(softmax(cos_offdiag(z)))
    expected = -(p * logq).sum(1).mean()
    got = local_loss(torch.from_numpy(x), torch.from_numpy(z), tau).item()
    assert got == pytest.approx(expected, rel=1e-10)


# ------------------------------------------------------------------ splits


def test_triplet_split_partitions():
    t = _random_triplets(30, 200, _rng(5))
    sp = train_val_split(t, 0.25, "triplet", seed=1)
    assert len(sp.val) == 50 and len(sp.train) == 150 and sp.dropped == 0
    assert np.intersect1d(sp.train, sp.val).size == 0
    assert sorted(np.concatenate([sp.train, sp.val]).tolist()) == list(range(200))


def test_object_split_is_object_disjoint():
    t = _random_triplets(40, 2000, _rng(6))
    sp = train_val_split(t, 0.3, "object", n_objects=40, seed=2)
    train_obj, val_obj = set(t[sp.train].ravel()), set(t[sp.val].ravel())
    assert len(sp.val) > 0 and len(sp.train) > 0
    assert not train_obj & val_obj
    assert len(sp.train) + len(sp.val) + sp.dropped == len(t)


@pytest.mark.parametrize("split", ["triplet", "object"])
def test_kfold_invariants(split):
    t = _random_triplets(30, 900, _rng(7))
    folds = kfold_splits(t, 3, split, n_objects=30, seed=0)
    assert len(folds) == 3
    all_val = np.concatenate([f.val for f in folds])
    assert len(np.unique(all_val)) == len(all_val)  # each triplet validates at most once
    for f in folds:
        assert np.intersect1d(f.train, f.val).size == 0
        if split == "object":
            # every kept triplet has all its objects in one fold
            assert not set(t[f.train].ravel()) & set(t[f.val].ravel())
        else:
            assert len(f.train) + len(f.val) == len(t)
    if split == "triplet":
        assert sorted(all_val.tolist()) == list(range(len(t)))
    with pytest.raises(ValueError, match="folds"):
        kfold_splits(t, 1)


# ------------------------------------------------------------------ fitting


def _planted_problem(n=60, d=8, k=1500, seed=0, noise=0.3):
    """Features whose human-like similarity is a hidden linear map of them."""
    rng = _rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    a = rng.standard_normal((d, d)) / math.sqrt(d)
    h = x @ a
    trip = _random_triplets(n, k, rng)
    s = np.stack([(h[trip[:, 0]] * h[trip[:, 1]]).sum(1), (h[trip[:, 0]] * h[trip[:, 2]]).sum(1),
                  (h[trip[:, 1]] * h[trip[:, 2]]).sum(1)], 1) * 3
    s += noise * rng.standard_normal(s.shape)
    best = s.argmax(1)  # most similar pair -> the odd one out is the remaining item
    order = np.array([[0, 1, 2], [0, 2, 1], [1, 2, 0]])[best]
    return x, np.take_along_axis(trip, order, axis=1)


def test_fit_improves_and_cv_picks_lowest_loss(tmp_path):
    x, trip = _planted_problem()
    train, test = trip[:1200], trip[1200:]
    cfg = FitConfig(lambdas=(1e-3, 1e-1, 30.0), folds=2, max_iter=60, patience=10, progress=False, dtype="float64")
    model, report = fit_transform(x, train, config=cfg)
    losses = [c.val_loss for c in report.candidates]
    assert report.chosen["lam"] == report.candidates[int(np.argmin(losses))].lam
    assert all(len(c.fold_val_losses) == 2 for c in report.candidates)
    xt, tt = torch.from_numpy(x).double(), torch.from_numpy(test)
    raw = fastalign.odd_one_out_accuracy(xt, tt)
    fitted = fastalign.odd_one_out_accuracy(model(xt), tt)
    assert fitted > raw + 0.05
    # The report is JSON-serialisable.
    json.dumps(report.to_dict())


def test_fit_with_val_triplets_soft_targets_and_local():
    x, trip = _planted_problem(k=800, seed=1)
    rng = _rng(1)
    soft = rng.dirichlet(np.ones(3), size=600)
    model, report = fit_transform(
        x, trip[:600], val_triplets=trip[600:], soft_targets=soft, lambdas=(0.1,),
        local_features=rng.standard_normal((50, 8)), alphas=(0.0, 0.5), taus=(0.5,),
        max_iter=20, progress=False,
    )
    assert report.loss == "kl" and report.split == "given" and report.n_val == 200
    assert [c.alpha for c in report.candidates] == [0.0, 0.5]
    assert math.isfinite(report.final["val_loss"])


def test_fit_adam_and_object_split_run():
    x, trip = _planted_problem(k=900, seed=2)
    _, rep = fit_transform(x, trip, lambdas=(0.1,), optimizer="adam", lr=1e-2, batch_size=256,
                           max_iter=3, progress=False)
    assert rep.optimizer == "adam" and rep.final["iterations"] <= 3
    _, rep = fit_transform(x, trip, lambdas=(0.1,), split="object", val_fraction=0.3, max_iter=10, progress=False)
    assert rep.n_dropped > 0 and rep.split == "object"


def test_fit_bad_inputs():
    x, trip = _planted_problem(k=100)
    bad = x.copy()
    bad[7, 2] = np.nan
    with pytest.raises(ValueError, match="row 7"):
        fit_transform(bad, trip, progress=False)
    over = trip.copy()
    over[5] = [1, 2, 60]
    with pytest.raises(ValueError, match="row 5 .* indexes past the 60 feature rows"):
        fit_transform(x, over, progress=False)
    with pytest.raises(ValueError, match="lambda"):
        fit_transform(x, trip, lambdas=(-1.0,), progress=False)
    with pytest.raises(ValueError, match="soft_targets must have shape"):
        fit_transform(x, trip, soft_targets=np.ones((3, 3)) / 3, progress=False)
    with pytest.raises(TypeError):
        fit_transform(x, trip, no_such_option=1)


def test_real_data_fit_beats_raw_features():
    """A small fit on bundled CLIP features raises held-out accuracy over raw cosine."""
    from fastalign.datasets.things import load_things

    data = load_things()
    x = np.array(data.features["clip"])
    trip = data.triplets["test_10"]
    perm = _rng(0).permutation(len(trip))
    train, val, test = trip[perm[:8000]], trip[perm[8000:10000]], trip[perm[10000:16000]]
    model, report = fit_transform(x, train, val_triplets=val, lambdas=(1.0,), max_iter=25, progress=False)
    xt, tt = torch.from_numpy(x), torch.from_numpy(test)
    raw = fastalign.odd_one_out_accuracy(xt, tt, similarity="cosine")
    with torch.no_grad():
        fitted = fastalign.odd_one_out_accuracy(model(xt), tt)
    print(f"raw {raw:.4f} fitted {fitted:.4f}")
    assert fitted > raw + 0.03, (raw, fitted, report.final)


# ------------------------------------------------------------------ calibration


def test_ece_and_entropy_match_numpy():
    rng = _rng(8)
    p = rng.dirichlet(np.ones(3) * 0.7, size=500)
    choice = rng.integers(0, 3, size=500)
    bins = 10
    conf, pred = p.max(1), p.argmax(1)
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    ece = sum(abs((pred[idx == b] == choice[idx == b]).sum() - conf[idx == b].sum()) for b in range(bins)) / 500
    got = expected_calibration_error(torch.from_numpy(p), torch.from_numpy(choice), n_bins=bins)
    assert got == pytest.approx(ece, rel=1e-10)
    assert mean_entropy(torch.from_numpy(p)) == pytest.approx(-(p * np.log(p)).sum(1).mean(), rel=1e-10)


def test_calibration_finds_nll_minimum_and_never_hurts():
    rng = _rng(9)
    x, trip = _planted_problem(k=2000, seed=3, noise=2.0)
    # Sharpened features: over-confident, so the fitted T must be > 1.
    z = torch.from_numpy(x).double() * 3
    t = torch.from_numpy(trip)
    res = calibrate_temperature(z, t)
    assert res.temperature > 1 and res.nll_after < res.nll_before
    grid = np.exp(np.linspace(math.log(0.05), math.log(50), 401))
    nll = [float(fastalign.triplet_loss(z, t, temperature=g)) for g in grid]
    assert res.nll_after <= min(nll) + 1e-6
    assert res.temperature == pytest.approx(grid[int(np.argmin(nll))], rel=0.02)
    # Random choices on random features: the calibration never raises NLL at T = 1.
    rand = torch.from_numpy(_random_triplets(60, 300, rng))
    res2 = calibrate_temperature(z, rand)
    assert res2.nll_after <= res2.nll_before
    m = uncertainty_metrics(z, t, temperature=res.temperature)
    assert m.nll == pytest.approx(res.nll_after, rel=1e-9) and 0 <= m.ece <= 1 and m.n == 2000
    with pytest.raises(ValueError, match="at least one"):
        calibrate_temperature(z, t[:0])


# ------------------------------------------------------------------ soft targets


def test_choice_distributions_aggregates_repeats():
    trip = np.array([[0, 1, 2], [1, 0, 2], [2, 1, 0], [0, 2, 1], [3, 4, 5]])
    uniq, probs, counts = choice_distributions(trip)
    np.testing.assert_array_equal(uniq, [[0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(counts, [4, 1])
    # {0,1,2}: odd 2 twice (pair 01 -> col 0), odd 0 once (col 2), odd 1 once (col 1)
    np.testing.assert_allclose(probs, [[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]])


def test_model_targets_are_softmax_of_dots():
    rng = _rng(10)
    e = rng.standard_normal((12, 4)).astype(np.float32)
    trip = _random_triplets(12, 9, rng)
    p = model_targets(e, trip, temperature=2.0)
    s = np.stack([(e[trip[:, 0]] * e[trip[:, 1]]).sum(1), (e[trip[:, 0]] * e[trip[:, 2]]).sum(1),
                  (e[trip[:, 1]] * e[trip[:, 2]]).sum(1)], 1).astype(np.float64) / 2.0
    q = np.exp(s - s.max(1, keepdims=True))
    np.testing.assert_allclose(p, q / q.sum(1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_scale_init_finds_the_best_scaled_identity():
    """init_scale='auto' starts from the c I that minimises the training loss over c."""
    from fastalign.teacher.inputs import FitStart
    from fastalign.teacher.problems import Problem
    from fastalign.teacher.train import scale_init

    x, trip = _planted_problem(k=500, seed=4)
    cfg = FitConfig(progress=False)
    xt = torch.from_numpy(x)
    stats = AffineTransform.from_features(x)
    data = Problem(xt, torch.from_numpy(trip), torch.from_numpy(trip[:10]), None, None, None)
    t = FitStart(stats).new_transform(xt, cfg)
    scale_init(t, data, cfg)
    w = t.weight.detach().numpy()
    c = float(w[0, 0])
    np.testing.assert_allclose(w, c * np.eye(8), rtol=1e-6, atol=1e-9)  # still a scaled identity
    xs = (x - x.mean()) / x.std()
    grid = np.exp(np.linspace(np.log(1e-3), np.log(5), 300))
    losses = [float(fastalign.triplet_loss(torch.from_numpy(xs * g), torch.from_numpy(trip))) for g in grid]
    best = grid[int(np.argmin(losses))]
    assert c == pytest.approx(best, rel=0.1)
    with pytest.raises(ValueError, match="init_scale"):
        fit_transform(x, trip, init_scale="bogus", progress=False)


def test_uncertainty_accuracy_ignores_temperature_and_ties():
    z = torch.zeros(5, 3)  # every similarity ties
    t = torch.tensor([[0, 1, 2], [1, 2, 3], [2, 3, 4]])
    assert uncertainty_metrics(z, t).accuracy == 0.0
    assert uncertainty_metrics(z, t, temperature=0.01).accuracy == 0.0
    assert uncertainty_metrics(z, t).nll == pytest.approx(math.log(3), rel=1e-6)


# ------------------------------------------------------------------ shared pieces


def test_one_calibration_and_choice_definition():
    import fastalign.common.calibration as cc
    import fastalign.common.choices as ch
    import fastalign.teacher as teacher

    assert teacher.expected_calibration_error is cc.expected_calibration_error
    assert teacher.mean_entropy is cc.mean_entropy
    assert teacher.choice_distributions is ch.choice_distributions


def test_early_stopper_keeps_best_state_and_counts_patience():
    from fastalign.teacher.train import EarlyStopper

    model = torch.nn.Linear(2, 1)
    stop = EarlyStopper(model, patience=2, min_delta=0.01)
    stop.record(1.0, 2.0, iteration=1)
    best = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    stop.record(0.995, 1.5, iteration=2)  # not better by more than min_delta
    assert not stop.exhausted and stop.best_evaluation == 1
    stop.record(1.2, 1.4, iteration=3)
    assert stop.exhausted and stop.evaluations == 3
    stop.restore()
    assert torch.equal(model.weight, best["weight"])
    assert (stop.best_loss, stop.best_train_loss, stop.best_iteration) == (1.0, 2.0, 1)


def test_soft_targets_sources():
    from fastalign.datasets.things import load_things
    from fastalign.teacher import soft_targets

    trip = np.array(load_things().triplets["test_10"][:50])
    bare = soft_targets("spose49", 1854, trip[:40], trip[40:])
    named = soft_targets("things:spose49", 1854, trip[:40], trip[40:])
    assert bare.source == named.source == "spose49"
    np.testing.assert_array_equal(bare.train_targets, named.train_targets)
    emb = soft_targets("things:word2vec", 1854, trip[:40], trip[40:])
    assert emb.source == "embedding:things:word2vec" and emb.val_targets.shape == (10, 3)
    with pytest.raises(ValueError, match="THINGS objects"):
        soft_targets("spose49", 10, trip[:4] % 10, trip[4:8] % 10)
    with pytest.raises(FileNotFoundError, match="repeats"):
        soft_targets("no/such/file.npy", 1854, trip, trip)


def test_plot_lambda_search(tmp_path):
    pytest.importorskip("matplotlib")
    from fastalign.teacher import plot_lambda_search

    x, trip = _planted_problem(k=400, seed=5)
    _, report = fit_transform(x, trip, lambdas=(0.0, 0.01, 1.0), folds=2, max_iter=5, progress=False)
    path = plot_lambda_search(report.to_dict(), tmp_path / "search.png")
    assert path == tmp_path / "search.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_lambda_search({"candidates": [], "chosen": {"lam": 1.0}}, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_state_dict_keeps_calibration_and_refuses_bad_buffers():
    t = AffineTransform(3)
    t.set_temperature(0.5)  # calibrated
    u = AffineTransform(3)
    u.load_state_dict(t.state_dict())
    assert u.calibrated and float(u.temperature) == 0.5
    # a state dict from before `calibrated` was saved: a fitted temperature differs from 1
    old = {k: v for k, v in t.state_dict().items() if k != "temperature_calibrated"}
    v = AffineTransform(3)
    v.load_state_dict(old)
    assert v.calibrated
    for name, value in (("std", 0.0), ("std", float("nan")), ("mean", float("inf")), ("temperature", -1.0)):
        bad = dict(old)
        bad[name] = torch.tensor(value, dtype=torch.float64)
        w = AffineTransform(3)
        with pytest.raises(ValueError, match=f"state dict's {name} must be"):
            w.load_state_dict(bad)
        assert float(w.std) == 1.0 and float(w.temperature) == 1.0  # nothing half-loaded
