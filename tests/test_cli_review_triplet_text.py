"""Triplet text files: errors name 1-based line numbers in words, not numpy's wording, and commas are
accepted in any text suffix (user review, finding 7: a header line gave numpy's "could not convert
string 'anchor' ... at row 0, column 1", a 2-column line "use `usecols`")."""

import numpy as np
import pytest

from fastalign.cli.main import main
from fastalign.io import load_triplets


@pytest.mark.parametrize("name, text, message", [
    ("header.txt", "anchor positive odd\n1 2 0\n", "line 1 is not three integers: 'anchor positive odd' "
                                                    "(a header? remove it)"),
    ("header.csv", "a,b,odd\n1,2,0\n", "line 1 is not three integers: 'a,b,odd' (a header? remove it)"),
    ("short.txt", "1 2 0\n3 4 5\n\n# a comment\n6 7\n", "line 5 has 2 columns; a triplet line needs 3 integers"),
    ("all_short.txt", "1 2\n3 4\n", "line 1 has 2 columns; a triplet line needs 3 integers"),
    ("mixed.txt", "1 2 0\n3 4 5 6\n", "line 2 has 4 columns but line 1 has 3"),
    ("word.txt", "1 2 0\n3 x 5\n", "line 2 is not three integers: '3 x 5'"),
    ("repeat.txt", "1 2 0\n# comment\n\n3 3 5\n", "line 4 = [3, 3, 5] repeats an object"),
    ("negative.txt", "\n1 2 0\n-1 4 5\n", "line 3 = [-1, 4, 5] has a negative index"),
    ("fraction.txt", "1 2 0.5\n", "line 1 = [1.0, 2.0, 0.5] is not integer indices"),
])
def test_text_errors_name_the_line(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError) as err:
        load_triplets(tmp_path / name)
    msg = str(err.value)
    assert msg == f"{tmp_path / name}: {message}" or msg.startswith(f"{tmp_path / name}: {message}")
    assert "usecols" not in msg and "column 1" not in msg and "\n" not in msg


@pytest.mark.parametrize("name", ["comma.txt", "comma.tsv", "comma.csv"])
def test_commas_are_accepted_in_every_text_suffix(tmp_path, name):
    (tmp_path / name).write_text("1,2,0\n3, 4, 5\n")
    np.testing.assert_array_equal(load_triplets(tmp_path / name).triplets, [[1, 2, 0], [3, 4, 5]])


def test_whitespace_csv_still_reads(tmp_path):
    (tmp_path / "space.csv").write_text("1 2 0\n3\t4 5\n")
    np.testing.assert_array_equal(load_triplets(tmp_path / "space.csv").triplets, [[1, 2, 0], [3, 4, 5]])


def test_the_cli_error_is_one_line(tmp_path, capsys):
    np.save(tmp_path / "f.npy", np.zeros((10, 3), np.float32))
    (tmp_path / "h.txt").write_text("anchor positive odd\n1 2 0\n")
    rc = main(["evaluate", "--features", str(tmp_path / "f.npy"), "--triplets", str(tmp_path / "h.txt"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip().endswith("line 1 is not three integers: 'anchor positive odd' (a header? remove it)")
