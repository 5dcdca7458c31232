"""`fastalign fit-teacher`: outputs, report, soft targets and clear errors for bad input."""

from __future__ import annotations

import json

import numpy as np

from fastalign.cli.main import main
from fastalign.teacher import AffineTransform, load_transform, save_transform


def _data(tmp_path, n=40, d=6, k=600, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    h = x @ rng.standard_normal((d, d))
    trip = np.stack([rng.choice(n, 3, replace=False) for _ in range(k)])
    s = np.stack([(h[trip[:, 0]] * h[trip[:, 1]]).sum(1), (h[trip[:, 0]] * h[trip[:, 2]]).sum(1),
                  (h[trip[:, 1]] * h[trip[:, 2]]).sum(1)], 1)
    order = np.array([[0, 1, 2], [0, 2, 1], [1, 2, 0]])[s.argmax(1)]
    trip = np.take_along_axis(trip, order, axis=1)
    np.save(tmp_path / "features.npy", x)
    np.savetxt(tmp_path / "train.txt", trip[:450], fmt="%d")
    np.savetxt(tmp_path / "test.txt", trip[450:], fmt="%d")
    return x, trip


def _run(capsys, *argv):
    code = main(["fit-teacher", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_writes_transform_report_and_plot(tmp_path, capsys):
    _data(tmp_path)
    out = tmp_path / "out"
    code, stdout, err = _run(
        capsys, "--features", tmp_path / "features.npy", "--triplets", tmp_path / "train.txt",
        "--test-triplets", tmp_path / "test.txt", "--val-fraction", 0.2, "--lambdas", 0.01, 1.0,
        "--max-iter", 30, "--calibrate", "--soft-targets", "repeats", "--safetensors", "--quiet", "--out", out,
    )
    assert code == 0, err
    with np.load(out / "transform.npz") as z:
        assert {"weights", "bias", "mean", "std", "temperature"} <= set(z.files)
        assert z["weights"].shape == (6, 6)
    assert load_transform(out / "transform.safetensors").dim_in == 6
    assert (out / "transform_hard.npz").is_file()
    png = (out / "lambda_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    rep = json.loads((out / "report.json").read_text())
    assert rep["metrics_on"] == "test"
    assert [c["lam"] for c in rep["fit"]["candidates"]] == [0.01, 1.0]
    assert rep["calibration"]["nll_after"] <= rep["calibration"]["nll_before"]
    assert rep["split"]["n_train"] + rep["split"]["n_val"] == 450
    assert "teacher (soft targets)" in rep["metrics"]
    assert rep["metrics"]["teacher"]["accuracy"] > rep["metrics"]["raw (cosine)"]["accuracy"]
    assert stdout == f"{out / 'transform.npz'}\n"  # --quiet: the transform's path, no table


def test_cli_bundled_data_and_spose_targets(tmp_path, capsys):
    code, stdout, err = _run(
        capsys, "--features", "things:clip", "--triplets", "things:test_10_ID_smallsample", "--lambdas", 1.0,
        "--max-iter", 3, "--soft-targets", "spose49", "--quiet", "--out", tmp_path / "o",
    )
    assert code == 0, err
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["soft_targets"]["source"] == "spose49"


def test_cli_bad_inputs(tmp_path, capsys):
    x, trip = _data(tmp_path)
    out = tmp_path / "out"
    base = ["--triplets", tmp_path / "train.txt", "--quiet", "--out", out]

    bad = x.copy()
    bad[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    code, _, err = _run(capsys, "--features", tmp_path / "nan.npy", *base)
    assert code == 2 and "row 3" in err and "non-finite" in err

    np.savetxt(tmp_path / "past.txt", np.vstack([trip[:5], [[1, 2, 40]]]), fmt="%d")
    code, _, err = _run(capsys, "--features", tmp_path / "features.npy", "--triplets", tmp_path / "past.txt",
                        "--quiet", "--out", out)
    assert code == 2 and "row 5" in err and "past the 40 feature rows" in err

    (tmp_path / "features.xyz").write_text("1 2 3")
    code, _, err = _run(capsys, "--features", tmp_path / "features.xyz", *base)
    assert code == 2 and "unknown feature file format" in err and "features.xyz" in err

    save_transform(tmp_path / "t5.npz", AffineTransform(5))
    code, _, err = _run(capsys, "--features", tmp_path / "features.npy", "--init", tmp_path / "t5.npz", *base)
    assert code == 2 and "transform expects D=5, features have D=6" in err

    code, _, err = _run(capsys, "--features", tmp_path / "features.npy", "--soft-targets", "nope", *base)
    assert code == 2 and "spose49" in err

    code, _, err = _run(capsys, "--features", "things:nope", *base)
    assert code == 2 and "things:clip" in err
    assert not out.exists()


def test_cli_soft_targets_from_files(tmp_path, capsys):
    x, trip = _data(tmp_path)
    rng = np.random.default_rng(5)
    np.save(tmp_path / "emb.npy", rng.standard_normal((40, 3)).astype(np.float32))
    code, _, err = _run(capsys, "--features", tmp_path / "features.npy", "--triplets", tmp_path / "train.txt",
                        "--val-triplets", tmp_path / "test.txt", "--lambdas", 0.1, "--max-iter", 5,
                        "--soft-targets", tmp_path / "emb.npy", "--quiet", "--out", tmp_path / "a")
    assert code == 0, err
    rep = json.loads((tmp_path / "a" / "report.json").read_text())
    assert rep["soft_targets"]["source"].startswith("embedding:") and rep["metrics_on"] == "val"
    np.save(tmp_path / "probs.npy", rng.dirichlet(np.ones(3), size=450))
    code, _, err = _run(capsys, "--features", tmp_path / "features.npy", "--triplets", tmp_path / "train.txt",
                        "--val-triplets", tmp_path / "test.txt", "--lambdas", 0.1, "--max-iter", 5,
                        "--soft-targets", tmp_path / "probs.npy", "--quiet", "--out", tmp_path / "b")
    assert code == 0, err
    assert json.loads((tmp_path / "b" / "report.json").read_text())["soft_targets"]["source"].startswith("probs:")
    np.save(tmp_path / "wrong.npy", np.ones((7, 2), dtype=np.float32))
    code, _, err = _run(capsys, "--features", tmp_path / "features.npy", "--triplets", tmp_path / "train.txt",
                        "--soft-targets", tmp_path / "wrong.npy", "--quiet", "--out", tmp_path / "c")
    assert code == 2 and "neither" in err


def test_fit_teacher_python_api(tmp_path):
    """The CLI's flow is callable from Python: options in, result (transforms, reports, metrics) out."""
    from fastalign.teacher import FitConfig, TeacherOptions, fit_teacher, write_outputs

    _data(tmp_path)
    options = TeacherOptions(
        features=str(tmp_path / "features.npy"), triplets=str(tmp_path / "train.txt"),
        test_triplets=str(tmp_path / "test.txt"), calibrate=True, soft_targets="repeats",
        fit=FitConfig(lambdas=(0.01, 1.0), val_fraction=0.2, max_iter=10, progress=False),
    )
    messages = []
    result = fit_teacher(options, say=messages.append)
    assert result.metrics_on == "test" and result.metrics["teacher"]["n"] == 150
    assert set(result.metrics) == {"raw (cosine)", "teacher", "teacher + calibration", "teacher (soft targets)",
                                   "teacher (soft targets) + calibration"}
    assert result.transform is not result.hard_transform and result.soft.source == "repeats"
    assert result.split["n_train"] + result.split["n_val"] == 450 and result.fit.split == "given"
    assert any("chosen lambda" in m for m in messages)
    report = write_outputs(result, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == json.loads(json.dumps(report))
    assert load_transform(tmp_path / "out").dim_in == 6
    assert (tmp_path / "out" / "transform_hard.npz").is_file()
