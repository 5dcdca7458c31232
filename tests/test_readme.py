"""The README's commands and CLI reference stay true to the code."""

import re
import shlex
from pathlib import Path

from fastalign.cli.main import build_parser
from fastalign.cli.reference import END, START, render

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _command_after(marker: str) -> str:
    lines = README.splitlines()
    i = lines.index(marker)
    assert lines[i + 1].startswith("```"), f"a fenced block must follow {marker}"
    return lines[i + 2]


def test_readme_starts_with_the_two_commands():
    head = README[:1500]
    assert "<!-- run-command -->" in head and "<!-- test-command -->" in head
    run, test = _command_after("<!-- run-command -->"), _command_after("<!-- test-command -->")
    for cmd in (run, test):
        assert "python -m venv" in cmd and "pip install" in cmd
    assert run.endswith("fastalign run")
    assert "pytest" in test


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    # .ci/run extracts the line after the marker, so the two cannot differ.
    assert "<!-- test-command -->" in ci and 'bash -c "$test_cmd"' in ci


def test_run_command_parses():
    run = _command_after("<!-- run-command -->")
    argv = shlex.split(run.split("&&")[-1])
    assert argv[0] == "fastalign"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run"


def test_cli_reference_is_generated_from_the_parsers():
    block = README[README.index(START) + len(START): README.index(END)].strip("\n") + "\n"
    assert block == render(), "README CLI reference is stale: run python -m fastalign.cli.reference"


def test_every_command_in_the_examples_exists():
    commands = set(build_parser()._subparsers._group_actions[0].choices)
    used = set(re.findall(r"^fastalign ([a-z-]+)", README, flags=re.M))
    assert used and used <= commands, used - commands


def test_readme_run_config_is_valid():
    """The README's ``fastalign run`` TOML example names only real fields with the right types."""
    import tomllib

    from fastalign.config import build_dataclass
    from fastalign.pipeline.config import RunConfig

    blocks = re.findall(r"```toml\n(.*?)```", README, re.S)
    assert blocks, "the README shows a fastalign run config"
    for block in blocks:
        cfg = build_dataclass(RunConfig, tomllib.loads(block))
        assert cfg.student.student.kind == "timm" and cfg.data.student_images
