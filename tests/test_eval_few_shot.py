"""Few-shot probes: separable data, random labels, logistic regression vs scipy."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from fastalign.eval import FewShotOptions, few_shot_accuracy, fit_logreg, single_category_labels


def clusters(n_classes=5, per_class=12, d=8, spread=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, d))
    y = np.repeat(np.arange(n_classes), per_class)
    x = centres[y] + spread * rng.normal(size=(len(y), d))
    return x.astype(np.float32), y


@pytest.mark.parametrize("probe", ["centroid", "logreg"])
def test_separable_data_is_learned(probe):
    x, y = clusters()
    res = few_shot_accuracy(x, y, shots=(1, 5), episodes=10, probe=probe)
    for k in (1, 5):
        assert res[k]["n_classes"] == 5
        assert res[k]["chance"] == pytest.approx(0.2)
        assert res[k]["mean"] > 0.95
        lo, hi = res[k]["ci95"]
        assert lo <= res[k]["mean"] <= hi


@pytest.mark.parametrize("probe", ["centroid", "logreg"])
def test_random_labels_are_near_chance(probe):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 6)).astype(np.float32)
    y = np.repeat(np.arange(4), 30)
    res = few_shot_accuracy(x, y, shots=(5,), episodes=40, probe=probe, seed=3)
    assert abs(res[5]["mean"] - 0.25) < 0.06


def test_seeded_and_independent_of_other_shots():
    x, y = clusters(spread=1.0, seed=2)
    a = few_shot_accuracy(x, y, shots=(1, 5), episodes=6, seed=4)
    b = few_shot_accuracy(x, y, shots=(5,), episodes=6, seed=4)
    c = few_shot_accuracy(x, y, shots=(5,), episodes=6, seed=5)
    assert a[5]["mean"] == b[5]["mean"]
    assert b[5]["mean"] != c[5]["mean"]


def test_unlabelled_and_small_classes():
    x, y = clusters(n_classes=3, per_class=6)
    y = y.copy()
    y[:2] = -1  # class 0 keeps 4 labelled rows
    res = few_shot_accuracy(x, y, shots=(3, 4, 5), episodes=4)
    assert res[3]["n_classes"] == 3  # 4 >= 3 + 1
    assert res[4]["n_classes"] == 2  # class 0 needs 5 rows for 4 shots
    assert res[5]["n_classes"] == 2 and res[5]["mean"] is not None
    y2 = np.array([0] * 6 + [1] * 2)
    out = few_shot_accuracy(x[:8], y2, shots=(2,), episodes=4)
    assert out[2]["mean"] is None and "fewer than 2 classes" in out[2]["note"]


def test_few_shot_errors():
    x, y = clusters()
    with pytest.raises(ValueError, match="probe"):
        few_shot_accuracy(x, y, probe="knn")
    with pytest.raises(ValueError, match="labels has"):
        few_shot_accuracy(x, y[:-1])
    with pytest.raises(ValueError, match="shots"):
        few_shot_accuracy(x, y, shots=(0,))
    with pytest.raises(ValueError, match="no row"):
        few_shot_accuracy(x, -np.ones(len(y), dtype=np.int64))
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        few_shot_accuracy(bad, y)


def test_fit_logreg_matches_scipy():
    rng = np.random.default_rng(6)
    n, d, c, l2 = 15, 4, 3, 0.1
    x = rng.normal(size=(n, d))
    y = rng.integers(0, c, n)

    def objective(theta):
        w, b = theta[: d * c].reshape(d, c), theta[d * c:]
        z = x @ w + b
        z = z - z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        p = np.exp(logp)
        onehot = np.eye(c)[y]
        loss = -np.mean(logp[np.arange(n), y]) + 0.5 * l2 * np.sum(w * w)
        gz = (p - onehot) / n
        return loss, np.concatenate([(x.T @ gz + l2 * w).ravel(), gz.sum(0)])

    ref = minimize(objective, np.zeros(d * c + c), jac=True, method="L-BFGS-B",
                   options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 1000}).x
    xt = torch.tensor(np.stack([x, x]))  # two identical problems in one batch
    w, b = fit_logreg(xt, torch.tensor(y), c, l2=l2, max_iter=200)
    for e in range(2):
        np.testing.assert_allclose(w[e].numpy(), ref[: d * c].reshape(d, c), atol=1e-5)
        np.testing.assert_allclose(b[e].numpy(), ref[d * c:], atol=1e-5)


def test_single_category_labels():
    cats = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    assert single_category_labels(cats).tolist() == [0, 1, -1, -1]


def test_options_validation():
    with pytest.raises(ValueError, match="episodes"):
        FewShotOptions(episodes=1).check()
    with pytest.raises(ValueError, match="normalize"):
        FewShotOptions(normalize="zscore").check()


def _things_probes(episodes=40):
    from fastalign.datasets.things import load_things
    from fastalign.eval.few_shot import few_shot_probes

    d = load_things()
    x = torch.tensor(np.asarray(d.features["spose49"]))
    return few_shot_probes(x, single_category_labels(d.categories), ("centroid", "logreg"),
                           FewShotOptions(shots=(1, 5), episodes=episodes))


def test_probe_results_do_not_depend_on_threads_or_unit_size(monkeypatch):
    """The episodes run as units side by side, each on one torch thread: the numbers are the same,
    bit for bit, on 1 or 2 threads and for any unit size (each episode's fit stops on its own)."""
    import fastalign.eval.few_shot as fs

    before = torch.get_num_threads()
    runs = []
    try:
        for threads, unit in ((2, 100), (1, 100), (2, 7), (2, 1000)):
            torch.set_num_threads(threads)
            monkeypatch.setattr(fs, "UNIT_EPISODES", unit)
            runs.append(_things_probes())
            assert torch.get_num_threads() == threads  # restored after the units ran on one thread each
    finally:
        torch.set_num_threads(before)
    assert all(r == runs[0] for r in runs[1:])
    assert runs[0]["logreg"][5]["mean"] > runs[0]["logreg"][5]["chance"] + 0.2  # a real result, not zeros


def test_map_units_keeps_order_restores_threads_and_raises():
    from fastalign.eval.threads import map_units

    before = torch.get_num_threads()
    seen_threads = []

    def work(i):
        seen_threads.append(torch.get_num_threads())
        return torch.full((3,), float(i)).sum().item()

    assert map_units(work, list(range(20)), torch.device("cpu")) == [3.0 * i for i in range(20)]
    assert set(seen_threads) == {1} and torch.get_num_threads() == before

    def bad(i):
        if i == 3:
            raise ValueError("unit 3 failed")
        return i

    with pytest.raises(ValueError, match="unit 3 failed"):
        map_units(bad, list(range(6)), torch.device("cpu"))
    assert torch.get_num_threads() == before
