"""fastalign embed: export a distilled student's embeddings.

    fastalign embed --checkpoint RUN_OR_CKPT --features F.npy --out E.npy
    fastalign embed --checkpoint RUN_OR_CKPT --images ROOT --file-names LIST.txt --out E.npy

Beside E.npy it writes E.npy.json: the checkpoint, and the similarity and
temperature the student was trained with. fastalign evaluate --features E.npy
uses that temperature unless --temperature is given.
"""

from __future__ import annotations

import argparse
import sys

from ..distill.export import export_embeddings, sidecar_path
from ..io import read_file_names
from .main import CLIError
from .outdir import check_out_file


def register(sub):
    p = sub.add_parser("embed", help="export a distilled student's embeddings to .npy",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint directory or run directory (newest checkpoint)")
    p.add_argument("--features", help="(N, D) features for a feature student: a file (FILE.npz:KEY for one of several arrays) "
                   "or things:KEY (default: its training features)")
    p.add_argument("--images", metavar="ROOT", help="image root for an image student")
    p.add_argument("--file-names", help="text file with one image path (relative to ROOT) per line")
    p.add_argument("--out", required=True, help="output .npy (written atomically, with OUT.json beside it)")
    p.add_argument("--micro-batch", type=int, default=256, help="items per forward (default 256)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device (default cpu)")
    p.add_argument("--quiet", action="store_true", help="print only the path written")
    p.set_defaults(func=_run)


def _run(args):
    if args.micro_batch <= 0:
        raise CLIError(f"--micro-batch must be > 0, got {args.micro_batch}")
    check_out_file("--out", args.out, ".npy")
    if args.features and args.images:
        raise CLIError("give --features or --images, not both")
    names = None
    if args.images is not None or args.file_names is not None:
        if not (args.images and args.file_names):
            raise CLIError("--images needs --file-names (and the reverse)")
        names = read_file_names(args.file_names)
    emb, ok, info = export_embeddings(args.checkpoint, args.out, features=args.features, image_root=args.images,
                                      file_names=names, micro_batch=args.micro_batch, device=args.device)
    bad = int((~ok).sum())
    if args.quiet:
        print(args.out)
        if bad:
            print(f"fastalign embed: {bad} images failed to load: zero rows", file=sys.stderr)
    else:
        print(f"wrote {args.out}: {emb.shape[0]} x {emb.shape[1]} float32" +
              (f" ({bad} images failed to load: zero rows)" if bad else ""))
        print(f"wrote {sidecar_path(args.out)}: similarity {info['similarity']}, temperature {info['temperature']:g}")
    return 0 if bad == 0 else 1
