"""Strategy weights are relative (a bare name weighs 1, as `--strategy` has always documented a mix by
its weights); weights that do not sum to 1 get a one-line note of the shares they become (user review,
finding 6: `cluster_border:0.3,random:0.3` was silently renormalised to 50/50)."""

import json

import pytest
from small_inputs import write_small_inputs

from fastalign.cli.main import main
from fastalign.triplets.options import share_note


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_small_inputs(tmp_path_factory.mktemp("strategy"), steps=2, progress=False)


def _make(data, out, strategy):
    return main(["make-triplets", "--embeddings", str(data / "teacher.npy"), "--clusters", "3", "--num", "200",
                 "--kmeans-iters", "2", "--no-histogram", "--quiet", "--strategy", strategy, "--out", str(out)])


def test_weights_that_do_not_sum_to_one_get_a_note_of_the_shares(data, tmp_path, capsys):
    assert _make(data, tmp_path / "s", "cluster_border:0.3,random:0.3") == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "sum to" in line]
    assert notes == ["note: strategy cluster_border:0.3,random:0.3: the weights sum to 0.6, not 1; they are "
                     "relative, so the shares are cluster_border 0.5, random 0.5"]
    counts = json.loads((tmp_path / "s" / "summary.json").read_text())["splits"][0]["strategy_counts"]
    assert counts == {"cluster_border": 100, "random": 100}  # what the note says


def test_weights_that_sum_to_one_get_no_note(data, tmp_path, capsys):
    assert _make(data, tmp_path / "s", "cluster_border:0.3,random:0.7") == 0
    assert "sum to" not in capsys.readouterr().err


@pytest.mark.parametrize("spec, note", [
    ("random", None),
    ("random:0.25", None),  # one strategy: its share is 1 whatever its weight
    ("cluster_border:0.7,random:0.3000000001", None),  # within 1e-6
    ("within_class:1,between_class:1,class_border:2", "sum to 4, not 1"),
])
def test_share_note(spec, note):
    got = share_note(spec)
    assert (got is None) if note is None else (note in got)
