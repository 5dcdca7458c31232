"""The full pipeline on a reduced config: real outcomes, report and figures, caching, errors."""

import json

import pytest

from fastalign.cli.main import main
from fastalign.pipeline import load_config, run_pipeline

# Fewer triplets and steps than the default run; the same stages and data.
SMALL = [
    "teacher.lambdas=[0.1]", "teacher.folds=1",
    "teacher.soft_triplets=100000", "teacher.dense_lambdas=[0.0001]", "teacher.max_extensions=0",
    "triplets.num=20000", "triplets.val_num=1000", "triplets.clusters=20",
    "student.train.steps=300", "student.train.batch_triplets=1024", "student.train.eval_every=0",
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


def test_student_embeddings_carry_their_training_temperature(run_dir):
    # `fastalign evaluate embeddings/student.npy` scores at the student's training T (the report fits its own).
    from fastalign.distill.export import read_sidecar

    info, note = read_sidecar(run_dir / "embeddings" / "student.npy")
    assert note == "" and info is not None
    cfg = load_config(overrides=SMALL)
    assert info["temperature"] == cfg.student.loss.temperature and info["similarity"] == cfg.student.loss.similarity


def test_report_fits_every_temperature_on_the_calibration_split(run_dir):
    """Before: the raw rows' NLL and ECE were at T = 1 and the student's at its training T, against a
    teacher calibrated on the calibration triplets."""
    import numpy as np

    from fastalign.eval import fit_temperature
    from fastalign.pipeline.inputs import Inputs

    report = json.loads((run_dir / "report.json").read_text())
    teacher_t = json.loads((run_dir / "teacher" / "report.json").read_text())["calibration"]["temperature"]
    with np.load(run_dir / "data" / "human_triplets.npz") as z:
        calibration = z["calibration"]
    res = report["results"]
    for r in res.values():
        fit = r["temperature_fit"]
        assert fit["split"] == "calibration" and fit["n"] == len(calibration) and r["temperature"] == fit["temperature"]
    raw = Inputs(load_config(overrides=SMALL)).teacher
    assert res["raw teacher features"]["temperature"] == pytest.approx(
        fit_temperature(raw, calibration, "cosine").temperature)
    assert res["raw teacher features"]["temperature"] < 0.5  # cosine similarities need a small T, not 1
    assert res["teacher"]["temperature"] == pytest.approx(teacher_t)
    assert "T (fitted)" in (run_dir / "report.md").read_text()


def test_rerun_is_cached_and_force_redoes_one(run_dir):
    lines = []
    run_pipeline(load_config(overrides=SMALL), run_dir, force=["evaluate"], say=lines.append)
    text = "\n".join(lines)
    for stage in ["data", "teacher", "triplets", "student"]:
        assert f"{stage}: cached" in text
    assert "evaluate: running" in text and "unchanged" not in lines[-1]


def test_quiet_run_shows_no_progress_bar_and_keeps_the_cache(run_dir, capsys):
    """Before: `run --quiet` still drew the student's and the evaluation's progress bars."""
    capsys.readouterr()
    sets = [a for o in SMALL for a in ("--set", o)]
    rc = main(["run", "--out", str(run_dir), "--force", "student", "--force", "evaluate", "--quiet", *sets])
    out, err = capsys.readouterr()
    assert rc == 0 and out == f"{run_dir / 'report.md'}\n" and err == ""
    lines = []
    run_pipeline(load_config(overrides=SMALL), run_dir, say=lines.append)  # the bar is not part of a stage key
    assert all(f"{stage}: cached" in "\n".join(lines) for stage in ("student", "evaluate"))
    # Before: "done ... report.md" read as if the report had been rewritten.
    assert "report.md (unchanged: the evaluation was cached" in lines[-1]


def test_report_links_only_the_figures_it_drew(run_dir, tmp_path, monkeypatch):
    """Before: a core install's report.md linked five figures that were never written."""
    import shutil
    import sys

    import fastalign.io.figures as figures

    core = tmp_path / "core"
    shutil.copytree(run_dir, core)
    shutil.rmtree(core / "figures")
    for png in [*(core / "teacher").glob("*.png"), *(core / "student").rglob("*.png")]:
        png.unlink()  # as a core install's earlier stages would have left them
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setattr(figures, "_warned", False)
    run_pipeline(load_config(overrides=SMALL), core, force=["evaluate"], say=lambda s: None)
    md = (core / "report.md").read_text()
    assert "](figures/" not in md and "pip install 'fastalign[report]'" in md
    assert json.loads((core / "report.json").read_text())["figures"] == []
    drawn = json.loads((run_dir / "report.json").read_text())["figures"]
    assert "figures/accuracy_by_level.png" in drawn and all((run_dir / f).is_file() for f in drawn)


def test_bad_input_fails_before_work(tmp_path, capsys):
    rc = main(["run", "--out", str(tmp_path / "x"), "--set", "data.teacher_features=/nonexistent.npy"])
    err = capsys.readouterr().err
    assert rc == 2 and "data.teacher_features" in err and "not found" in err
    assert not (tmp_path / "x").exists()
    rc = main(["run", "--out", str(tmp_path / "x"), "--set", "student.train.stepz=3"])
    assert rc == 2 and "unknown config key student.train.stepz" in capsys.readouterr().err
    rc = main(["run", "--out", str(tmp_path / "x"), "--set", "student.data.store=/elsewhere"])
    assert rc == 2 and "student.data.store is set by fastalign run" in capsys.readouterr().err
    rc = main(["run", "--out", str(tmp_path / "x"), "--force", "nope"])
    assert rc == 2 and "unknown stage" in capsys.readouterr().err


def test_changed_config_reruns_the_stage_from_scratch(run_dir):
    """A stage whose configuration changed must not pick up the old run's checkpoints."""
    lines = []
    changed = SMALL + ["student.train.steps=40"]
    run_pipeline(load_config(overrides=changed), run_dir, say=lines.append)
    text = "\n".join(lines)
    assert "student: running" in text and "triplets: cached" in text
    report = json.loads((run_dir / "student" / "stage.json").read_text())
    assert report["metrics"]["steps"] == 40
    assert not (run_dir / "student" / "stage.pending").exists()


def test_student_section_is_a_distill_config():
    """``[student]`` of a run is a ``fastalign distill`` config with the run's defaults."""
    from fastalign.distill import DistillConfig

    cfg = load_config(overrides=["student.optim.lr=0.5", "student.student.head=mlp"])
    assert isinstance(cfg.student, DistillConfig)
    assert cfg.student.optim.lr == 0.5 and cfg.student.student.head == "mlp"
    assert cfg.student.train.steps == 2000 and cfg.student.student.head_init == "identity"  # run defaults
    assert cfg.student.loss.similarity == DistillConfig().loss.similarity  # distill defaults elsewhere
    assert load_config(preset="quick").student.train.steps == 300


def test_old_student_keys_warn_and_still_work(tmp_path):
    """The flat [student] keys of the previous release map to their distill names, with a warning."""
    from fastalign.config import DeprecatedConfigKey

    toml = tmp_path / "old.toml"
    toml.write_text('[student]\nsteps = 70\nbatch_size = 256\nlr = 0.003\ndim_out = 8\n')
    with pytest.warns(DeprecatedConfigKey, match="student.steps is deprecated.*use student.train.steps"):
        cfg = load_config(toml, ["student.temperature=2.0"])
    assert (cfg.student.train.steps, cfg.student.train.batch_triplets, cfg.student.optim.lr) == (70, 256, 0.003)
    assert cfg.student.student.head_dim == 8 and cfg.student.loss.temperature == 2.0
    # A later layer wins whichever spelling each layer uses.
    with pytest.warns(DeprecatedConfigKey):
        assert load_config(toml, ["student.train.steps=5"]).student.train.steps == 5
    with pytest.warns(DeprecatedConfigKey):
        assert load_config(preset="quick", overrides=["student.steps=9"]).student.train.steps == 9
    with pytest.raises(ValueError, match="both set"):
        load_config(overrides=["student.steps=9", "student.train.steps=8"])


def test_student_options_change_the_student_key():
    """The student stage's cache key follows every student option, in any section."""
    from pathlib import Path

    from fastalign.pipeline.run import _stage_student
    from fastalign.pipeline.stages import digest_obj

    class SameInputs:
        images = False

        def student_digest(self):
            return "same-inputs"

    def key(overrides, progress=True):
        cfg = load_config(overrides=overrides)
        return digest_obj(_stage_student(cfg, SameInputs(), Path("."), print, progress).config)

    base = key([])
    assert key([], progress=False) == base  # `run --quiet` hides the bar and keeps the cache
    for o in ["student.train.steps=7", "student.optim.lr=0.1", "student.loss.divergence=kl",
              "student.student.head=linear", "student.data.image_size=32", "student.eval.val_batches=2"]:
        assert key([o]) != base, o
    assert key([]) == base


def test_teacher_recipe_defaults_fallback_and_key(tmp_path):
    """The dense teacher is the default; no human embedding falls back; the key follows the embedding's bytes."""
    import numpy as np

    from fastalign.pipeline.run import _teacher_key, teacher_recipe
    from fastalign.pipeline.stages import digest_obj

    cfg = load_config()
    assert teacher_recipe(cfg) == "dense" and cfg.teacher.soft_triplets == 1_000_000
    assert cfg.data.human_embedding == "things:spose49"
    assert teacher_recipe(load_config(overrides=["data.human_embedding="])) == "human"
    assert teacher_recipe(load_config(overrides=["teacher.recipe=human"])) == "human"
    with pytest.raises(ValueError, match="teacher.recipe must be one of"):
        load_config(overrides=["teacher.recipe=magic"])
    emb = tmp_path / "emb.npy"
    np.save(emb, np.ones((1854, 3)))
    one = digest_obj(_teacher_key(load_config(overrides=[f"data.human_embedding={emb}"])))
    np.save(emb, np.full((1854, 3), 2.0))
    two = digest_obj(_teacher_key(load_config(overrides=[f"data.human_embedding={emb}"])))
    assert one != two


def test_residual_mlp_head_starts_at_the_raw_features():
    """head "mlp" + head_init "identity": identity plus an MLP whose last layer starts at zero."""
    import torch

    from fastalign.distill.student import FeatureStudent, ResidualMLP

    feats = torch.randn(12, 5)
    idx = torch.arange(12)
    for out_dim in (0, 3, 8):
        student = FeatureStudent(feats, head="mlp", out_dim=out_dim, hidden_dim=16, init="identity")
        head = student.head[-1]
        assert isinstance(head, ResidualMLP)
        want = feats if out_dim in (0, 5) else (feats[:, :3] if out_dim == 3 else torch.nn.functional.pad(feats, (0, 3)))
        torch.testing.assert_close(student(idx), want)
        with torch.no_grad():
            head.mlp[2].weight.normal_()
        assert not torch.allclose(student(idx), want)
