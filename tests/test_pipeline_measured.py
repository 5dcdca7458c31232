"""fastalign run with measured human data: RDMs (data.human_rdms) and the Levels dataset
(data.levels_data) are read and checked before any stage, and reported for every representation."""

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from fastalign.cli.main import main
from fastalign.pipeline import load_config, run_pipeline
from fastalign.pipeline.inputs import Inputs

MEADOWS = Path(__file__).parent / "data" / "meadows-118" / "Meadows_myExp_v_v1_arrangement_1D.mat"
SMALL = ["teacher.lambdas=[0.1]", "teacher.folds=1", "triplets.num=5000", "triplets.val_num=500",
         "triplets.clusters=10", "student.train.steps=50", "student.train.batch_triplets=512",
         "student.train.eval_every=0", "eval.few_shot_episodes=3", "eval.few_shot_shots=[5]",
         "eval.rdm_bootstrap=20"]


@pytest.fixture
def items(tmp_path):
    # The 118 Meadows stimuli stand in for the first 118 THINGS objects: this tests the wiring,
    # not a claim about those images.
    path = tmp_path / "items.txt"
    path.write_text("\n".join(str(i) for i in range(118)) + "\n")
    return path


def test_measured_rdms_are_checked_before_any_stage(tmp_path, items, capsys):
    cfg = load_config(overrides=SMALL + [f"data.human_rdms=['{MEADOWS}']", f"data.human_rdm_items=['{items}']"])
    inputs = Inputs(cfg)
    assert len(inputs.human_rdms) == 1 and inputs.human_rdms[0].n_subjects == 3
    assert inputs.human_rdm_items[0].tolist() == list(range(118))
    out = tmp_path / "x"
    rc = main(["run", "--out", str(out), "--set", f"data.human_rdms=['{MEADOWS}']"])
    err = capsys.readouterr().err
    assert rc == 2 and "data.human_rdms" in err and "118 stimuli" in err and not out.exists()
    short = tmp_path / "short.txt"
    short.write_text("0\n1\n")
    rc = main(["run", "--out", str(out), "--set", f"data.human_rdms=['{MEADOWS}']",
               "--set", f"data.human_rdm_items=['{short}']"])
    assert rc == 2 and "data.human_rdm_items" in capsys.readouterr().err and not out.exists()


def test_levels_data_needs_file_names(tmp_path, capsys):
    trials = {"p1": [{"images": ["a.jpg", "b.jpg", "c.jpg"], "selected": "c.jpg"}]}
    path = tmp_path / "levels.pkl"
    path.write_bytes(pickle.dumps(trials))
    rc = main(["run", "--out", str(tmp_path / "x"), "--set", f"data.levels_data={path}"])
    err = capsys.readouterr().err
    assert rc == 2 and "data.levels_data needs data.file_names" in err


def test_run_reports_measured_rdms(tmp_path, items):
    out = tmp_path / "run"
    cfg = load_config(overrides=SMALL + [f"data.human_rdms=['{MEADOWS}']", f"data.human_rdm_items=['{items}']",
                                         "data.seed=1"])
    run_pipeline(cfg, out, say=lambda s: None)
    report = json.loads((out / "report.json").read_text())
    for _name, res in report["results"].items():
        entry = res["human_rdms"][0]
        assert entry["n_stimuli"] == 118 and entry["n_subjects"] == 3
        sp = entry["spearman"]
        assert -1 <= sp["pooled"] <= 1 and sp["noise_ceiling"]["lower"] <= sp["noise_ceiling"]["upper"]
    md = (out / "report.md").read_text()
    assert "## Measured human RDMs" in md and "THINGS category levels" in md
    assert "| evaluate |" in md  # the stages table has the evaluation's row (before: it had none)
    assert list((out / "figures").glob("human_rdms_*.png"))
    # The evaluation's key covers the RDM file's content: a changed file reruns the evaluation only.
    changed = tmp_path / "changed.mat"
    shutil.copyfile(MEADOWS, changed)
    lines = []
    cfg2 = load_config(overrides=SMALL + [f"data.human_rdms=['{changed}']", f"data.human_rdm_items=['{items}']",
                                          "data.seed=1"])
    run_pipeline(cfg2, out, say=lines.append)
    text = "\n".join(lines)
    assert "evaluate" in text and np.isfinite(json.loads((out / "report.json").read_text())
                                              ["results"]["teacher"]["human_rdms"][0]["spearman"]["pooled"])
