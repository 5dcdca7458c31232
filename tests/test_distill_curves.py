"""The distillation-curves figure: which panels it draws and how tall their y-ranges are."""

import pytest

from fastalign.distill.metrics import CURVE_LABELS, _curves, plot_curves, y_limits


def test_tiny_changes_are_not_stretched_over_the_panel():
    # Before: matplotlib's range made 0.1876 -> 0.1906 (1.6 %) and 62 -> 63.4 % fill their panels.
    lo, hi = y_limits("val_kl", [0.1876, 0.1890, 0.1906])
    assert hi - lo == pytest.approx(0.01906) and lo < 0.1876 and hi > 0.1906
    lo, hi = y_limits("val_acc", [62.0, 63.4])
    assert hi - lo == pytest.approx(10.0) and lo < 62.0 < 63.4 < hi
    assert y_limits("val_acc", [40.0, 63.0]) is None  # a real change keeps matplotlib's own range
    assert y_limits("lr", [0.0, 1e-3, 5e-4]) is None


def test_labels_are_words_and_unused_panels_are_dropped():
    assert not any("eval." in label or "_" in label for label in CURVE_LABELS.values())
    rows = [{"step": s, "loss": 1.0 / s, "distill": 1.0 / s, "human": 0.0, "lr": 1e-3} for s in (1, 2, 3)]
    assert set(_curves(rows)) == {"distill", "lr"}  # the flat-zero human term and the repeated total go


def test_the_figure_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [{"step": s, "distill": 1.0 / s, "val_kl": 0.19 + 1e-4 * s, "val_acc": 0.62} for s in (1, 2, 3)]
    out = plot_curves(rows, tmp_path / "c.png")
    assert out is not None and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
