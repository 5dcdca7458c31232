"""The figures: the numbers each one draws (intervals, counts, RSA, tick and label positions) and
that its PNG is written. Each figure is captured before it is saved, so its artists can be read."""

import math
import warnings

import numpy as np
import pytest
import torch

from fastalign.common.calibration import reliability
from fastalign.common.intervals import wilson_interval
from fastalign.eval import plots as eval_plots
from fastalign.eval import rdm_plot, reliability_plot
from fastalign.eval.plots import level_intervals, plot_accuracy_by_level
from fastalign.eval.rdm_plot import plot_rdm_panel, rdm_panel_data, spread_labels
from fastalign.eval.reliability_plot import plot_reliability, reliability_points
from fastalign.eval.rsa import rsa
from fastalign.teacher import plots as teacher_plots
from fastalign.teacher.plots import labelled_lambdas, plot_lambda_search

PNG = b"\x89PNG\r\n\x1a\n"
Z95 = 1.959963984540054


@pytest.fixture
def captured(monkeypatch):
    """The figures the plot functions save, in order (they are still written)."""
    pytest.importorskip("matplotlib")
    figs = []
    for module in (eval_plots, rdm_plot, reliability_plot, teacher_plots):
        real = module.save_figure

        def keep(fig, path, *args, _real=real, **kwargs):
            figs.append(fig)
            return _real(fig, path, *args, **kwargs)

        monkeypatch.setattr(module, "save_figure", keep)
    return figs


def _render(fig):
    """Draw ``fig`` on an Agg canvas, so its text artists have their final positions; the renderer."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def _no_overlap(renderer, labels, axis):
    """True when no two of the rendered tick ``labels`` overlap along ``axis`` ("x" or "y")."""
    boxes = sorted((b.x0, b.x1) if axis == "x" else (b.y0, b.y1)
                   for b in (t.get_window_extent(renderer) for t in labels if t.get_text()))
    return all(b0 >= a1 - 0.5 for (_, a1), (b0, _) in zip(boxes, boxes[1:]))


# --- the Wilson score interval ---------------------------------------------------------------

def test_wilson_closed_form():
    # k = 0: lower 0, upper z^2 / (n + z^2) (Wilson 1927).
    lo, hi = wilson_interval(0, 10)
    assert lo == pytest.approx(0.0, abs=1e-15) and hi == pytest.approx(Z95 ** 2 / (10 + Z95 ** 2), rel=1e-12)
    lo, hi = wilson_interval(10, 10)
    assert hi == pytest.approx(1.0, abs=1e-15) and lo == pytest.approx(10 / (10 + Z95 ** 2), rel=1e-12)
    # Symmetric about 1/2 at k = n / 2, and wider at n = 68 than at n = 8581.
    lo, hi = wilson_interval(34, 68)
    assert (lo + hi) / 2 == pytest.approx(0.5) and hi - lo > 0.22
    lo2, hi2 = wilson_interval(4290.5, 8581)
    assert hi2 - lo2 < 0.025


@pytest.mark.parametrize("k,n", [(0, 1), (1, 1), (3, 7), (41, 68), (50, 100), (5000, 8581), (1, 1339)])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_wilson_matches_scipy(k, n, confidence):
    stats = pytest.importorskip("scipy.stats")
    ref = stats.binomtest(k, n).proportion_ci(confidence, method="wilson")
    assert wilson_interval(k, n, confidence) == pytest.approx((ref.low, ref.high), abs=1e-12)


@pytest.mark.parametrize("args,match", [((1, 0), "n must"), ((1, 2.5), "n must"), ((3, 2), "successes"),
                                        ((-1, 2), "successes"), ((float("nan"), 2), "successes"),
                                        ((1, 2, 1.0), "confidence")])
def test_wilson_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        wilson_interval(*args)


# --- accuracy by level -----------------------------------------------------------------------

LEVEL_RESULTS = {
    "teacher": {"fine": {"accuracy": 45 / 68, "n": 68}, "class_boundary": {"accuracy": 0.74, "n": 1339},
                "coarse": {"accuracy": 0.56, "n": 8581}},
    "student": {"fine": (39 / 68, 68), "class_boundary": (0.73, 1339), "coarse": {"accuracy": None, "n": 0}},
}


def test_level_intervals_pass_n_and_wilson_bounds():
    got = level_intervals(LEVEL_RESULTS, ("fine", "class_boundary", "coarse"))
    fine = got["teacher"]["fine"]
    assert fine["n"] == 68 and fine["accuracy"] == pytest.approx(45 / 68)
    assert (fine["lower"], fine["upper"]) == pytest.approx(wilson_interval(45, 68))
    assert got["student"]["class_boundary"]["n"] == 1339
    assert got["student"]["coarse"] is None  # not scored: no bar, no interval
    # The fine level's interval is about +-11 points; the coarse one under +-1.1.
    assert fine["upper"] - fine["lower"] > 0.2
    coarse = got["teacher"]["coarse"]
    assert coarse["upper"] - coarse["lower"] < 0.022


def test_level_intervals_need_n():
    with pytest.raises(ValueError, match="no n"):
        level_intervals({"x": {"fine": {"accuracy": 0.5}}}, ("fine",))
    with pytest.raises(ValueError, match="no n"):
        level_intervals({"x": {"fine": (0.5,)}}, ("fine",))


def test_accuracy_figure_draws_intervals_n_chance_and_ceiling(tmp_path, captured):
    path = plot_accuracy_by_level(LEVEL_RESULTS, tmp_path / "levels.png", ceiling=0.67)
    assert path.read_bytes()[:8] == PNG
    ax = captured[-1].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["fine\nn = 68", "class boundary\nn = 1,339",
                                                            "coarse\nn = 8,581"]
    # The teacher's fine-level whisker spans its Wilson interval (in %).
    lo, hi = wilson_interval(45, 68)
    whiskers = [seg for c in ax.containers if hasattr(c, "lines") and c.lines[2]
                for seg in c.lines[2][0].get_segments() if len(seg)]
    spans = [(min(s[:, 1]), max(s[:, 1])) for s in whiskers]
    assert any(a == pytest.approx(100 * lo) and b == pytest.approx(100 * hi) for a, b in spans)
    levels = sorted(line.get_ydata()[0] for line in ax.get_lines() if len(set(line.get_ydata())) == 1
                    and len(line.get_ydata()) == 2)
    assert levels == pytest.approx([100 / 3, 67.0])
    legend = [t.get_text() for t in captured[-1].legends[0].get_texts()]
    assert any("Wilson" in t for t in legend) and any("chance" in t for t in legend)
    assert any("noise ceiling" in t for t in legend)


def test_accuracy_figure_writes_n_on_bars_when_it_differs(tmp_path, captured):
    res = {"a": {"fine": (0.5, 10)}, "b": {"fine": (0.6, 20)}}
    plot_accuracy_by_level(res, tmp_path / "levels.png", levels=("fine",))
    texts = sorted(t.get_text() for t in captured[-1].axes[0].texts)
    assert texts == ["n=10", "n=20"]


# --- the RDM panel ---------------------------------------------------------------------------

def test_spread_labels_keep_gap_and_bounds():
    centres = [0, 1, 2, 3, 40, 41, 80]
    pos = spread_labels(centres, 5.0, -0.5, 99.5)
    assert np.all(np.diff(pos) >= 5.0 - 1e-9) and pos[0] >= -0.5 and pos[-1] <= 99.5
    # Labels that do not crowd stay where they are; a crowded run is centred on its members.
    assert pos[-1] == 80 and np.mean(pos[4:6]) == pytest.approx(40.5)
    assert np.mean(pos[:4]) == pytest.approx(1.5 + max(0.0, -0.5 - (1.5 - 7.5)))
    assert list(spread_labels([10, 50], 5.0, 0, 100)) == [10, 50]
    # Too many to fit: spaced evenly over the range.
    assert list(spread_labels([1, 2, 3], 60.0, 0, 100)) == [0, 50, 100]
    with pytest.raises(ValueError, match="ascending"):
        spread_labels([3, 1], 1.0, 0, 10)


def _objects(seed=0, n=120, k=18):
    rng = np.random.default_rng(seed)
    cats = np.zeros((n, k), np.uint8)
    sizes = rng.integers(1, 6, k)  # many small blocks: their labels must be spread
    start = 0
    for j, s in enumerate(sizes):
        cats[start:start + s, j] = 1
        start += s
    human = rng.normal(size=(n, 6))
    return human, cats, rng


def test_rdm_panel_data_rsa_matches_rsa():
    human, cats, rng = _objects()
    teacher = human @ rng.normal(size=(6, 6)) + 0.3 * rng.normal(size=human.shape)
    raw = rng.normal(size=(human.shape[0], 8))
    data = rdm_panel_data(human, [teacher, raw], cats, "dot", ["dot", "cosine"])
    assert data["rsa"][0] == pytest.approx(rsa(human, teacher, "dot", "dot", methods=("spearman",))["spearman"])
    assert data["rsa"][1] == pytest.approx(rsa(human, raw, "dot", "cosine", methods=("spearman",))["spearman"])
    assert data["rsa"][0] > data["rsa"][1]
    n = human.shape[0]
    assert len(data["panels"]) == 3 and all(p.shape == (n, n) for p in data["panels"])
    assert np.isnan(np.diag(data["panels"][0])).all()
    off = data["panels"][1][~np.eye(n, dtype=bool)]
    assert off.min() > 0 and off.max() == pytest.approx(1.0)  # percentile ranks
    assert np.all(np.diff(data["primary"]) >= 0)  # sorted by category, uncategorised last
    with pytest.raises(ValueError, match="same objects"):
        rdm_panel_data(human, [raw[:-1]], cats, "dot", ["cosine"])


@pytest.mark.parametrize("n, target", [(1854, 480), (37, 10), (37, 3), (9, 9), (10, 3)])
def test_rdm_panel_block_means_match_their_definition(n, target):
    """The drawn image: means over f x f blocks of the symmetric matrix, NaN (diagonal) ignored, the
    last blocks partial where f does not divide n."""
    rng = np.random.default_rng(n + target)
    square = rdm_plot._square(torch.from_numpy(rng.random(n * (n - 1) // 2)), n)
    assert np.array_equal(square, square.T, equal_nan=True) and np.isnan(np.diag(square)).all()
    shown, f = rdm_plot._block_mean(square, target)
    assert f == math.ceil(n / target) and shown.shape[0] <= target
    for bi in range(shown.shape[0]):
        for bj in range(shown.shape[1]):
            block = square[bi * f:(bi + 1) * f, bj * f:(bj + 1) * f]
            if np.isfinite(block).any():
                assert shown[bi, bj] == pytest.approx(np.nanmean(block), abs=1e-6)
            else:
                assert np.isnan(shown[bi, bj])


def test_rdm_panel_titles_rsa_and_readable_labels(tmp_path, captured):
    human, cats, rng = _objects()
    models = [human + 0.1 * rng.normal(size=human.shape), rng.normal(size=(human.shape[0], 4)), human]
    names = [f"category {j}" for j in range(cats.shape[1])]
    path = plot_rdm_panel(human, models, cats, tmp_path / "rdm.png", human_metric="dot",
                          model_metric=["dot", "cosine", "dot"],
                          titles=("human (SPoSE)", "teacher", "raw student features", "student"),
                          category_names=names)
    assert path.read_bytes()[:8] == PNG
    fig = captured[-1]
    panels = [ax for ax in fig.axes if ax.get_title()]
    titles = [ax.get_title() for ax in panels]
    assert len(titles) == 4 and all("((" not in t and ") (" not in t for t in titles)
    rho = rdm_panel_data(human, models, cats, "dot", ["dot", "cosine", "dot"])["rsa"]
    for t, r in zip(titles[1:], rho):
        assert f"ρ = {r:.2f}" in t
    renderer = _render(fig)
    for ax in (panels[0], panels[2]):  # the left column carries the labels
        labels = ax.get_yticklabels()
        assert len([t for t in labels if t.get_text()]) == len(set(rdm_panel_data(
            human, [], cats, "dot", [])["primary"]))
        assert _no_overlap(renderer, labels, "y")
        assert min(t.get_fontsize() for t in labels) >= 7


def test_rdm_panel_one_model_and_bad_arguments(tmp_path):
    pytest.importorskip("matplotlib")
    human, cats, _ = _objects(n=30, k=3)
    assert plot_rdm_panel(human, human[:, :3], cats, tmp_path / "one.png").read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="titles"):
        plot_rdm_panel(human, [human, human], cats, tmp_path / "bad.png", titles=("a", "b"))
    with pytest.raises(ValueError, match="category_names"):
        plot_rdm_panel(human, human, cats, tmp_path / "bad.png", category_names=["a", "b"])


# --- the reliability diagram -----------------------------------------------------------------

def _reliability_pair():
    rng = np.random.default_rng(5)
    q = rng.dirichlet([4.0, 1.0, 1.0], size=300)
    c = rng.integers(0, 3, 300)
    return reliability(q, c), reliability(q ** 3 / (q ** 3).sum(1, keepdims=True), c)


def test_reliability_points_blank_empty_bins_and_count():
    before, _ = _reliability_pair()
    pts = reliability_points(before)
    empty = np.array(before.count) == 0
    assert empty[:5].all()  # max probability >= 1/3: the lowest five of 15 bins are empty
    assert np.isnan(pts["confidence"][empty]).all() and np.isnan(pts["accuracy"][empty]).all()
    assert np.isfinite(pts["accuracy"][~empty]).all()
    assert list(pts["count"]) == before.count and pts["count"].sum() == 300
    assert pts["left"][0] == 0 and pts["width"] == pytest.approx(np.full(15, 1 / 15))


def test_reliability_figure_counts_and_no_points_for_empty_bins(tmp_path, captured):
    before, after = _reliability_pair()
    path = plot_reliability(before, after, tmp_path / "rel.png")
    assert path.read_bytes()[:8] == PNG
    assert not [p for p in tmp_path.iterdir() if p.name != "rel.png"]  # no temp file left
    diagram, hist = captured[-1].axes
    curves = [line for line in diagram.get_lines() if line.get_marker() in ("o", "s")]
    assert len(curves) == 2
    for line, rel in zip(curves, (before, after)):
        ys = np.asarray(line.get_ydata(), dtype=float)
        assert np.isnan(ys[np.array(rel.count) == 0]).all()  # no point, and the line breaks there
    heights = [round(p.get_height()) for p in hist.patches if p.get_height() > 0 and p.get_width() < 0.1]
    assert sorted(heights) == sorted(c for c in before.count + after.count if c > 0)


# --- the lambda search -----------------------------------------------------------------------

def _search(lams, folds=1, human=False):
    cands = []
    for lam in lams:
        x = math.log10(lam + 1e-3) + 1
        c = {"lam": lam, "val_loss": 0.92 + 0.003 * x * x, "val_accuracy": 0.565 - 0.002 * abs(x)}
        if human:
            c["human_val_nll"] = c["val_loss"]
        cands.append(c)
    return {"candidates": cands, "chosen": {"lam": min(cands, key=lambda c: c["val_loss"])["lam"]},
            "folds": folds}


GRIDS = [[0.05, 0.1, 0.2], [0.03, 0.05, 0.1, 0.2, 0.3, 0.5], [10 ** (k / 2) for k in range(-8, 4)],
         [0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3, 10], [0, 0.1, 0.2, 0.4], [0.1], [1e-4]]


@pytest.mark.parametrize("lams", GRIDS)
def test_labelled_lambdas_include_chosen_and_keep_apart(lams):
    chosen = min(lams, key=lambda v: abs(v - 0.1))
    kept = labelled_lambdas(lams, chosen)
    assert chosen in kept and len(kept) <= 8 and set(kept) <= set(lams)
    positive = [v for v in lams if v > 0]
    pos = [math.log10(v) if v > 0 else math.log10(positive[0]) - 1 for v in kept]
    full = [math.log10(v) if v > 0 else math.log10(positive[0]) - 1 for v in lams]
    span = (max(full) - min(full)) or 1.0
    assert all(b - a >= 0.1 * span - 1e-12 for a, b in zip(pos, pos[1:]))


def test_labelled_lambdas_fall_back_to_decades():
    assert labelled_lambdas([10 ** (k / 4) for k in range(-40, 1)], 1.0) == []


@pytest.mark.parametrize("lams", GRIDS)
def test_lambda_figure_ticks_do_not_overlap(tmp_path, captured, lams):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. matplotlib's singular-limits warning for one lambda
        assert plot_lambda_search(_search(lams), tmp_path / "search.png").read_bytes()[:8] == PNG
    renderer = _render(captured[-1])
    ax = captured[-1].axes[0]
    labels = ax.get_xticklabels() + ax.get_xticklabels(minor=True)
    assert _no_overlap(renderer, labels, "x")
    assert any(t.get_text() for t in labels)


def test_lambda_figure_names_what_was_held_out(tmp_path, captured):
    plot_lambda_search(_search([0.01, 0.1, 1.0], folds=3), tmp_path / "cv.png")
    fig = captured[-1]
    assert fig.axes[0].get_ylabel() == "3-fold cross-validated loss (nats)"
    assert fig.axes[1].get_ylabel() == "3-fold cross-validated accuracy (%)"
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:2] == ["3-fold cross-validated loss", "3-fold cross-validated accuracy"]
    assert "chosen lambda = 0.1" in legend[2] and "edge" not in legend[2]
    plot_lambda_search(_search([1e-5, 1e-4, 1e-3], human=True), tmp_path / "dense.png")
    fig = captured[-1]
    assert fig.axes[0].get_ylabel() == "human validation NLL (nats)"
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "edge of the searched grid" in legend[2]
    # Differences of 0.005 nats fill a fraction of the axis, not all of it.
    lo, hi = fig.axes[0].get_ylim()
    assert hi - lo >= 0.05 * 0.92
    plot_lambda_search(_search([0.1]), tmp_path / "one.png")
    assert "the only value searched" in captured[-1].legends[0].get_texts()[2].get_text()
