"""The full pipeline on a reduced config: real outcomes, report and figures, caching, errors."""

import json

import pytest

from fastalign.cli.main import main
from fastalign.pipeline import load_config, run_pipeline

# Fewer triplets and steps than the default run; the same stages and data.
SMALL = [
    "teacher.lambdas=[0.1]", "teacher.folds=1",
    "triplets.num=20000", "triplets.val_num=1000", "triplets.clusters=20",
    "student.steps=300", "student.batch_size=1024", "student.eval_every=0",
    "eval.few_shot_episodes=5", "eval.few_shot_shots=[5]",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    run_pipeline(load_config(overrides=SMALL), out, say=lambda s: None)
    return out


def test_pipeline_outcomes(run_dir):
    report = json.loads((run_dir / "report.json").read_text())
    res = report["results"]
    assert res["teacher"]["accuracy"] > res["raw teacher features"]["accuracy"] + 0.03
    assert res["student"]["accuracy"] > res["raw student features"]["accuracy"] + 0.03
    assert report["heldout_triplets"] == 10000


def test_pipeline_artefacts(run_dir):
    for rel in ["report.md", "report.json", "teacher/transform.npz", "embeddings/teacher.npy",
                "embeddings/student.npy", "triplets/store/manifest.json"]:
        assert (run_dir / rel).stat().st_size > 0, rel
    pngs = sorted((run_dir / "figures").glob("*.png"))
    names = {p.name for p in pngs}
    assert {"accuracy_by_level.png", "teacher_reliability.png", "teacher_lambda_search.png",
            "distillation_curves.png", "rdm_panel.png"} <= names
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000
    import numpy as np

    assert np.load(run_dir / "embeddings" / "student.npy").shape[0] == 1854
    assert "held-out human triplets" in (run_dir / "report.md").read_text()


def test_rerun_is_cached_and_force_redoes_one(run_dir):
    lines = []
    run_pipeline(load_config(overrides=SMALL), run_dir, force=["evaluate"], say=lines.append)
    text = "\n".join(lines)
    for stage in ["data", "teacher", "triplets", "student"]:
        assert f"{stage}: cached" in text
    assert "evaluate: running" in text


def test_bad_input_fails_before_work(tmp_path, capsys):
    rc = main(["run", "--out", str(tmp_path / "x"), "--set", "data.teacher_features=/nonexistent.npy"])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    rc = main(["run", "--out", str(tmp_path / "x"), "--set", "student.stepz=3"])
    assert rc == 2 and "unknown config key student.stepz" in capsys.readouterr().err
    rc = main(["run", "--out", str(tmp_path / "x"), "--force", "nope"])
    assert rc == 2 and "unknown stage" in capsys.readouterr().err


def test_changed_config_reruns_the_stage_from_scratch(run_dir):
    """A stage whose configuration changed must not pick up the old run's checkpoints."""
    lines = []
    changed = SMALL + ["student.steps=40"]
    run_pipeline(load_config(overrides=changed), run_dir, say=lines.append)
    text = "\n".join(lines)
    assert "student: running" in text and "triplets: cached" in text
    report = json.loads((run_dir / "student" / "stage.json").read_text())
    assert report["metrics"]["steps"] == 40
    assert not (run_dir / "student" / "stage.pending").exists()
