"""``fastalign run`` on user data with an image student: a folder of images
plus ``file_names``, teacher features, human triplets and categories, all
written by the test. The student is a small CNN ("module" kind), so the run
needs neither timm nor downloaded weights."""

import json

import numpy as np
import pytest
from test_distill_fixtures import write_images

from fastalign.cli.main import main
from fastalign.io import save_triplets_txt
from fastalign.pipeline import load_config, run_pipeline

N = 60


@pytest.fixture(scope="module")
def user_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("user")
    gen = np.random.default_rng(0)
    cats = np.zeros((N, 3), dtype=np.uint8)
    cats[np.arange(N), np.arange(N) % 3] = 1
    teacher = (cats @ gen.normal(size=(3, 16)) * 2 + gen.normal(size=(N, 16))).astype(np.float32)
    np.save(root / "teacher.npy", teacher)
    np.save(root / "categories.npy", cats)
    trip = np.array([gen.choice(N, 3, replace=False) for _ in range(900)])
    s = teacher @ teacher.T
    pair = np.stack([s[trip[:, 0], trip[:, 1]], s[trip[:, 0], trip[:, 2]], s[trip[:, 1], trip[:, 2]]], 1)
    order = [(0, 1, 2), (0, 2, 1), (1, 2, 0)]  # most similar pair -> rows with the odd one out last
    best = pair.argmax(1)  # the most similar pair; its complement is the odd one out
    trip = np.array([trip[i, list(order[b])] for i, b in enumerate(best)])
    save_triplets_txt(root / "human.txt", trip)
    images = root / "images"
    images.mkdir()
    names = write_images(images, N)
    (root / "names.txt").write_text("\n".join(names) + "\n")
    return root


def _overrides(root, **extra):
    o = {
        "data.teacher_features": f'"{root / "teacher.npy"}"', "data.human_triplets": f'"{root / "human.txt"}"',
        "data.categories": f'"{root / "categories.npy"}"', "data.human_embedding": '""',
        "data.student_images": f'"{root / "images"}"', "data.file_names": f'"{root / "names.txt"}"',
        "teacher.lambdas": "[0.1]", "teacher.folds": "1",
        "triplets.num": "3000", "triplets.val_num": "200", "triplets.clusters": "4",
        "student.student.kind": "module", "student.student.module": "test_distill_fixtures:TinyCNN",
        "student.data.image_size": "12", "student.train.steps": "6", "student.train.batch_triplets": "64",
        "student.train.eval_every": "0", "student.data.num_workers": "0", "student.optim.lr": "1e-3",
        "eval.few_shot_episodes": "3", "eval.few_shot_shots": "[1]",
    }
    o.update(extra)
    return [f"{k}={v}" for k, v in o.items()]


def test_image_student_runs_end_to_end(user_data, tmp_path):
    out = tmp_path / "run"
    run_pipeline(load_config(overrides=_overrides(user_data)), out, say=lambda s: None)
    report = json.loads((out / "report.json").read_text())
    assert set(report["results"]) == {"raw teacher features", "teacher", "raw student features", "student"}
    for name, res in report["results"].items():
        assert 0.0 <= res["accuracy"] <= 1.0, name
    raw, trained = np.load(out / "embeddings" / "student_raw.npy"), np.load(out / "embeddings" / "student.npy")
    assert raw.shape == (N, 6) and trained.shape == (N, 6) and np.isfinite(trained).all()
    assert not np.allclose(raw, trained)  # the head and the CNN were trained
    stage = json.loads((out / "student" / "stage.json").read_text())
    assert stage["metrics"]["steps"] == 6 and stage["metrics"]["images_failed"] == 0
    # The images are part of the student stage's key: touching one reruns it, not the teacher.
    img = user_data / "images" / "img0.png"
    img.write_bytes(img.read_bytes())
    import os

    os.utime(img, ns=(img.stat().st_atime_ns, img.stat().st_mtime_ns + 10**9))
    lines = []
    run_pipeline(load_config(overrides=_overrides(user_data)), out, say=lines.append)
    text = "\n".join(lines)
    assert "teacher: cached" in text and "student: running" in text


@pytest.mark.parametrize("extra, message", [
    ({"student.student.kind": "features"}, "data.student_images is read by an image student only"),
    ({"data.student_images": '""'}, "needs data.student_images"),
    ({"data.file_names": '"/nonexistent/names.txt"'}, "not found"),
    ({"student.student.module": "no_such_module_xyz:f"}, "cannot be imported"),
])
def test_bad_image_inputs_fail_before_work(user_data, tmp_path, capsys, extra, message):
    args = ["run", "--out", str(tmp_path / "x")]
    for o in _overrides(user_data, **extra):
        args += ["--set", o]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x" / "teacher").exists()


def test_missing_and_extra_images_are_named(user_data, tmp_path, capsys):
    names = (user_data / "names.txt").read_text().split()
    short = tmp_path / "short.txt"
    short.write_text("\n".join(names[:-1]))
    args = ["run", "--out", str(tmp_path / "x")]
    for o in _overrides(user_data, **{"data.file_names": f'"{short}"'}):
        args += ["--set", o]
    assert main(args) == 2 and "has 59 rows but data.teacher_features" in capsys.readouterr().err
    gone = tmp_path / "gone.txt"
    gone.write_text("\n".join(names[:-1] + ["absent.png"]))
    args = ["run", "--out", str(tmp_path / "y")]
    for o in _overrides(user_data, **{"data.file_names": f'"{gone}"'}):
        args += ["--set", o]
    assert main(args) == 2 and "1 of 60 images" in capsys.readouterr().err


def test_file_names_are_checked_for_a_features_student_too(user_data, tmp_path, capsys):
    """thingsvision's file_names.txt names the feature rows; with frozen student features only its length counts."""
    names = (user_data / "names.txt").read_text().split()
    short = tmp_path / "short.txt"
    short.write_text("\n".join(names[:-2]))
    args = ["run", "--out", str(tmp_path / "x")]
    for o in _overrides(user_data, **{"student.student.kind": "features", "data.student_images": '""',
                                      "data.file_names": f'"{short}"'}):
        args += ["--set", o]
    assert main(args) == 2 and "has 58 rows but data.teacher_features" in capsys.readouterr().err
