"""The README's CLI reference, generated from the parsers (``python -m fastalign.cli.reference``).

``tests/test_readme.py`` checks that the README holds exactly this text, so the
reference cannot drift from the code.
"""

from __future__ import annotations

import argparse
import os

from .main import build_parser

START = "<!-- cli-reference:start -->"
END = "<!-- cli-reference:end -->"


def render() -> str:
    os.environ["COLUMNS"] = "100"  # argparse wraps usage lines to the terminal width
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    lines = []
    for name, p in sub.choices.items():
        lines += [f"**`fastalign {name}`**: {helps.get(name, '')}", "", "```", p.format_usage().strip(), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
