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
from fastalign.eval.logreg import fit_kernel_logreg

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
