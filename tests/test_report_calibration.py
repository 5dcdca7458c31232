"""The run report's calibration columns: one temperature per representation, fitted the same way on
the training-side calibration triplets; the KL to repeated human choices with its interval; the
few-shot chance level; the distillation curves' human accuracy named as the calibration triplets."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fastalign.eval import fit_temperature, human_uncertainty
from fastalign.pipeline import load_config
from fastalign.pipeline.report import _distillation_curves, _representations, render_markdown
from fastalign.teacher import calibrate_temperature


def _triplets(emb, n, rng):
    """Triplets whose odd one out follows softmax(emb similarities / 0.05): a sharp model, so the
    best temperature for cosine or dot similarities is far from 1."""
    t = np.stack([rng.choice(len(emb), 3, replace=False) for _ in range(n)])
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    s = np.stack([(e[t[:, 0]] * e[t[:, 1]]).sum(1), (e[t[:, 0]] * e[t[:, 2]]).sum(1),
                  (e[t[:, 1]] * e[t[:, 2]]).sum(1)], 1) / 0.05
    p = np.exp(s - s.max(1, keepdims=True))
    pair = [rng.choice(3, p=row / row.sum()) for row in p]
    # pair 0 (s01) chosen: 2 is odd; pair 1 (s02): 1 is odd; pair 2 (s12): 0 is odd.
    order = {0: [0, 1, 2], 1: [0, 2, 1], 2: [1, 2, 0]}
    return np.stack([t[i, order[k]] for i, k in enumerate(pair)]).astype(np.int64)


def _run_dir(tmp_path, rng, n=60, d=8):
    base = rng.normal(size=(n, d))
    raw_teacher = base + 0.3 * rng.normal(size=(n, d))
    raw_student = base + 0.5 * rng.normal(size=(n, d))
    (tmp_path / "teacher").mkdir()
    (tmp_path / "embeddings").mkdir()
    (tmp_path / "teacher" / "report.json").write_text(json.dumps({"calibration": {"temperature": 0.5}}))
    np.save(tmp_path / "embeddings" / "teacher.npy", (3 * raw_teacher).astype(np.float32))
    np.save(tmp_path / "embeddings" / "student.npy", (2 * raw_student).astype(np.float32))
    calibration, heldout = _triplets(base, 400, rng), _triplets(base, 400, rng)
    inputs = SimpleNamespace(teacher=raw_teacher.astype(np.float32), student=raw_student.astype(np.float32))
    return inputs, calibration, heldout


def test_every_representation_is_scored_at_a_temperature_fitted_on_the_calibration_triplets(tmp_path):
    """Before: the raw rows were scored at T = 1 and the student at its training T; only the teacher
    had a fitted temperature."""
    rng = np.random.default_rng(0)
    inputs, calibration, heldout = _run_dir(tmp_path, rng)
    cfg = load_config()
    reps = _representations(cfg, inputs, tmp_path, calibration)
    assert set(reps) == {"raw teacher features", "teacher", "raw student features", "student"}
    for name, rep in reps.items():
        on_calibration = fit_temperature(rep["emb"], calibration, rep["similarity"]).temperature
        on_heldout = fit_temperature(rep["emb"], heldout, rep["similarity"]).temperature
        assert rep["temperature"] == pytest.approx(on_calibration, rel=1e-9), name
        assert on_heldout != pytest.approx(on_calibration, rel=1e-6), name  # which split it was fitted on shows
        assert abs(np.log(rep["temperature"])) > 1, name  # sharp choices, scaled features: far from T = 1
        fit = rep["temperature_fit"]
        assert fit["split"] == "calibration" and fit["n"] == len(calibration) and "calibrate_temperature" in fit["method"]
        assert fit["nll_after"] < fit["nll_before"]
    assert reps["student"]["temperature_fit"]["training_temperature"] == cfg.student.loss.temperature
    assert reps["teacher"]["temperature_fit"]["teacher_stage_temperature"] == 0.5


def test_no_calibration_triplets_score_at_t1(tmp_path):
    rng = np.random.default_rng(1)
    inputs, _, _ = _run_dir(tmp_path, rng)
    reps = _representations(load_config(), inputs, tmp_path, np.zeros((0, 3), np.int64))
    assert all(rep["temperature"] == 1.0 and rep["temperature_fit"]["split"] is None for rep in reps.values())


def test_cosine_temperature_is_the_fit_on_unit_rows():
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(40, 5)) * rng.uniform(0.5, 3, size=(40, 1))
    t = _triplets(emb, 300, rng)
    unit = torch.from_numpy(emb / np.linalg.norm(emb, axis=1, keepdims=True))
    want = calibrate_temperature(unit, torch.from_numpy(t)).temperature
    assert fit_temperature(emb, t, "cosine").temperature == pytest.approx(want, rel=1e-6)
    assert fit_temperature(emb, t, "dot").temperature != pytest.approx(want, rel=1e-3)
    with pytest.raises(ValueError, match="similarity"):
        fit_temperature(emb, t, "euclid")


def test_kl_to_repeated_choices_comes_with_its_interval():
    """Before: one mean over a handful of sets, with nothing saying how little it rests on."""
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(30, 4))
    sets = [rng.choice(30, 3, replace=False) for _ in range(9)]
    t = np.array([rng.permutation(s) for s in sets for _ in range(int(rng.integers(2, 6)))])
    out = human_uncertainty(emb, t, bootstrap=500, seed=4)
    iv = out["kl_human_model_interval"]
    lo, hi = iv["ci95"]
    assert out["n_sets"] == 9 and iv["bootstrap"] == 500
    assert lo < out["kl_human_model"] < hi and iv["se"] > 0
    assert human_uncertainty(emb, t, bootstrap=500, seed=4)["kl_human_model_interval"] == iv  # seeded
    assert human_uncertainty(emb, t, bootstrap=0)["kl_human_model_interval"]["ci95"] is None
    with pytest.raises(ValueError, match="bootstrap"):
        human_uncertainty(emb, t, bootstrap=-1)


def _result(t, kl, ci, few_mean):
    return {"accuracy": 0.5, "noise_ceiling_normalized": 0.5, "temperature": t,
            "temperature_fit": {"temperature": t, "split": "calibration", "n": 5000, "training_temperature": 1.0},
            "calibration": {"nll": 0.9, "ece": 0.02},
            "uncertainty": {"n_sets": 9, "min_repeats": 2, "kl_human_model": kl,
                            "kl_human_model_interval": {"se": 0.05, "ci95": ci, "bootstrap": 1000}},
            "rsa": {"spearman": 0.8, "cka": 0.8},
            "few_shot": {"centroid": {"5": {"mean": few_mean, "n_classes": 21, "episodes": 200}}}}


def test_markdown_shows_temperatures_kl_intervals_and_few_shot_chance():
    """Before: KL to 3 decimals with no interval; no chance level for the few-shot column."""
    res = {"teacher": _result(0.968, 0.4931, [0.3104, 0.6822], 0.611),
           "student": _result(0.0123, 0.4729, [0.2991, 0.6611], 0.593)}
    md = render_markdown({"results": res, "heldout_triplets": 10000, "stages": {}, "figures": [],
                          "teacher_fit": {"recipe": "human"}})
    assert "| teacher | 0.968 |" in md and "| student | 0.0123 |" in md
    assert "0.49 [0.31, 0.68]" in md and "0.47 [0.30, 0.66]" in md and "0.493" not in md
    assert "9 held-out object sets" in md and "indicative only" in md
    assert "5000 training-side calibration triplets" in md and "trained at T = 1" in md
    assert "chance 4.8" in md and "21 categories" in md


def test_distillation_curves_name_the_calibration_triplets(tmp_path, monkeypatch):
    """Before: the panel said "on human triplets" for the training-side calibration triplets."""
    import fastalign.distill.metrics as metrics

    titles = []
    monkeypatch.setattr(metrics, "save_figure",
                        lambda fig, path, **kw: titles.extend(ax.get_title() for ax in fig.axes))
    if metrics.new_figure(1, 1, "a probe") is None:
        pytest.skip("matplotlib is not installed")
    run = tmp_path / "student" / "run"
    run.mkdir(parents=True)
    rows = [{"step": s, "distill": 1.0 / s, "human_acc": 0.5 + 0.01 * s} for s in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"torn')
    assert _distillation_curves(tmp_path, tmp_path / "c.png") == tmp_path / "c.png"
    human = [t for t in titles if "accuracy" in t]
    assert human and "calibration" in human[0] and "training-side" in human[0]
