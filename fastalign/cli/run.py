"""``fastalign run``: the whole AligNet pipeline (teacher, triplets, student, evaluation)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..distill.loop import TrainingDiverged
from ..io.lock import FolderLocked
from ..pipeline import load_config, run_pipeline
from ..pipeline.stages import ForeignFiles
from .main import CLIError

DEFAULT_OUT = "fastalign-run"


def register(sub):
    p = sub.add_parser(
        "run",
        help="run all of AligNet end to end (default: on the bundled THINGS data)",
        description="Fit the teacher, make soft-labelled triplets, distil the student and evaluate all four "
        "representations on held-out human triplets. Stages are cached by their inputs: a rerun skips "
        "finished stages and an interrupted run resumes.",
    )
    p.add_argument("--config", help="TOML file with [data] [teacher] [triplets] [student] [eval] sections "
                   "([student] is a fastalign distill config: [student.train], [student.optim] ...)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: ./{DEFAULT_OUT})")
    p.add_argument("--preset", choices=["quick"], help="a reduced configuration (fewer triplets and steps)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config field, e.g. --set student.train.steps=500 (repeatable)")
    p.add_argument("--force", action="append", default=[], metavar="STAGE",
                   help="redo a stage even if cached: data, teacher, triplets, student, evaluate or all (repeatable)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty --out that holds no fastalign run output (files of the names "
                   "the run writes are replaced; a stage folder holding other files is still never cleared)")
    p.add_argument("--quiet", action="store_true",
                   help="no stage lines, no progress bars and no report on the terminal: print only the "
                   "report's path")
    p.set_defaults(func=_run)


def _run(args):
    cfg = load_config(args.config, args.overrides, args.preset)
    try:
        run_pipeline(cfg, Path(args.out), force=args.force, say=(lambda s: None) if args.quiet else None,
                     progress=not args.quiet, overwrite=args.overwrite)
    except TrainingDiverged as exc:  # the student stage: same status as fastalign distill
        print(f"fastalign run: error: student stage: {exc}", file=sys.stderr)
        return 3
    except (FolderLocked, ForeignFiles) as exc:
        raise CLIError(str(exc)) from None
    report = Path(args.out) / "report.md"
    print(report if args.quiet else report.read_text())
    return 0
