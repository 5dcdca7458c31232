"""`fastalign embed` records the student's training temperature beside the embeddings, and
`fastalign evaluate` scores those embeddings at it (issue 14, problem 6)."""

import json

import numpy as np
import pytest
from test_distill_fixtures import base_config, feature_matrix, synthetic_source

from fastalign.cli.main import main
from fastalign.distill import config_from_dict, distill
from fastalign.eval import evaluate_representation

TRAIN_T = 25.0  # a training temperature far from the default 1, so using it or not shows in the NLL


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """A trained feature student, its embeddings written by `fastalign embed`, and human triplets."""
    root = tmp_path_factory.mktemp("embed")
    cfg = base_config(str(root / "run"), steps=3, ckpt_every=3)
    cfg["loss"].update(temperature=TRAIN_T, similarity="cosine")
    distill(config_from_dict(cfg), train_source=synthetic_source(), features=feature_matrix())
    np.save(root / "f.npy", feature_matrix())
    rng = np.random.default_rng(0)
    np.savetxt(root / "t.txt", np.stack([rng.choice(40, 3, replace=False) for _ in range(200)]), fmt="%d")
    rc = main(["embed", "--checkpoint", str(root / "run"), "--features", str(root / "f.npy"),
               "--out", str(root / "e.npy")])
    assert rc == 0
    return root


def _evaluate(root, *extra):
    rc = main(["evaluate", "--features", str(root / "e.npy"), "--triplets", str(root / "t.txt"),
               "--out", str(root / "r.json"), *extra])
    assert rc == 0
    return json.loads((root / "r.json").read_text())


def test_embed_writes_a_sidecar_with_the_training_temperature(embedded):
    info = json.loads((embedded / "e.npy.json").read_text())
    assert info["temperature"] == TRAIN_T and info["similarity"] == "cosine"
    assert info["shape"] == list(np.load(embedded / "e.npy").shape)
    assert info["checkpoint"].endswith("ckpt-00000003") and info["step"] == 3


def test_evaluate_uses_the_recorded_temperature_and_says_so(embedded, capsys):
    """Before: evaluate scored a T = 100 student at T = 1 (NLL 6.88 instead of 1.05)."""
    capsys.readouterr()
    report = _evaluate(embedded)
    out = capsys.readouterr().out
    assert report["temperature"] == TRAIN_T and report["similarity"] == "cosine"
    assert "e.npy.json" in report["temperature_source"] and "training temperature" in report["temperature_source"]
    assert f"temperature {TRAIN_T:g}: the student's training temperature" in out
    emb = np.load(embedded / "e.npy")
    t = np.loadtxt(embedded / "t.txt", dtype=np.int64)
    at_train = evaluate_representation(emb, t, similarity="cosine", temperature=TRAIN_T)
    at_one = evaluate_representation(emb, t, similarity="cosine", temperature=1.0)
    assert report["calibration"]["nll"] == pytest.approx(at_train["calibration"]["nll"])
    assert report["calibration"]["nll"] != pytest.approx(at_one["calibration"]["nll"])


def test_an_explicit_temperature_and_similarity_win(embedded, capsys):
    report = _evaluate(embedded, "--temperature", "2", "--similarity", "dot")
    assert report["temperature"] == 2.0 and report["similarity"] == "dot"
    assert report["temperature_source"] == "--temperature"
    assert "temperature 2: --temperature" in capsys.readouterr().out


def test_a_sidecar_of_another_file_is_ignored_with_a_warning(embedded, tmp_path, capsys):
    (tmp_path / "e.npy").write_bytes((embedded / "e.npy").read_bytes())
    (tmp_path / "e.npy.json").write_bytes((embedded / "e.npy.json").read_bytes())
    (tmp_path / "t.txt").write_bytes((embedded / "t.txt").read_bytes())
    np.save(tmp_path / "e.npy", np.load(tmp_path / "e.npy") * 2)  # rewritten after embed: the record is stale
    capsys.readouterr()
    report = _evaluate(tmp_path)
    err = capsys.readouterr().err
    assert report["temperature"] == 1.0 and report["similarity"] == "dot"
    assert "ignoring" in err and "checksum differs" in err


@pytest.mark.parametrize("name", ["e.json", "e.txt", "e"])
def test_embed_refuses_an_output_name_that_is_not_npy(embedded, tmp_path, capsys, name):
    """Before: `embed --out x.json` wrote .npy bytes under a .json name."""
    rc = main(["embed", "--checkpoint", str(embedded / "run"), "--features", str(embedded / "f.npy"),
               "--out", str(tmp_path / name)])
    err = capsys.readouterr().err
    assert rc == 2 and "ending in .npy" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
