"""After Ctrl-C each command prints advice that works when followed (user review, finding 2:
make-triplets said "rerun the same command to resume", and the same command was then refused)."""

import importlib

import pytest
from small_inputs import write_small_inputs

import fastalign.cli.fit_teacher as fit_teacher_cli
import fastalign.distill.checkpoint as checkpoint
from fastalign.cli.main import main

generate = importlib.import_module("fastalign.triplets.generate")  # the package exports a function of that name


@pytest.fixture
def data(tmp_path):
    return write_small_inputs(tmp_path, steps=3, progress=False)


def _interrupt_at(monkeypatch, module, point):
    """Raise KeyboardInterrupt (a Ctrl-C) the first time ``module`` reaches fault point ``point``."""
    real = module.fault_point

    def fault(name):
        if name == point and not getattr(fault, "hit", False):
            fault.hit = True
            raise KeyboardInterrupt
        real(name)

    monkeypatch.setattr(module, "fault_point", fault)


def _interrupted_then_advised(capsys, argv):
    """Run ``argv`` (it is interrupted), then follow the printed advice; returns (advice, rc of the rerun)."""
    assert main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "interrupted; " in err
    advice = err.split("interrupted; ", 1)[1]
    assert "rerun the same command" in advice
    rerun = argv + (["--resume"] if "with --resume" in advice else [])
    return advice, main(rerun)


def test_make_triplets_advice_names_resume_and_works(data, monkeypatch, capsys):
    _interrupt_at(monkeypatch, generate, "kmeans.saved")
    argv = ["make-triplets", "--embeddings", str(data / "teacher.npy"), "--clusters", "3", "--num", "200",
            "--kmeans-iters", "2", "--no-histogram", "--quiet", "--out", str(data / "store")]
    advice, rc = _interrupted_then_advised(capsys, argv)
    assert "--resume" in advice
    assert rc == 0, capsys.readouterr().err
    assert (data / "store" / "manifest.json").is_file()


def test_distill_advice_resumes_with_the_same_command(data, monkeypatch, capsys):
    _interrupt_at(monkeypatch, checkpoint, "checkpoint.after_rename")
    argv = ["distill", "--config", str(data / "distill.toml"), "--out", str(data / "run"), "--quiet"]
    advice, rc = _interrupted_then_advised(capsys, argv)
    assert "resume" in advice and "--resume" not in advice
    assert rc == 0, capsys.readouterr().err


def test_fit_teacher_advice_says_it_starts_again(data, monkeypatch, capsys):
    real = fit_teacher_cli.write_outputs

    def interrupted(*a, **k):
        monkeypatch.setattr(fit_teacher_cli, "write_outputs", real)
        raise KeyboardInterrupt

    monkeypatch.setattr(fit_teacher_cli, "write_outputs", interrupted)
    argv = ["fit-teacher", "--features", str(data / "feats.npy"), "--triplets", str(data / "human.txt"),
            "--lambdas", "0.1", "--max-iter", "5", "--quiet", "--out", str(data / "teacher")]
    advice, rc = _interrupted_then_advised(capsys, argv)
    assert "does not resume" in advice
    assert rc == 0 and (data / "teacher" / "transform.npz").is_file()
