"""`fastalign run` refuses configurations the student could not train on before the teacher is
fitted, and names keys as the run's config spells them (a user review)."""

import json
import warnings
from pathlib import Path

import pytest

from fastalign.cli.main import main
from fastalign.pipeline import load_config
from fastalign.pipeline.inputs import Inputs
from fastalign.pipeline.run import check_student
from fastalign.pipeline.stages import PENDING_FILE, Stage, StageRunner, digest_obj


@pytest.mark.parametrize("overrides, match", [
    (["triplets.num=0"], r"triplets.num must be an integer >= 1, got 0"),
    (["triplets.clusters=0"], r"triplets.clusters must be an integer >= 1"),
    (["triplets.val_num=-1"], r"triplets.val_num must be an integer >= 0"),
    (["triplets.num=500"], r"triplets.num = 500 is less than one student batch "
                           r"\(student.train.batch_triplets = 1024\)"),
])
def test_triplet_counts_are_checked_when_the_config_loads(overrides, match):
    """Before: triplets.num=0 passed the checks, the teacher was fitted (25-117 s), then the student
    stage failed naming distill's key train.batch_triplets."""
    with pytest.raises(ValueError, match=match):
        load_config(None, overrides)
    load_config(None, ["triplets.num=500", "student.train.batch_triplets=256"])  # one batch fits


def test_student_errors_name_the_run_key(tmp_path, capsys):
    rc = main(["run", "--set", "student.train.steps=0", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "student.train.steps must be > 0" in err, err
    rc = main(["run", "--set", "student.student.head=deep", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "student.student.head must be one of" in err, err


def test_student_warnings_name_the_run_key():
    cfg = load_config(None, ["student.optim.warmup_steps=50", "student.train.steps=10"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_student(cfg, Inputs(cfg), Path("unused"))
    messages = [str(w.message) for w in caught]
    assert any(m.startswith("student.optim.warmup_steps = 50 >= train.steps = 10") for m in messages), messages


def test_a_stage_that_cannot_resume_says_it_runs_again(tmp_path):
    """Before: after Ctrl-C in the teacher stage the rerun said 'teacher: resuming' and refitted from scratch."""
    lines = []
    stage = Stage("teacher", {"v": 1}, [], lambda d: ([], {}))
    runner = StageRunner(tmp_path, log=lines.append)
    (tmp_path / "teacher").mkdir()
    fp = runner.fingerprint(stage)
    (tmp_path / "teacher" / PENDING_FILE).write_text(json.dumps({"key": digest_obj(fp), "fingerprint": fp}))
    runner.run(stage, 1, 1)
    assert "[1/1] teacher: running again (nothing to resume)" in lines
    (tmp_path / "t2").mkdir()
    resumable = Stage("t2", {"v": 1}, [], lambda d: ([], {}), resumes=True)
    fp = runner.fingerprint(resumable)
    (tmp_path / "t2" / PENDING_FILE).write_text(json.dumps({"key": digest_obj(fp), "fingerprint": fp}))
    runner.run(resumable, 1, 1)
    assert "[1/1] t2: resuming" in lines


def test_npz_key_features_reach_every_stage_and_mismatches_name_both_inputs(tmp_path):
    """`data.teacher_features = "two.npz:a"` was checked, then lost its key on the way to the triplet
    stage (which found two arrays); a row-count mismatch named no file and blamed the valid input."""
    import numpy as np

    from fastalign.io.features import load_features
    from fastalign.io.resolve import resolve_features

    clip = resolve_features("things:clip")
    np.savez(tmp_path / "two.npz", a=clip, b=clip[:10])
    cfg = load_config(None, [f'data.teacher_features="{tmp_path / "two.npz"}:a"'])
    inputs = Inputs(cfg)
    assert inputs.teacher_source == f"{tmp_path / 'two.npz'}:a"
    assert np.array_equal(load_features(inputs.teacher_source), clip)
    cfg = load_config(None, [f'data.student_features="{tmp_path / "two.npz"}:b"'])
    with pytest.raises(ValueError, match=r"data.student_features .*two.npz:b has 10 rows but "
                                         r"data.teacher_features things:clip has 1,854"):
        Inputs(cfg)


def test_cli_warnings_are_one_line(capsys):
    """Before: a raw UserWarning with the library's file path and the source line under it."""
    root = Path(__file__).resolve().parent.parent
    rc = main(["distill", "--config", str(root / "examples" / "distill.toml"), "--set", "train.steps=5",
               "--print-config"])
    err = capsys.readouterr().err
    assert rc == 0
    assert "fastalign distill: warning: optim.warmup_steps = 100 >= train.steps = 5" in err, err
    assert "UserWarning" not in err and "validate()" not in err
