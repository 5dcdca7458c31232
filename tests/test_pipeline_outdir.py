"""`fastalign run --out DIR` writes only into a new, empty or run's own folder, and never clears a
folder it did not write (a user review: `--out .` deleted the user's own `triplets/human.txt`, the
run's input, because a stage folder of that name was cleared)."""

import json
from pathlib import Path

import pytest

from fastalign.cli.main import main
from fastalign.pipeline import RunConfig, run_pipeline
from fastalign.pipeline.outdir import RUN_MARKER, check_run_folder, is_run_folder
from fastalign.pipeline.stages import PENDING_FILE, STAGE_FILE, ForeignFiles, Stage, StageRunner


def _user_folder(root: Path) -> Path:
    (root / "triplets").mkdir(parents=True)
    (root / "triplets" / "human.txt").write_text("0 1 2\n")
    (root / "report.md").write_text("my notes\n")
    return root


def test_run_refuses_a_foreign_folder_before_any_work(tmp_path, capsys):
    out = _user_folder(tmp_path / "proj")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(ForeignFiles, match="holds no fastalign run output"):
        run_pipeline(RunConfig(), out)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # not even a lock file
    assert (out / "triplets" / "human.txt").read_text() == "0 1 2\n"
    rc = main(["run", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "holds no fastalign run output" in err and "--overwrite" in err
    assert "Traceback" not in err and (out / "report.md").read_text() == "my notes\n"


def test_run_folders_are_recognised(tmp_path):
    assert not (tmp_path / "new").exists()
    check_run_folder(tmp_path / "new")  # a new folder
    (tmp_path / "empty").mkdir()
    check_run_folder(tmp_path / "empty")
    marked = tmp_path / "marked"
    marked.mkdir()
    (marked / "config.json").write_text("{}")  # a generic name: not a mark
    assert not is_run_folder(marked)
    (marked / RUN_MARKER).write_text("{}")
    assert is_run_folder(marked)
    for mark in (STAGE_FILE, PENDING_FILE):  # folders of versions before the marker
        old = tmp_path / f"old-{mark}"
        (old / "teacher").mkdir(parents=True)
        (old / "teacher" / mark).write_text("{}")
        assert is_run_folder(old)
    check_run_folder(_user_folder(tmp_path / "mine"), overwrite=True)


def _stage(name: str, calls: list) -> Stage:
    def body(stage_dir: Path):
        calls.append(name)
        (stage_dir / "out.txt").write_text("x")
        return [stage_dir / "out.txt"], {}
    return Stage(name, {"v": len(calls)}, [], body)


def test_a_stage_never_clears_a_folder_it_did_not_write(tmp_path):
    """--overwrite (or a run folder where a user dropped a `data/` folder) still leaves the user's files."""
    out = tmp_path / "run"
    (out / "data").mkdir(parents=True)
    (out / "data" / "raw.csv").write_text("1,2,3\n")
    calls: list = []
    with pytest.raises(ForeignFiles, match=r"data holds files that fastalign run did not write \(raw.csv\)"):
        StageRunner(out, log=lambda s: None).run(_stage("data", calls), 1, 1)
    assert calls == [] and (out / "data" / "raw.csv").read_text() == "1,2,3\n"
    # a folder of ours (its record) is cleared and redone when its key changes
    StageRunner(out, log=lambda s: None).run(_stage("teacher", calls), 1, 1)
    assert json.loads((out / "teacher" / STAGE_FILE).read_text())["outputs"] == ["teacher/out.txt"]
    (out / "teacher" / "stale.tmp").write_text("")
    StageRunner(out, log=lambda s: None).run(_stage("teacher", calls), 1, 1)  # config changed: redone
    assert calls == ["teacher", "teacher"] and not (out / "teacher" / "stale.tmp").exists()


def test_run_overwrite_writes_into_the_folder_but_keeps_foreign_stage_folders(tmp_path, capsys):
    out = tmp_path / "proj"
    (out / "data").mkdir(parents=True)
    (out / "data" / "raw.csv").write_text("1,2,3\n")
    rc = main(["run", "--out", str(out), "--overwrite", "--preset", "quick"])
    err = capsys.readouterr().err
    assert rc == 2 and "holds files that fastalign run did not write (raw.csv)" in err, err
    assert "Traceback" not in err and (out / "data" / "raw.csv").read_text() == "1,2,3\n"
    assert (out / RUN_MARKER).is_file()  # --overwrite made it a run folder: a rerun needs no flag
