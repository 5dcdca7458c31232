"""`--quiet`: no progress, and on stdout only the path of what was written (or what was asked
for); errors still go to stderr (issue 14, problem 8: "--quiet still prints tables")."""

from pathlib import Path

import pytest
from small_inputs import write_small_inputs

from fastalign.cli import run as run_cli
from fastalign.cli.main import main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_small_inputs(tmp_path_factory.mktemp("quiet"), steps=3)


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_fit_teacher_quiet_prints_only_the_transform_path(data, tmp_path, capsys):
    """Before: --quiet printed the metrics table."""
    rc, out, err = _run(capsys, "fit-teacher", "--features", data / "feats.npy", "--triplets", data / "human.txt",
                        "--lambdas", "0.1", "--max-iter", "5", "--quiet", "--out", tmp_path / "t")
    assert rc == 0, err
    assert out == f"{tmp_path / 't' / 'transform.npz'}\n" and (tmp_path / "t" / "transform.npz").is_file()
    rc, out, _ = _run(capsys, "fit-teacher", "--features", data / "feats.npy", "--triplets", data / "human.txt",
                      "--lambdas", "0.1", "--max-iter", "5", "--out", tmp_path / "t")
    assert rc == 0 and "| teacher |" in out  # without --quiet: the table


def test_make_triplets_quiet_prints_only_the_store_path(data, tmp_path, capsys):
    """Before: --quiet printed the summary and its stage table."""
    rc, out, err = _run(capsys, "make-triplets", "--embeddings", data / "teacher.npy", "--clusters", "3", "--num", "200",
                        "--kmeans-iters", "2", "--no-histogram", "--quiet", "--out", tmp_path / "s")
    assert rc == 0, err
    assert out == f"{tmp_path / 's'}\n" and (tmp_path / "s" / "manifest.json").is_file()
    rc, out, _ = _run(capsys, "make-triplets", "--embeddings", data / "teacher.npy", "--clusters", "3", "--num", "200",
                      "--kmeans-iters", "2", "--no-histogram", "--out", tmp_path / "s2")
    assert rc == 0 and "cluster_border" in out and "| stage |" in out  # without --quiet: the summary


def test_distill_embed_and_evaluate_quiet(data, tmp_path, capsys):
    rc, out, err = _run(capsys, "distill", "--config", data / "distill.toml", "--out", tmp_path / "d", "--quiet")
    assert rc == 0, err
    assert out == f"{tmp_path / 'd' / 'ckpt-00000003'}\n"
    assert "distill:" not in err and "step/s" not in err  # no progress bar
    rc, out, err = _run(capsys, "embed", "--checkpoint", tmp_path / "d", "--out", tmp_path / "e.npy", "--quiet")
    assert rc == 0, err
    assert out == f"{tmp_path / 'e.npy'}\n"
    evaluate = ["evaluate", "--features", tmp_path / "e.npy", "--triplets", data / "human.txt", "--quiet"]
    rc, out, err = _run(capsys, *evaluate, "--out", tmp_path / "r.json")
    assert rc == 0, err
    assert out == f"{tmp_path / 'r.json'}\n" and err == ""
    rc, out, err = _run(capsys, *evaluate)  # no --out: the table is what was asked for
    assert rc == 0 and out.startswith("metric") and "accuracy" in out and err == ""


def test_quiet_errors_still_reach_stderr(data, tmp_path, capsys):
    rc, out, err = _run(capsys, "evaluate", "--features", tmp_path / "nope.npy", "--triplets", data / "human.txt",
                        "--quiet")
    assert rc == 2 and out == "" and err.startswith("fastalign evaluate: error:")


def test_run_quiet_prints_only_the_report_path(tmp_path, capsys, monkeypatch):
    """Before: `run` had no --quiet and printed the whole report.md. (The pipeline itself is
    replaced: what is checked is what the command prints around it.)"""
    seen = []

    def fake_pipeline(cfg, out, force=(), say=None, progress=True, overwrite=False):
        seen.append(progress)
        (say or print)("[1/5] data: running")
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "report.md").write_text("# report\n| table |\n")

    monkeypatch.setattr(run_cli, "run_pipeline", fake_pipeline)
    rc, out, err = _run(capsys, "run", "--out", tmp_path / "r", "--quiet")
    assert rc == 0 and out == f"{tmp_path / 'r' / 'report.md'}\n" and "data: running" not in out + err
    rc, out, err = _run(capsys, "run", "--out", tmp_path / "r")
    assert rc == 0 and "| table |" in out
    assert seen == [False, True]  # --quiet hides the progress bars too


def test_bench_quiet_prints_only_the_results_path(tmp_path, capsys):
    rc, out, err = _run(capsys, "bench", "--preset", "cpu-tiny", "--groups", "affine", "--backends", "torch",
                        "--baselines", "none", "--out", tmp_path / "b", "--quiet")
    assert rc == 0, err
    assert out == f"{tmp_path / 'b' / 'results.json'}\n"
