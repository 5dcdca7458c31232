"""`fastalign fit-teacher` (placeholder until its issue lands)."""


def register(sub):
    p = sub.add_parser("fit-teacher", help="(not yet available)")
    p.set_defaults(func=_run)


def _run(args):
    from .main import CLIError

    raise CLIError("'fit-teacher' is not available in this version yet")
