"""`fastalign embed` (placeholder until its issue lands)."""


def register(sub):
    p = sub.add_parser("embed", help="(not yet available)")
    p.set_defaults(func=_run)


def _run(args):
    from .main import CLIError

    raise CLIError("'embed' is not available in this version yet")
