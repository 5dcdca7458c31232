"""``fastalign export-triplets`` and ``fastalign import-triplets``: AligNet ``.npz`` and THINGS text <-> triplet store."""

from __future__ import annotations

from ..triplets.alignet_io import export_store, import_store
from .outdir import check_out_file

FORMATS = ("alignet-npz", "things-txt")
SUFFIXES = {"alignet-npz": ".npz", "things-txt": ".txt"}


def register(sub) -> None:
    p = sub.add_parser(
        "export-triplets",
        help="export a triplet store to AligNet .npz or THINGS text",
        description="Write a store's triplets in fastalign's convention (item 2 = the teacher's odd one out, s01 "
        "the largest similarity): alignet-npz (indices, similarities, filenames) or things-txt (i j k per line).",
    )
    p.add_argument("store", help="triplet store directory")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--no-verify", action="store_true", help="skip shard checksum verification")
    p.set_defaults(func=_export)

    p = sub.add_parser(
        "import-triplets",
        help="import AligNet .npz or THINGS text triplets into a new triplet store",
        description="AligNet .npz rows are reordered so the odd one out (derived from the similarities, never "
        "assumed) is item 2; the similarity values are kept. THINGS text (odd one out in column 2) becomes a "
        "hard-label store with one-hot probabilities.",
    )
    p.add_argument("file", help=".npz (AligNet) or .txt (THINGS)")
    p.add_argument("--out", required=True, help="store directory to create")
    p.add_argument("--format", choices=FORMATS, help="default: from the file suffix")
    p.add_argument("--num-items", type=int, help="number of items (default: largest index + 1)")
    p.add_argument("--sim-dtype", choices=("float16", "float32"), default="float32")
    p.add_argument("--temperature", type=float, help="also store softmax(s/T) (AligNet .npz only)")
    p.add_argument("--shard-size", type=int, default=1_000_000)
    p.add_argument("--allow-pickle", action="store_true", help="allow object arrays in the .npz (trusted files only)")
    p.set_defaults(func=_import)


def _export(args) -> int:
    check_out_file("--out", args.out, SUFFIXES[args.format])
    n = export_store(args.store, args.out, args.format, verify=not args.no_verify)
    print(f"wrote {n:,} triplets to {args.out} ({args.format})")
    return 0


def _import(args) -> int:
    if args.num_items is not None and args.num_items < 1:
        raise ValueError(f"--num-items must be >= 1, got {args.num_items}")
    if args.shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {args.shard_size}")
    if args.temperature is not None and not args.temperature > 0:
        raise ValueError(f"--temperature must be > 0, got {args.temperature}")
    store = import_store(args.file, args.out, args.format, num_items=args.num_items, sim_dtype=args.sim_dtype,
                         temperature=args.temperature, shard_size=args.shard_size, allow_pickle=args.allow_pickle)
    print(f"imported {len(store):,} triplets over {store.num_items:,} items into {args.out}")
    return 0
