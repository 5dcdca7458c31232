"""evaluate refuses --shots that no two classes of --few-shot can serve (user review, finding 8:
`--few-shot things --shots 500` printed "(0 classes) -" and exited 0)."""

import numpy as np
import pytest

from fastalign.cli.main import main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fewshot")
    rng = np.random.default_rng(0)
    np.save(root / "f.npy", rng.normal(size=(30, 4)).astype(np.float32))
    np.savetxt(root / "t.txt", np.stack([rng.choice(30, 3, replace=False) for _ in range(50)]), fmt="%d")
    # classes of 12, 8 and 6 objects, 4 unlabelled: the largest usable shot count is 8 - 1 = 7
    labels = [0] * 12 + [1] * 8 + [2] * 6 + [-1] * 4
    (root / "labels.txt").write_text("\n".join(map(str, labels)) + "\n")
    (root / "one_class.txt").write_text("\n".join(["0"] * 29 + ["1"]) + "\n")
    return root


def _evaluate(data, labels, *shots):
    return main(["evaluate", "--features", str(data / "f.npy"), "--triplets", str(data / "t.txt"), "--quiet",
                 "--few-shot", str(data / labels), "--episodes", "2", "--probe", "centroid", "--shots", *shots])


def test_too_many_shots_are_refused_naming_the_largest_usable(data, capsys):
    rc = _evaluate(data, "labels.txt", "1", "8")
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "--shots 8: fewer than two classes" in err and "the largest usable --shots is 7" in err


def test_labels_with_no_second_class_are_refused(data, capsys):
    rc = _evaluate(data, "one_class.txt", "1")
    err = capsys.readouterr().err
    assert rc == 2 and "no two classes have 2 or more objects" in err


def test_the_largest_usable_shots_run(data, capsys):
    assert _evaluate(data, "labels.txt", "7") == 0
    out = capsys.readouterr().out
    assert "7-shot (2 classes)" in out
