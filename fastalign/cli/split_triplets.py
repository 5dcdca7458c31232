"""``fastalign split-triplets``: split human triplets into a training part and a held-out part.

    fastalign split-triplets things:test_10 --train human-train.txt --heldout human-heldout.txt

Fit and distil on the training part; evaluate on the held-out part only. The
triplet-level split (the default) holds out the rows that ``fastalign run`` holds
out with the same ``data.heldout_fraction`` and ``data.seed``; ``--by object``
holds out whole objects instead (``fit-teacher --split object``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..io import save_triplets
from ..io.resolve import is_bundled, resolve_triplet_table
from ..triplets.heldout import SPLIT_KINDS, split_rows
from .main import CLIError
from .outdir import check_out_file

EPILOG = """\
Both parts keep the input's participant column when it has one; the format of each
output follows its suffix (.txt, .npy or .npz). Rows keep their input order.

example (the README's command-line chain):
  fastalign split-triplets things:test_10 --heldout-fraction 0.2 --seed 0 \\
      --train human-train.txt --heldout human-heldout.txt
  fastalign fit-teacher --features things:clip --triplets human-train.txt ... --out teacher/
  fastalign evaluate --features student.npy --triplets human-heldout.txt ...
"""


def register(sub) -> None:
    p = sub.add_parser("split-triplets", help="split human triplets into a training part and a held-out part",
                       description="Split human triplets into a training part and a held-out part (seeded; "
                       "both written atomically). Fit and distil on the training part, evaluate on the held-out "
                       "part only.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("triplets", help="human triplets (.txt/.npy/.npz, column 2 the odd one out) or things:KEY")
    p.add_argument("--train", required=True, help="output: the training part")
    p.add_argument("--heldout", required=True, help="output: the held-out part")
    p.add_argument("--heldout-fraction", type=float, default=0.2,
                   help="share held out: of the triplets (--by triplet) or of the objects (--by object); default 0.2, "
                        "as fastalign run's data.heldout_fraction")
    p.add_argument("--by", choices=SPLIT_KINDS, default="triplet",
                   help="triplet: random triplets (as fastalign run); object: random objects, a triplet is held out "
                        "when all three of its objects are, trained on when none is, dropped otherwise")
    p.add_argument("--num-objects", type=int, default=None,
                   help="number of objects for --by object (default: the largest index + 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (default 0, as fastalign run's data.seed)")
    p.set_defaults(func=_run)


def _check_outputs(args) -> None:
    train = check_out_file("--train", args.train, ".txt, .npy or .npz")
    held = check_out_file("--heldout", args.heldout, ".txt, .npy or .npz")
    for flag, path in (("--train", train), ("--heldout", held)):
        if path.suffix.lower() not in (".txt", ".tsv", ".npy", ".npz"):
            raise CLIError(f"{flag} {path}: unknown triplet format {path.suffix!r}; use .txt, .npy or .npz")
        if not is_bundled(args.triplets) and path.exists() and path.resolve() == Path(args.triplets).resolve():
            raise CLIError(f"{flag} {path} is the input file; write the parts to new files")
    if train.resolve() == held.resolve():
        raise CLIError(f"--train and --heldout are the same file {train}")


def _run(args) -> int:
    if not 0.0 < args.heldout_fraction < 1.0:
        raise CLIError(f"--heldout-fraction must be in (0, 1), got {args.heldout_fraction}")
    if args.num_objects is not None and args.by != "object":
        raise CLIError("--num-objects is for --by object")
    _check_outputs(args)
    table = resolve_triplet_table(args.triplets)
    if len(table) == 0:
        raise CLIError(f"{args.triplets}: no triplets to split")
    n_objects = args.num_objects
    if n_objects is not None and n_objects <= int(table.triplets.max()):
        raise CLIError(f"--num-objects {n_objects} is too small: {args.triplets} has index {int(table.triplets.max())}")
    rows = split_rows(table.triplets, args.heldout_fraction, args.seed, args.by, n_objects)
    if len(rows.rest) == 0 or len(rows.heldout) == 0:
        raise CLIError(f"{args.triplets}: {len(table)} triplets split into {len(rows.rest)} training and "
                       f"{len(rows.heldout)} held-out; one part is empty (change --heldout-fraction)")
    for path, part in ((args.train, np.sort(rows.rest)), (args.heldout, np.sort(rows.heldout))):
        participants = None if table.participants is None else table.participants[part]
        save_triplets(path, table.triplets[part], participants)
    dropped = f", {rows.dropped} dropped (objects on both sides)" if rows.dropped else ""
    print(f"split {args.triplets} ({len(table)} triplets, --by {args.by}, fraction {args.heldout_fraction:g}, "
          f"seed {args.seed}): {len(rows.rest)} training -> {args.train}, {len(rows.heldout)} held-out -> "
          f"{args.heldout}{dropped}")
    return 0

