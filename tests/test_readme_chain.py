"""The README's command-line chain: no command trains (fits, distils, selects) on triplets that a later
command evaluates on, and the chain runs as written, in order, with smaller sizes."""

import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from fastalign.cli.main import build_parser, main
from fastalign.distill.config import load_config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

# Flags whose triplets a command learns from (fit, early-stop, select, calibrate or monitor on), and
# flags whose triplets it scores.
TRAINS_ON = {"fit-teacher": ("--triplets", "--val-triplets")}
SCORES_ON = {"fit-teacher": ("--test-triplets",), "evaluate": ("--triplets",)}
# Sizes the test runs the chain at (the README's are for results, this is for a test).
SMALL = {"--soft-triplets": "20000", "--num": "4096", "--val-num": "1024", "--clusters": "8"}
EXTRA = {"distill": ["--set", "train.steps=6", "--set", "optim.warmup_steps=2", "--set", "train.eval_every=3",
                     "--set", "train.progress=false"],
         "evaluate": ["--episodes", "5", "--shots", "1"]}


def chain():
    """The commands of the first bash block of the README's "Command line" section, as argv lists."""
    section = README[README.index("## Command line"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S)[1]
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        argv = shlex.split(line, comments=True)
        if argv:
            assert argv[0] == "fastalign", line
            commands.append(argv[1:])
    return commands


def _values(argv, flags):
    args = build_parser().parse_args(argv)
    return [getattr(args, f.lstrip("-").replace("-", "_")) for f in flags
            if getattr(args, f.lstrip("-").replace("-", "_"), None)]


def _distill_triplets(argv):
    """The human triplets a ``distill`` command trains on (loss) or monitors (eval), from its config."""
    args = build_parser().parse_args(argv)
    cfg = load_config(ROOT / args.config if args.config else None, args.set)
    return [t for t in (cfg.loss.human_triplets, cfg.eval.human_triplets) if t]


def test_no_command_of_the_chain_leaks_evaluation_triplets():
    trained, scored, heldout_parts = set(), set(), set()
    for argv in chain():
        command = argv[0]
        trained |= set(_values(argv, TRAINS_ON.get(command, ())))
        if command == "distill":
            trained |= set(_distill_triplets(argv))
        scored |= set(_values(argv, SCORES_ON.get(command, ())))
        if command == "split-triplets":
            heldout_parts.add(build_parser().parse_args(argv).heldout)
    assert scored, "the chain evaluates nothing"
    assert not trained & scored, f"trained and evaluated on the same triplets: {sorted(trained & scored)}"
    assert scored <= heldout_parts, f"evaluated on triplets no split-triplets held out: {sorted(scored - heldout_parts)}"


@pytest.mark.slow
def test_the_chain_runs_in_order(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").symlink_to(ROOT / "examples")  # the chain runs from the repository root
    ran = []
    for argv in chain():
        if argv[0] == "bench":
            continue  # a benchmark of this machine, no step of the chain
        argv = [SMALL.get(prev, a) for prev, a in zip([""] + argv, argv)] + EXTRA.get(argv[0], [])
        rc = main(argv)
        out, err = capsys.readouterr()
        assert rc == 0, f"fastalign {shlex.join(argv)}\n{out}\n{err}"
        ran.append(argv[0])
    assert ran[:2] == ["split-triplets", "fit-teacher"] and "evaluate" in ran
    assert (tmp_path / "student.npy").is_file() and np.load(tmp_path / "student.npy").shape[0] == 1854
