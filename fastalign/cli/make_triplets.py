"""`fastalign make-triplets` (placeholder until its issue lands)."""


def register(sub):
    p = sub.add_parser("make-triplets", help="(not yet available)")
    p.set_defaults(func=_run)


def _run(args):
    from .main import CLIError

    raise CLIError("'make-triplets' is not available in this version yet")
