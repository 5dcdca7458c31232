"""`fastalign bench` (placeholder until its issue lands)."""


def register(sub):
    p = sub.add_parser("bench", help="(not yet available)")
    p.set_defaults(func=_run)


def _run(args):
    from .main import CLIError

    raise CLIError("'bench' is not available in this version yet")
