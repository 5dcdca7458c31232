"""``fastalign split-triplets``: a seeded training / held-out split of human triplets, written atomically,
holding out the rows ``fastalign run`` holds out."""

import numpy as np
import pytest

from fastalign.cli.main import main
from fastalign.io import load_triplets, resolve_triplet_table
from fastalign.pipeline.run import _split_human


def _split(capsys, *argv):
    rc = main(["split-triplets", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def _rows(a: np.ndarray) -> set:
    return {tuple(r) for r in a.tolist()}


def test_split_partitions_the_file_and_holds_out_what_fastalign_run_holds_out(tmp_path, capsys):
    train, held = tmp_path / "train.txt", tmp_path / "held.txt"
    rc, out, _ = _split(capsys, "things:test_10", "--heldout-fraction", 0.2, "--seed", 3,
                        "--train", train, "--heldout", held)
    assert rc == 0
    src = resolve_triplet_table("things:test_10").triplets
    t, h = load_triplets(train).triplets, load_triplets(held).triplets
    assert len(t) + len(h) == len(src) and len(h) == round(0.2 * len(src))
    assert f"{len(t)} training" in out and f"{len(h)} held-out" in out
    # Together the parts are the input row for row (a multiset check: test_10 repeats some triplets).
    assert np.array_equal(np.sort(np.concatenate([t, h]).view("i8,i8,i8"), axis=0),
                          np.sort(src.view("i8,i8,i8"), axis=0))
    run_train, run_calib, run_held = _split_human(src, 0.2, 3)
    assert _rows(h) == _rows(run_held)
    assert _rows(t) == _rows(run_train) | _rows(run_calib)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["held.txt", "train.txt"]  # no temp files left


def test_split_is_seeded(tmp_path, capsys):
    def held(seed, name):
        path = tmp_path / name
        assert _split(capsys, "things:test_10_ID_smallsample", "--seed", seed, "--train", tmp_path / f"t{name}",
                      "--heldout", path)[0] == 0
        return path.read_bytes()

    assert held(1, "a.txt") == held(1, "b.txt")
    assert held(1, "a.txt") != held(2, "c.txt")


def test_split_keeps_participants_and_the_output_format(tmp_path, capsys):
    train, held = tmp_path / "train.npz", tmp_path / "held.npy"
    assert _split(capsys, "things:train_90_ID_smallsample", "--train", train, "--heldout", held)[0] == 0
    src = resolve_triplet_table("things:train_90_ID_smallsample")
    t, h = load_triplets(train), load_triplets(held)
    assert t.participants is not None and h.participants is not None
    both = np.concatenate([np.column_stack([t.triplets, t.participants]),
                           np.column_stack([h.triplets, h.participants])])
    assert _rows(both) == _rows(np.column_stack([src.triplets, src.participants]))


def test_object_split_keeps_held_out_objects_out_of_training(tmp_path, capsys):
    train, held = tmp_path / "train.txt", tmp_path / "held.txt"
    rc, out, _ = _split(capsys, "things:test_10", "--by", "object", "--heldout-fraction", 0.4,
                        "--train", train, "--heldout", held)
    assert rc == 0
    t, h = load_triplets(train).triplets, load_triplets(held).triplets
    assert len(t) and len(h)
    assert not set(np.unique(t)) & set(np.unique(h))
    dropped = len(resolve_triplet_table("things:test_10")) - len(t) - len(h)
    assert dropped > 0 and f"{dropped} dropped" in out


@pytest.mark.parametrize("argv, message", [
    (["--heldout-fraction", "1.0"], "--heldout-fraction must be in (0, 1)"),
    (["--heldout-fraction", "0"], "--heldout-fraction must be in (0, 1)"),
    (["--num-objects", "2000"], "--num-objects is for --by object"),
    (["--by", "object", "--num-objects", "10"], "--num-objects 10 is too small"),
])
def test_bad_options_are_one_line_errors(tmp_path, capsys, argv, message):
    rc, _, err = _split(capsys, "things:test_10", "--train", tmp_path / "t.txt", "--heldout", tmp_path / "h.txt",
                        *argv)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_bad_files_are_one_line_errors(tmp_path, capsys):
    src = tmp_path / "human.txt"
    src.write_text("0 1 2\n3 4 5\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    cases = [
        ([src, "--train", src, "--heldout", tmp_path / "h.txt"], "is the input file"),
        ([src, "--train", tmp_path / "x.txt", "--heldout", tmp_path / "x.txt"], "are the same file"),
        ([src, "--train", tmp_path / "t.csv", "--heldout", tmp_path / "h.txt"], "unknown triplet format"),
        ([empty, "--train", tmp_path / "t.txt", "--heldout", tmp_path / "h.txt"], "no triplets to split"),
        ([src, "--heldout-fraction", "0.1", "--train", tmp_path / "t.txt", "--heldout", tmp_path / "h.txt"],
         "one part is empty"),
        ([tmp_path / "missing.txt", "--train", tmp_path / "t.txt", "--heldout", tmp_path / "h.txt"], "not found"),
    ]
    for argv, message in cases:
        rc, _, err = _split(capsys, *argv)
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt", "human.txt"]
