"""The few-shot logistic-regression probe measures what scikit-learn's LogisticRegression measures.

The probe fits every episode by ``fastalign.eval.logreg`` (batched, preconditioned L-BFGS in
kernel coordinates). Here the same episodes of the bundled THINGS CLIP features are fitted by
scikit-learn (lbfgs to tol 1e-8, ``C = 1 / (n l2)``: the same objective) and scored
the same way.
"""

import warnings

import numpy as np
import pytest
import torch

from fastalign.datasets.things import load_things
from fastalign.eval import FewShotOptions, few_shot_accuracy, few_shot_probes, fit_logreg, single_category_labels
from fastalign.eval.few_shot import _Episodes, _labelled
from fastalign.eval.logreg import U_FALLBACK, _Problem, fit_kernel_logreg

sklearn = pytest.importorskip("sklearn.linear_model")
threadpoolctl = pytest.importorskip("threadpoolctl")  # a dependency of scikit-learn


@pytest.fixture(scope="module")
def clip():
    d = load_things()
    return np.array(d.features["clip"]), single_category_labels(d.categories)


def _sklearn_fit(xs, ys, l2):
    # One BLAS thread: next to torch's OpenMP threads, OpenBLAS's own ones make a fit 15x slower here.
    with warnings.catch_warnings(), threadpoolctl.threadpool_limits(1):
        warnings.simplefilter("ignore")  # "more classes than half the samples" at one shot
        return sklearn.LogisticRegression(C=1.0 / (len(ys) * l2), tol=1e-8, max_iter=20000).fit(xs, ys)


@pytest.fixture(scope="module")
def episodes(clip):
    """Per shot count: the probe's result on 4 episodes, the episodes, and scikit-learn's fit of each
    (a fraction of a second each)."""
    features, labels = clip
    out = {}
    for k in (1, 5, 10):
        opts = FewShotOptions(shots=(k,), episodes=4, episode_batch=4, probe="logreg")
        got = few_shot_accuracy(features, labels, options=opts)[k]
        x, y, n_classes = _labelled(features, labels, opts)
        ep = _Episodes(x, y, n_classes, k, opts)
        support = next(ep.supports())
        xs = ep.xs.double().numpy()
        models = [_sklearn_fit(xs[s], ep.support_y.numpy(), opts.l2) for s in support.numpy()]
        out[k] = (got, ep, support, models, opts)
    return out


@pytest.mark.parametrize("k", [1, 5, 10])
def test_probe_accuracy_equals_sklearn_on_the_same_episodes(episodes, k):
    got, ep, support, models, _ = episodes[k]
    xs = ep.xs.double().numpy()
    ref = ep.accuracy(support, torch.stack([torch.from_numpy(m.predict(xs)) for m in models]))
    # Identical predictions but for queries within rounding of a tie between two classes.
    assert got["mean"] == pytest.approx(float(ref.mean()), abs=2e-3)
    assert got["n_classes"] == ep.c


def test_fit_logreg_reaches_the_optimum_on_real_supports(episodes):
    """Each problem of a batch is solved to its own optimum: W as scikit-learn's, to 1e-3."""
    _, ep, support, models, opts = episodes[10]
    xsup = ep.xs[support].double()
    w, b = fit_logreg(xsup, ep.support_y, ep.c, l2=opts.l2, tol=1e-8, max_iter=300)
    for e, model in enumerate(models):
        ref_w = model.coef_.T
        assert np.abs(w[e].numpy() - ref_w).max() < 1e-3 * np.abs(ref_w).max()
        # Biases are defined up to a shared constant (the softmax ignores it).
        ours, theirs = b[e].numpy(), model.intercept_
        np.testing.assert_allclose(ours - ours.mean(), theirs - theirs.mean(), atol=1e-3 * np.abs(theirs).max())


def test_kernel_coordinates_and_centring_leave_the_minimiser_alone():
    """``fit_kernel_logreg`` on X X^T gives the W that minimises the objective in feature space."""
    rng = np.random.default_rng(3)
    e, n, d, c, l2 = 3, 18, 30, 4, 1e-2
    x = torch.tensor(rng.normal(size=(e, n, d)) + 2.0)  # a large common mean: centring matters
    y = torch.arange(n) % c
    a, b, iters = fit_kernel_logreg(x @ x.transpose(1, 2), y, c, l2, max_iter=500, tol=1e-11)
    w = x.transpose(1, 2) @ a
    # The minimiser's gradient vanishes: X^T (P - Y) / n + l2 W = 0 and sum_i (P - Y) = 0.
    p = torch.softmax(x @ w + b[:, None, :], 2)
    r = (p - torch.nn.functional.one_hot(y, c).double()) / n
    assert (x.transpose(1, 2) @ r + l2 * w).abs().max() < 1e-8
    assert r.sum(1).abs().max() < 1e-8
    assert bool((iters < 500).all())


def test_both_probes_share_the_episodes_and_match_one_call_each(clip):
    features, labels = clip
    opts = FewShotOptions(shots=(1, 5), episodes=4)
    both = few_shot_probes(features, labels, ("centroid", "logreg"), opts)
    for probe in ("centroid", "logreg"):
        one = few_shot_accuracy(features, labels, options=FewShotOptions(shots=(1, 5), episodes=4, probe=probe))
        for k in (1, 5):
            assert both[probe][k]["mean"] == pytest.approx(one[k]["mean"], abs=1e-12)
            assert both[probe][k]["probe"] == probe


def test_probe_options_are_checked():
    with pytest.raises(ValueError, match="tol"):
        FewShotOptions(tol=0.0).check()
    with pytest.raises(ValueError, match="probe"):
        few_shot_probes(np.ones((4, 2)), np.array([0, 0, 1, 1]), ("knn",))


def _feature_space_gradient(x, y, n_classes, w, b, l2):
    """(E,) norm of the objective's gradient in (W, b), in float64, relative to its norm at zero."""
    x, w, b = x.double(), w.double(), b.double()
    onehot = torch.nn.functional.one_hot(y.expand(x.shape[0], x.shape[1]), n_classes).double()

    def norm(w, b):
        r = (torch.softmax(x @ w + b[:, None, :], 2) - onehot) / x.shape[1]
        return ((x.transpose(1, 2) @ r + l2 * w).square().sum((1, 2)) + r.sum(1).square().sum(1)).sqrt()

    return norm(w, b) / norm(torch.zeros_like(w), torch.zeros_like(b))


def _rank_deficient_batch(shared_y):
    """4 problems of 24 rows in 5 features (Gram rank <= 5), a duplicated row, a large common mean and
    row scales from 0.3 to 10 (so the problems stop at different iterations)."""
    rng = np.random.default_rng(11)
    e, n, d, c = 4, 24, 5, 3
    x = rng.normal(size=(e, n, d)) * np.array([0.3, 1.0, 3.0, 10.0])[:, None, None] + 1.5
    x[:, 1] = x[:, 0]
    x = torch.tensor(x)
    y = torch.arange(n) % c if shared_y else torch.tensor(np.stack([rng.permutation(n) % c for _ in range(e)]))
    return x, y, c


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shared_y", [True, False])
def test_rank_deficient_batches_reach_each_problems_optimum(dtype, shared_y):
    x, y, c = _rank_deficient_batch(shared_y)
    l2 = 1e-2
    exact = torch.float64 == dtype
    xd = x.to(dtype)
    a, b, iters = fit_kernel_logreg(xd @ xd.transpose(1, 2), y, c, l2, max_iter=1000, tol=1e-10 if exact else 1e-5)
    assert a.dtype == b.dtype == dtype and bool(torch.isfinite(a).all() and torch.isfinite(b).all())
    assert len(set(iters.tolist())) > 1  # each problem stopped on its own test
    # Both fits ran: the metric's for the small row scales, the eigen-preconditioned one for the large.
    assert set(_Problem(xd @ xd.transpose(1, 2), torch.zeros(1, 24, c, dtype=dtype), l2).u_max.gt(U_FALLBACK).tolist()) == {
        False, True}
    w = xd.transpose(1, 2) @ a
    if exact:
        assert float(_feature_space_gradient(x, y, c, w, b, l2).max()) < 1e-8
    else:
        # float32 to 1e-5: the float64 optimum's W, to 1e-3 of its size.
        a64, b64, _ = fit_kernel_logreg(x @ x.transpose(1, 2), y, c, l2, max_iter=1000, tol=1e-12)
        w64 = x.transpose(1, 2) @ a64
        assert float((w.double() - w64).abs().amax((1, 2)).div(w64.abs().amax((1, 2))).max()) < 1e-3
        assert float(_feature_space_gradient(x, y, c, w, b, l2).max()) < 1e-4


def test_a_problem_is_solved_alike_alone_and_in_a_batch():
    x, y, c = _rank_deficient_batch(shared_y=False)
    k = x @ x.transpose(1, 2)
    a, b, iters = fit_kernel_logreg(k, y, c, 1e-2, max_iter=1000, tol=1e-8)
    for e in range(x.shape[0]):
        a1, b1, it1 = fit_kernel_logreg(k[e:e + 1], y[e:e + 1], c, 1e-2, max_iter=1000, tol=1e-8)
        assert int(it1[0]) == int(iters[e])
        torch.testing.assert_close(x[e].T @ a1[0], x[e].T @ a[e], rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(b1[0], b[e], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_example_per_class(dtype):
    """k = 1: n = C rows, one of each class."""
    rng = np.random.default_rng(5)
    c = 6
    x = torch.tensor(rng.normal(size=(3, c, 10)) + 1.0)
    y = torch.arange(c)
    xd = x.to(dtype)
    a, b, iters = fit_kernel_logreg(xd @ xd.transpose(1, 2), y, c, 1e-3, max_iter=500,
                                    tol=1e-10 if dtype == torch.float64 else 1e-5)
    w = xd.transpose(1, 2) @ a
    limit = 1e-8 if dtype == torch.float64 else 1e-4
    assert float(_feature_space_gradient(x, y, c, w, b, 1e-3).max()) < limit
    # Each support row is predicted as its own class.
    assert bool(((xd @ w + b[:, None, :]).argmax(2) == y).all())


@pytest.mark.parametrize("n", [1, 4])
def test_a_single_class_is_already_optimal(n):
    x = torch.ones((2, n, 3), dtype=torch.float64)
    a, b, iters = fit_kernel_logreg(x @ x.transpose(1, 2), torch.zeros(n, dtype=torch.int64), 1, 1e-3)
    assert iters.tolist() == [0, 0]
    assert bool((a == 0).all() and (b == 0).all())


@pytest.mark.parametrize("unit_rows", [True, False])
def test_the_first_iteration_descends(unit_rows):
    """One iteration lowers the objective below its value at zero, log C (it once stepped uphill)."""
    x, y, c = _rank_deficient_batch(shared_y=True)
    if unit_rows:  # as the probe's features: the metric's fit, not the eigen-preconditioned fallback
        x = torch.nn.functional.normalize(x, dim=2)
    l2 = 1e-2
    a, b, iters = fit_kernel_logreg(x @ x.transpose(1, 2), y, c, l2, max_iter=1)
    w = x.transpose(1, 2) @ a
    logp = torch.log_softmax(x @ w + b[:, None, :], 2)
    f = -logp.gather(2, y.expand(x.shape[0], -1)[:, :, None]).mean((1, 2)) + l2 / 2 * w.square().sum((1, 2))
    assert iters.tolist() == [1] * x.shape[0]
    assert bool((f < np.log(c) - 1e-3).all())


def test_no_eigendecomposition(monkeypatch):
    """The fit needs no eigendecomposition (it was most of its time)."""
    def refuse(*args, **kwargs):
        raise AssertionError("eigendecomposition called")

    for name in ("eigh", "eigvalsh", "eig", "svd"):
        monkeypatch.setattr(torch.linalg, name, refuse)
    x, y, c = _rank_deficient_batch(shared_y=True)
    x = torch.nn.functional.normalize(x, dim=2)  # unit rows, as the probe's features
    a, _, _ = fit_kernel_logreg(x @ x.transpose(1, 2), y, c, 1e-2)
    assert bool(torch.isfinite(a).all())
