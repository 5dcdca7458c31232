"""evaluate_representation, plots, and `fastalign evaluate` end to end."""

import json

import numpy as np
import pytest

from fastalign.eval import (
    EvalOptions,
    FewShotOptions,
    evaluate_representation,
    format_table,
    plot_accuracy_by_level,
    plot_rdm_panel,
    rsa,
    triplet_accuracy,
)

PNG = b"\x89PNG\r\n\x1a\n"


def ref_accuracy(emb, t, similarity="dot"):
    e = np.asarray(emb, dtype=np.float64)
    if similarity == "cosine":
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
    a, b, c = e[t[:, 0]], e[t[:, 1]], e[t[:, 2]]
    s01, s02, s12 = (a * b).sum(1), (a * c).sum(1), (b * c).sum(1)
    return float(np.mean(s01 > np.maximum(s02, s12)))


def small_problem(seed=0, n=30, d=5, b=300):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, d)).astype(np.float32)
    t = np.stack([rng.choice(n, 3, replace=False) for _ in range(b)])
    t = np.concatenate([t, t[:20], t[:10, [1, 0, 2]]])  # some repeated object sets
    cats = (rng.random((n, 4)) < 0.3).astype(np.uint8)
    labels = rng.integers(0, 3, n)
    return emb, t, cats, labels


def test_evaluate_representation_small():
    emb, t, cats, labels = small_problem()
    human = emb @ np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)
    opts = EvalOptions(few_shot=FewShotOptions(shots=(1, 2), episodes=3))
    rep = evaluate_representation(emb, t, categories=cats, levels=["a", "b"] * (len(t) // 2),
                                  human_rdm_emb=human, few_shot_labels=labels, temperature=0.5, options=opts)
    json.dumps(rep, allow_nan=False)
    assert rep["accuracy"] == pytest.approx(ref_accuracy(emb, t))
    assert rep["accuracy"] == pytest.approx(triplet_accuracy(emb, t))
    assert sum(v["n"] for v in rep["levels"]["accuracy"].values()) == len(t)
    assert set(rep["levels_file"]["accuracy"]) == {"a", "b"}
    _, set_counts = np.unique(np.sort(t, 1), axis=0, return_counts=True)
    assert rep["uncertainty"]["n_sets"] == int((set_counts >= 2).sum()) >= 20
    assert rep["rsa"]["spearman"] == pytest.approx(rsa(emb, human, "dot", "dot")["spearman"])
    assert set(rep["few_shot"]) == {"centroid", "logreg"} and set(rep["few_shot"]["logreg"]) == {"1", "2"}
    table = format_table({"x": rep, "y": rep})
    assert "accuracy [coarse]" in table and "linear CKA" in table
    with pytest.raises(ValueError, match="NaN"):
        bad = emb.copy()
        bad[3, 1] = np.inf
        evaluate_representation(bad, t)
    with pytest.raises(ValueError, match="categories"):
        evaluate_representation(emb, t, categories=cats[:-1])


def test_plots_write_png(tmp_path):
    emb, t, cats, _ = small_problem()
    p = plot_rdm_panel(emb[:, :3], emb, cats, tmp_path / "rdm.png", category_names=list("ABCD"))
    assert p.read_bytes()[:8] == PNG
    res = {"raw": {"fine": (0.5, 3), "coarse": (0.4, 9)}, "aligned": {"fine": {"accuracy": 0.6, "n": 3}}}
    q = plot_accuracy_by_level(res, tmp_path / "levels.png")
    assert q.read_bytes()[:8] == PNG
    assert sorted(x.name for x in tmp_path.iterdir()) == ["levels.png", "rdm.png"]



def test_cli_bundled_things(run_cli, tmp_path):
    from fastalign.datasets.things import load_things

    out = tmp_path / "spose.json"
    rc, stdout, err = run_cli("--features", "things:spose49", "--triplets", "things:test_10", "--categories", "things",
                              "--few-shot", "things", "--shots", "1", "--episodes", "3", "--probe", "centroid",
                              "--out", out)
    assert rc == 0, err
    rep = json.loads(out.read_text())
    d = load_things()
    expected = ref_accuracy(d.features["spose49"], d.triplets["test_10"])
    assert rep["accuracy"] == pytest.approx(expected)
    assert 0.635 < rep["accuracy"] < 0.645  # published SPoSE-49 figure: about 64.0 %
    assert rep["uncertainty"]["n_sets"] > 0
    assert {"fine", "class_boundary", "coarse"} <= set(rep["levels"]["accuracy"])
    assert rep["few_shot"]["centroid"]["1"]["mean"] > 2 * rep["few_shot"]["centroid"]["1"]["chance"]
    assert "accuracy" in stdout and "64.0%" in stdout


def write_inputs(tmp_path):
    emb, t, cats, labels = small_problem(seed=2)
    np.save(tmp_path / "feats.npy", emb)
    np.savetxt(tmp_path / "trip.txt", t, fmt="%d")
    with open(tmp_path / "cats.tsv", "w") as fh:
        fh.write("\t".join(f"c{i}" for i in range(cats.shape[1])) + "\n")
        for row in cats:
            fh.write("\t".join(map(str, row)) + "\n")
    names = np.array(["cat", "dog", "car"])[labels].tolist()
    names[0] = ""  # unlabelled
    (tmp_path / "labels.txt").write_text("\n".join(names) + "\n")
    (tmp_path / "levels.txt").write_text("\n".join(["x", "y", "z"][i % 3] for i in range(len(t))) + "\n")
    rng = np.random.default_rng(3)
    w = rng.normal(size=(5, 4)).astype(np.float32)
    bias = rng.normal(size=4).astype(np.float32)
    np.savez(tmp_path / "transform.npz", weights=w, bias=bias, mean=np.float64(0.1), std=np.float64(2.0),
             temperature=np.float64(0.8))
    np.save(tmp_path / "human.npy", rng.normal(size=(emb.shape[0], 3)))
    z = ((emb.astype(np.float64) - 0.1) / 2.0) @ w + bias
    return emb, t, z


def test_cli_with_files_and_transform(run_cli, tmp_path):
    emb, t, z = write_inputs(tmp_path)
    out = tmp_path / "rep.json"
    rc, stdout, err = run_cli(
        "--features", tmp_path / "feats.npy", "--transform", tmp_path / "transform.npz",
        "--triplets", tmp_path / "trip.txt", "--categories", tmp_path / "cats.tsv", "--levels", tmp_path / "levels.txt",
        "--rdm", tmp_path / "human.npy", "--rdm-metric", "cosine", "--few-shot", tmp_path / "labels.txt",
        "--shots", "1", "2", "--episodes", "3", "--similarity", "cosine", "--out", out)
    assert rc == 0, err
    rep = json.loads(out.read_text())
    assert rep["dim"] == 4 and rep["temperature"] == pytest.approx(0.8)
    assert rep["accuracy"] == pytest.approx(ref_accuracy(z, t, "cosine"))
    assert set(rep["levels_file"]["accuracy"]) == {"x", "y", "z"}
    assert rep["inputs"]["category_names"] == ["c0", "c1", "c2", "c3"]
    assert rep["rsa"]["metric"] == "cosine" and rep["rsa"]["human_metric"] == "dot"
    assert rep["few_shot"]["logreg"]["2"]["n_classes"] == 3


@pytest.mark.parametrize("case", ["nan", "range", "transform_dim", "format", "categories", "levels", "things_key"])
def test_cli_errors(run_cli, tmp_path, case):
    emb, t, _ = write_inputs(tmp_path)
    args = ["--features", tmp_path / "feats.npy", "--triplets", tmp_path / "trip.txt"]
    if case == "nan":
        bad = emb.copy()
        bad[4, 0] = np.nan
        np.save(tmp_path / "feats.npy", bad)
    elif case == "range":
        np.savetxt(tmp_path / "trip.txt", np.vstack([t, [[0, 1, emb.shape[0]]]]), fmt="%d")
    elif case == "transform_dim":
        np.savez(tmp_path / "t2.npz", weights=np.eye(7, dtype=np.float32))
        args += ["--transform", tmp_path / "t2.npz"]
    elif case == "format":
        (tmp_path / "feats.xyz").write_text("1 2\n")
        args[1] = tmp_path / "feats.xyz"
    elif case == "categories":
        args += ["--categories", "things"]
    elif case == "levels":
        (tmp_path / "lv.txt").write_text("a\nb\n")
        args += ["--levels", tmp_path / "lv.txt"]
    elif case == "things_key":
        args = ["--features", "things:resnet", "--triplets", "things:test_10"]
    rc, _, err = run_cli(*args)
    assert rc == 2
    lines = err.strip().splitlines()
    assert lines[-1].startswith("fastalign evaluate: error:") and "Traceback" not in err


def test_empty_triplet_file_is_a_clear_error(tmp_path, run_cli):
    """Before: an empty triplets file gave a NumPy warning, NaN accuracy and exit 0."""
    path = tmp_path / "empty.txt"
    path.write_text("")
    rc, _, err = run_cli("--features", "things:clip", "--triplets", str(path))
    assert rc == 2 and "holds no triplets" in err and "Traceback" not in err


def test_info_json_into_a_closed_pipe_ends_quietly():
    """Before: `fastalign info --json | head -1` ended in a BrokenPipeError traceback."""
    import subprocess
    import sys

    proc = subprocess.run(f"{sys.executable} -m fastalign.cli.main info --json | head -c 1", shell=True,
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout == "{" and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
