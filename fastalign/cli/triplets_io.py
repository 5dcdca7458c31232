"""`fastalign export-triplets` and `fastalign import-triplets` (placeholder until the triplet-store issue lands)."""


def register(sub):
    for cmd in ("export-triplets", "import-triplets"):
        p = sub.add_parser(cmd, help="(not yet available)")
        p.set_defaults(func=_run)


def _run(args):
    from .main import CLIError

    raise CLIError(f"'{args.command}' is not available in this version yet")
