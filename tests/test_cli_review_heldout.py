"""fit-teacher refuses test (and validation) triplets that are its training triplets: the same file,
or a copy or subset of them (user review, finding 5: `--test-triplets` = `--triplets` reported "test"
metrics on training data). A few shared rows are repeated trials of one triplet, which real human data
holds (THINGS' test_10 split 80/20 by triplet shares 0.6 % of its held-out rows): those are counted."""

import json

import numpy as np
import pytest
from small_inputs import write_small_inputs

from fastalign.cli.main import main
from fastalign.io.triplets import shared_triplets


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = write_small_inputs(tmp_path_factory.mktemp("heldout"), steps=2, progress=False)
    human = np.loadtxt(root / "human.txt", dtype=np.int64)
    train, test = human[:200], human[200:]
    keep = [tuple(r) not in {tuple(t) for t in train} for r in test]
    test = test[keep][:100]
    np.savetxt(root / "train.txt", train, fmt="%d")
    np.savetxt(root / "test.txt", test, fmt="%d")
    # Two training triplets answered again (one with its kept pair swapped): repeated trials.
    repeated = np.concatenate([test[:98], train[:1], train[1:2][:, [1, 0, 2]]])
    np.savetxt(root / "test_repeats.txt", repeated, fmt="%d")
    np.savetxt(root / "subset.txt", train[:50], fmt="%d")
    return root


def _fit(data, out, *extra):
    return main(["fit-teacher", "--features", str(data / "feats.npy"), "--triplets", str(data / "train.txt"),
                 "--lambdas", "0.1", "--max-iter", "5", "--quiet", "--out", str(out), *map(str, extra)])


@pytest.mark.parametrize("flag", ["--test-triplets", "--val-triplets"])
def test_the_training_file_itself_is_refused(data, tmp_path, capsys, flag):
    rc = _fit(data, tmp_path / "t", flag, data / "train.txt")
    err = capsys.readouterr().err
    assert rc == 2 and "is the training triplets file" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "t" / "transform.npz").exists()


@pytest.mark.parametrize("flag", ["--test-triplets", "--val-triplets"])
def test_a_subset_of_the_training_triplets_is_refused_naming_the_count(data, tmp_path, capsys, flag):
    rc = _fit(data, tmp_path / "t", flag, data / "subset.txt")
    err = capsys.readouterr().err
    what = "test" if flag == "--test-triplets" else "validation"
    assert rc == 2 and f"50 of the 50 {what} triplets ({data / 'subset.txt'}) are also training triplets" in err


def test_test_triplets_that_are_the_validation_triplets_are_refused(data, tmp_path, capsys):
    rc = _fit(data, tmp_path / "t", "--val-triplets", data / "test.txt", "--test-triplets", data / "test.txt")
    assert rc == 2 and "is the validation triplets file" in capsys.readouterr().err


def test_a_few_repeated_trials_are_counted_not_refused(data, tmp_path, capsys):
    assert _fit(data, tmp_path / "t", "--test-triplets", data / "test_repeats.txt") == 0
    report = json.loads((tmp_path / "t" / "report.json").read_text())
    assert report["split"]["shared_triplets"] == {"test_in_train": 2}
    assert _fit(data, tmp_path / "u", "--test-triplets", data / "test.txt") == 0
    assert json.loads((tmp_path / "u" / "report.json").read_text())["split"]["shared_triplets"] == {"test_in_train": 0}


def test_shared_triplets_counts_rows_as_triplets():
    train = np.array([[0, 1, 2], [3, 4, 5]])
    assert shared_triplets(train, np.array([[1, 0, 2], [0, 2, 1], [3, 4, 5], [3, 4, 5]])) == 3
    assert shared_triplets(train, np.zeros((0, 3), np.int64)) == 0
    big = np.array([[0, 1, 3_000_000]])  # past the int64 key: the set path
    assert shared_triplets(big, np.array([[1, 0, 3_000_000], [0, 1, 2]])) == 1
