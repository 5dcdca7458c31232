"""`distill --out` and `fit-teacher --out` refuse a non-empty folder that holds no output of
theirs, as make-triplets does (issue 14, problem 8)."""

import json

import pytest
from small_inputs import write_small_inputs

from fastalign.cli.main import main


@pytest.fixture
def inputs(tmp_path):
    """Small features, teacher embeddings, human triplets and a distill config over them."""
    return write_small_inputs(tmp_path, steps=2, progress=False)


def _foreign(folder):
    """A folder of another program's files, one with a name distill and fit-teacher write."""
    folder.mkdir()
    (folder / "report.json").write_text('{"mine": true}')
    (folder / "notes.txt").write_text("keep me")
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _distill(inputs, out, *extra):
    return main(["distill", "--config", str(inputs / "distill.toml"), "--out", str(out), *extra])


def _fit_teacher(inputs, out, *extra):
    return main(["fit-teacher", "--features", str(inputs / "feats.npy"), "--triplets", str(inputs / "human.txt"),
                 "--lambdas", "0.1", "--max-iter", "5", "--quiet", "--out", str(out), *extra])


@pytest.mark.parametrize("command", ["distill", "fit-teacher"])
def test_a_foreign_non_empty_folder_is_refused_and_left_alone(inputs, capsys, command):
    """Before: both wrote report.json (and more) over the folder's own files."""
    out = inputs / "theirs"
    before = _foreign(out)
    rc = (_distill if command == "distill" else _fit_teacher)(inputs, out)
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert f"{out} already exists and is not empty, and holds no {command} output" in err
    assert "pass --overwrite" in err and "choose a new --out" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("command", ["distill", "fit-teacher"])
def test_overwrite_writes_into_a_foreign_folder(inputs, capsys, command):
    out = inputs / "theirs"
    _foreign(out)
    rc = (_distill if command == "distill" else _fit_teacher)(inputs, out, "--overwrite")
    assert rc == 0, capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me"
    assert "mine" not in json.loads((out / "report.json").read_text())


def test_a_rerun_into_its_own_output_is_allowed(inputs, capsys):
    assert _fit_teacher(inputs, inputs / "t") == 0
    (inputs / "t" / "notes.txt").write_text("a user's note beside the output")
    assert _fit_teacher(inputs, inputs / "t") == 0
    assert _distill(inputs, inputs / "s") == 0
    assert _distill(inputs, inputs / "s", "--train.steps", "3") == 0  # resumes its own run
    rows = [json.loads(line)["step"] for line in (inputs / "s" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1] == 3


def test_a_file_as_out_is_refused(inputs, capsys):
    (inputs / "file").write_text("x")
    assert _fit_teacher(inputs, inputs / "file") == 2
    assert "exists and is not a directory" in capsys.readouterr().err
