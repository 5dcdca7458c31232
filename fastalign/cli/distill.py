"""fastalign distill: distil a student on teacher-labelled triplets.

    fastalign distill --config distill.toml [--set optim.lr=3e-5 ...] [--optim.lr 3e-5 ...]

Every config field can be overridden with --set section.key=value (the value
is TOML; bare words are strings) or its own flag --section.key VALUE.
Rerunning the same command resumes from the newest intact checkpoint in
train.out_dir (a damaged checkpoint is set aside with a warning).

Several GPUs: the same command under torchrun, one process per GPU (DDP;
--set train.distributed=fsdp shards a student too large to replicate):

    torchrun --standalone --nproc_per_node=8 -m fastalign distill --config distill.toml

Exit status: 0 done; 2 a configuration or input error (or no intact
checkpoint to resume); 3 training stopped on a NaN/Inf loss or gradient (the
message names the step; nothing was saved after it).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ..distill.config import DistillConfig, load_config, to_toml
from ..distill.loop import TrainingDiverged, distill
from .outdir import DISTILL_MARKERS, OVERWRITE_HELP, check_out_dir

EXIT_DIVERGED = 3

EPILOG = """\
every key, what it is, its unit and its default:
  examples/distill.toml in the fastalign repository (the README's command-line chain runs it);
  --print-config prints the configuration this command would train with, every key and its
  value after --config and --set, as TOML, and exits (works in any install)

  fastalign distill --config examples/distill.toml --set train.steps=200 --out my-run
"""


def _fields():
    for section in dataclasses.fields(DistillConfig):
        for f in dataclasses.fields(section.default_factory()):
            yield f"{section.name}.{f.name}"


def register(sub):
    p = sub.add_parser("distill", help="distil a student on teacher-labelled triplets (two-pass, resumable)",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="TOML config file (sections: student, data, loss, optim, train, eval)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field, e.g. --set optim.lr=3e-5 (repeatable)")
    p.add_argument("--out", help="shortcut for --set train.out_dir=PATH (new, empty, or a distill run to resume)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP.format(what="distill"))
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar (train.progress = false) and no metrics: print only the checkpoint's path")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration as TOML and exit")
    for key in _fields():  # --section.key VALUE for every field (hidden from --help: there are many)
        p.add_argument(f"--{key}", dest=f"field:{key}", metavar="VALUE", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_run)


def _run(args):
    overrides = list(args.set)
    if args.out:
        overrides.append(f"train.out_dir={_toml_str(args.out)}")
    for key, value in vars(args).items():
        if key.startswith("field:") and value is not None:
            overrides.append(f"{key[len('field:'):]}={value}")
    if args.quiet:
        overrides.append("train.progress=false")
    cfg = load_config(args.config, overrides)
    if args.print_config:
        print(to_toml(cfg), end="")
        return 0
    check_out_dir(Path(cfg.train.out_dir), "distill", DISTILL_MARKERS, args.overwrite)
    try:
        result = distill(cfg)
    except TrainingDiverged as exc:
        print(f"fastalign distill: error: {exc}", file=sys.stderr)
        return EXIT_DIVERGED
    if args.quiet:
        print(result.checkpoint)
        return 0
    print(f"distilled {result.steps} steps; checkpoint {result.checkpoint}; report {result.report}")
    for key in ("human_acc", "val_acc", "val_kl", "loss"):
        if key in result.metrics:
            print(f"  {key}: {result.metrics[key]:.4f}")
    return 0


def _toml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
