"""Every `--help` is plain text: no RST markup and no pointers into the source (issue 14, problem 8)."""

import argparse
import re

import pytest

from fastalign.cli.main import build_parser

_PARSER = build_parser()
_SUB = next(a for a in _PARSER._actions if isinstance(a, argparse._SubParsersAction))
# A module path ("see fastalign.distill.loop") or a source file ("fastalign/cli/main.py") means
# nothing to a user who installed a wheel; RST backticks and *emphasis* show up raw in a terminal.
SOURCE = re.compile(r"\.py\b|fastalign\.[a-z_]+\.[a-z_]|fastalign/[a-z_]+/")
MARKUP = re.compile(r"`|\*[a-z]+\*|::\s*$", re.MULTILINE)


@pytest.mark.parametrize("name", ["(top level)", *_SUB.choices])
def test_help_is_plain_text(name, monkeypatch):
    """Before: distill, embed and bench showed ``fastalign distill`` and pointed at fastalign.distill.loop."""
    monkeypatch.setenv("COLUMNS", "100")
    parser = _PARSER if name == "(top level)" else _SUB.choices[name]
    text = parser.format_help()
    assert len(text.splitlines()) > 3
    assert not MARKUP.findall(text), [line for line in text.splitlines() if MARKUP.search(line)]
    assert not SOURCE.findall(text), [line for line in text.splitlines() if SOURCE.search(line)]


def test_every_subcommand_has_a_one_line_summary():
    helps = {c.dest: c.help for c in _SUB._choices_actions}
    assert set(helps) == set(_SUB.choices)
    assert all(h and "\n" not in h and not MARKUP.search(h) for h in helps.values()), helps
